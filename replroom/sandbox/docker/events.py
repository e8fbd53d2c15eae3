"""The Engine's event stream, as what it says about each of the backend's containers.

The backend follows the stream (filtered to its containers) from its first
create to its close: ``oom`` events count OOM kills per container,
``exec_die`` ends a process, ``die`` and ``destroy`` end every process of a
container. The events matter beyond speed: with runsc, when the sandbox
itself dies (on OOM, it is killed whole), the Engine never closes the
attached exec streams. After a gap (the Engine restarted, the connection
broke) the stream is replayed from the last event seen and the backend asks
about every process still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Generic, Protocol, TypeVar

import aiodocker
import aiohttp

from replroom.sandbox.base import SandboxError
from replroom.sandbox.spec import LABEL_MANAGED

log = logging.getLogger(__name__)

EVENTS = ("oom", "die", "destroy", "exec_die")
CONNECT_TIMEOUT = 10.0
# Short: while the stream is down, OOM kills are not counted.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 1.0


class Ends(Protocol):
    """A process the stream can end (``DockerProcess``)."""

    def exited(self, exit_code: int | None) -> None: ...


P = TypeVar("P", bound=Ends)


class ContainerWatch(Generic[P]):
    """What the event stream has said about one container, and its processes to tell."""

    def __init__(self) -> None:
        self.ooms = 0
        self.dead = False
        self.processes: dict[str, P] = {}  # by exec id
        self._oom_event = asyncio.Event()

    def oom(self) -> None:
        self.ooms += 1
        self._oom_event.set()
        self._oom_event = asyncio.Event()

    async def next_oom(self) -> None:
        await self._oom_event.wait()

    def died(self) -> None:
        self.dead = True
        for process in list(self.processes.values()):
            process.exited(None)


class EventStream:
    """Follows the Engine's events into ``watches`` (by container id), reconnecting.

    ``after_gap`` runs (in the background) each time the stream is back
    after a gap, to catch up on what it missed.
    """

    def __init__(
        self,
        watches: Mapping[str, ContainerWatch[Any]],
        after_gap: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self.watches = watches
        self.after_gap = after_gap
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._since: str | None = None  # the last event's time
        self._backoff = BACKOFF_FIRST

    async def follow(self, docker: aiodocker.Docker) -> None:
        """Start following, if not yet, and return once the stream is open.

        Raises what opening the stream raised (aiodocker or aiohttp errors,
        OSError) while nothing followed it yet.
        """
        if self._task is None or self._task.done():
            self._since, self._backoff = None, BACKOFF_FIRST
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(docker, self._ready))
        assert self._ready is not None
        await asyncio.shield(self._ready)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, docker: aiodocker.Docker, ready: asyncio.Future[None]) -> None:
        try:
            while True:
                try:
                    await self._read(docker, ready)
                except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
                    if not ready.done():
                        # Nothing depends on us yet: report to the caller and stop.
                        ready.set_exception(error)
                        return
                    log.warning("Docker event stream lost (%s); reconnecting", error)
                except Exception:
                    # A bad event must not stop the stream that every process relies on.
                    log.exception("Docker event stream failed; reconnecting")
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        finally:
            if not ready.done():
                ready.set_exception(SandboxError("the Docker event stream ended"))

    async def _read(self, docker: aiodocker.Docker, ready: asyncio.Future[None]) -> None:
        """One connection's events, to its end."""
        filters = {"type": ["container"], "label": [f"{LABEL_MANAGED}=1"], "event": EVENTS}
        params = {"filters": json.dumps(filters)}
        if self._since is not None:
            params["since"] = self._since  # replays what happened while disconnected
        timeout = aiohttp.ClientTimeout(connect=CONNECT_TIMEOUT)
        async with docker._query("events", params=params, timeout=timeout) as response:
            self._backoff = BACKOFF_FIRST
            if ready.done():
                catch_up = asyncio.create_task(self.after_gap())
                self._background.add(catch_up)
                catch_up.add_done_callback(self._background.discard)
            else:
                ready.set_result(None)
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    nanos = int(event.get("timeNano", 0))
                    self._dispatch(event)
                except (ValueError, TypeError, AttributeError):
                    log.warning("ignoring an unreadable Docker event: %r", line[:200])
                    continue
                self._since = f"{nanos // 10**9}.{nanos % 10**9:09d}"

    def _dispatch(self, event: Mapping[str, Any]) -> None:
        actor = event.get("Actor") or {}
        watch = self.watches.get(actor.get("ID") or event.get("id", ""))
        if watch is None:
            return
        action = event.get("Action", "")
        if action == "oom":
            watch.oom()
        elif action == "exec_die":
            attributes = actor.get("Attributes") or {}
            process = watch.processes.get(attributes.get("execID", ""))
            if process is not None:
                with contextlib.suppress(ValueError):
                    process.exited(int(attributes.get("exitCode", "")))
        elif action in ("die", "destroy"):
            watch.died()

"""One shared watch of the server's pods (a reflector), as what it says about each pod.

The backend lists its instance's pods once, then watches from the list's
``resourceVersion``: every event updates the :class:`PodWatch` of its pod.
When the watch ends (the server closes it every few minutes) it is opened
again from the last version seen; when that version is too old for the server
(410 Gone) the pods are listed again, and a pod missing from the new list is
taken as deleted. Errors are retried with a growing delay. ``alive()``,
"sandbox died" and the confirmation of a delete all come from here: the
backend never polls a pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from replroom.sandbox.kubernetes.client import ApiError, KubeClient, pod_path

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
# The server ends a watch after this many seconds (it is then opened again);
# a connection silent for longer than that plus a margin is taken as lost.
WATCH_SECONDS = 240
IDLE_MARGIN = 30.0
GONE = 410

# Container states that will never become "running" on their own.
FATAL_WAITING = frozenset(
    {
        "ErrImageNeverPull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


class Ends(Protocol):
    """A process the watch ends when its pod goes (``KubernetesProcess``)."""

    def exited(self) -> None: ...


def container_state(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The room container's ``state`` (``{"running": …}``, ``{"terminated": …}``, …)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        return status.get("state") or {}
    return {}


class PodWatch:
    """What the watch has said about one pod, and its processes to tell when it goes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.uid: str | None = None  # the pod's, once created: a later namesake is another pod
        self.pod: Mapping[str, Any] = {}
        self.dead = False  # the pod ended or went: its processes are over
        self.deleted = False  # the server no longer has it
        self.processes: dict[int, Ends] = {}  # by id()
        self._changed = asyncio.Event()

    @property
    def phase(self) -> str:
        return str((self.pod.get("status") or {}).get("phase") or "")

    def running(self) -> bool:
        return self.phase == "Running" and "running" in container_state(self.pod)

    def failure(self) -> str | None:
        """Why the pod will never run, if the watch says so."""
        if self.deleted:
            return "it was deleted"
        state = container_state(self.pod)
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            return f"{waiting['reason']}: {waiting.get('message') or ''}".strip(": ")
        terminated = state.get("terminated") or {}
        if terminated or self.phase in ("Failed", "Succeeded"):
            status = self.pod.get("status") or {}
            reason = terminated.get("reason") or status.get("reason") or self.phase
            return f"{reason}: {terminated.get('message') or status.get('message') or ''}".strip(
                ": "
            )
        return None

    def unschedulable(self) -> str | None:
        for condition in (self.pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == (
                "Unschedulable"
            ):
                return str(condition.get("message") or "Unschedulable")
        return None

    async def next_change(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def update(self, pod: Mapping[str, Any]) -> None:
        uid = (pod.get("metadata") or {}).get("uid")
        if self.uid is not None and uid != self.uid:
            return  # another pod of the same name (this one's successor or predecessor)
        self.pod = pod
        if self.running() or self.phase == "Pending":
            self._notify()
            return
        if self.failure() is not None:
            self._die()
        self._notify()

    def gone(self) -> None:
        self.deleted = True
        self._die()
        self._notify()

    def _die(self) -> None:
        self.dead = True
        for process in list(self.processes.values()):
            process.exited()


class PodReflector:
    """Lists then watches the pods ``selector`` matches, into ``watches`` (by pod name)."""

    def __init__(self, client: KubeClient, namespace: str, selector: str) -> None:
        self.client = client
        self.namespace = namespace
        self.selector = selector
        self.watches: dict[str, PodWatch] = {}
        self.version: str | None = None  # the last resourceVersion seen
        self.relists = 0
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._backoff = BACKOFF_FIRST

    async def follow(self) -> None:
        """Start, if not yet, and return once the first list is in.

        Raises the first list's ApiError while nothing follows the pods yet.
        """
        if self._task is None or self._task.done():
            self.version, self._backoff = None, BACKOFF_FIRST
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(self._ready))
        assert self._ready is not None
        await asyncio.shield(self._ready)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            while True:
                try:
                    if self.version is None:
                        await self._list()
                        if not ready.done():
                            ready.set_result(None)
                    await self._watch()
                    self._backoff = BACKOFF_FIRST
                    continue  # the server ended the watch: open it again at once
                except ApiError as error:
                    if not ready.done():
                        ready.set_exception(error)
                        return
                    if error.status == GONE:
                        log.info("pod watch: version %s expired; listing again", self.version)
                        self.version = None
                        continue
                    log.warning("pod watch lost (%s); retrying", error)
                except Exception:
                    # A bad event must not stop the watch every sandbox relies on.
                    log.exception("pod watch failed; listing again")
                    self.version = None
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        finally:
            if not ready.done():
                ready.set_exception(ApiError(0, "", "the pod watch ended"))

    async def _list(self) -> None:
        answer = await self.client.request(
            "GET", pod_path(self.namespace), query=[("labelSelector", self.selector)]
        )
        self.relists += 1
        seen = set()
        for pod in answer.get("items") or []:
            name = str((pod.get("metadata") or {}).get("name") or "")
            seen.add(name)
            if (watch := self.watches.get(name)) is not None:
                watch.update(pod)
        for name, watch in list(self.watches.items()):
            # Deleted while the watch was away (what it missed is not replayed).
            if name not in seen and watch.uid is not None:
                watch.gone()
        self.version = str((answer.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self) -> None:
        query = [
            ("labelSelector", self.selector),
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", self.version or ""),
            ("timeoutSeconds", str(WATCH_SECONDS)),
        ]
        idle = WATCH_SECONDS + IDLE_MARGIN
        async with self.client.stream(pod_path(self.namespace), query, idle=idle) as events:
            async for event in events:
                self._dispatch(event)

    def _dispatch(self, event: Mapping[str, Any]) -> None:
        kind, pod = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiError(
                int(pod.get("code") or 0) or 500,
                str(pod.get("reason") or ""),
                str(pod.get("message") or "watch error"),
            )
        metadata = pod.get("metadata") or {}
        if version := metadata.get("resourceVersion"):
            self.version = str(version)
        if kind == "BOOKMARK":
            return
        watch = self.watches.get(str(metadata.get("name") or ""))
        if watch is None:
            return
        if kind == "DELETED":
            if watch.uid is None or metadata.get("uid") == watch.uid:
                watch.update(pod)
                watch.gone()
        else:
            watch.update(pod)

"""Sandboxes made ahead of time, each with a REPL already at its prompt.

Making a sandbox and starting a REPL in it takes 30 ms (bwrap, Python) to
half a second (gVisor); a room whose first member is waiting should not. The
pool keeps ``size`` spares: sandboxes with the room limits, made in the
background (at the least CPU weight, so that making them never slows a live
room) with the default language's REPL started and read up to its prompt.
:meth:`SandboxPool.take` hands one to a room: renamed after it
(``Sandbox.rename``), its REPL given back as a :class:`StartedRepl` whose
first read is the prompt, its CPU weight made usual again; the pool then
makes another. A spare serves one room, once, and carries nothing from any
other: it never served one.

While pooled, a spare's REPL is read (it prints nothing after its prompt,
so this is a liveness check that costs nothing): a spare whose REPL ends, as
when its sandbox is killed from outside, is thrown away and replaced.

Spares count toward the server's capacity (``room_left``), and are made as
``pool-…`` with the server's instance label, so that a restarted server
removes them like any other leftover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field

from replroom import plotting
from replroom.config import Limits
from replroom.languages import Language
from replroom.sandbox import Backend, ExitStatus, Process, Sandbox, SandboxError

log = logging.getLogger(__name__)

PROMPT_TIMEOUT = 30.0  # seconds a spare's REPL may take to show its prompt
SPARE_OUTPUT_LIMIT = 64 * 1024  # a pooled REPL that prints more than this is thrown away
SPARE_COLS, SPARE_ROWS = 80, 24
REFILL_DELAY = 0.1  # seconds after a hand-off before the pool makes the next spare


async def spawn_repl(sandbox: Sandbox, language: Language, cols: int, rows: int) -> Process:
    """Start ``language``'s REPL in ``sandbox`` on a pty of ``cols`` by ``rows``."""
    env = {**language.repl_env, **await plotting.prepare(sandbox, language)}
    return await sandbox.spawn(list(language.repl), env=env, cols=cols, rows=rows)


class StartedRepl(Process):
    """A REPL started before its room had it: its first read gives back what it printed."""

    def __init__(self, process: Process, output: bytes, cols: int, rows: int) -> None:
        self.process = process
        self._output = output
        self.cols, self.rows = cols, rows

    async def read(self) -> bytes:
        if self._output:
            output, self._output = self._output, b""
            return output
        return await self.process.read()

    async def write(self, data: bytes) -> None:
        await self.process.write(data)

    def write_nowait(self, data: bytes) -> int:
        return self.process.write_nowait(data)

    async def close_stdin(self) -> None:
        await self.process.close_stdin()

    async def resize(self, cols: int, rows: int) -> None:
        await self.process.resize(cols, rows)
        self.cols, self.rows = cols, rows

    async def signal(self, signum: int) -> None:
        await self.process.signal(signum)

    async def wait(self) -> ExitStatus:
        return await self.process.wait()


@dataclass
class Started:
    """A room's new sandbox and the REPLs already running in it, by language name."""

    sandbox: Sandbox
    repls: dict[str, StartedRepl] = field(default_factory=dict)


@dataclass
class _Spare:
    sandbox: Sandbox
    process: Process
    output: bytearray
    watcher: asyncio.Task[None] | None = None


class SandboxPool:
    """Up to ``size`` spares, ``parallel`` made at a time, while ``room_left()`` says so.

    ``destroy_later`` takes a sandbox the backend could not destroy now.
    """

    def __init__(
        self,
        backend: Backend,
        limits: Limits,
        language: Language,
        *,
        size: int,
        parallel: int = 1,
        room_left: Callable[[], bool] = lambda: True,
        destroy_later: Callable[[Sandbox, SandboxError], None] | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.language = language
        self.size = size
        self.parallel = max(1, parallel)
        self._room_left = room_left
        self._destroy_later = destroy_later
        self._ready: deque[_Spare] = deque()
        self._makers: set[asyncio.Task[None]] = set()
        self._chores: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self._closed = False

    @property
    def count(self) -> int:
        """Spares ready or being made: what the pool holds of the server's capacity."""
        return len(self._ready) + len(self._makers)

    @property
    def ready(self) -> int:
        return len(self._ready)

    @property
    def spares(self) -> list[Sandbox]:
        return [spare.sandbox for spare in self._ready]

    async def idle(self) -> None:
        """Wait until nothing is under way: no spare being made, thrown away or handed over."""
        while self._makers or self._chores:
            await _settle([*self._makers, *self._chores])

    def refill(self) -> None:
        """Start making spares up to ``size`` (in the background; returns at once)."""
        while (
            not self._closed
            and len(self._makers) < self.parallel
            and self.count < self.size
            and self._room_left()
        ):
            maker = asyncio.create_task(self._make_spare())
            self._makers.add(maker)
            maker.add_done_callback(self._maker_done)

    def _maker_done(self, maker: asyncio.Task[None]) -> None:
        self._makers.discard(maker)
        self._chore(self._notify())
        if not maker.cancelled() and maker.exception() is None:
            self.refill()
        # A failure waits for the next take() or a freed place to try again:
        # a backend that cannot make sandboxes is not asked in a loop.

    async def take(self, room_id: str, *, may_create: Callable[[], bool]) -> Started | None:
        """A sandbox for ``room_id``: a spare if one is ready or being made, else a new one.

        None when there is no spare and ``may_create()`` says the server is
        at capacity. Raises SandboxError as ``Backend.create`` does.
        """
        self.refill()
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._ready) or not self._makers)
                spare = self._ready.popleft() if self._ready else None
            if spare is None:
                break
            started = await self._hand_out(spare, room_id)
            if started is not None:
                return started
        if not may_create():
            return None
        return Started(await self.backend.create(room_id, self.limits))

    async def _hand_out(self, spare: _Spare, room_id: str) -> Started | None:
        """The spare renamed ``room_id``; None if it turned out dead."""
        assert spare.watcher is not None
        spare.watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await spare.watcher
        # Its watcher had seen the REPL end (or flood), or the sandbox was just
        # killed from outside (a `sandbox cleanup`) and the watcher had not seen it yet.
        if not spare.watcher.cancelled() or not await self._alive(spare.sandbox):
            self._throw_away(spare)
            self.refill()
            return None
        try:
            await spare.sandbox.rename(room_id)
        except BaseException:
            # The room already has a sandbox, the backend cannot do it now, or the
            # caller gave up: the spare stays a spare.
            self._keep(spare)
            raise
        # Later, not now: making a spare takes the event loop for milliseconds,
        # which the room that took this one needs to show its prompt.
        asyncio.get_running_loop().call_later(REFILL_DELAY, self.refill)
        self._chore(self._foreground(spare.sandbox))
        repl = StartedRepl(spare.process, bytes(spare.output), SPARE_COLS, SPARE_ROWS)
        return Started(spare.sandbox, {self.language.name: repl})

    async def _alive(self, sandbox: Sandbox) -> bool:
        try:
            return await sandbox.alive()
        except SandboxError:  # the backend cannot say now: not one to hand out
            return False

    async def _make_spare(self) -> None:
        name = "pool-" + secrets.token_hex(8)
        try:
            sandbox = await self.backend.create(name, self.limits, background=True)
        except SandboxError as error:
            log.warning("cannot make a spare sandbox: %s", error)
            raise
        try:
            process = await spawn_repl(sandbox, self.language, SPARE_COLS, SPARE_ROWS)
            output = await asyncio.wait_for(self._until_prompt(process), PROMPT_TIMEOUT)
        except (SandboxError, OSError, TimeoutError) as error:
            log.warning("a spare sandbox's %s did not start: %s", self.language.title, error)
            await self._destroy(sandbox)
            raise SandboxError(str(error)) from None
        except BaseException:
            await self._destroy(sandbox)
            raise
        if self._closed:
            await self._destroy(sandbox)
            return
        self._keep(_Spare(sandbox, process, output))

    async def _until_prompt(self, process: Process) -> bytearray:
        output = bytearray()
        while not self.language.ready(bytes(output[-512:])):
            chunk = await process.read()
            if not chunk:
                status = await process.wait()
                raise SandboxError(f"it ended before its prompt ({status.describe(self.limits)})")
            output += chunk
        return output

    def _keep(self, spare: _Spare) -> None:
        spare.watcher = asyncio.create_task(self._watch(spare))
        self._ready.append(spare)
        self._chore(self._notify())

    async def _watch(self, spare: _Spare) -> None:
        """Read the pooled REPL's output; throw the spare away if it ends or floods."""
        try:
            while len(spare.output) <= SPARE_OUTPUT_LIMIT:
                chunk = await spare.process.read()
                if not chunk:
                    break
                spare.output += chunk
        except (SandboxError, OSError) as error:
            log.warning("a spare sandbox failed: %s", error)
        if spare in self._ready:
            self._ready.remove(spare)
            self._throw_away(spare)
            self.refill()

    def _throw_away(self, spare: _Spare) -> None:
        self._chore(self._destroy(spare.sandbox))

    async def _destroy(self, sandbox: Sandbox) -> None:
        try:
            await sandbox.destroy()
        except SandboxError as error:
            if self._destroy_later is None:
                raise
            self._destroy_later(sandbox, error)

    async def _foreground(self, sandbox: Sandbox) -> None:
        try:
            await sandbox.foreground()
        except SandboxError as error:
            log.warning("room %s keeps a spare's low CPU weight: %s", sandbox.room_id, error)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _chore(self, work: Coroutine[object, object, None]) -> None:
        """Run ``work`` in the background; close() waits for it."""
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def close(self) -> None:
        """Stop making spares and destroy them all."""
        self._closed = True
        for maker in list(self._makers):
            maker.cancel()
        await _settle(list(self._makers))
        spares, self._ready = list(self._ready), deque()
        for spare in spares:
            if spare.watcher is not None:
                spare.watcher.cancel()
        await _settle([s.watcher for s in spares if s.watcher is not None])
        await _settle(list(self._chores))
        for spare in spares:
            with contextlib.suppress(SandboxError):
                await spare.sandbox.destroy()


async def _settle(tasks: Sequence[asyncio.Future[None]]) -> None:
    """Wait for ``tasks`` to end, whatever they end with."""
    await asyncio.gather(*tasks, return_exceptions=True)

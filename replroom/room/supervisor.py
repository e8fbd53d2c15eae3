"""Supervision: a room's sandbox and its REPLs kept running, and members told why not.

The sandbox and each REPL have a state (``protocol.SandboxState`` and
``protocol.ReplState``, as the wire names them) that changes in one method,
which checks that the change is legal and tells the members (a ``status``
message, docs/protocol.md)::

    sandbox  stopped ─▶ starting ─▶ ready ─▶ restarting ─▶ starting …
                            └──▶ stopped (the start failed; any state, when the room closes)
    REPL     stopped ─▶ starting ─▶ running ─▶ exited (by itself: waits for Enter)
                                        └──▶ stopped (killed: restarted at once)

- A REPL that ends by itself (``exit()``, Ctrl-D) waits for a member's Enter.
- A REPL killed for memory or by a signal is restarted at once; after
  ``MAX_RESTARTS`` in ``RESTART_WINDOW`` it waits for Enter instead.
- A sandbox found dead, by a REPL's end or by the health check every
  ``health_interval`` seconds, is thrown away and replaced while the room has
  members.

Faults of the parts below are expected, not exceptional: a backend that
cannot answer (a Docker Engine restarting) means "wait and ask again"
(:class:`Backoff`), not "dead"; a sandbox that cannot be removed now is
removed later by the manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from replroom import metrics, protocol
from replroom.config import Settings
from replroom.languages import Language, get_language
from replroom.pool import Started, StartedRepl, spawn_repl
from replroom.protocol import ReplState, SandboxState
from replroom.room.members import Members
from replroom.room.tasks import Background
from replroom.room.terminal import Pane, SharedTerminal
from replroom.sandbox import ExitReason, ExitStatus, Process, Sandbox, SandboxError
from replroom.storage import RoomRecord

log = logging.getLogger(__name__)

RESTART_WINDOW = 60.0  # seconds
MAX_RESTARTS = 5  # automatic restarts per window before waiting for a member
RETRY_FIRST, RETRY_MAX = 0.25, 1.0  # seconds between asking an unanswering backend again


class AtCapacity(Exception):
    """The server runs as many sandboxes as it may (``max_sandboxes``)."""


class IllegalTransition(RuntimeError):
    """A state change the lifecycle does not allow: a bug in the server, never the user's."""

    def __init__(self, what: str, old: enum.Enum, new: enum.Enum) -> None:
        super().__init__(f"{what} cannot go from {old.value} to {new.value}")


_SANDBOX_MOVES: dict[SandboxState, frozenset[SandboxState]] = {
    SandboxState.STOPPED: frozenset({SandboxState.STARTING}),
    SandboxState.STARTING: frozenset({SandboxState.READY, SandboxState.STOPPED}),
    SandboxState.READY: frozenset({SandboxState.RESTARTING, SandboxState.STOPPED}),
    SandboxState.RESTARTING: frozenset({SandboxState.STARTING, SandboxState.STOPPED}),
}
_REPL_MOVES: dict[ReplState, frozenset[ReplState]] = {
    ReplState.STOPPED: frozenset({ReplState.STARTING}),
    ReplState.STARTING: frozenset({ReplState.RUNNING, ReplState.EXITED, ReplState.STOPPED}),
    ReplState.RUNNING: frozenset({ReplState.EXITED, ReplState.STOPPED}),
    ReplState.EXITED: frozenset({ReplState.STARTING, ReplState.STOPPED}),
}


class Backoff:
    """Waits between tries: ``first`` seconds, doubling up to ``most``."""

    def __init__(self, first: float = RETRY_FIRST, most: float = RETRY_MAX) -> None:
        self.delay, self.most = first, most
        self.waited = False

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.most)
        self.waited = True


class SandboxHost(Protocol):
    """What a room's supervisor needs from the manager of all rooms."""

    @property
    def settings(self) -> Settings: ...

    async def start_sandbox(self, room_id: str) -> Started:
        """A new sandbox for the room (a spare has a REPL); raises AtCapacity or SandboxError."""

    def sandbox_stopped(self, room_id: str) -> None:
        """The room's sandbox is gone: its place counts no more."""

    def destroy_later(self, sandbox: Sandbox, error: SandboxError) -> None:
        """Keep trying to destroy ``sandbox``, which its backend could not destroy now."""

    async def note_sandbox(self, room_id: str, had_sandbox: bool) -> None:
        """Store whether the room has a sandbox (a restarted server tells its members)."""


class Repl:
    """One language's REPL in the room's sandbox; its screen is ``pane``."""

    def __init__(self, language: Language, pane: Pane, on_change: Callable[[], None]) -> None:
        self.language = language
        self.pane = pane
        self._on_change = on_change
        self._state = ReplState.STOPPED
        self.process: Process | None = None  # set while RUNNING, until it ends or is stopped
        self.reader: asyncio.Task[None] | None = None
        self.restarts: list[float] = []  # when it was last restarted automatically
        self.run_count = 0
        # Held while the REPL is being started, so that it starts once.
        self.lock = asyncio.Lock()

    @property
    def state(self) -> ReplState:
        return self._state

    def move_to(self, state: ReplState) -> None:
        if state not in _REPL_MOVES[self._state]:
            raise IllegalTransition(f"the {self.language.title} REPL", self._state, state)
        self._state = state
        self._on_change()

    def may_restart(self) -> bool:
        """Count an automatic restart; False when there were too many lately."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW]
        if len(self.restarts) >= MAX_RESTARTS:
            return False
        self.restarts.append(now)
        return True


class SandboxSupervisor:
    """A room's sandbox: started when needed, checked, replaced when found dead.

    ``on_change`` tells the members the room's state; ``bring_back`` starts
    the room's REPL again in a new sandbox; ``stop_repls`` forgets the REPLs
    of a sandbox being stopped.
    """

    def __init__(
        self,
        host: SandboxHost,
        record: RoomRecord,
        members: Members,
        tasks: Background,
        *,
        on_change: Callable[[], None],
        bring_back: Callable[[], Awaitable[object]],
        stop_repls: Callable[[], None],
    ) -> None:
        self.host = host
        self.record = record
        self.room_id = record.id
        self.members = members
        self.tasks = tasks
        self._on_change, self._bring_back, self._stop_repls = on_change, bring_back, stop_repls
        self.current: Sandbox | None = None
        # REPLs that came running with the sandbox (a spare's), until the room uses them.
        self.started_repls: dict[str, StartedRepl] = {}
        self._state = SandboxState.STOPPED
        self.closed = False
        self._lock = asyncio.Lock()  # held while the sandbox starts or stops
        self._watcher: asyncio.Task[None] | None = None
        # The server stopped (or crashed) while this room had a sandbox.
        self._interrupted = record.had_sandbox
        self._unanswered = False  # members were told the sandbox does not answer
        self._failure_told: str | None = None  # the last start failure members were told

    @property
    def state(self) -> SandboxState:
        return self._state

    def _move_to(self, state: SandboxState) -> None:
        if state not in _SANDBOX_MOVES[self._state]:
            raise IllegalTransition(f"room {self.room_id}'s sandbox", self._state, state)
        self._state = state
        self._on_change()

    async def ensure(self) -> Sandbox:
        """The room's sandbox, started now if it has none; raises AtCapacity or SandboxError."""
        async with self._lock:
            if self.current is not None:
                return self.current
            if self.closed:
                raise SandboxError("the room was closed")
            self._move_to(SandboxState.STARTING)
            try:
                started = await self.host.start_sandbox(self.room_id)
            except BaseException as error:
                # Whatever failed, the room must not show "starting" until the next start.
                self._move_to(SandboxState.STOPPED)
                self._tell_start_failure(error)
                raise
            self.current, self.started_repls = started.sandbox, started.repls
            self._started()
            return started.sandbox

    def _tell_start_failure(self, error: BaseException) -> None:
        if isinstance(error, AtCapacity):
            self.members.notice("server at capacity: no sandbox can be started now", "error")
        elif isinstance(error, SandboxError):
            text = f"could not start a sandbox: {error}"
            if text != self._failure_told:  # retries of the same failure say nothing new
                self._failure_told = text
                self.members.notice(text, "error")

    def _started(self) -> None:
        self._failure_told = None
        self._move_to(SandboxState.READY)
        if self._interrupted:
            self._interrupted = False
            title = get_language(self.record.language).title
            text = f"the server was restarted: {title} started again, its earlier state is gone"
            self.members.notice(f"{text} (the editor's code is kept)", "warning")
        if not self.record.had_sandbox:
            self.record.had_sandbox = True
            self.tasks.spawn(self.host.note_sandbox(self.room_id, True), "noting its sandbox")
        if self._watcher is None:
            self._watcher = self.tasks.spawn(self._watch(), "the health check")

    async def replace(self, dead: Sandbox) -> None:
        """Throw a dead sandbox away and bring the room back in a new one.

        Both a REPL's end and the health check may find the same dead
        sandbox; only the first replaces it.
        """
        if self.current is not dead or self._state is SandboxState.RESTARTING or self.closed:
            return
        self.members.notice("the sandbox stopped — starting a new one", "warning")
        self._move_to(SandboxState.RESTARTING)
        await self._stop()
        # The backend may be failing for a while (an Engine restarting): try
        # again while someone is there to use the room; members were told why.
        backoff = Backoff()
        while not self.closed and len(self.members):
            try:
                await self._bring_back()
            except AtCapacity:
                return
            except SandboxError:
                await backoff.wait()
                continue
            if backoff.waited:
                self.members.notice("the sandbox is back", "info")
            return

    async def answer_alive(self, sandbox: Sandbox) -> bool | None:
        """Whether ``sandbox`` is alive; None while its backend cannot say (Engine down).

        Members are told once that it does not answer, and again when it does.
        """
        try:
            alive = await sandbox.alive()
        except SandboxError as error:
            if not self._unanswered:
                self._unanswered = True
                self.members.notice(
                    f"the sandbox does not answer ({error}) — waiting for it", "warning"
                )
            return None
        if self._unanswered:
            self._unanswered = False
            if alive:
                self.members.notice("the sandbox answers again", "info")
        return alive

    async def alive(self, sandbox: Sandbox) -> bool:
        """Whether ``sandbox`` is alive, waiting for its backend to be able to say."""
        backoff = Backoff()
        while not self.closed and self.current is sandbox:
            alive = await self.answer_alive(sandbox)
            if alive is not None:
                return alive
            await backoff.wait()
        return False

    async def replace_if_dead(self, sandbox: Sandbox) -> None:
        if not await self.alive(sandbox):
            await self.replace(sandbox)

    async def _stop(self) -> None:
        async with self._lock:
            sandbox, self.current = self.current, None
            self.started_repls = {}
            self._stop_repls()
            if sandbox is not None:
                try:
                    await sandbox.destroy()
                except SandboxError as error:
                    self.host.destroy_later(sandbox, error)
                self.host.sandbox_stopped(self.room_id)

    async def _watch(self) -> None:
        """Notice a sandbox that died with no REPL running to tell us (killed from outside)."""
        interval = self.host.settings.health_interval
        while not self.closed:
            await asyncio.sleep(interval)
            sandbox = self.current
            if sandbox is None or self._state is not SandboxState.READY:
                continue
            try:
                # None (the backend cannot say, e.g. the Engine restarts) is not dead:
                # the answer comes when it is back, and then decides.
                if await self.answer_alive(sandbox) is False and len(self.members):
                    await self.replace(sandbox)
            except Exception:
                log.exception("room %s: the health check failed", self.room_id)

    async def close(self) -> None:
        self.closed = True
        if self._watcher:
            self._watcher.cancel()
        await self._stop()
        if self._state is not SandboxState.STOPPED:
            self._move_to(SandboxState.STOPPED)


class Supervisor:
    """Keeps one room's REPLs running in its sandbox, as tmux's server keeps its panes'."""

    def __init__(
        self,
        host: SandboxHost,
        record: RoomRecord,
        members: Members,
        terminal: SharedTerminal,
        tasks: Background,
    ) -> None:
        self.record = record
        self.room_id = record.id
        self.members = members
        self.terminal = terminal
        self.tasks = tasks
        self.limits = host.settings.limits
        self.repls: dict[str, Repl] = {}
        self._announced: protocol.Status | None = None
        self.sandboxes = SandboxSupervisor(
            host,
            record,
            members,
            tasks,
            on_change=self.announce,
            bring_back=self._bring_back,
            stop_repls=self._stop_repls,
        )

    @property
    def sandbox(self) -> Sandbox | None:
        return self.sandboxes.current

    def repl_state(self, language_name: str) -> ReplState:
        repl = self.repls.get(language_name)
        return repl.state if repl else ReplState.STOPPED

    def announce(self) -> None:
        """Tell the members the room's state (sandbox, the room language's REPL) if it changed."""
        language = self.record.language
        message = protocol.status(self.sandboxes.state, self.repl_state(language), language)
        if message != self._announced:
            self._announced = message
            self.members.broadcast(message)

    async def ensure_repl(self, language_name: str) -> Repl:
        repl = self._repl(language_name)
        async with repl.lock:
            if repl.state is not ReplState.RUNNING:
                await self._start_repl(repl)
        return repl

    def _repl(self, language_name: str) -> Repl:
        language = get_language(language_name)
        repl = self.repls.get(language.name)
        if repl is None:
            pane = self.terminal.pane(language)
            repl = self.repls[language.name] = Repl(language, pane, self.announce)
        return repl

    async def _bring_back(self) -> None:
        await self.ensure_repl(self.record.language)

    async def _start_repl(self, repl: Repl) -> None:
        repl.move_to(ReplState.STARTING)
        try:
            sandbox = await self.sandboxes.ensure()
            process = await self._spawn(sandbox, repl)
        except BaseException:
            if repl.state is ReplState.STARTING:
                repl.move_to(ReplState.STOPPED)
            raise
        if process is None:
            return
        repl.process = process
        repl.pane.prompt_shown.clear()
        repl.move_to(ReplState.RUNNING)
        repl.reader = self.tasks.spawn(self._read(repl, process), f"{repl.language.title} output")

    async def _spawn(self, sandbox: Sandbox, repl: Repl) -> Process | None:
        """The REPL's process; None if it could not start (members are told, or it is replaced)."""
        language = repl.language
        cols, rows = self.terminal.cols, self.terminal.rows
        try:
            started = self.sandboxes.started_repls.pop(language.name, None)
            if started is None:
                return await spawn_repl(sandbox, language, cols, rows)
            if (started.cols, started.rows) != (cols, rows):
                await started.resize(cols, rows)
            return started
        except SandboxError as error:
            repl.move_to(ReplState.EXITED)
            if await self.sandboxes.answer_alive(sandbox):
                self.members.notice(f"{language.title} could not start: {error}", "error")
            else:
                # Replaced from outside this REPL's lock, which the
                # replacement takes again to start the REPL in the new sandbox.
                self.tasks.spawn(self.sandboxes.replace_if_dead(sandbox), "replacing its sandbox")
            return None

    async def _read(self, repl: Repl, process: Process) -> None:
        """Relay one REPL's output until it ends, then supervise."""
        try:
            await self.terminal.relay(repl.pane, process)
            status = await process.wait()
        except (OSError, SandboxError) as error:
            log.warning("room %s: %s REPL lost: %s", self.room_id, repl.language.name, error)
            status = ExitStatus(ExitReason.KILLED, signal=9)
        if repl.process is process:
            repl.process = None
            await self._repl_ended(repl, status)

    async def _repl_ended(self, repl: Repl, status: ExitStatus) -> None:
        if self.sandboxes.closed:
            return
        title = repl.language.title
        if status.reason is ExitReason.OUT_OF_MEMORY:
            metrics.OOM_KILLS.inc()
        if status.reason is ExitReason.EXITED:
            repl.move_to(ReplState.EXITED)
            self.terminal.write(
                repl.pane,
                f"\r\n[{title} exited with code {status.code} — press Enter to restart]\r\n",
            )
            return
        what = status.describe(self.limits)
        if not repl.may_restart():
            repl.move_to(ReplState.EXITED)
            self.members.notice(f"{title}: {what} again — press Enter to restart", "error")
            return
        repl.move_to(ReplState.STOPPED)
        sandbox = self.sandbox
        if sandbox is None or not await self.sandboxes.alive(sandbox):
            if sandbox is not None:
                await self.sandboxes.replace(sandbox)
            return
        self.members.notice(f"{title}: {what} — restarting", "warning")
        self.terminal.write(repl.pane, f"\r\n[{what} — restarting]\r\n")
        # Another language's REPL restarts when the room switches to it.
        if repl.language.name == self.record.language:
            await self.ensure_repl(repl.language.name)

    def _stop_repls(self) -> None:
        """The sandbox is being stopped: its REPLs are gone with it."""
        for repl in self.repls.values():
            # A REPL being started belongs to its starter, which finds the sandbox gone.
            if repl.state in (ReplState.STARTING, ReplState.STOPPED):
                continue
            repl.process = None
            repl.move_to(ReplState.STOPPED)
            # Never the task we run in: a REPL's end may be what brought us here.
            if repl.reader and repl.reader is not asyncio.current_task():
                repl.reader.cancel()

    async def restart_repl(self, language_name: str) -> None:
        """Kill the REPL (whatever it is doing), clear its screen, and start it again.

        Under the REPL's start lock, so that two members' restarts come one
        after the other, never two processes for one REPL.
        """
        repl = self._repl(language_name)
        async with repl.lock:
            if repl.process:
                process, repl.process = repl.process, None
                await process.signal(9)
                if repl.reader:
                    repl.reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await repl.reader
                await process.wait()
            if repl.state in (ReplState.RUNNING, ReplState.EXITED):
                repl.move_to(ReplState.STOPPED)
            repl.restarts.clear()
            repl.pane.clear()
            self.terminal.redraw()
            await self._start_repl(repl)

    async def repl_for_input(self, language_name: str, data: bytes) -> Repl | None:
        """The running REPL that keystrokes ``data`` go to; None when they go nowhere.

        Enter restarts a REPL that is not running; keystrokes typed while it
        starts wait for it.
        """
        repl = self.repls.get(language_name)
        if repl is None or repl.state in (ReplState.EXITED, ReplState.STOPPED):
            if b"\r" in data or b"\n" in data:
                if repl:
                    repl.restarts.clear()
                await self.ensure_repl(language_name)
            return None
        if repl.state is ReplState.STARTING:
            async with repl.lock:  # typed while it starts: deliver once it runs
                pass
        return repl if repl.process is not None else None

    async def resize(self, cols: int, rows: int) -> None:
        running = [
            r.process for r in self.repls.values() if r.process and r.state is ReplState.RUNNING
        ]
        await asyncio.gather(*(_quietly(process.resize(cols, rows)) for process in running))

    async def close(self) -> None:
        await self.sandboxes.close()


async def _quietly(awaitable: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await awaitable

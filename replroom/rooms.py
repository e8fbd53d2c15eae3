"""Rooms: members, one shared terminal per language's REPL, and the room's sandbox.

A :class:`Room` exists in memory while it has members or a sandbox; its
durable state (links, language) is a :class:`~replroom.storage.RoomRecord`.
The :class:`RoomManager` creates and finds rooms, enforces capacity, and
supervises sandboxes: when a REPL or a whole sandbox dies, members are told
why and the room is brought back.

Faults of the parts below are expected, not exceptional: a backend that
cannot answer (a Docker Engine restarting) means "wait and ask again", not
"dead"; a sandbox that cannot be removed now is removed later; a database
write that fails (a full disk) is refused with a reason, while the rooms
keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from replroom import metrics, protocol
from replroom.config import Settings, format_size
from replroom.languages import LANGUAGES, Language, get_language
from replroom.pool import SandboxPool
from replroom.sandbox import Backend, ExitReason, ExitStatus, Process, Sandbox, SandboxError
from replroom.storage import RoomRecord, StorageError, Store, derive_token, hash_token
from replroom.terminal import Frame, Outbox, RateLimit, Replay

log = logging.getLogger(__name__)

COLORS = ("#e06c75", "#61afef", "#98c379", "#e5c07b", "#c678dd", "#56b6c2", "#d19a66", "#be5046")
RESTART_WINDOW = 60.0  # seconds
MAX_RESTARTS = 5  # automatic restarts per window before waiting for a member
RUN_DIR = "/tmp/replroom-run"
SKIP_SECONDS = 3.0  # longest a Ctrl-C drops a flood's output
SKIP_TAIL = 4096
READY_TIMEOUT = 15.0  # seconds to wait for a new REPL's prompt before typing anyway
SHUTDOWN_CONCURRENCY = 16  # sandboxes destroyed at once when the server stops
RETRY_FIRST, RETRY_MAX = 0.25, 1.0  # seconds between asking an unanswering backend again


def new_room_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 random bits


def links_of(owner_token: str, generation: int) -> dict[str, str]:
    return {kind: derive_token(owner_token, kind, generation) for kind in ("invite", "spectator")}


class AtCapacity(Exception):
    pass


@dataclass
class Member:
    room_id: str
    id: str
    name: str
    role: str  # "owner", "member" or "spectator"
    color: str
    cols: int
    rows: int
    token_hash: str
    outbox: Outbox
    close: Callable[[int, str], Any]
    warned_read_only: bool = False
    on_leave: list[Callable[[], None]] = field(default_factory=list)

    @property
    def can_write(self) -> bool:
        return self.role != "spectator"

    def view(self) -> dict[str, Any]:
        return protocol.member_view(self.id, self.name, self.role, self.color)


@dataclass
class Repl:
    """One language's REPL in the room's sandbox, with the output it has shown."""

    language: Language
    replay: Replay = field(default_factory=Replay)
    process: Process | None = None
    state: str = "stopped"  # stopped, starting, running, exited
    reader: asyncio.Task[None] | None = None
    restarts: list[float] = field(default_factory=list)
    run_count: int = 0
    # Set once the REPL shows its prompt: input typed before that may be
    # thrown away by the REPL's line editor as it starts (irb does).
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Held while the REPL is being started, so that it starts once.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Dropping a flood's output after Ctrl-C (see Room._skip_flood).
    skip_until: float = 0.0
    skip_tail: bytes = b""
    skipped: int = 0


class Room:
    def __init__(self, manager: RoomManager, record: RoomRecord) -> None:
        self.manager = manager
        self.record = record
        self.id = record.id
        self.members: dict[str, Member] = {}
        self.repls: dict[str, Repl] = {}
        self.sandbox: Sandbox | None = None
        self.sandbox_state = "stopped"  # stopped, starting, ready, restarting
        self._sandbox_lock = asyncio.Lock()
        self._output_rate = RateLimit(manager.settings.output_rate)
        self._output_allowed = asyncio.Event()
        self._output_allowed.set()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.cols, self.rows = 80, 24
        # The server stopped (or crashed) while this room had a sandbox.
        self._interrupted = record.had_sandbox
        self._unanswered = False  # members were told the sandbox does not answer
        self._failure_told: str | None = None  # the last start failure members were told

    @property
    def language(self) -> str:
        return self.record.language

    @property
    def limits(self):  # type: ignore[no-untyped-def]
        return self.manager.settings.limits

    # -- views --------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        repl = self.repls.get(self.language)
        return {
            "id": self.id,
            "language": self.language,
            "languages": [language.describe() for language in LANGUAGES.values()],
            "members": [m.view() for m in self.members.values()],
            "sandbox": self.sandbox_state,
            "repl": repl.state if repl else "stopped",
            "limits": self.limits.model_dump(),
            "cols": self.cols,
            "rows": self.rows,
        }

    def broadcast(self, message: dict[str, Any]) -> None:
        for member in self.members.values():
            member.outbox.send_json(message)

    def notice(self, text: str, level: str = "info") -> None:
        log.info("room %s: %s", self.id, text)
        self.broadcast(protocol.notice(text, level))  # type: ignore[arg-type]

    def _status(self) -> None:
        repl = self.repls.get(self.language)
        self.broadcast(
            protocol.status(self.sandbox_state, repl.state if repl else "stopped", self.language)
        )

    # -- members ------------------------------------------------------------

    async def join(self, member: Member, welcome_extra: dict[str, Any] | None = None) -> None:
        """Add a member; ``welcome_extra`` goes into their welcome (editor ticket, links)."""
        if self._idle_timer:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.members[member.id] = member
        self.manager.metric_members()
        everyone = [m.view() for m in self.members.values()]
        welcome = protocol.welcome(self.describe(), member.view(), everyone)
        member.outbox.send_json({**welcome, **(welcome_extra or {})})
        self._announce_members("joined", member)
        await self._fit_terminal()
        member.outbox.replace_screen(self._screen_frames())
        await self.manager.touch(self.id)
        await self.ensure_repl(self.language)

    async def leave(self, member: Member) -> None:
        if self.members.pop(member.id, None) is None:
            return
        member.outbox.close()
        for on_leave in member.on_leave:
            on_leave()
        self.manager.metric_members()
        self._announce_members("left", member)
        await self._fit_terminal()
        self._output_allowed.set()  # the one who was behind may be gone
        self._update_flow()
        if not self.members:
            await self.manager.touch(self.id)
            self._retire_after(self.manager.settings.idle_timeout)

    def _retire_after(self, delay: float) -> None:
        if self._idle_timer:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(
            delay, lambda: self._background(self.manager.retire(self))
        )

    def _announce_members(self, event: str, member: Member) -> None:
        members = [m.view() for m in self.members.values()]
        self.broadcast(protocol.members_changed(members, event, member.view()))

    def rename(self, member: Member, name: str) -> None:
        member.name = name
        self._announce_members("renamed", member)

    async def resize(self, member: Member, cols: int, rows: int) -> None:
        member.cols, member.rows = cols, rows
        await self._fit_terminal()

    async def _fit_terminal(self) -> None:
        """tmux's rule: the terminal is as small as the smallest member's.

        The REPLs' ptys are resized before members hear of the new size, so
        that whatever a member types after seeing it runs at that size.
        """
        if not self.members:
            return
        cols = min(m.cols for m in self.members.values())
        rows = min(m.rows for m in self.members.values())
        if (cols, rows) == (self.cols, self.rows):
            return
        self.cols, self.rows = cols, rows
        running = [r.process for r in self.repls.values() if r.process and r.state == "running"]
        await asyncio.gather(*(_quietly(p.resize(cols, rows)) for p in running))
        self.broadcast(protocol.terminal_size(cols, rows))

    def disconnect(self, token_hashes: set[str], code: int, reason: str) -> None:
        for member in list(self.members.values()):
            if member.token_hash in token_hashes:
                member.close(code, reason)

    # -- the terminal ---------------------------------------------------------

    def _screen_frames(self) -> list[Frame]:
        repl = self.repls.get(self.language)
        frames: list[Frame] = [json.dumps(protocol.terminal_reset(self.language))]
        if repl:
            snapshot = repl.replay.snapshot()
            if snapshot:
                frames.append(snapshot)
        return frames

    def _update_flow(self) -> None:
        """Pause reading the pty while every member is behind; resume when one catches up."""
        if self.members and all(m.outbox.behind for m in self.members.values()):
            self._output_allowed.clear()
        else:
            self._output_allowed.set()

    def _on_drained(self) -> None:
        self._output_allowed.set()

    def make_outbox(self, send: Callable[[Frame], Any]) -> Outbox:
        return Outbox(send, self._on_drained)

    async def _pump(self, repl: Repl, process: Process) -> None:
        """Relay one REPL's output to the members until it ends, then supervise."""
        try:
            while True:
                if repl.language.name == self.language:
                    await self._output_allowed.wait()
                chunk = await process.read()
                if not chunk:
                    break
                if repl.skip_until:
                    chunk = self._skip_flood(repl, chunk)
                    if not chunk:
                        continue
                else:
                    await self._output_rate.spend(len(chunk))
                repl.replay.append(chunk)
                if not repl.ready.is_set() and repl.language.ready(repl.replay.tail()):
                    repl.ready.set()
                if repl.language.name == self.language:
                    resync = self._screen_frames
                    for member in self.members.values():
                        member.outbox.send_output(chunk, resync)
                    metrics.BYTES_RELAYED.inc(len(chunk) * len(self.members))
                    self._update_flow()
            status = await process.wait()
        except (OSError, SandboxError) as error:
            log.warning("room %s: %s REPL lost: %s", self.id, repl.language.name, error)
            status = ExitStatus(ExitReason.KILLED, signal=9)
        if repl.process is process:
            repl.process = None
            await self._repl_ended(repl, status)

    def _skip_flood(self, repl: Repl, chunk: bytes) -> bytes:
        """After Ctrl-C in a flood, drop the output already on its way.

        A flood leaves up to megabytes in the pipes between the REPL and us
        (Docker's exec streams hold about 2 MiB); shown at the room's output
        rate, Ctrl-C would seem to do nothing for seconds. So that output is
        read at full speed and dropped, until the REPL's prompt shows (or a
        few seconds pass); the end of it, from its last lines, is shown.
        """
        repl.skipped += len(chunk)
        repl.skip_tail = (repl.skip_tail + chunk)[-SKIP_TAIL:]
        if not repl.language.ready(repl.skip_tail) and time.monotonic() < repl.skip_until:
            return b""
        tail = repl.skip_tail
        lines = tail.split(b"\n")
        tail = b"\n".join(lines[-4:]) if len(lines) > 4 else tail
        note = f"\r\n[{repl.skipped:,} bytes of output skipped after Ctrl-C]\r\n".encode()
        repl.skip_until, repl.skip_tail, repl.skipped = 0.0, b"", 0
        return note + tail

    async def _repl_ended(self, repl: Repl, status: ExitStatus) -> None:
        if self._closing:
            return
        repl.state = "stopped"
        title = repl.language.title
        if status.reason is ExitReason.OUT_OF_MEMORY:
            metrics.OOM_KILLS.inc()
        if status.reason is ExitReason.EXITED:
            repl.state = "exited"
            self._status()
            self._write_to_screen(
                repl,
                f"\r\n[{title} exited with code {status.code} — press Enter to restart]\r\n",
            )
            return
        now = time.monotonic()
        repl.restarts = [t for t in repl.restarts if now - t < RESTART_WINDOW]
        if len(repl.restarts) >= MAX_RESTARTS:
            repl.state = "exited"
            self._status()
            self.notice(f"{title}: {status.describe(self.limits)} again — press Enter to restart",
                        "error")  # fmt: skip
            return
        repl.restarts.append(now)
        sandbox = self.sandbox
        if sandbox is None or not await self._sandbox_alive(sandbox):
            if sandbox is not None:
                await self.replace_sandbox(sandbox)
            return
        self.notice(f"{title}: {status.describe(self.limits)} — restarting", "warning")
        self._write_to_screen(repl, f"\r\n[{status.describe(self.limits)} — restarting]\r\n")
        if repl.language.name == self.language or repl.state == "running":
            await self.ensure_repl(repl.language.name)

    def _write_to_screen(self, repl: Repl, text: str) -> None:
        data = text.encode()
        repl.replay.append(data)
        if repl.language.name == self.language:
            for member in self.members.values():
                member.outbox.send_output(data, self._screen_frames)

    async def input(self, member: Member, data: bytes) -> None:
        if not member.can_write:
            if not member.warned_read_only:
                member.warned_read_only = True
                member.outbox.send_json(
                    protocol.error("read_only", "spectators can watch but not type")
                )
            return
        repl = self.repls.get(self.language)
        if repl is None or repl.state in ("exited", "stopped"):
            if b"\r" in data or b"\n" in data:
                if repl:
                    repl.restarts.clear()
                await self.ensure_repl(self.language)
            return
        if repl.state == "starting":
            async with repl.lock:  # typed while it starts: deliver once it runs
                pass
        if b"\x03" in data and self._output_rate.limiting:
            repl.skip_until = time.monotonic() + SKIP_SECONDS
        if repl.process is not None:
            await repl.process.write(data)

    # -- sandbox and REPLs ------------------------------------------------------

    async def ensure_sandbox(self) -> Sandbox:
        async with self._sandbox_lock:
            if self.sandbox is not None:
                return self.sandbox
            self.sandbox_state = "starting"
            self._status()
            try:
                self.sandbox = await self.manager.start_sandbox(self)
            except AtCapacity:
                self.sandbox_state = "stopped"
                self.notice("server at capacity: no sandbox can be started now", "error")
                raise
            except SandboxError as error:
                self.sandbox_state = "stopped"
                text = f"could not start a sandbox: {error}"
                if text != self._failure_told:  # retries of the same failure say nothing new
                    self._failure_told = text
                    self.notice(text, "error")
                raise
            self._failure_told = None
            self.sandbox_state = "ready"
            self._status()
            if self._interrupted:
                self._interrupted = False
                title = get_language(self.language).title
                self.notice(f"the server was restarted: {title} started again, its earlier"
                            " state is gone (the editor's code is kept)", "warning")  # fmt: skip
            if not self.record.had_sandbox:
                self.record.had_sandbox = True
                self._background(self.manager.note_sandbox(self.id, True))
            if self._supervisor is None:
                self._supervisor = asyncio.create_task(self._watch_sandbox())
            return self.sandbox

    async def ensure_repl(self, language_name: str) -> Repl:
        language = get_language(language_name)
        repl = self.repls.setdefault(language.name, Repl(language))
        async with repl.lock:
            if repl.state != "running":
                await self._start_repl(repl)
        return repl

    async def _start_repl(self, repl: Repl) -> None:
        language = repl.language
        repl.state = "starting"
        try:
            sandbox = await self.ensure_sandbox()
        except BaseException:
            repl.state = "stopped"
            raise
        self._status()
        try:
            process = await sandbox.spawn(
                list(language.repl), env=dict(language.repl_env), cols=self.cols, rows=self.rows
            )
        except SandboxError as error:
            repl.state = "exited"
            self._status()
            if await self._answer_alive(sandbox):
                self.notice(f"{language.title} could not start: {error}", "error")
            else:
                # Replaced from outside this REPL's lock, which the
                # replacement takes again to start the REPL in the new sandbox.
                self._background(self._replace_if_dead(sandbox))
            return
        repl.process = process
        repl.ready.clear()
        repl.state = "running"
        repl.reader = asyncio.create_task(self._pump(repl, process))
        self._status()

    def _background(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def switch_language(self, member: Member, language_name: str) -> None:
        language = get_language(language_name)
        if language.name == self.language:
            return
        try:
            await self.manager.store.set_language(self.id, language.name)
        except StorageError as error:
            member.outbox.send_json(
                protocol.error("storage", f"the language was not changed: {error}")
            )
            return
        self.record.language = language.name
        self.broadcast(protocol.language_changed(language.name, member.name))
        await self.ensure_repl(language.name)
        for each in self.members.values():
            each.outbox.replace_screen(self._screen_frames())
        self._output_allowed.set()
        self._status()

    async def run_code(self, member: Member, code: str, language_name: str | None) -> None:
        language = get_language(language_name or self.language)
        if language.name != self.language:
            await self.switch_language(member, language.name)
        repl = await self.ensure_repl(language.name)
        if repl.process is None or self.sandbox is None:
            raise SandboxError(f"{language.title} is not running")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(repl.ready.wait(), READY_TIMEOUT)
        repl.run_count += 1
        path = f"{RUN_DIR}/run{repl.run_count}{language.extension}"
        await self.sandbox.put_file(path, code.encode())
        # Ctrl-U first: whatever a member had half-typed must not prefix the line.
        await repl.process.write(b"\x15" + language.load_line(path).encode() + b"\r")

    async def restart_repl(self, language_name: str | None = None) -> None:
        repl = self.repls.get(language_name or self.language)
        if repl and repl.process:
            process, repl.process = repl.process, None
            await process.signal(9)
            if repl.reader:
                repl.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await repl.reader
            await process.wait()
        if repl:
            repl.state = "stopped"
            repl.restarts.clear()
            repl.replay.clear()
            for member in self.members.values():
                member.outbox.replace_screen(self._screen_frames())
        await self.ensure_repl(language_name or self.language)

    async def replace_sandbox(self, dead: Sandbox) -> None:
        """Throw a dead sandbox away and bring the room back in a new one.

        Both a REPL's end and the health check may find the same dead
        sandbox; only the first replaces it.
        """
        if self.sandbox is not dead or self.sandbox_state == "restarting":
            return
        self.notice("the sandbox stopped — starting a new one", "warning")
        self.sandbox_state = "restarting"
        self._status()
        await self._stop_sandbox()
        # The backend may be failing for a while (an Engine restarting): try
        # again while someone is there to use the room; members were told why.
        delay = RETRY_FIRST
        while not self._closing and self.members:
            try:
                await self.ensure_repl(self.language)
            except AtCapacity:
                return
            except SandboxError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if delay > RETRY_FIRST:
                self.notice("the sandbox is back", "info")
            return

    async def _answer_alive(self, sandbox: Sandbox) -> bool | None:
        """Whether ``sandbox`` is alive; None while its backend cannot say (Engine down).

        Members are told once that it does not answer, and again when it does.
        """
        try:
            alive = await sandbox.alive()
        except SandboxError as error:
            if not self._unanswered:
                self._unanswered = True
                self.notice(f"the sandbox does not answer ({error}) — waiting for it", "warning")
            return None
        if self._unanswered:
            self._unanswered = False
            if alive:
                self.notice("the sandbox answers again", "info")
        return alive

    async def _sandbox_alive(self, sandbox: Sandbox) -> bool:
        """Whether ``sandbox`` is alive, waiting for its backend to be able to say."""
        delay = RETRY_FIRST
        while not self._closing and self.sandbox is sandbox:
            alive = await self._answer_alive(sandbox)
            if alive is not None:
                return alive
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
        return False

    async def _replace_if_dead(self, sandbox: Sandbox) -> None:
        if not await self._sandbox_alive(sandbox):
            await self.replace_sandbox(sandbox)

    async def _stop_sandbox(self) -> None:
        async with self._sandbox_lock:
            sandbox, self.sandbox = self.sandbox, None
            for repl in self.repls.values():
                repl.process = None
                repl.state = "stopped"
                # Never the task we run in: a REPL's end may be what brought us here.
                if repl.reader and repl.reader is not asyncio.current_task():
                    repl.reader.cancel()
            if sandbox is not None:
                try:
                    await sandbox.destroy()
                except SandboxError as error:
                    self.manager.destroy_later(sandbox, error)
                self.manager.sandbox_stopped(self)

    async def _watch_sandbox(self) -> None:
        """Notice a sandbox that died with no REPL running to tell us (killed from outside)."""
        interval = self.manager.settings.health_interval
        while not self._closing:
            await asyncio.sleep(interval)
            sandbox = self.sandbox
            if sandbox is None or self.sandbox_state != "ready":
                continue
            # None (the backend cannot say, e.g. the Engine restarts) is not dead:
            # the answer comes when it is back, and then decides.
            if await self._answer_alive(sandbox) is False and self.members:
                await self.replace_sandbox(sandbox)

    async def close(self) -> None:
        self._closing = True
        if self._idle_timer:
            self._idle_timer.cancel()
        if self._supervisor:
            self._supervisor.cancel()
        await self._stop_sandbox()
        self.sandbox_state = "stopped"


async def _quietly(awaitable: Any) -> None:
    with contextlib.suppress(Exception):
        await awaitable


class RoomManager:
    def __init__(self, settings: Settings, backend: Backend, store: Store) -> None:
        self.settings = settings
        self.backend = backend
        self.store = store
        self.rooms: dict[str, Room] = {}
        self._rooms_lock = asyncio.Lock()
        self.pool = SandboxPool(backend, settings.limits, settings.pool_size_for(backend.name))
        self.pool.start()
        self.running_sandboxes: set[str] = set()
        self._undestroyed: dict[Sandbox, asyncio.Task[None]] = {}

    @property
    def max_sandboxes(self) -> int:
        return self.settings.max_sandboxes

    def at_capacity(self) -> bool:
        return len(self.running_sandboxes) >= self.max_sandboxes

    def capacity(self) -> dict[str, Any]:
        return {
            "sandboxes": len(self.running_sandboxes),
            "max_sandboxes": self.max_sandboxes,
            "memory_budget": self.settings.memory_budget,
            "memory_per_room": self.settings.limits.memory,
            "memory_budget_human": format_size(self.settings.memory_budget),
        }

    async def create_room(self) -> tuple[RoomRecord, dict[str, str]]:
        owner = new_token()
        tokens = {"owner": owner, **links_of(owner, 0)}
        record = RoomRecord(
            id=new_room_id(),
            language=self.settings.default_language,
            invite_hash=hash_token(tokens["invite"]),
            spectator_hash=hash_token(tokens["spectator"]),
            owner_hash=hash_token(tokens["owner"]),
        )
        await self.store.create_room(record)
        metrics.ROOMS_CREATED.inc()
        return record, tokens

    async def get(self, room_id: str) -> Room | None:
        async with self._rooms_lock:
            room = self.rooms.get(room_id)
            if room is not None:
                return room
            record = await self.store.get_room(room_id)
            if record is None:
                return None
            room = self.rooms[room_id] = Room(self, record)
            metrics.ROOMS_ACTIVE.set(len(self.rooms))
            return room

    async def rotate_links(self, room: Room, owner_token: str) -> dict[str, str]:
        """New invitation and spectator links; holders of the old ones are disconnected.

        Stored first: if that fails (StorageError), the old links stay valid.
        """
        record = room.record
        old = {record.invite_hash, record.spectator_hash}
        generation = record.link_generation + 1
        tokens = links_of(owner_token, generation)
        invite, spectator = hash_token(tokens["invite"]), hash_token(tokens["spectator"])
        await self.store.set_links(room.id, invite, spectator, generation)
        record.link_generation, record.invite_hash, record.spectator_hash = (
            generation, invite, spectator,
        )  # fmt: skip
        room.disconnect(old, protocol.CLOSE_FORBIDDEN, "the room's links were rotated")
        return tokens

    async def start_sandbox(self, room: Room) -> Sandbox:
        if self.at_capacity() and room.id not in self.running_sandboxes:
            raise AtCapacity
        self.running_sandboxes.add(room.id)
        metrics.SANDBOXES.set(len(self.running_sandboxes))
        started = time.perf_counter()
        try:
            sandbox = await self.pool.take(sandbox_name(room.id))
        except BaseException:
            self.running_sandboxes.discard(room.id)
            metrics.SANDBOXES.set(len(self.running_sandboxes))
            raise
        metrics.SANDBOX_STARTS.inc()
        metrics.SANDBOX_START_SECONDS.observe(time.perf_counter() - started)
        return sandbox

    async def touch(self, room_id: str) -> None:
        """Note a room's use; a failed write (logged) only delays the room's expiry."""
        with contextlib.suppress(StorageError):
            await self.store.touch(room_id)

    async def note_sandbox(self, room_id: str, had_sandbox: bool) -> None:
        # Only what members are told after a restart depends on it: a failed
        # write (logged) is not worth refusing a room for.
        with contextlib.suppress(StorageError):
            await self.store.set_had_sandbox(room_id, had_sandbox)

    def editor_not_saved(self, doc_name: str) -> None:
        """The editor could not store a change of ``doc_name`` (already logged): tell the room."""
        room = self.rooms.get(doc_name.partition("/")[0])
        if room is not None:
            room.notice("the server cannot save the editor's changes now (its disk may be"
                        " full): they are kept while the room is open", "error")  # fmt: skip

    def destroy_later(self, sandbox: Sandbox, error: SandboxError) -> None:
        """Keep trying to destroy a sandbox its backend could not destroy now (Engine down)."""
        if sandbox in self._undestroyed:
            return
        log.warning("room %s: cannot destroy its old sandbox yet: %s", sandbox.room_id, error)
        task = asyncio.create_task(self._destroy_eventually(sandbox))
        self._undestroyed[sandbox] = task
        task.add_done_callback(lambda _: self._undestroyed.pop(sandbox, None))

    async def _destroy_eventually(self, sandbox: Sandbox) -> None:
        delay = RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX * 10)
            with contextlib.suppress(SandboxError):
                await sandbox.destroy()
                return

    def sandbox_stopped(self, room: Room) -> None:
        self.running_sandboxes.discard(room.id)
        metrics.SANDBOXES.set(len(self.running_sandboxes))

    def metric_members(self) -> None:
        metrics.MEMBERS.set(sum(len(room.members) for room in self.rooms.values()))

    async def retire(self, room: Room) -> None:
        """Free an empty room's sandbox and memory; its record stays in the store."""
        if room.members:
            return
        async with self._rooms_lock:
            if room.members or self.rooms.get(room.id) is not room:
                return
            del self.rooms[room.id]
            metrics.ROOMS_ACTIVE.set(len(self.rooms))
        await room.close()
        if room.record.had_sandbox:  # left by its members, not interrupted
            room.record.had_sandbox = False
            await self.note_sandbox(room.id, False)

    async def expire_old_rooms(self) -> list[str]:
        """Delete rooms unused for ``room_retention``; return their ids."""
        for room_id in list(self.rooms):  # rooms in use now are not unused
            await self.touch(room_id)
        cutoff = time.time() - self.settings.room_retention
        return await self.store.delete_inactive(cutoff)

    async def close(self) -> None:
        """Destroy every room's sandbox (and the pool's), a few at a time."""
        started = time.perf_counter()
        rooms = list(self.rooms.values())
        self.rooms.clear()
        metrics.ROOMS_ACTIVE.set(0)
        running = len(self.running_sandboxes)
        # Concurrent, because a docker destroy waits ~60 ms on the Engine; bounded,
        # so that hundreds of rooms do not open hundreds of Engine connections.
        limit = asyncio.Semaphore(SHUTDOWN_CONCURRENCY)

        async def close(room: Room) -> None:
            async with limit:
                try:
                    await room.close()
                except Exception:
                    log.exception("room %s: could not be closed", room.id)

        await asyncio.gather(*(close(room) for room in rooms))
        # One last try for sandboxes their backend could not destroy before;
        # what is still left, the next start removes as leftovers.
        for sandbox, task in list(self._undestroyed.items()):
            task.cancel()
            with contextlib.suppress(Exception):
                await sandbox.destroy()
        await self.pool.close()
        log.info("destroyed %d sandbox(es) in %.2f s", running, time.perf_counter() - started)


def sandbox_name(room_id: str) -> str:
    """The room's sandbox id: its room id, starting with a letter as container names must."""
    return "r-" + room_id

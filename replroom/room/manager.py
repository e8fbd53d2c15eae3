"""The rooms of one server: creating and finding them, who may join, capacity, shutdown.

The :class:`RoomManager` is the only place that knows all rooms. It decides
who may join a room (:meth:`RoomManager.admit`: a valid link, a place in the
room, a sandbox for it), hands out editor tickets, counts the sandboxes
against ``max_sandboxes``, and destroys later what a backend could not
destroy now. A database write that fails (a full disk) is refused with a
reason, while the rooms keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from replroom import metrics, protocol
from replroom.config import Settings, format_size
from replroom.languages import get_language
from replroom.pool import SandboxPool, Started
from replroom.protocol import CloseCode, EditorInfo, Links, MemberRole
from replroom.room.controls import REMOVED_REASON
from replroom.room.files import Documents
from replroom.room.members import Member
from replroom.room.recording import Recordings
from replroom.room.room import Room
from replroom.room.supervisor import RETRY_FIRST, RETRY_MAX, AtCapacity, Backoff
from replroom.room.terminal import Sender
from replroom.sandbox import Backend, Sandbox, SandboxError
from replroom.storage import RoomRecord, StorageError, Store, derive_token, hash_token

log = logging.getLogger(__name__)

SHUTDOWN_CONCURRENCY = 16  # sandboxes destroyed at once when the server stops
EDITOR_PATH = "/yjs"  # the editor WebSocket: EDITOR_PATH/{room id}/{language}?ticket=…


def new_room_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 random bits


def links_of(owner_token: str, generation: int) -> dict[str, str]:
    return {kind: derive_token(owner_token, kind, generation) for kind in ("invite", "spectator")}


def sandbox_name(room_id: str) -> str:
    """The room's sandbox id: its room id, starting with a letter as container names must."""
    return "r-" + room_id


class Refused(Exception):
    """A connection turned away; ``code`` is its WebSocket close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class Admission:
    """A member let in: ``room.join(member, editor, links)`` adds them and welcomes them."""

    room: Room
    member: Member
    editor: EditorInfo  # where their editor connects, with their ticket
    links: Links | None  # the room's links, for its owner


class RoomManager:
    def __init__(self, settings: Settings, backend: Backend, store: Store) -> None:
        self._settings = settings
        self.backend = backend
        self._store = store
        self.rooms: dict[str, Room] = {}
        self._rooms_lock = asyncio.Lock()
        self.running_sandboxes: set[str] = set()
        self._undestroyed: dict[Sandbox, asyncio.Task[None]] = {}
        self.pool = SandboxPool(
            backend,
            settings.limits,
            get_language(settings.default_language),
            size=settings.effective_pool_size,
            parallel=settings.pool_refill,
            room_left=lambda: not self.at_capacity(),
            destroy_later=self.destroy_later,
        )
        self.pool.refill()
        self._tickets: dict[str, Member] = {}  # editor ticket -> its member
        self.editor: Documents | None = None  # the app sets it once the editor has started
        self.recordings = Recordings(settings)
        self._closing = False

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def store(self) -> Store:
        return self._store

    @property
    def max_sandboxes(self) -> int:
        return self.settings.max_sandboxes

    def at_capacity(self) -> bool:
        """Whether every place is taken, by rooms' sandboxes or the pool's spares."""
        return len(self.running_sandboxes) + self.pool.count >= self.max_sandboxes

    def may_start_sandbox(self) -> bool:
        """Whether a room may get a sandbox now: a spare is there (or coming), or a place."""
        return self.pool.count > 0 or not self.at_capacity()

    def capacity(self) -> dict[str, Any]:
        return {
            "sandboxes": len(self.running_sandboxes),
            "spares": self.pool.ready,
            "pool_size": self.pool.size,
            "max_sandboxes": self.max_sandboxes,
            "memory_budget": self.settings.memory_budget,
            "memory_per_room": self.settings.limits.memory,
            "memory_budget_human": format_size(self.settings.memory_budget),
        }

    # -- rooms -----------------------------------------------------------------

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
            chat = await self.store.chat_history(room_id, protocol.CHAT_HISTORY)
            room = self.rooms[room_id] = Room(self, record, chat)
            metrics.ROOMS_ACTIVE.set(len(self.rooms))
            return room

    async def admit(
        self, room_id: str, join: protocol.Join, send: Sender, close: Callable[[int, str], None]
    ) -> Admission:
        """Let a member in, or refuse them (:class:`Refused` says why, with a close code).

        Nothing awaits between these checks and the caller's ``Room.join``,
        which adds the member first: two cannot both take a room's last place.
        """
        room = await self.get(room_id)
        if room is None:
            raise Refused(CloseCode.NOT_FOUND, "room not found")
        role = room.record.role_of(join.token)
        if role is None:
            raise Refused(CloseCode.FORBIDDEN, "invalid or revoked link")
        # Without a key (an older client) the member's key is this connection's alone:
        # what the owners decide about them lasts until they leave.
        key_hash = hash_token(join.key or secrets.token_urlsafe(16))
        if room.controls.is_removed(role, key_hash):
            raise Refused(CloseCode.REMOVED, REMOVED_REASON)
        if len(room.members) >= self.settings.max_members:
            raise Refused(CloseCode.AT_CAPACITY, "the room is full")
        if room.sandbox is None and not self.may_start_sandbox():
            raise Refused(CloseCode.AT_CAPACITY, "server at capacity")
        member = room.new_member(join, role, key_hash, send, close)
        editor: EditorInfo = {"path": f"{EDITOR_PATH}/{room.id}", "ticket": self._ticket(member)}
        links: Links | None = None
        if member.link_role is MemberRole.OWNER:  # co-owners have no owner's token to derive from
            owned = links_of(join.token, room.record.link_generation)
            links = {"invite": owned["invite"], "spectator": owned["spectator"]}
        return Admission(room, member, editor, links)

    def _ticket(self, member: Member) -> str:
        """A ticket for the member's editor WebSocket, valid while they are in the room.

        So the room's links never appear in editor URLs.
        """
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = member

        def revoke() -> None:
            self._tickets.pop(ticket, None)

        member.on_leave.append(revoke)
        return ticket

    def editor_member(self, ticket: str, room_id: str, language: str) -> Member | None:
        """Who holds this editor ticket, if it is valid for this room's document."""
        member = self._tickets.get(ticket)
        if member is None or member.room_id != room_id or language not in self.settings.languages:
            return None
        return member

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
        room.disconnect(old, CloseCode.FORBIDDEN, "the room's links were rotated")
        return tokens

    async def touch(self, room_id: str) -> None:
        """Note a room's use; a failed write (logged) only delays the room's expiry."""
        with contextlib.suppress(StorageError):
            await self.store.touch(room_id)

    def members_changed(self) -> None:
        metrics.MEMBERS.set(sum(len(room.members) for room in self.rooms.values()))

    def editor_not_saved(self, doc_name: str) -> None:
        """The editor could not store a change of ``doc_name`` (already logged): tell the room."""
        room = self.rooms.get(doc_name.partition("/")[0])
        if room is not None:
            room.notice("the server cannot save the editor's changes now (its disk may be"
                        " full): they are kept while the room is open", "error")  # fmt: skip

    # -- sandboxes ---------------------------------------------------------------

    async def start_sandbox(self, room_id: str) -> Started:
        if room_id not in self.running_sandboxes and not self.may_start_sandbox():
            raise AtCapacity
        started_at = time.perf_counter()
        # Counted while it is made (so that two rooms cannot take the last place),
        # except by the pool's own check: a spare taken frees its place.
        self.running_sandboxes.add(room_id)
        metrics.SANDBOXES.set(len(self.running_sandboxes))
        try:
            started = await self.pool.take(
                sandbox_name(room_id),
                may_create=lambda: (
                    len(self.running_sandboxes) - 1 + self.pool.count < self.max_sandboxes
                ),
            )
        except BaseException:
            self.sandbox_stopped(room_id)
            raise
        if started is None:
            self.sandbox_stopped(room_id)
            raise AtCapacity
        metrics.SANDBOX_STARTS.inc()
        metrics.SANDBOX_START_SECONDS.observe(time.perf_counter() - started_at)
        return started

    def sandbox_stopped(self, room_id: str) -> None:
        self.running_sandboxes.discard(room_id)
        metrics.SANDBOXES.set(len(self.running_sandboxes))
        self.pool.refill()  # a place is free: the pool may be short of spares

    async def note_sandbox(self, room_id: str, had_sandbox: bool) -> None:
        # Only what members are told after a restart depends on it: a failed
        # write (logged) is not worth refusing a room for.
        with contextlib.suppress(StorageError):
            await self.store.set_had_sandbox(room_id, had_sandbox)

    def destroy_later(self, sandbox: Sandbox, error: SandboxError) -> None:
        """Keep trying to destroy a sandbox its backend could not destroy now (Engine down)."""
        if sandbox in self._undestroyed:
            return
        log.warning("room %s: cannot destroy its old sandbox yet: %s", sandbox.room_id, error)
        task = asyncio.create_task(self._destroy_eventually(sandbox))
        self._undestroyed[sandbox] = task
        task.add_done_callback(lambda _: self._undestroyed.pop(sandbox, None))

    async def _destroy_eventually(self, sandbox: Sandbox) -> None:
        backoff = Backoff(RETRY_FIRST, RETRY_MAX * 10)
        while True:
            await backoff.wait()
            with contextlib.suppress(SandboxError):
                await sandbox.destroy()
                return

    # -- the end of rooms ------------------------------------------------------------

    async def retire(self, room: Room) -> None:
        """Free an empty room's sandbox and memory; its record stays in the store."""
        if room.members or self._closing:
            return
        async with self._rooms_lock:
            if room.members or self.rooms.get(room.id) is not room:
                return
            del self.rooms[room.id]
            metrics.ROOMS_ACTIVE.set(len(self.rooms))
        await room.close()
        # Not while the server stops: the store closes, and the room was interrupted.
        if room.record.had_sandbox and not self._closing:  # left by its members
            room.record.had_sandbox = False
            await self.note_sandbox(room.id, False)

    async def expire_old_rooms(self) -> list[str]:
        """Delete rooms unused for ``room_retention``; return their ids."""
        for room_id in list(self.rooms):  # rooms in use now are not unused
            await self.touch(room_id)
        cutoff = time.time() - self.settings.room_retention
        removed = await self.store.delete_inactive(cutoff)
        for room_id in removed:
            await self.recordings.delete(room_id)
        self.recordings.enforce()  # the recordings' retention and global cap
        return removed

    def disconnect_everyone(self, code: int, reason: str) -> None:
        for room in list(self.rooms.values()):
            room.disconnect({member.token_hash for member in room.members}, code, reason)

    async def close(self) -> None:
        """Destroy every room's sandbox (and the pool's), a few at a time."""
        started = time.perf_counter()
        self._closing = True
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

"""Host controls: what a room's owners decide about the room and about member keys.

The owners (the holder of the owner's link, and the co-owners they made) may
lock the room (everyone else read-only), keep Run and the language switch to
themselves, make a member read-only or give write access back, grant a
member's request for write access in a locked room, make co-owners, and
remove a member (their key is refused until an owner lets it back), and
turn the room's recording off or on and let spectators replay it. A
co-owner cannot act on an owner: only the owner's link can unmake a co-owner.

Every decision is stored before it applies (a failed write changes nothing
and says so), and is announced at once: ``controls`` to everyone, the member
list with each member's write access, and the removed keys to the owners.
The rules themselves are asked of :class:`~replroom.room.members.Member` at
each action (``role``, ``can_write``), so nothing else needs telling: the
editor's server asks the same member before applying an update.
"""

from __future__ import annotations

import dataclasses
import json
import time

from replroom import protocol
from replroom.protocol import CloseCode, ErrorCode, MemberRole, RemovedKey, RoomControls
from replroom.room.members import Member, Members
from replroom.storage import KeyState, RoomRecord, Store

REF_LENGTH = 16  # hex digits of a key's hash that name it to owners (64 bits)
CONTROL_NAMES = (
    "locked",
    "run_locked",
    "language_locked",
    "spectator_chat",
    "recording",
    "recording_spectators",
)
REMOVED_REASON = "an owner removed you from this room"
REQUEST_PAUSE = 10.0  # seconds before a member key may ask for write access again


class Refusal(Exception):
    """A member's message refused by the room's rules; ``code`` and the text go in an ``error``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def not_allowed(message: str) -> Refusal:
    return Refusal(ErrorCode.NOT_ALLOWED, message)


def read_only_reason(member: Member) -> str:
    """Why ``member`` may not change the room, in words for them."""
    if member.role is MemberRole.SPECTATOR:
        return "spectators can watch but not change the room"
    key = member.key
    if key is not None and key.read_only:
        return "an owner made you read-only"
    return "the room is locked: only its owners can change it (ask for write access)"


def ref_of(key_hash: str) -> str:
    return key_hash[:REF_LENGTH]


class HostControls:
    def __init__(
        self, record: RoomRecord, members: Members, store: Store, *, recording: bool = True
    ) -> None:
        self.record = record
        self.recording_default = recording  # the server's setting, until an owner decides
        self.members = members
        self.store = store
        self._asked: dict[str, float] = {}  # by key hash: when it last asked for write access

    # -- what the room's pages show ------------------------------------------------

    def controls(self) -> RoomControls:
        settings = self.record.settings
        return {
            "locked": bool(settings.get("locked")),
            "run_locked": bool(settings.get("run_locked")),
            "language_locked": bool(settings.get("language_locked")),
            "spectator_chat": bool(settings.get("spectator_chat")),
            "recording": self.recording,
            "recording_spectators": bool(settings.get("recording_spectators")),
        }

    @property
    def recording(self) -> bool:
        return bool(self.record.settings.get("recording", self.recording_default))

    def removed(self) -> list[RemovedKey]:
        return [
            {"ref": ref_of(key_hash), "name": key.name}
            for key_hash, key in self.record.keys.items()
            if key.removed
        ]

    def is_removed(self, link_role: MemberRole, key_hash: str) -> bool:
        """Whether this key is refused (the owner's link always gets in: it is their room)."""
        key = self.record.keys.get(key_hash)
        return link_role is not MemberRole.OWNER and key is not None and key.removed

    # -- the rules other actions follow ------------------------------------------------

    def check_write(self, member: Member) -> None:
        if not member.can_write:
            raise Refusal(ErrorCode.READ_ONLY, read_only_reason(member))

    def check_run(self, member: Member) -> None:
        self.check_write(member)
        if self.record.settings.get("run_locked") and member.role is not MemberRole.OWNER:
            raise not_allowed("the owners keep Run to themselves in this room")

    def check_language(self, member: Member) -> None:
        self.check_write(member)
        if self.record.settings.get("language_locked") and member.role is not MemberRole.OWNER:
            raise not_allowed("the owners keep the language switch to themselves in this room")

    # -- what owners do ------------------------------------------------------------------

    async def set_controls(self, actor: Member, change: protocol.Controls) -> None:
        self._check_owner(actor)
        wanted = {
            name: value for name in CONTROL_NAMES if (value := getattr(change, name)) is not None
        }
        if not wanted:
            return
        settings = {**self.record.settings, **wanted}
        unlocking = bool(self.record.settings.get("locked")) and not settings.get("locked")
        # Unlocking ends the grants, which were for the locked room: one write for both.
        await self.store.set_settings(self.record.id, settings, clear_grants=unlocking)
        if unlocking:
            for key_hash, key in list(self.record.keys.items()):
                self._put(key_hash, dataclasses.replace(key, granted=False))
            for member in self.members:
                member.requested = False
        self.record.settings = settings
        for member in self.members:
            member.warned_read_only.clear()
        self.members.broadcast(protocol.controls_changed(self.controls(), actor.name))
        self.members.announce("changed", actor, by=actor.name)

    async def act(self, actor: Member, action: protocol.MemberAction) -> None:
        self._check_owner(actor)
        target = next((m for m in self.members if m.id == action.member), None)
        if target is None:
            raise not_allowed("that member is not in the room (any more)")
        if target.link_role is MemberRole.OWNER:
            raise not_allowed("nobody can change what the room's owner may do")
        if target.co_owner and actor.link_role is not MemberRole.OWNER:
            raise not_allowed("only the room's owner can change what a co-owner may do")
        key = target.key or KeyState(target.name)
        match action.action:
            case "read_only":
                if target.co_owner:
                    raise not_allowed("a co-owner can always write: unmake them a co-owner first")
                new = dataclasses.replace(key, read_only=True, granted=False)
            case "write":
                if target.link_role is MemberRole.SPECTATOR:
                    raise not_allowed("spectators cannot write: send them the invitation link")
                granted = bool(self.record.settings.get("locked"))
                new = dataclasses.replace(key, read_only=False, granted=granted)
            case "owner":
                if target.link_role is not MemberRole.MEMBER:
                    raise not_allowed("only members with the invitation link can be co-owners")
                new = dataclasses.replace(key, co_owner=True, read_only=False)
            case "not_owner":
                new = dataclasses.replace(key, co_owner=False)
            case "remove":
                await self._store(target.key_hash, dataclasses.replace(key, name=target.name,
                                                                        removed=True))  # fmt: skip
                self.members.announce("removed", target, by=actor.name)
                for member in self.members.with_key(target.key_hash):
                    member.close(CloseCode.REMOVED, REMOVED_REASON)
                self._tell_owners()
                return
            case "refuse":
                new = key
        await self._store(target.key_hash, new)
        for member in self.members.with_key(target.key_hash):
            member.requested = False
            member.warned_read_only.clear()
        self.members.announce("changed", target, by=actor.name)

    async def readmit(self, actor: Member, ref: str) -> None:
        self._check_owner(actor)
        found = [
            (key_hash, key)
            for key_hash, key in self.record.keys.items()
            if key.removed and ref_of(key_hash) == ref
        ]
        if not found:
            raise not_allowed("no removed member has that reference")
        key_hash, key = found[0]
        await self._store(key_hash, dataclasses.replace(key, removed=False))
        self._tell_owners()

    def request_write(self, member: Member) -> None:
        if member.can_write:
            raise Refusal(ErrorCode.FAILED, "you can write already")
        if member.link_role is not MemberRole.MEMBER:
            raise not_allowed("spectators cannot ask for write access: ask for the invitation link")
        if member.requested:
            return
        now = time.monotonic()
        asked = self._asked.get(member.key_hash)
        since = REQUEST_PAUSE if asked is None else now - asked
        if since < REQUEST_PAUSE:  # a refused member must not flood the owners with requests
            raise Refusal(
                ErrorCode.RATE_LIMITED,
                f"you asked {since:.0f} s ago: ask again in {REQUEST_PAUSE - since:.0f} s",
            )
        self._asked[member.key_hash] = now
        member.requested = True
        self.members.announce("requested", member)

    # -- helpers -------------------------------------------------------------------------

    def _check_owner(self, actor: Member) -> None:
        if actor.role is not MemberRole.OWNER:
            raise not_allowed("only the room's owners can do that")

    async def _store(self, key_hash: str, key: KeyState) -> None:
        """Store first: a write that fails (StorageError) changes nothing."""
        await self.store.set_key(self.record.id, key_hash, key)
        self._put(key_hash, key)

    def _put(self, key_hash: str, key: KeyState) -> None:
        if key.is_default:
            self.record.keys.pop(key_hash, None)
        else:
            self.record.keys[key_hash] = key

    def _tell_owners(self) -> None:
        text = json.dumps(protocol.removed_list(self.removed()))
        for owner in self.members.owners():
            owner.outbox.send_text(text)

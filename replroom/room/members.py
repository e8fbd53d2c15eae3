"""The people in a room: roles, colours, and the rules that depend on all of them.

A member is one open room WebSocket, and a member key: the browser's
(``join``'s ``key``), or one made for this connection alone when a client
sends none. Their link says what they may be at most (``link_role``: owner,
member, spectator; rotating the links disconnects the holders of the old
ones); what the owners decided about their key (a
:class:`~replroom.storage.KeyState`: co-owner, read-only, write granted in a
locked room, removed) and the room's controls (``locked``) say what they are
now: :attr:`Member.role` and :attr:`Member.can_write` are asked at each
action, so a change applies at once, to every connection with that key, and
again after a reconnect or a server restart.

The shared terminal is as small as the smallest member's window: tmux's
rule, :meth:`Members.smallest_size`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from replroom import protocol
from replroom.protocol import MemberEvent, MemberInfo, MemberRole, NoticeLevel
from replroom.room.terminal import Outbox
from replroom.storage import KeyState, RoomRecord

log = logging.getLogger(__name__)

# Everyone is told who types at most this often: members who take turns keystroke by
# keystroke (a class, a pair) cost a message to every member per keystroke otherwise,
# as much of the server's time as the echo.
TYPIST_SECONDS = 0.5
COLORS = ("#e06c75", "#61afef", "#98c379", "#e5c07b", "#c678dd", "#56b6c2", "#d19a66", "#be5046")


@dataclass(eq=False)
class Member:
    room_id: str
    id: str
    name: str
    link_role: MemberRole  # what their link makes them
    color: str
    cols: int
    rows: int
    token_hash: str
    key_hash: str  # their member key's
    record: RoomRecord  # the room's controls and what the owners decided about keys
    outbox: Outbox
    close: Callable[[int, str], None]  # ends the member's connection with this close code
    # Where they were told that their input was dropped ("terminal", "editor"): once each
    # until their write access changes.
    warned_read_only: set[str] = field(default_factory=set)
    requested: bool = False  # asked the owners for write access
    on_leave: list[Callable[[], None]] = field(default_factory=list)

    @property
    def key(self) -> KeyState | None:
        return self.record.keys.get(self.key_hash)

    @property
    def co_owner(self) -> bool:
        """An owner by an owner's grant (only holders of the invitation link can be)."""
        key = self.key
        return self.link_role is MemberRole.MEMBER and key is not None and key.co_owner

    @property
    def role(self) -> MemberRole:
        return MemberRole.OWNER if self.co_owner else self.link_role

    @property
    def can_write(self) -> bool:
        """Owners always; spectators never; members unless made read-only or the room is
        locked (then only with write access granted)."""
        if self.role is MemberRole.OWNER:
            return True
        if self.role is MemberRole.SPECTATOR:
            return False
        key = self.key
        if key is not None and key.read_only:
            return False
        if self.record.settings.get("locked"):
            return key is not None and key.granted
        return True

    def view(self) -> MemberInfo:
        return protocol.member_view(
            self.id, self.name, self.role, self.color, co_owner=self.co_owner,
            write=self.can_write, requested=self.requested, cols=self.cols, rows=self.rows,
        )  # fmt: skip


class Members:
    """The members of one room, by id, in the order they joined."""

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self._by_id: dict[str, Member] = {}
        # Who typed into the terminal last: their outbox comes first, since they
        # wait for the echo while the others watch.
        self.typist: str | None = None
        self._announced_typist: str | None = None
        self._typist_timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Member]:
        return iter(self._by_id.values())

    def add(self, member: Member) -> None:
        self._by_id[member.id] = member

    def remove(self, member: Member) -> bool:
        """Remove ``member``; False if they were not (or no longer) here."""
        return self._by_id.pop(member.id, None) is not None

    def get(self, member_id: str | None) -> Member | None:
        return self._by_id.get(member_id) if member_id is not None else None

    def typed(self, member: Member) -> None:
        """``member`` typed into the terminal: output goes to them first from now on,
        and everyone is told who types (``TYPIST_SECONDS`` apart at the most)."""
        self.typist = member.id
        if self._typist_timer is None:
            self._announce_typist()

    def _announce_typist(self) -> None:
        self._typist_timer = None
        typist = self.get(self.typist)
        if typist is None or typist.id == self._announced_typist:
            return
        self._announced_typist = typist.id
        self.broadcast(protocol.typist(typist.id, typist.name, typist.color))
        loop = asyncio.get_running_loop()
        self._typist_timer = loop.call_later(TYPIST_SECONDS, self._announce_typist)

    def close(self) -> None:
        if self._typist_timer is not None:
            self._typist_timer.cancel()
            self._typist_timer = None

    def outboxes(self) -> list[Outbox]:
        """Every member's outbox, the typist's first."""
        outboxes = [member.outbox for member in self._by_id.values()]
        typist = self.get(self.typist)
        if typist is not None and outboxes[0] is not typist.outbox:
            outboxes.remove(typist.outbox)
            outboxes.insert(0, typist.outbox)
        return outboxes

    def views(self) -> list[MemberInfo]:
        return [member.view() for member in self._by_id.values()]

    def free_color(self) -> str:
        """A colour no member has, or (more members than colours) the next in turn."""
        used = {member.color for member in self._by_id.values()}
        free = [color for color in COLORS if color not in used]
        return free[0] if free else COLORS[len(self._by_id) % len(COLORS)]

    def smallest_size(self) -> tuple[int, int] | None:
        """tmux's rule: the shared terminal is as small as the smallest member's (None: empty)."""
        if not self._by_id:
            return None
        cols = min(member.cols for member in self._by_id.values())
        rows = min(member.rows for member in self._by_id.values())
        return cols, rows

    def broadcast(self, message: protocol.ServerMessage) -> None:
        text = json.dumps(message)
        for member in self._by_id.values():
            member.outbox.send_text(text)

    def notice(self, text: str, level: NoticeLevel = "info") -> None:
        log.info("room %s: %s", self.room_id, text)
        self.broadcast(protocol.notice(text, level))

    def announce(
        self, event: MemberEvent, member: Member | MemberInfo, by: str | None = None
    ) -> None:
        """Tell everyone who is here now, what changed (joined, left, …) and who did it."""
        view = member.view() if isinstance(member, Member) else member
        self.broadcast(protocol.members_changed(self.views(), event, view, by))

    def with_key(self, key_hash: str) -> list[Member]:
        """The connections of one member key (a browser may have the room open twice)."""
        return [member for member in self._by_id.values() if member.key_hash == key_hash]

    def owners(self) -> list[Member]:
        return [member for member in self._by_id.values() if member.role is MemberRole.OWNER]

    def disconnect(self, token_hashes: set[str], code: int, reason: str) -> None:
        """Close the connections of the members who joined with one of these links."""
        for member in list(self._by_id.values()):
            if member.token_hash in token_hashes:
                member.close(code, reason)

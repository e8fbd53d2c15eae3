"""The people in a room: roles, colours, and the rules that depend on all of them.

A member is one open room WebSocket. Their role (``protocol.MemberRole``:
owner, member, spectator) comes from the link they joined with and never
changes while they are connected: rotating the links disconnects the holders
of the old ones. The shared terminal is as small as
the smallest member's window: tmux's rule, :meth:`Members.smallest_size`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from replroom import protocol
from replroom.protocol import MemberInfo, MemberRole, NoticeLevel
from replroom.room.terminal import Outbox

log = logging.getLogger(__name__)

COLORS = ("#e06c75", "#61afef", "#98c379", "#e5c07b", "#c678dd", "#56b6c2", "#d19a66", "#be5046")


@dataclass(eq=False)
class Member:
    room_id: str
    id: str
    name: str
    role: MemberRole
    color: str
    cols: int
    rows: int
    token_hash: str
    outbox: Outbox
    close: Callable[[int, str], None]  # ends the member's connection with this close code
    warned_read_only: bool = False
    on_leave: list[Callable[[], None]] = field(default_factory=list)

    @property
    def can_write(self) -> bool:
        return self.role is not MemberRole.SPECTATOR

    def view(self) -> MemberInfo:
        return protocol.member_view(self.id, self.name, self.role, self.color)


class Members:
    """The members of one room, by id, in the order they joined."""

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self._by_id: dict[str, Member] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Member]:
        return iter(self._by_id.values())

    def add(self, member: Member) -> None:
        self._by_id[member.id] = member

    def remove(self, member: Member) -> bool:
        """Remove ``member``; False if they were not (or no longer) here."""
        return self._by_id.pop(member.id, None) is not None

    def outboxes(self) -> list[Outbox]:
        return [member.outbox for member in self._by_id.values()]

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

    def announce(self, event: Literal["joined", "left", "renamed"], member: Member) -> None:
        """Tell everyone who is here now, and what changed (joined, left, renamed)."""
        self.broadcast(protocol.members_changed(self.views(), event, member.view()))

    def disconnect(self, token_hashes: set[str], code: int, reason: str) -> None:
        """Close the connections of the members who joined with one of these links."""
        for member in list(self._by_id.values()):
            if member.token_hash in token_hashes:
                member.close(code, reason)

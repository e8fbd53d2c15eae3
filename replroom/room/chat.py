"""A room's chat: plain text, rate-limited per member key, its last messages stored.

Messages are text and stay text: the server neither parses nor escapes them,
the page shows them with ``textContent`` (only http/https links become links
there). Owners and members write; spectators read, and write when the owners
let them (``spectator_chat``). A member key may send ``CHAT_RATE`` messages
in ``CHAT_WINDOW`` seconds (two tabs share the allowance); more is refused
with ``rate_limited``. A message is stored before it is shown, and the last
``CHAT_HISTORY`` go to every newcomer with their welcome.
"""

from __future__ import annotations

import collections
import time

from replroom import protocol
from replroom.protocol import CHAT_HISTORY, CHAT_RATE, CHAT_WINDOW, ChatEntry, ErrorCode, MemberRole
from replroom.room.controls import Refusal, not_allowed
from replroom.room.members import Member, Members
from replroom.storage import RoomRecord, Store


class Chat:
    def __init__(
        self, record: RoomRecord, members: Members, store: Store, history: list[ChatEntry]
    ) -> None:
        self.record = record
        self.members = members
        self.store = store
        self.history: collections.deque[ChatEntry] = collections.deque(history, maxlen=CHAT_HISTORY)
        self._next_id = history[-1]["id"] + 1 if history else 1
        self._sent: dict[str, collections.deque[float]] = {}  # by key hash: when they sent

    def may_write(self, member: Member) -> bool:
        if member.role is not MemberRole.SPECTATOR:
            return True
        return bool(self.record.settings.get("spectator_chat"))

    async def post(self, member: Member, text: str) -> None:
        if not self.may_write(member):
            raise not_allowed("spectators can read the chat; the owners have not let them write")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text.strip():
            raise Refusal(ErrorCode.BAD_MESSAGE, "an empty chat message was not sent")
        now = time.monotonic()
        sent = self._sent.setdefault(member.key_hash, collections.deque())
        while sent and now - sent[0] >= CHAT_WINDOW:
            sent.popleft()
        if len(sent) >= CHAT_RATE:
            wait = CHAT_WINDOW - (now - sent[0])
            raise Refusal(
                ErrorCode.RATE_LIMITED,
                f"at most {CHAT_RATE} chat messages in {CHAT_WINDOW:g} s: not sent (try again in"
                f" {wait:.0f} s)",
            )
        entry: ChatEntry = {
            "id": self._next_id, "member": member.id, "name": member.name,
            "color": member.color, "text": text, "at": time.time(),
        }  # fmt: skip
        self._next_id += 1  # taken even if storing fails: ids are never reused
        await self.store.add_chat(self.record.id, entry, keep=CHAT_HISTORY)
        sent.append(now)
        self.history.append(entry)
        self.members.broadcast(protocol.chat_posted(entry))

"""The y-websocket wire format: what a client may send, checked whole before anything uses it.

A y-websocket message is a lib0 varuint message type followed by its payload:

- sync (0): a varuint sync step (1: state vector, 2: the updates the other
  side lacks, 3: an update) and the payload as varuint-length bytes;
- awareness (1): varuint-length bytes holding a count of entries, each a client
  id, a clock and a JSON state (``null`` when that client left).

Awareness payloads are relayed to every client and applied to the server's
view, so they are checked completely here. Sync payloads are checked by pycrdt
when it applies them (an error there closes the sender's connection with 1007).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pycrdt import YMessageType, YSyncMessageType

MESSAGE_SYNC = YMessageType.SYNC
MESSAGE_AWARENESS = YMessageType.AWARENESS
SYNC_STEP1 = YSyncMessageType.SYNC_STEP1
SYNC_STEP2 = YSyncMessageType.SYNC_STEP2
SYNC_UPDATE = YSyncMessageType.SYNC_UPDATE

EMPTY_UPDATE = b"\x00\x00"
"""A Yjs update that changes nothing (no structs, no deletions)."""
MAX_AWARENESS_ENTRIES = 256
MAX_VAR_UINT = 2**53
"""The largest integer a JavaScript peer represents exactly."""


class BadMessage(Exception):
    """A client's message breaks the y-protocols format; the text says how."""


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client_id: int
    clock: int
    present: bool  # False: the state is null, that client left


@dataclass(frozen=True, slots=True)
class Message:
    """One checked client message; ``raw`` is what it was on the wire."""

    raw: bytes
    type: int
    subtype: int = 0  # the sync step for MESSAGE_SYNC
    payload: bytes = b""  # the update or state vector; the awareness update
    awareness: tuple[AwarenessEntry, ...] = ()

    @property
    def changes_document(self) -> bool:
        """A sync step 2 or an update: what a read-only client may not send."""
        return self.type == MESSAGE_SYNC and self.subtype != SYNC_STEP1

    @property
    def leaves(self) -> bool:
        """An awareness message saying that its one client left (it is not echoed back)."""
        return len(self.awareness) == 1 and not self.awareness[0].present


def parse_message(data: bytes) -> Message:
    """The message in ``data``, or :class:`BadMessage`.

    Unknown message types (auth, awareness queries) parse to a message with no
    payload: nothing a client may ask of this server, they are ignored.
    """
    message_type, pos = read_var_uint(data, 0)
    if message_type == MESSAGE_SYNC:
        subtype, pos = read_var_uint(data, pos)
        if subtype not in (SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE):
            raise BadMessage(f"unknown sync message {subtype}")
        payload, pos = read_var_bytes(data, pos)
        _expect_end(data, pos, "trailing bytes")
        return Message(data, message_type, subtype, payload)
    if message_type == MESSAGE_AWARENESS:
        payload, pos = read_var_bytes(data, pos)
        _expect_end(data, pos, "trailing bytes")
        return Message(data, message_type, 0, payload, parse_awareness(payload))
    return Message(data, message_type)


def parse_awareness(payload: bytes) -> tuple[AwarenessEntry, ...]:
    count, pos = read_var_uint(payload, 0)
    if count > MAX_AWARENESS_ENTRIES:
        raise BadMessage("too many awareness entries")
    entries = []
    for _ in range(count):
        client_id, pos = read_var_uint(payload, pos)
        clock, pos = read_var_uint(payload, pos)
        raw, pos = read_var_bytes(payload, pos)
        try:
            state = json.loads(raw.decode()) if raw else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise BadMessage("awareness state is not JSON") from None
        entries.append(AwarenessEntry(client_id, clock, state is not None))
    _expect_end(payload, pos, "trailing bytes in awareness")
    return tuple(entries)


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """A lib0 varuint at ``pos``, and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise BadMessage("truncated")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > MAX_VAR_UINT:
                raise BadMessage("number out of range")
            return value, pos
        shift += 7
        if shift > 56:
            raise BadMessage("number out of range")


def read_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    """Length-prefixed bytes at ``pos``, and the position after them."""
    length, pos = read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise BadMessage("truncated")
    return data[pos:end], end


def _expect_end(data: bytes, pos: int, problem: str) -> None:
    if pos != len(data):
        raise BadMessage(problem)

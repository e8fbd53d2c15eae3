"""The room WebSocket: one member's connection to a room (docs/protocol.md).

A member first sends ``join``; the manager admits them or refuses with a
close code. Then one task reads their messages and another handles them, in
order, while the member's outbox has its own sender task: handling may wait
on the room's REPL for as long as it does not read its input (Ctrl-S stops
it), and a member who leaves must always be noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket
from starlette.types import Message

from replroom import metrics, protocol
from replroom.languages import UnknownLanguage
from replroom.protocol import MAX_PENDING_INPUT, CloseCode, ErrorCode
from replroom.room import AtCapacity, Member, Refused, ReplBusy, Room, RoomManager
from replroom.room.controls import Refusal
from replroom.room.room import BUSY
from replroom.room.terminal import Frame
from replroom.routes.common import (
    INTERNAL_ERROR,
    ROOM_SOCKET_PATH,
    close,
    fail,
    manager_of,
    origin_allowed,
    send_now,
)
from replroom.sandbox import SandboxError
from replroom.storage import StorageError

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 10.0

router = APIRouter()


@router.websocket(ROOM_SOCKET_PATH + "/{room_id}")
async def room_socket(websocket: WebSocket, room_id: str) -> None:
    if not origin_allowed(websocket):
        await websocket.close(CloseCode.FORBIDDEN, "origin not allowed")
        return
    await websocket.accept()
    try:
        await _serve_member(websocket, manager_of(websocket), room_id)
    except Exception:
        log.exception("room %.64s: serving a member failed", room_id)
        await fail(websocket, protocol.error(ErrorCode.INTERNAL, INTERNAL_ERROR))


class _Connection:
    """A member's WebSocket as the room sees it: frames to send, and a way to close it."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.closing: tuple[int, str] | None = None  # the first close the room asked for
        self.receiver: asyncio.Task[None] | None = None

    async def send(self, frame: Frame) -> None:
        if isinstance(frame, bytes):
            await self.websocket.send_bytes(frame)
        else:
            await self.websocket.send_text(frame)

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
        if self.receiver is not None:
            self.receiver.cancel()


async def _serve_member(websocket: WebSocket, manager: RoomManager, room_id: str) -> None:
    connection = _Connection(websocket)
    try:
        join = await _receive_join(websocket)
        admission = await manager.admit(room_id, join, connection.send, connection.close)
    except Refused as refused:
        await close(websocket, refused.code, refused.reason)
        return
    room, member = admission.room, admission.member
    member.outbox.send_now = send_now(websocket)
    sender = asyncio.create_task(member.outbox.run())
    receiver = connection.receiver = asyncio.create_task(_receive(websocket, room, member))
    failed = True
    try:
        # On failure the member was told why; they stay and may retry.
        with contextlib.suppress(AtCapacity, SandboxError):
            await room.join(member, admission.editor, admission.links)
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if receiver.done() and not receiver.cancelled():
            receiver.result()  # raises what made it fail
        failed = False
    finally:
        receiver.cancel()
        await room.leave(member)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        if not failed:  # else the caller logs the failure and closes with 1011
            code, reason = connection.closing or (CloseCode.NORMAL, "")
            await close(websocket, code, reason)


async def _receive_join(websocket: WebSocket) -> protocol.Join:
    try:
        async with asyncio.timeout(JOIN_TIMEOUT):
            message = await websocket.receive()
    except TimeoutError:
        raise Refused(CloseCode.BAD_JOIN, "send a join message first") from None
    if message["type"] == "websocket.disconnect":
        raise Refused(CloseCode.NORMAL, "")
    text = message.get("text")
    if text is None:
        raise Refused(CloseCode.BAD_JOIN, "send a join message first")
    try:
        parsed = protocol.parse_client_message(text)
    except protocol.BadMessage as error:
        raise Refused(CloseCode.BAD_JOIN, f"bad join: {error}") from None
    if not isinstance(parsed, protocol.Join):
        raise Refused(CloseCode.BAD_JOIN, "send a join message first")
    if parsed.v != protocol.PROTOCOL_VERSION:
        raise Refused(
            CloseCode.BAD_JOIN,
            f"protocol version {parsed.v} not supported (server: {protocol.PROTOCOL_VERSION})",
        )
    return parsed


class _Inbox:
    """What a member sent that is not handled yet, at most ``MAX_PENDING_INPUT`` bytes of it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.size = 0

    def put(self, message: Message) -> bool:
        """Queue ``message``; False (dropped) if the inbox is full."""
        size = _size(message)
        if self.size and self.size + size > MAX_PENDING_INPUT:
            return False
        self.size += size
        self.queue.put_nowait(message)
        return True

    async def handle(self, room: Room, member: Member) -> None:
        while True:
            message = await self.queue.get()
            try:
                await _handle_guarded(room, member, message)
            finally:
                self.size -= _size(message)


def _size(message: Message) -> int:
    return len(message.get("bytes") or message.get("text") or "")


async def _receive(websocket: WebSocket, room: Room, member: Member) -> None:
    """Read the member's messages; another task handles them, in order.

    Handling may wait on the room for as long as its REPL does not read its input
    (e.g. after Ctrl-S stopped its output), so reading goes on apart from it: a
    member who leaves is always noticed, and what they send meanwhile is bounded.
    """
    inbox = _Inbox()
    handler = asyncio.create_task(inbox.handle(room, member))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if _is_restart(message):
                # At once: a restart is what frees a REPL that stopped reading, which
                # the handler may be waiting on.
                await _handle_guarded(room, member, message)
            elif not inbox.put(message):
                _reply_error(member, ErrorCode.BUSY, BUSY)
    finally:
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handler


def _is_restart(message: Message) -> bool:
    text = message.get("text")
    if text is None or '"restart"' not in text:
        return False
    with contextlib.suppress(protocol.BadMessage):
        return isinstance(protocol.parse_client_message(text), protocol.Restart)
    return False


async def _handle_guarded(room: Room, member: Member, message: Message) -> None:
    try:
        await _handle(room, member, message)
    except Exception:
        # One message failed, not the connection: the member is still in the
        # room with a working outbox, and the next message may well succeed.
        log.exception("room %s: a message from member %s failed", room.id, member.id)
        member.outbox.send_json(protocol.error(ErrorCode.INTERNAL, INTERNAL_ERROR))


async def _handle(room: Room, member: Member, message: Message) -> None:
    data = message.get("bytes")
    if data is not None:
        if len(data) > protocol.MAX_INPUT_FRAME:
            limit = protocol.MAX_INPUT_FRAME
            _reply_error(member, ErrorCode.TOO_LARGE, f"input frame over {limit} bytes ignored")
            return
        try:
            await room.input(member, data)
        except ReplBusy as busy:
            _reply_error(member, ErrorCode.BUSY, str(busy))
        return
    try:
        parsed = protocol.parse_client_message(message.get("text") or "")
    except protocol.BadMessage as error:
        _reply_error(member, ErrorCode.BAD_MESSAGE, str(error))
        return
    try:
        await _dispatch(room, member, parsed)
    except Refusal as refusal:
        _reply_error(member, refusal.code, str(refusal))
    except StorageError as error:
        _reply_error(member, ErrorCode.STORAGE, f"nothing was changed: {error}")
    except (UnknownLanguage, SandboxError, AtCapacity) as error:
        _reply_error(member, ErrorCode.FAILED, str(error) or "server at capacity")


async def _dispatch(room: Room, member: Member, message: protocol.ClientMessage) -> None:
    if isinstance(message, protocol.Join):
        _reply_error(member, ErrorCode.BAD_MESSAGE, "already joined")
    elif isinstance(message, protocol.Resize):
        await room.resize(member, message.cols, message.rows)
    elif isinstance(message, protocol.Rename):
        room.rename(member, message.name)
    elif isinstance(message, protocol.SelectLanguage):
        await room.switch_language(member, message.language)
    elif isinstance(message, protocol.Run):
        await room.run_code(member, message.code, message.language, message.file)
    elif isinstance(message, protocol.Restart):
        await room.restart_repl(member)
    elif isinstance(message, protocol.Controls):
        await room.controls.set_controls(member, message)
    elif isinstance(message, protocol.MemberAction):
        await room.controls.act(member, message)
    elif isinstance(message, protocol.Readmit):
        await room.controls.readmit(member, message.ref)
    elif isinstance(message, protocol.RequestWrite):
        room.controls.request_write(member)
    elif isinstance(message, protocol.ChatSend):
        await room.chat.post(member, message.text)
    elif isinstance(message, protocol.FileCreate):
        await room.create_file(member, message)
    elif isinstance(message, protocol.FileRename):
        await room.rename_file(member, message)
    elif isinstance(message, protocol.FileDelete):
        await room.delete_file(member, message)


def _reply_error(member: Member, code: ErrorCode, message: str) -> None:
    metrics.BAD_MESSAGES.inc()
    member.outbox.send_json(protocol.error(code, message))

"""The shared editor's WebSocket: y-websocket, one document per room, language and file.

A member's welcome carries a ticket for it, valid while their room WebSocket
is open (:meth:`RoomManager.editor_member`), so links never appear in editor
URLs; the editor connection ends when its member leaves the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket

from replroom.protocol import CloseCode
from replroom.room import Member
from replroom.room.manager import EDITOR_PATH
from replroom.routes.common import close, editor_of, fail, manager_of, origin_allowed

log = logging.getLogger(__name__)

router = APIRouter()


@router.websocket(EDITOR_PATH + "/{room_id}/{language}/{file_id}")
async def editor_socket(
    websocket: WebSocket, room_id: str, language: str, file_id: str, ticket: str = ""
) -> None:
    """A file's document (``file_id``, from the room's ``files``)."""
    await _editor_socket(websocket, room_id, language, file_id, ticket)


@router.websocket(EDITOR_PATH + "/{room_id}/{language}")
async def first_file_socket(
    websocket: WebSocket, room_id: str, language: str, ticket: str = ""
) -> None:
    """The language's first file: clients from before files (one document per language)."""
    await _editor_socket(websocket, room_id, language, None, ticket)


async def _editor_socket(
    websocket: WebSocket, room_id: str, language: str, file_id: str | None, ticket: str
) -> None:
    if not origin_allowed(websocket):
        await websocket.close(CloseCode.FORBIDDEN, "origin not allowed")
        return
    manager = manager_of(websocket)
    member = manager.editor_member(ticket, room_id, language)
    if member is None:
        await websocket.close(CloseCode.FORBIDDEN, "invalid editor ticket")
        return
    room = manager.rooms.get(room_id)
    files = room.files.listing(language) if room is not None else []
    file = next((f for f in files if file_id is None or f["id"] == file_id), None)
    await websocket.accept()
    if room is None or file is None:
        # Accepted first, so that the client sees the code and stops reconnecting.
        await close(websocket, CloseCode.NOT_FOUND, "no such file (it was deleted)")
        return
    try:
        await _serve_editor(websocket, member, room.files.doc(language, file["id"]))
    except Exception:
        log.exception("room %s: serving a member's editor failed", room_id)
        await fail(websocket, None)


async def _serve_editor(websocket: WebSocket, member: Member, doc_name: str) -> None:
    """The y-websocket protocol for one member, until either side or the member leaves."""
    closed = asyncio.get_running_loop().create_future()

    def on_leave() -> None:
        if not closed.done():
            closed.set_result(None)

    member.on_leave.append(on_leave)
    editor = editor_of(websocket)
    room = manager_of(websocket).rooms.get(member.room_id)
    # Asked at each update: an owner may lock the room or make the member read-only.
    serving = asyncio.create_task(
        editor.serve(
            websocket,
            doc_name,
            read_only=lambda: not member.can_write,
            on_refused=(lambda: room.refuse_edit(member, "editor")) if room is not None else None,
            # Asked at each edit (a member may rename): the recording's "who wrote what".
            author=lambda: (member.id, member.name, member.color),
        )
    )
    try:
        await asyncio.wait({serving, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await serving
        with contextlib.suppress(ValueError):
            member.on_leave.remove(on_leave)
        await close(websocket, CloseCode.FORBIDDEN, "the member left the room")

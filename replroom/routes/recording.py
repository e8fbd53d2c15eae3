"""A room's recording over HTTP: its summary, the terminal as asciicast, the editor's timeline,
and the replay page (docs/protocol.md, Recordings).

Readable with the owner's or the invitation link's token; with the spectator link's only
where an owner allowed it (the room's ``recording_spectators`` control). A recording that
cannot be read gets a 404 or 422 with a message for people, never a server error. Reading
a recording never loads its room into memory: the stored record says who may.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from replroom.protocol import MemberRole
from replroom.room.recording import RecordingError, Timeline
from replroom.routes.common import manager_of, page
from replroom.routes.http import REVALIDATE, built_files
from replroom.storage import RoomRecord

router = APIRouter()

NO_STORE = "private, no-store"


@router.get("/api/rooms/{room_id}/recording")
async def recording_summary(
    request: Request,
    room_id: str,
    authorization: str | None = Header(None),
    token: str | None = None,
) -> Any:
    """What the recording holds: duration, languages, documents, markers; and whether it is on."""
    record = await _readable_room(request, room_id, _bearer(authorization) or token)
    recording = bool(record.settings.get("recording", manager_of(request).settings.recording))
    try:
        timeline = await _timeline(request, record)
    except RecordingError as error:
        return _unreadable(error, recording=recording)
    return {**timeline.summary(), "recording": recording}


@router.get("/api/rooms/{room_id}/recording/editor.json")
async def editor_timeline(
    request: Request,
    room_id: str,
    authorization: str | None = Header(None),
    token: str | None = None,
) -> Response:
    """Every editor document's Yjs updates with their times (base64), and the markers."""
    record = await _readable_room(request, room_id, _bearer(authorization) or token)
    try:
        timeline = await _timeline(request, record)
    except RecordingError as error:
        return _unreadable(error)
    body = await anyio.to_thread.run_sync(lambda: json.dumps(timeline.editor()))
    headers = _download(f"{room_id}-editor.json")
    return Response(body, media_type="application/json", headers=headers)


@router.get("/api/rooms/{room_id}/recording/{language}.cast")
async def terminal_cast(
    request: Request,
    room_id: str,
    language: str,
    authorization: str | None = Header(None),
    token: str | None = None,
) -> Response:
    """One REPL's terminal as an asciicast v2 file (``asciinema play`` plays it)."""
    record = await _readable_room(request, room_id, _bearer(authorization) or token)
    try:
        timeline = await _timeline(request, record)
    except RecordingError as error:
        return _unreadable(error)
    if language not in timeline.languages:
        return _unreadable(RecordingError(f"the recording holds no {language} terminal"))
    body = await anyio.to_thread.run_sync(timeline.cast, language)
    return Response(
        body,
        media_type="application/x-asciicast",
        headers=_download(f"{room_id}-{language}.cast"),
    )


@router.get("/r/{room_id}/replay", include_in_schema=False)
async def replay_page(request: Request, room_id: str) -> Response:
    """The replay page; it reads its token from the address's #t= and asks the API."""
    if await _record(request, room_id) is None:
        return HTMLResponse(page("Room not found", "This room does not exist (any more)."),
                            status_code=404)  # fmt: skip
    built = await built_files.get("replay.html")
    if built is None:
        return HTMLResponse(page("replroom", "The web client is not built: run make run."))
    return built.response(request, REVALIDATE)


async def _record(request: Request, room_id: str) -> RoomRecord | None:
    """The room's record: its own if it is in memory (current), else the stored one."""
    manager = manager_of(request)
    room = manager.rooms.get(room_id)
    return room.record if room is not None else await manager.store.get_room(room_id)


async def _readable_room(request: Request, room_id: str, token: str | None) -> RoomRecord:
    record = await _record(request, room_id)
    if record is None:
        raise HTTPException(404, "room not found")
    role = record.role_of(token or "") if token else None
    if role is None:
        raise HTTPException(403, "a valid invitation link is needed")
    if role is MemberRole.SPECTATOR and not record.settings.get("recording_spectators"):
        raise HTTPException(403, "the room's owners have not let spectators see its recording")
    return record


async def _timeline(request: Request, record: RoomRecord) -> Timeline:
    return await manager_of(request).recordings.read(record.id)


def _unreadable(error: RecordingError, **extra: Any) -> JSONResponse:
    """No recording (404), or one that is damaged throughout (422): said in words."""
    damaged = "damaged" in str(error)
    return JSONResponse(
        {"error": "recording_damaged" if damaged else "no_recording", "message": str(error),
         **extra},
        status_code=422 if damaged else 404,
        headers={"Cache-Control": NO_STORE},
    )  # fmt: skip


def _download(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": NO_STORE}


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None

"""The HTTP routes: rooms API, the room page, health and metrics (docs/protocol.md, HTTP API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from replroom import metrics
from replroom.room import Room, RoomManager
from replroom.routes.common import manager_of, page, settings_of
from replroom.storage import StorageError

WEB_DIST = Path(__file__).resolve().parent.parent.parent / "web" / "dist"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def new_room(request: Request) -> Response:
    manager = manager_of(request)
    if manager.at_capacity():
        return _capacity_page(manager)
    record, tokens = await manager.create_room()
    # The creator's browser holds the owner token; the page shows it the
    # invitation and spectator links to share.
    return RedirectResponse(f"/r/{record.id}#t={tokens['owner']}", status_code=303)


@router.post("/api/rooms", status_code=201)
async def create_room(request: Request) -> Any:
    manager = manager_of(request)
    if manager.at_capacity():
        return JSONResponse(
            {"error": "at_capacity", "message": "server at capacity, try again later",
             "capacity": manager.capacity()},
            status_code=503, headers={"Retry-After": "30"},
        )  # fmt: skip
    record, tokens = await manager.create_room()
    urls = _links(request, record.id, tokens)
    return {
        "id": record.id,
        "language": record.language,
        "invite_url": urls["invite_url"],
        "spectator_url": urls["spectator_url"],
        "owner_url": urls["owner_url"],
        "invite_token": tokens["invite"],
        "spectator_token": tokens["spectator"],
        "owner_token": tokens["owner"],
    }


@router.get("/api/rooms/{room_id}")
async def describe_room(
    request: Request,
    room_id: str,
    authorization: str | None = Header(None),
    token: str | None = None,
) -> Any:
    room = await _authorised_room(request, room_id, _bearer(authorization) or token)
    return room.describe()


@router.post("/api/rooms/{room_id}/rotate")
async def rotate_links(
    request: Request, room_id: str, authorization: str | None = Header(None)
) -> Any:
    token = _bearer(authorization)
    room = await _authorised_room(request, room_id, token)
    if room.record.role_of(token or "") != "owner":
        raise HTTPException(403, "only the room's owner can rotate its links")
    tokens = await manager_of(request).rotate_links(room, token or "")
    urls = _links(request, room.id, tokens)
    return {**urls, "invite_token": tokens["invite"], "spectator_token": tokens["spectator"]}


@router.get("/api/capacity")
async def capacity(request: Request) -> Any:
    return manager_of(request).capacity()


@router.get("/healthz")
async def healthz(request: Request) -> Any:
    manager = manager_of(request)
    return {"status": "ok", "backend": manager.backend.name, **manager.capacity()}


@router.get("/metrics", include_in_schema=False)
async def prometheus() -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/r/{room_id}", include_in_schema=False)
async def room_page(request: Request, room_id: str) -> Response:
    if await manager_of(request).get(room_id) is None:
        return HTMLResponse(page("Room not found", "This room does not exist (any more)."),
                            status_code=404)  # fmt: skip
    index = WEB_DIST / "index.html"
    if index.exists():
        return HTMLResponse(index.read_text())
    return HTMLResponse(page("replroom", "The web client is not built: run make run."))


async def storage_failed(request: Request, error: Exception) -> Response:
    """A database write failed (logged where it failed): 507 for a full disk, else 503."""
    assert isinstance(error, StorageError)
    status = 507 if error.full else 503
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": "storage", "message": str(error)}, status_code=status)
    return HTMLResponse(page("Cannot create a room", str(error)), status_code=status)


async def _authorised_room(request: Request, room_id: str, token: str | None) -> Room:
    room = await manager_of(request).get(room_id)
    if room is None:
        raise HTTPException(404, "room not found")
    if not token or room.record.role_of(token) is None:
        raise HTTPException(403, "a valid invitation link is needed")
    return room


def _links(request: Request, room_id: str, tokens: dict[str, str]) -> dict[str, str]:
    base = (settings_of(request).public_url or str(request.base_url)).rstrip("/")
    return {f"{kind}_url": f"{base}/r/{room_id}#t={token}" for kind, token in tokens.items()}


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def _capacity_page(manager: RoomManager) -> HTMLResponse:
    text = (
        f"All {manager.max_sandboxes} sandboxes this server may run are in use. "
        "Rooms that are open keep working; please try again in a few minutes."
    )
    return HTMLResponse(
        page("Server at capacity", text), status_code=503, headers={"Retry-After": "30"}
    )

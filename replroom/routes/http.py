"""The HTTP routes: rooms API, the room page, health and metrics (docs/protocol.md, HTTP API)."""

from __future__ import annotations

import gzip
import json
import mimetypes
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from replroom import metrics
from replroom.room import Room, RoomManager
from replroom.routes.common import manager_of, page, settings_of
from replroom.storage import StorageError

WEB_DIST = Path(__file__).resolve().parent.parent.parent / "web" / "dist"

# Asset names carry a hash of their content (Vite): a name never changes its content.
IMMUTABLE = "public, max-age=31536000, immutable"
# The page itself names the current assets: browsers must ask each time (a 304 at best).
REVALIDATE = "no-cache"
# What the build writes beside each file (web/build/plugins.mjs), best first.
ENCODINGS = {"br": ".br", "gzip": ".gz"}
ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# What a build holds; mimetypes' answers for these differ between hosts.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}

router = APIRouter()


@dataclass(frozen=True)
class BuiltFile:
    """A file of web/dist in memory, with its precompressed versions."""

    media_type: str
    identity: bytes
    encoded: dict[str, bytes]
    # Which build it is from: `npm run build` while the server runs replaces index.html.
    version: tuple[int, int]

    @classmethod
    def read(cls, path: Path) -> BuiltFile:
        version = _version(path)
        encoded = {}
        for encoding, suffix in ENCODINGS.items():
            compressed = path.with_name(path.name + suffix)
            if compressed.is_file():
                encoded[encoding] = compressed.read_bytes()
        media_type = MEDIA_TYPES.get(path.suffix) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        return cls(media_type, path.read_bytes(), encoded, version)

    def response(self, request: Request, cache_control: str) -> Response:
        """The smallest version the client accepts, and headers that say which it is."""
        headers = {"Cache-Control": cache_control, "Vary": "Accept-Encoding"}
        accepted = _accepted_encodings(request.headers.get("accept-encoding", ""))
        for encoding, body in self.encoded.items():
            if encoding in accepted:
                headers["Content-Encoding"] = encoding
                return Response(body, media_type=self.media_type, headers=headers)
        return Response(self.identity, media_type=self.media_type, headers=headers)


class BuiltFiles:
    """web/dist's files in memory (a few hundred KiB), each read again only when rebuilt."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._read: dict[str, BuiltFile] = {}

    async def get(self, name: str) -> BuiltFile | None:
        path = self.root / name
        try:
            version = _version(path)
        except OSError:
            self._read.pop(name, None)
            return None
        found = self._read.get(name)
        if found is None or found.version != version:
            try:
                found = await anyio.to_thread.run_sync(BuiltFile.read, path)
            except OSError:  # removed by a build meanwhile
                return None
            self._read[name] = found
        return found


def _version(path: Path) -> tuple[int, int]:
    """Modification time and size: what changes when a build rewrites the file."""
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):
        raise IsADirectoryError(path)
    return status.st_mtime_ns, status.st_size


built_files = BuiltFiles(WEB_DIST)


@router.get("/", include_in_schema=False)
async def new_room(request: Request) -> Response:
    manager = manager_of(request)
    if not manager.may_start_sandbox():
        return _capacity_page(manager)
    record, tokens = await manager.create_room()
    # The creator's browser holds the owner token; the page shows it the
    # invitation and spectator links to share.
    address = f"/r/{record.id}#t={tokens['owner']}"
    index = await built_files.get("index.html")
    if index is None:
        return RedirectResponse(address, status_code=303)
    return _page_at(request, index, address)


def _page_at(request: Request, index: BuiltFile, address: str) -> Response:
    """The room page itself, moving the address bar to ``address`` before anything runs.

    A redirect would cost the browser one more round trip before the page.
    The response holds the owner's token: never stored by a cache.
    """
    moved = f"<script>history.replaceState(null, '', {json.dumps(address)})</script>"
    html = index.identity.replace(b"<script", moved.encode() + b"<script", 1)
    headers = {"Cache-Control": "no-store", "Vary": "Accept-Encoding"}
    if "gzip" in _accepted_encodings(request.headers.get("accept-encoding", "")):
        headers["Content-Encoding"] = "gzip"
        html = gzip.compress(html, compresslevel=6)
    return Response(html, media_type=index.media_type, headers=headers)


@router.post("/api/rooms", status_code=201)
async def create_room(request: Request) -> Any:
    manager = manager_of(request)
    if not manager.may_start_sandbox():
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


@router.get("/api/rooms/{room_id}/plots/{plot_id}")
async def plot_image(
    request: Request, room_id: str, plot_id: str, authorization: str | None = Header(None)
) -> Response:
    """A plot's image, for the room's members (docs/protocol.md, Plots)."""
    room = await _authorised_room(request, room_id, _bearer(authorization))
    plot = room.plots.get(plot_id)
    if plot is None:
        raise HTTPException(404, "no such plot (a room keeps its latest ones, until it closes)")
    extension = "svg" if plot.info["mime"] == "image/svg+xml" else "png"
    return Response(
        plot.data,
        media_type=plot.info["mime"],
        headers={
            # An SVG is the room's: were it ever opened as a document, it runs nothing
            # and loads nothing (the page shows plots only as <img>, which never does).
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'attachment; filename="plot-{plot_id}.{extension}"',
            "Cache-Control": "private, no-store",
        },
    )


@router.get("/api/rooms/{room_id}/files/{language}.zip")
async def files_zip(
    request: Request, room_id: str, language: str, authorization: str | None = Header(None)
) -> Response:
    """A language's editor files as one zip, for the room's members (docs/protocol.md)."""
    room = await _authorised_room(request, room_id, _bearer(authorization))
    if language not in settings_of(request).languages:
        raise HTTPException(404, "this server offers no such language")
    return Response(
        await room.files.zip(language),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{room_id}-{language}.zip"',
            "Cache-Control": "private, no-store",
        },
    )


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
    index = await built_files.get("index.html")
    if index is not None:
        return index.response(request, REVALIDATE)
    return HTMLResponse(page("replroom", "The web client is not built: run make run."))


@router.api_route("/assets/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def asset(request: Request, name: str) -> Response:
    if not ASSET_NAME.fullmatch(name) or name.endswith(tuple(ENCODINGS.values())):
        raise HTTPException(404)
    found = await built_files.get(f"assets/{name}")
    if found is None:
        raise HTTPException(404)
    return found.response(request, IMMUTABLE)


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


def _accepted_encodings(accept_encoding: str) -> set[str]:
    """The codings of an Accept-Encoding header that are not refused with q=0 (RFC 9110)."""
    accepted = set()
    for item in accept_encoding.split(","):
        coding, _, parameters = item.partition(";")
        quality = parameters.strip().removeprefix("q=").strip() or "1"
        try:
            refused = float(quality) <= 0
        except ValueError:
            refused = False
        if not refused:
            accepted.add(coding.strip().lower())
    return accepted


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

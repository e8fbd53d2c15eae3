"""The HTTP and WebSocket server: rooms API, the room WebSocket, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Header, HTTPException, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketState

from replroom import metrics, protocol
from replroom.config import Settings
from replroom.editor import EditorSync
from replroom.host import open_backend
from replroom.languages import LANGUAGES, UnknownLanguage
from replroom.rooms import COLORS, AtCapacity, Member, Room, RoomManager, links_of
from replroom.sandbox import SandboxError
from replroom.storage import StorageError, Store, hash_token
from replroom.terminal import Frame

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 10.0
INTERNAL_ERROR = "internal server error (logged); try again"
# What a member may have sent that the room has not taken yet (a Run's code fits).
MAX_INBOX = protocol.MAX_TEXT_MESSAGE + protocol.MAX_INPUT_FRAME
BUSY = "the REPL is not reading its input (Ctrl-S stops it; restart it if it is stuck): dropped"
EXPIRE_INTERVAL = 3600.0
WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = await open_backend(settings)
        store = await Store.open(settings.data_dir / "replroom.sqlite3")
        removed = await backend.cleanup_orphans()
        if removed:
            log.info("removed %d sandbox(es) left by an earlier run", removed)
        manager = RoomManager(settings, backend, store)
        editor = EditorSync(
            settings.data_dir / "editor.sqlite3", on_store_failure=manager.editor_not_saved
        )
        await editor.start()
        app.state.manager = manager
        app.state.editor = editor
        app.state.tickets = {}
        expiry = asyncio.create_task(_expire_rooms(manager, editor))
        try:
            yield
        finally:
            expiry.cancel()
            for room in list(manager.rooms.values()):
                room.disconnect(
                    {m.token_hash for m in room.members.values()},
                    protocol.CLOSE_SHUTDOWN,
                    "the server is restarting",
                )
            await manager.close()
            await editor.stop()
            await backend.close()
            await store.close()

    app = FastAPI(title="replroom", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(_HttpGuard)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _ClientFaultFilter) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_ClientFaultFilter())
    app.state.settings = settings

    @app.exception_handler(StorageError)
    async def storage_failed(request: Request, error: StorageError) -> Response:
        # Logged where it failed; 507 "Insufficient Storage" for a full disk.
        status = 507 if error.full else 503
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "storage", "message": str(error)}, status_code=status)
        return HTMLResponse(_page("Cannot create a room", str(error)), status_code=status)

    def manager_of(request: Request | WebSocket) -> RoomManager:
        return request.app.state.manager  # type: ignore[no-any-return]

    def base_url(request: Request) -> str:
        return (settings.public_url or str(request.base_url)).rstrip("/")

    def links(request: Request, room_id: str, tokens: dict[str, str]) -> dict[str, str]:
        base = base_url(request)
        found = {f"{kind}_url": f"{base}/r/{room_id}#t={token}" for kind, token in tokens.items()}
        return found

    @app.get("/", include_in_schema=False)
    async def new_room(request: Request) -> Response:
        manager = manager_of(request)
        if manager.at_capacity():
            return _capacity_page(manager)
        record, tokens = await manager.create_room()
        # The creator's browser holds the owner token; the page shows it the
        # invitation and spectator links to share.
        return RedirectResponse(f"/r/{record.id}#t={tokens['owner']}", status_code=303)

    @app.post("/api/rooms", status_code=201)
    async def create_room(request: Request) -> Any:
        manager = manager_of(request)
        if manager.at_capacity():
            return JSONResponse(
                {"error": "at_capacity", "message": "server at capacity, try again later",
                 "capacity": manager.capacity()},
                status_code=503, headers={"Retry-After": "30"},
            )  # fmt: skip
        record, tokens = await manager.create_room()
        urls = links(request, record.id, tokens)
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

    async def authorised_room(request: Request, room_id: str, token: str | None) -> Room:
        room = await manager_of(request).get(room_id)
        if room is None:
            raise HTTPException(404, "room not found")
        if not token or room.record.role_of(token) is None:
            raise HTTPException(403, "a valid invitation link is needed")
        return room

    @app.get("/api/rooms/{room_id}")
    async def describe_room(
        request: Request,
        room_id: str,
        authorization: str | None = Header(None),
        token: str | None = None,
    ) -> Any:
        room = await authorised_room(request, room_id, _bearer(authorization) or token)
        return room.describe()

    @app.post("/api/rooms/{room_id}/rotate")
    async def rotate_links(
        request: Request, room_id: str, authorization: str | None = Header(None)
    ) -> Any:
        token = _bearer(authorization)
        room = await authorised_room(request, room_id, token)
        if room.record.role_of(token or "") != "owner":
            raise HTTPException(403, "only the room's owner can rotate its links")
        tokens = await manager_of(request).rotate_links(room, token or "")
        urls = links(request, room.id, tokens)
        return {**urls, "invite_token": tokens["invite"], "spectator_token": tokens["spectator"]}

    @app.get("/api/capacity")
    async def capacity(request: Request) -> Any:
        return manager_of(request).capacity()

    @app.get("/healthz")
    async def healthz(request: Request) -> Any:
        manager = manager_of(request)
        return {"status": "ok", "backend": manager.backend.name, **manager.capacity()}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/r/{room_id}", include_in_schema=False)
    async def room_page(request: Request, room_id: str) -> Response:
        if await manager_of(request).get(room_id) is None:
            return HTMLResponse(_page("Room not found", "This room does not exist (any more)."),
                                status_code=404)  # fmt: skip
        index = WEB_DIST / "index.html"
        if index.exists():
            return HTMLResponse(index.read_text())
        return HTMLResponse(_page("replroom", "The web client is not built: run make run."))

    @app.websocket("/ws/rooms/{room_id}")
    async def room_socket(websocket: WebSocket, room_id: str) -> None:
        if not _origin_allowed(websocket, settings):
            await websocket.close(protocol.CLOSE_FORBIDDEN, "origin not allowed")
            return
        await websocket.accept()
        try:
            await _serve_member(websocket, manager_of(websocket), room_id)
        except Exception:
            log.exception("room %.64s: serving a member failed", room_id)
            await _fail(websocket, protocol.error("internal", INTERNAL_ERROR))

    @app.websocket("/yjs/{room_id}/{language}")
    async def editor_socket(
        websocket: WebSocket, room_id: str, language: str, ticket: str = ""
    ) -> None:
        """The room's shared editor (y-websocket protocol), one document per language.

        The ticket comes in the member's welcome and is valid while their
        room WebSocket is open, so links never appear in editor URLs.
        """
        if not _origin_allowed(websocket, settings):
            await websocket.close(protocol.CLOSE_FORBIDDEN, "origin not allowed")
            return
        member = websocket.app.state.tickets.get(ticket)
        if member is None or member.room_id != room_id or language not in LANGUAGES:
            await websocket.close(protocol.CLOSE_FORBIDDEN, "invalid editor ticket")
            return
        await websocket.accept()
        try:
            await _serve_editor(websocket, member, f"{room_id}/{language}")
        except Exception:
            log.exception("room %s: serving a member's editor failed", room_id)
            await _fail(websocket, None)

    if (WEB_DIST / "assets").is_dir():
        app.mount("/assets", StaticFiles(directory=WEB_DIST / "assets"), name="assets")

    return app


async def _serve_member(websocket: WebSocket, manager: RoomManager, room_id: str) -> None:
    try:
        join = await _receive_join(websocket)
    except _Refused as refused:
        await _close(websocket, refused.code, refused.reason)
        return
    room = await manager.get(room_id)
    if room is None:
        await _close(websocket, protocol.CLOSE_NOT_FOUND, "room not found")
        return
    role = room.record.role_of(join.token)
    if role is None:
        await _close(websocket, protocol.CLOSE_FORBIDDEN, "invalid or revoked link")
        return
    if len(room.members) >= manager.settings.max_members:
        await _close(websocket, protocol.CLOSE_AT_CAPACITY, "the room is full")
        return
    if room.sandbox is None and manager.at_capacity():
        await _close(websocket, protocol.CLOSE_AT_CAPACITY, "server at capacity")
        return

    async def send(frame: Frame) -> None:
        if isinstance(frame, bytes):
            await websocket.send_bytes(frame)
        else:
            await websocket.send_text(frame)

    closing: list[tuple[int, str]] = []

    def close(code: int, reason: str) -> None:
        closing.append((code, reason))
        receiver.cancel()

    member = Member(
        room_id=room.id,
        id=secrets.token_urlsafe(6),
        name=join.name,
        role=role,
        color="",
        cols=join.cols,
        rows=join.rows,
        token_hash=hash_token(join.token),
        outbox=room.make_outbox(send),
        close=close,
    )
    member.color = _color_for(room, member)
    tickets: dict[str, Member] = websocket.app.state.tickets
    ticket = secrets.token_urlsafe(32)
    tickets[ticket] = member
    member.on_leave.append(lambda: tickets.pop(ticket, None))
    extra: dict[str, Any] = {"editor": {"path": f"/yjs/{room.id}", "ticket": ticket}}
    if role == "owner":
        extra["links"] = links_of(join.token, room.record.link_generation)
    sender = asyncio.create_task(member.outbox.run())
    receiver = asyncio.create_task(_receive(websocket, room, member))
    failed = True
    try:
        # On failure the member was told why; they stay and may retry.
        with contextlib.suppress(AtCapacity, SandboxError):
            await room.join(member, extra)
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
            code, reason = closing[0] if closing else (1000, "")
            await _close(websocket, code, reason)


async def _receive(websocket: WebSocket, room: Room, member: Member) -> None:
    """Read the member's messages; another task handles them, in order.

    Handling may wait on the room for as long as its REPL does not read its input
    (e.g. after Ctrl-S stopped its output), so reading goes on apart from it: a
    member who leaves is always noticed, and what they send meanwhile is bounded.
    """
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    queued = [0]  # bytes in the inbox
    handler = asyncio.create_task(_handle_inbox(inbox, queued, room, member))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if _is_restart(message):
                # At once: a restart is what frees a REPL that stopped reading, which
                # the handler may be waiting on.
                await _handle_guarded(room, member, message)
                continue
            size = len(message.get("bytes") or message.get("text") or "")
            if queued[0] and queued[0] + size > MAX_INBOX:
                _reply_error(member, "busy", BUSY)
                continue
            queued[0] += size
            inbox.put_nowait(message)
    finally:
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handler


async def _handle_inbox(
    inbox: asyncio.Queue[Message], queued: list[int], room: Room, member: Member
) -> None:
    while True:
        message = await inbox.get()
        try:
            await _handle_guarded(room, member, message)
        finally:
            queued[0] -= len(message.get("bytes") or message.get("text") or "")


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
        member.outbox.send_json(protocol.error("internal", INTERNAL_ERROR))


async def _handle(room: Room, member: Member, message: Message) -> None:
    data = message.get("bytes")
    if data is not None:
        if len(data) > protocol.MAX_INPUT_FRAME:
            limit = protocol.MAX_INPUT_FRAME
            _reply_error(member, "too_large", f"input frame over {limit} bytes ignored")
            return
        await room.input(member, data)
        return
    try:
        parsed = protocol.parse_client_message(message.get("text") or "")
    except protocol.BadMessage as error:
        _reply_error(member, "bad_message", str(error))
        return
    try:
        await _dispatch(room, member, parsed)
    except (UnknownLanguage, SandboxError, AtCapacity) as error:
        _reply_error(member, "failed", str(error) or "server at capacity")


async def _dispatch(room: Room, member: Member, message: protocol.ClientMessage) -> None:
    if isinstance(message, protocol.Join):
        _reply_error(member, "bad_message", "already joined")
    elif isinstance(message, protocol.Resize):
        await room.resize(member, message.cols, message.rows)
    elif isinstance(message, protocol.Rename):
        room.rename(member, message.name)
    elif not member.can_write:
        _reply_error(member, "read_only", "spectators can watch but not change the room")
    elif isinstance(message, protocol.SelectLanguage):
        await room.switch_language(member, message.language)
    elif isinstance(message, protocol.Run):
        await room.run_code(member, message.code, message.language)
    elif isinstance(message, protocol.Restart):
        await room.restart_repl()


def _reply_error(member: Member, code: str, message: str) -> None:
    metrics.BAD_MESSAGES.inc()
    member.outbox.send_json(protocol.error(code, message))


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


async def _receive_join(websocket: WebSocket) -> protocol.Join:
    try:
        async with asyncio.timeout(JOIN_TIMEOUT):
            message = await websocket.receive()
    except TimeoutError:
        raise _Refused(protocol.CLOSE_PROTOCOL, "send a join message first") from None
    if message["type"] == "websocket.disconnect":
        raise _Refused(1000, "")
    text = message.get("text")
    if text is None:
        raise _Refused(protocol.CLOSE_PROTOCOL, "send a join message first")
    try:
        parsed = protocol.parse_client_message(text)
    except protocol.BadMessage as error:
        raise _Refused(protocol.CLOSE_PROTOCOL, f"bad join: {error}") from None
    if not isinstance(parsed, protocol.Join):
        raise _Refused(protocol.CLOSE_PROTOCOL, "send a join message first")
    if parsed.v != protocol.PROTOCOL_VERSION:
        raise _Refused(
            protocol.CLOSE_PROTOCOL,
            f"protocol version {parsed.v} not supported (server: {protocol.PROTOCOL_VERSION})",
        )
    return parsed


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code, protocol.close_reason(reason))


async def _fail(websocket: WebSocket, message: dict[str, Any] | None) -> None:
    """After an unexpected failure (already logged): tell the client, close with 1011.

    ``message`` is the room protocol's ``error``; the editor socket speaks
    y-websocket and gets the close code only.
    """
    if message is not None and websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.send_text(json.dumps(message))
    await _close(websocket, protocol.CLOSE_INTERNAL, "internal error")


async def _serve_editor(websocket: WebSocket, member: Member, doc_name: str) -> None:
    """The y-websocket protocol for one member, until either side or the member leaves."""
    closed = asyncio.get_running_loop().create_future()

    def on_leave() -> None:
        if not closed.done():
            closed.set_result(None)

    member.on_leave.append(on_leave)
    editor: EditorSync = websocket.app.state.editor
    serving = asyncio.create_task(editor.serve(websocket, doc_name, read_only=not member.can_write))
    try:
        await asyncio.wait({serving, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await serving
        with contextlib.suppress(ValueError):
            member.on_leave.remove(on_leave)
        await _close(websocket, protocol.CLOSE_FORBIDDEN, "the member left the room")


def _color_for(room: Room, member: Member) -> str:
    used = {m.color for m in room.members.values()}
    free = [c for c in COLORS if c not in used]
    return free[0] if free else COLORS[len(room.members) % len(COLORS)]


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def _origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    """Browsers always send Origin; it must be this server's own or a configured one."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True  # not a browser: no ambient credentials to abuse
    allowed = set(settings.allowed_origins)
    host = websocket.headers.get("host", "")
    allowed |= {f"http://{host}", f"https://{host}"}
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        allowed.add(f"{parts.scheme}://{parts.netloc}")
    return origin.rstrip("/") in allowed


def _page(title: str, text: str) -> str:
    return (
        "<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{html.escape(title)}</title>"
        "<body style='font-family:system-ui;max-width:40em;margin:4em auto;padding:0 1em'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    )


def _capacity_page(manager: RoomManager) -> HTMLResponse:
    text = (
        f"All {manager.max_sandboxes} sandboxes this server may run are in use. "
        "Rooms that are open keep working; please try again in a few minutes."
    )
    return HTMLResponse(
        _page("Server at capacity", text), status_code=503, headers={"Retry-After": "30"}
    )


class _HttpGuard:
    """Answers an HTTP request whose handler failed unexpectedly with a plain 500.

    The failure is logged here, once, and not passed on: Starlette's error
    middleware would re-raise it to uvicorn, which logs it a second time as
    "Exception in ASGI application". (The WebSocket handlers guard themselves:
    they know the room and close with 1011.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("%s %.200s failed", scope["method"], scope["path"])
            if started:
                return  # the client sees the response cut short
            body = json.dumps({"error": "internal", "message": INTERNAL_ERROR}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            with contextlib.suppress(Exception):
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})


class _ClientFaultFilter(logging.Filter):
    """uvicorn logs a client's invalid UTF-8 text frame as an error with a traceback.

    The fault is the client's, which gets close code 1007: one warning line says
    enough, and a traceback in the log stays the sign of a server bug.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Invalid UTF-8 sequence received from client.":
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


async def _expire_rooms(manager: RoomManager, editor: EditorSync) -> None:
    while True:
        with contextlib.suppress(Exception):
            removed = await manager.expire_old_rooms()
            for room_id in removed:
                await editor.delete(room_id)
            if removed:
                log.info("deleted %d room(s) unused for %.0f days", len(removed),
                         manager.settings.room_retention / 86400)  # fmt: skip
        await asyncio.sleep(EXPIRE_INTERVAL)

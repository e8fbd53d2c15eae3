"""What the routes share: the app's parts, the origin rule, WebSocket settings, plain pages."""

from __future__ import annotations

import contextlib
import html
import json
from typing import cast
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketState
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from replroom import protocol
from replroom.config import Settings
from replroom.editor import EditorSync
from replroom.room import RoomManager

INTERNAL_ERROR = "internal server error (logged); try again"
ROOM_SOCKET_PATH = "/ws/rooms"  # the room WebSocket: ROOM_SOCKET_PATH/{room id}


def settings_of(connection: HTTPConnection) -> Settings:
    return cast(Settings, connection.app.state.settings)


def manager_of(connection: HTTPConnection) -> RoomManager:
    return cast(RoomManager, connection.app.state.manager)


def editor_of(connection: HTTPConnection) -> EditorSync:
    return cast(EditorSync, connection.app.state.editor)


def origin_allowed(websocket: WebSocket) -> bool:
    """Browsers always send Origin; it must be this server's own or a configured one."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True  # not a browser: no ambient credentials to abuse
    settings = settings_of(websocket)
    allowed = set(settings.allowed_origins)
    host = websocket.headers.get("host", "")
    allowed |= {f"http://{host}", f"https://{host}"}
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        allowed.add(f"{parts.scheme}://{parts.netloc}")
    return origin.rstrip("/") in allowed


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, without permessage-deflate on the room socket.

    Browsers always offer compression. On the room socket it costs each member
    a compressor (tens of KiB) and time on every small frame of terminal
    output, for no gain on frames of a few bytes; the editor socket keeps it
    for its document syncs (docs/protocol.md, "Compression"). uvicorn agrees
    on extensions before the app sees the socket and has one setting for all
    sockets, so the choice by path is made here, as the handshake is accepted.
    """

    def handle_connect(self, event: Request) -> None:
        if event.path.startswith(ROOM_SOCKET_PATH + "/"):
            self.conn.available_extensions = []
        super().handle_connect(event)


async def close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close unless already closed; a failure to close means the client is gone."""
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code, protocol.close_reason(reason))


async def fail(websocket: WebSocket, message: protocol.ErrorMessage | None) -> None:
    """After an unexpected failure (already logged): tell the client, close with 1011.

    ``message`` is the room protocol's ``error``; the editor socket speaks
    y-websocket and gets the close code only.
    """
    if message is not None and websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.send_text(json.dumps(message))
    await close(websocket, protocol.CloseCode.INTERNAL, "internal error")


def page(title: str, text: str) -> str:
    """A minimal HTML page, for what the web client cannot show (no room, no capacity)."""
    return (
        "<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{html.escape(title)}</title>"
        "<body style='font-family:system-ui;max-width:40em;margin:4em auto;padding:0 1em'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    )

"""What the routes share: the app's parts, the origin rule, WebSocket settings, plain pages."""

from __future__ import annotations

import contextlib
import functools
import html
import json
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketState
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

from replroom import protocol
from replroom.config import Settings
from replroom.editor import EditorSync
from replroom.room import RoomManager

INTERNAL_ERROR = "internal server error (logged); try again"
ROOM_SOCKET_PATH = "/ws/rooms"  # the room WebSocket: ROOM_SOCKET_PATH/{room id}
SEND_NOW = "replroom.send_now"  # the ASGI extension of WebSocketProtocol (below)


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
    """uvicorn's WebSocket protocol, with two changes for the room socket.

    No permessage-deflate: browsers always offer it, but on the room socket
    it costs each member a compressor (tens of KiB) and time on every small
    frame of terminal output, for no gain on frames of a few bytes; the editor
    socket keeps it for its document syncs (docs/protocol.md, "Compression").
    uvicorn agrees on extensions before the app sees the socket, with one
    setting for all sockets, so the choice by path is made here.

    And an ASGI extension, :data:`SEND_NOW` (see :func:`send_now`): every
    chunk of terminal output (and many a message: who types now) goes to every
    member, and through ASGI that is one task woken and one frame encoded per
    member; this writes the frame, encoded once, to each member's socket
    directly when it can take it.
    """

    def handle_connect(self, event: Request) -> None:
        room_socket = event.path.startswith(ROOM_SOCKET_PATH + "/")
        if room_socket:
            self.conn.available_extensions = []
        super().handle_connect(event)
        if room_socket and self.response.status_code == 101:
            self.scope["extensions"][SEND_NOW] = {"send": self._send_now}

    def handle_parser_exception(self) -> None:
        """Fail the connection as websockets does: a close frame, then FIN, then wait.

        uvicorn closes the TCP connection at once. While the rest of an
        oversized message is still arriving (a paste over the frame limit,
        sent without compression), that resets the connection, and the client
        never reads the close frame: it sees 1006 instead of 1009. So what
        still arrives is read and dropped (the parser discards it) until the
        client closes, or ``close_timeout`` passes.
        """
        if self.close_sent:  # more data after the failure: already discarded
            return
        failure = self.conn.close_sent
        code, reason = (failure.code, failure.reason) if failure else (1006, "")
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

    def _send_now(self, message: bytes | str) -> bool:
        if (
            self.close_sent
            or self.disconnected
            or self.transport.is_closing()
            or not self.writable.is_set()  # the client is not reading fast enough
            or self.conn.state is not State.OPEN
            or self.conn.extensions
        ):
            return False
        self.transport.write(_frame(message))
        return True


@functools.lru_cache(maxsize=1)
def _frame(message: bytes | str) -> bytes:
    """A message as one unmasked frame (binary for bytes, text for str); the one just
    sent to a member goes to the next."""
    if isinstance(message, str):
        return Frame(Opcode.TEXT, message.encode()).serialize(mask=False)
    return Frame(Opcode.BINARY, message).serialize(mask=False)


def send_now(websocket: WebSocket) -> Callable[[bytes | str], bool] | None:
    """A way to send messages on ``websocket`` without waiting, if the server has one.

    It sends the message and returns True if the connection takes it at once;
    False if it cannot (the client is slow, the socket is closing): then send
    it the ASGI way, which waits. Sent this way, a message must not overtake
    one sent the ASGI way that has not completed.
    """
    extension = websocket.scope.get("extensions", {}).get(SEND_NOW)
    return cast(Callable[[bytes | str], bool], extension["send"]) if extension else None


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

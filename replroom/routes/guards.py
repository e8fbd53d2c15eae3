"""Failures logged once: the HTTP guard, and uvicorn's log of a client's bad UTF-8."""

from __future__ import annotations

import contextlib
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from replroom.protocol import ErrorCode
from replroom.routes.common import INTERNAL_ERROR

log = logging.getLogger(__name__)


class HttpGuard:
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
            body = json.dumps({"error": ErrorCode.INTERNAL, "message": INTERNAL_ERROR}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            with contextlib.suppress(Exception):
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})


class ClientFaultFilter(logging.Filter):
    """uvicorn logs a client's invalid UTF-8 text frame as an error with a traceback.

    The fault is the client's, which gets close code 1007: one warning line says
    enough, and a traceback in the log stays the sign of a server bug.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Invalid UTF-8 sequence received from client.":
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install_client_fault_filter() -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientFaultFilter) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(ClientFaultFilter())

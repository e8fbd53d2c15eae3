"""One editor client's connection: checked messages in, a bounded outbox out.

Sends never block or raise: they go to an outbox that one writer task drains,
so a slow or vanished client cannot stall its document's other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketState

from replroom import protocol
from replroom.editor.wire import BadMessage, Message, parse_message
from replroom.protocol import CloseCode

log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = protocol.MAX_EDITOR_MESSAGE
"""Largest y-websocket message a client may send; bigger ones close the connection."""
MAX_OUTBOX = protocol.MAX_EDITOR_BEHIND
"""Output queued for one client; a client that falls further behind is disconnected."""


class ChannelState(enum.Enum):
    OPEN = "open"
    """Receiving, and sending what is queued."""
    CLOSING = "closing"
    """A close was asked for: nothing more is received or sent but the close frame."""
    CLOSED = "closed"
    """The close frame went out."""
    RELEASED = "released"
    """Serving ended without a close: what is queued goes out, the socket stays open
    for its owner (who closes it with a code of their own)."""
    GONE = "gone"
    """The client disconnected or the socket failed: nothing more goes either way."""


_LEGAL: dict[ChannelState, frozenset[ChannelState]] = {
    ChannelState.OPEN: frozenset({ChannelState.CLOSING, ChannelState.RELEASED, ChannelState.GONE}),
    ChannelState.CLOSING: frozenset({ChannelState.CLOSED, ChannelState.GONE}),
    ChannelState.RELEASED: frozenset({ChannelState.GONE}),
    ChannelState.CLOSED: frozenset(),
    ChannelState.GONE: frozenset(),
}


class ChannelStateError(RuntimeError):
    """A transition the connection's lifecycle does not have (a bug in the server)."""


class Channel:
    """An accepted Starlette WebSocket speaking y-websocket for one document."""

    def __init__(
        self,
        websocket: WebSocket,
        doc_name: str,
        *,
        read_only: bool | Callable[[], bool],
        on_refused: Callable[[], None] | None = None,
        author: Callable[[], tuple[str, str, str]] | None = None,
    ) -> None:
        self.doc_name = doc_name
        # Who the server knows this client to be, (member id, name, colour) at the moment
        # asked: the recordings note it beside the updates this client makes.
        self.author = author
        # A callable is asked at each update: a member's write access changes while connected.
        self._read_only = read_only
        self._on_refused = on_refused
        self.awareness_ids: set[int] = set()
        """The awareness client ids this connection announced and has not withdrawn."""
        self._state = ChannelState.OPEN
        self._websocket = websocket
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queued = 0
        self._close_frame: tuple[int, str] | None = None
        self._stopped = asyncio.Event()  # set when the state leaves OPEN
        self._receiving: asyncio.Future[Any] | None = None
        self._stop_waiter: asyncio.Future[Any] | None = None

    @property
    def read_only(self) -> bool:
        """Whether the client's document updates are dropped (it may still read and be seen)."""
        return self._read_only() if callable(self._read_only) else self._read_only

    def refused(self) -> None:
        """A document update of this read-only client was dropped: tell whoever wants to know."""
        if self._on_refused is not None:
            self._on_refused()

    @property
    def state(self) -> ChannelState:
        return self._state

    @property
    def closed(self) -> bool:
        """Whether this connection no longer receives (and takes nothing more to send)."""
        return self.state is not ChannelState.OPEN

    async def messages(self) -> AsyncIterator[Message]:
        """The client's checked messages until the connection stops being open.

        A malformed one closes the connection (1007) and ends the iteration.
        """
        while (data := await self._receive()) is not None:
            try:
                yield parse_message(data)
            except BadMessage as error:
                self.refuse(CloseCode.BAD_DATA, f"malformed y-protocol message: {error}")

    def enqueue(self, message: bytes) -> None:
        """Queue a message for the client; one that fell too far behind is disconnected."""
        if self.state is not ChannelState.OPEN:
            return
        if self._queued + len(message) > MAX_OUTBOX:
            self.refuse(CloseCode.TOO_SLOW, "too far behind: reconnect")
            return
        self._queued += len(message)
        self._outbox.put_nowait(message)

    def close(self, code: int, reason: str) -> None:
        """Stop receiving at once and have the writer close the WebSocket (queued output
        is dropped). Does nothing if the connection is no longer open."""
        if self.state is ChannelState.OPEN:
            self._close_frame = (code, protocol.close_reason(reason))
            self._become(ChannelState.CLOSING)

    def refuse(self, code: int, reason: str) -> None:
        """Close because of what the client did, and log it."""
        if self.state is ChannelState.OPEN:
            log.warning("editor %s: closing a client's connection (%d %s)", self.doc_name, code,
                        reason)  # fmt: skip
            self.close(code, reason)

    def release(self) -> None:
        """Stop receiving and let the writer send what is queued, leaving the socket open.

        Serving calls this when it ends; after a close, or if the client is gone,
        it does nothing.
        """
        for pending in (self._receiving, self._stop_waiter):
            if pending is not None:
                pending.cancel()
        self._receiving = self._stop_waiter = None
        if self.state is ChannelState.OPEN:
            self._become(ChannelState.RELEASED)

    async def run_writer(self) -> None:
        """Send the outbox until the connection stops, then the close frame if one was asked."""
        try:
            while self.state in (ChannelState.OPEN, ChannelState.RELEASED):
                item = await self._outbox.get()
                if item is None:  # the state changed; released: all before it went out
                    if self.state is ChannelState.RELEASED:
                        break
                    continue
                self._queued -= len(item)
                await self._websocket.send_bytes(item)
            if self.state is ChannelState.CLOSING and self._close_frame is not None:
                await close_quietly(self._websocket, *self._close_frame)
                if self.state is ChannelState.CLOSING:
                    self._become(ChannelState.CLOSED)
        except Exception:
            self._went_away()

    def _become(self, state: ChannelState) -> None:
        """The one place the state changes; an illegal change is a bug and raises."""
        if state not in _LEGAL[self.state]:
            raise ChannelStateError(
                f"editor connection to {self.doc_name}: cannot become {state.value}"
                f" when {self.state.value}"
            )
        self._state = state
        self._stopped.set()
        self._outbox.put_nowait(None)  # wakes the writer

    def _went_away(self) -> None:
        if self.state in (ChannelState.OPEN, ChannelState.CLOSING, ChannelState.RELEASED):
            self._become(ChannelState.GONE)

    async def _receive(self) -> bytes | None:
        """The next binary message, or None once the connection stops being open."""
        if self.state is not ChannelState.OPEN:
            return None
        if self._receiving is None:
            self._receiving = asyncio.ensure_future(self._websocket.receive())
        if self._stop_waiter is None:
            self._stop_waiter = asyncio.ensure_future(self._stopped.wait())
        await asyncio.wait((self._receiving, self._stop_waiter), return_when="FIRST_COMPLETED")
        if self.state is not ChannelState.OPEN:
            return None  # nothing more from a client being closed, e.g. in a deleted room
        received, self._receiving = self._receiving, None
        try:
            message = received.result()
        except Exception:
            self._went_away()
            return None
        if message["type"] == "websocket.disconnect":
            self._went_away()
            return None
        data = message.get("bytes")
        if data is None:
            self.refuse(CloseCode.UNSUPPORTED, "y-websocket messages are binary")
            return None
        if len(data) > MAX_MESSAGE_SIZE:
            limit = protocol.size_text(MAX_MESSAGE_SIZE)
            self.refuse(CloseCode.TOO_BIG, f"message over {limit}")
            return None
        return bytes(data)


async def close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    """Close a WebSocket that may already be closed or broken."""
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code, reason)

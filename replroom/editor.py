"""The shared editor: one Yjs document per room and language, synced with y-websocket clients.

Browsers run the standard ``y-websocket`` client against ``serve()``, which speaks
the y-protocols sync and awareness messages through pycrdt-websocket's ``YRoom``.
Around it this module adds what pycrdt-websocket 0.16.5 lacks:

- a Channel adapter over Starlette's WebSocket, so that the app authenticates the
  connection itself and spectators' document updates are dropped here;
- rooms loaded from SQLite *before* they are marked ready (a client never syncs an
  empty document over stored content), every update committed before it is
  broadcast, and rooms unloaded (after a snapshot) when their last client leaves;
- one shared load per document, so two clients opening a new document at the same
  moment both get a reply (0.16.5 leaves the second waiting for ever);
- limits on message size, document size and queued output, and malformed input
  closing only the connection that sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
from pycrdt import Channel, Doc, Encoder, Text, create_awareness_message, create_update_message
from pycrdt.store import BaseYStore, YDocNotFound
from pycrdt.websocket import WebsocketServer, YRoom
from starlette.websockets import WebSocket, WebSocketState

from replroom import protocol
from replroom.storage import make_private

log = logging.getLogger(__name__)

TEXT_NAME = "codemirror"
"""The Y.Text the web client binds CodeMirror to: ``ydoc.getText("codemirror")``."""

MiB = 1024 * 1024
MAX_MESSAGE_SIZE = 1 * MiB
"""Largest y-websocket message a client may send; bigger ones close the connection."""
MAX_DOC_SIZE = 2 * MiB
"""Largest encoded document (about that much text); updates beyond it are refused."""
MAX_OUTBOX = 8 * MiB
"""Output queued for one client; a client that falls further behind is disconnected."""
MAX_AWARENESS_ENTRIES = 256
WRITER_GRACE = 5.0  # seconds to finish sending (and the close frame) when serve() ends
COMPACT_ROWS = 1000
COMPACT_BYTES = 4 * MAX_DOC_SIZE
MAX_DOC_NAME = 200

CLOSE_UNSUPPORTED = 1003  # a text frame: y-websocket sends binary frames only
CLOSE_BAD_MESSAGE = 1007  # a malformed y-protocol message
CLOSE_POLICY = 1008  # an unusable document name
CLOSE_ERROR = protocol.CLOSE_INTERNAL  # the server failed; the client may reconnect
CLOSE_SLOW = 1013  # the client fell too far behind; it resyncs when it reconnects
CLOSE_DOC_TOO_LARGE = 4413  # the update would make the document exceed MAX_DOC_SIZE

# y-protocols message types (lib0 varuints, one byte each for these values).
MESSAGE_SYNC = 0
MESSAGE_AWARENESS = 1
SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

EMPTY_UPDATE = b"\x00\x00"
_MAX_VAR_UINT = 2**53  # what a JavaScript peer can represent

T = TypeVar("T")


class EditorSync:
    """The editor documents of all rooms: serves y-websocket clients and persists to SQLite."""

    def __init__(
        self, db_path: Path, *, on_store_failure: Callable[[str], None] | None = None
    ) -> None:
        """``on_store_failure(doc_name)`` is called when a document's updates cannot be
        stored (a full disk), once until storing works again."""
        self._db_path = Path(db_path)
        self._on_store_failure = on_store_failure
        self._database: _Database | None = None
        self._server: _EditorServer | None = None
        self._server_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the database and start the rooms' task group (the app's lifespan calls this)."""
        if self._server is not None:
            return
        database = _Database(self._db_path)
        await database.open()
        server = _EditorServer(database)
        server.on_store_failure = self._on_store_failure
        self._server_task = asyncio.create_task(server.start(), name="editor-server")
        await server.started.wait()
        self._database, self._server = database, server

    async def stop(self) -> None:
        """Disconnect every client (1012), save and unload every document, close the database."""
        server, database, task = self._server, self._database, self._server_task
        if server is None or database is None or task is None:
            return
        self._server = self._database = self._server_task = None
        try:
            await server.close()
            await server.stop()
            await task
        finally:
            await database.close()

    async def serve(self, websocket: WebSocket, doc_name: str, *, read_only: bool) -> None:
        """Run the y-websocket protocol on an accepted WebSocket until either side closes it.

        With ``read_only`` the client gets the document, its updates and awareness, and
        may send sync step 1 and awareness; document updates it sends are dropped.
        """
        if not _valid_doc_name(doc_name):
            await _close_quietly(websocket, CLOSE_POLICY, "bad document name")
            return
        server = self._server
        if server is None or server.closing:
            await _close_quietly(websocket, protocol.CLOSE_SHUTDOWN, "the editor is not running")
            return
        channel = _Channel(websocket, doc_name, read_only=read_only)
        writer = asyncio.create_task(channel.run_writer(), name=f"editor-writer {doc_name}")
        try:
            await server.serve(channel)
            if not channel.closed:
                # YRoom.serve logs and swallows its own failures: the client is still there.
                channel.close(CLOSE_ERROR, "internal error")
        except _Unavailable:
            channel.close(protocol.CLOSE_SHUTDOWN, "the server is restarting")
        except Exception:
            log.exception("editor %s: serving a client failed", doc_name)
            channel.close(CLOSE_ERROR, "internal error")
        except BaseException as error:
            if not _is_panic(error):
                raise
            channel.close(CLOSE_ERROR, "internal error")
        finally:
            channel.finish()
            # A peer that stopped reading must not hold this up for ever.
            await asyncio.wait({writer}, timeout=WRITER_GRACE)
            writer.cancel()

    async def text(self, doc_name: str) -> str:
        """The current content of the document's shared text; "" for an unknown document."""
        server, database = self._server, self._database
        if server is None or database is None:
            raise RuntimeError("EditorSync is not started")
        room = await server.loaded_room(doc_name)
        if room is not None:
            return _text_of(room.ydoc)
        doc = Doc()
        _apply_stored(doc, await database.load(doc_name), doc_name)
        return _text_of(doc)

    async def delete(self, room_id: str) -> None:
        """Drop every document of a room, in memory and in SQLite, disconnecting its clients."""
        server = self._server
        if server is None:
            raise RuntimeError("EditorSync is not started")
        await server.delete(room_id)


# The WebSocket adapter.


class _Unavailable(Exception):
    """The editor is stopping: the client should come back later."""


class _BadMessage(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Message:
    type: int
    subtype: int  # the sync step for MESSAGE_SYNC, else 0
    payload: bytes
    awareness: tuple[tuple[int, bool], ...] = ()  # (client id, has a state) per entry


class _Channel:
    """pycrdt's Channel over an accepted Starlette WebSocket, with the read-only filter.

    Sends never block or raise: they go to a bounded outbox that one writer task
    drains, so a slow or vanished client cannot stall the room's broadcast.
    """

    def __init__(self, websocket: WebSocket, path: str, *, read_only: bool) -> None:
        self._websocket = websocket
        self._path = path
        self.read_only = read_only
        self.room: _EditorRoom | None = None
        self.awareness_ids: set[int] = set()
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queued = 0
        self._closed = asyncio.Event()
        self._close_with: tuple[int, str] | None = None
        self._gone = False
        self._receiving: asyncio.Future[Any] | None = None
        self._closed_waiter: asyncio.Future[Any] | None = None

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> bytes:
        while True:
            data = await self._receive()
            if data is None:
                raise StopAsyncIteration
            try:
                message = _parse_message(data)
            except _BadMessage as error:
                self._refuse(CLOSE_BAD_MESSAGE, f"malformed y-protocol message: {error}")
                raise StopAsyncIteration from None
            if message.type == MESSAGE_SYNC and message.subtype != SYNC_STEP1:
                if self.read_only:
                    continue
                if self.room is not None and not self.room.admit(message.payload):
                    limit = MAX_DOC_SIZE // MiB
                    self._refuse(CLOSE_DOC_TOO_LARGE, f"document too large (limit {limit} MiB)")
                    raise StopAsyncIteration
            elif message.type == MESSAGE_AWARENESS:
                for client_id, has_state in message.awareness:
                    if has_state:
                        self.awareness_ids.add(client_id)
                    else:
                        self.awareness_ids.discard(client_id)
            elif message.type != MESSAGE_SYNC:
                continue  # auth or awareness queries: nothing a client may ask of this server
            return data

    async def recv(self) -> bytes:
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise ConnectionError("the editor connection is closed") from None

    async def send(self, message: bytes) -> None:
        self.enqueue(message)

    def enqueue(self, message: bytes) -> None:
        if self._closed.is_set():
            return
        if self._queued + len(message) > MAX_OUTBOX:
            self._refuse(CLOSE_SLOW, "too far behind: reconnect")
            return
        self._queued += len(message)
        self._outbox.put_nowait(message)

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to close the WebSocket; receiving stops at once."""
        if self._close_with is None and not self._gone:
            self._close_with = (code, protocol.close_reason(reason))
        self._closed.set()
        self._outbox.put_nowait(None)

    def finish(self) -> None:
        """Stop receiving and let the writer end.

        Without a close asked for (e.g. the caller cancelled ``serve()``), the
        WebSocket stays open: the caller owns it and closes it with its own code.
        """
        for pending in (self._receiving, self._closed_waiter):
            if pending is not None:
                pending.cancel()
        self._receiving = self._closed_waiter = None
        if not self._closed.is_set():
            self._closed.set()
            self._outbox.put_nowait(None)

    async def run_writer(self) -> None:
        try:
            while self._close_with is None:
                item = await self._outbox.get()
                if item is None:
                    break
                self._queued -= len(item)
                await self._websocket.send_bytes(item)
        except Exception:
            self._went_away()
        if self._close_with is not None and not self._gone:
            await _close_quietly(self._websocket, *self._close_with)

    def _refuse(self, code: int, reason: str) -> None:
        log.warning("editor %s: closing a client's connection (%d %s)", self._path, code, reason)
        self.close(code, reason)

    def _went_away(self) -> None:
        self._gone = True
        self._closed.set()
        self._outbox.put_nowait(None)

    async def _receive(self) -> bytes | None:
        if self._closed.is_set():
            return None
        if self._receiving is None:
            self._receiving = asyncio.ensure_future(self._websocket.receive())
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.ensure_future(self._closed.wait())
        await asyncio.wait((self._receiving, self._closed_waiter), return_when="FIRST_COMPLETED")
        if self._closed.is_set():
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
            self._refuse(CLOSE_UNSUPPORTED, "y-websocket messages are binary")
            return None
        if len(data) > MAX_MESSAGE_SIZE:
            limit = MAX_MESSAGE_SIZE // MiB
            self._refuse(protocol.CLOSE_TOO_BIG, f"message over {limit} MiB")
            return None
        return bytes(data)


def _read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise _BadMessage("truncated")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > _MAX_VAR_UINT:
                raise _BadMessage("number out of range")
            return value, pos
        shift += 7
        if shift > 56:
            raise _BadMessage("number out of range")


def _read_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = _read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise _BadMessage("truncated")
    return data[pos:end], end


def _parse_message(data: bytes) -> _Message:
    """Check a whole client message, so that pycrdt only ever sees well-formed envelopes.

    Awareness payloads are relayed to every client before pycrdt parses them, so
    they are checked completely here; sync payloads are checked by pycrdt itself
    (an error there closes the connection through the room's message error hook).
    """
    message_type, pos = _read_var_uint(data, 0)
    if message_type == MESSAGE_SYNC:
        subtype, pos = _read_var_uint(data, pos)
        if subtype not in (SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE):
            raise _BadMessage(f"unknown sync message {subtype}")
        payload, pos = _read_var_bytes(data, pos)
        if pos != len(data):
            raise _BadMessage("trailing bytes")
        return _Message(message_type, subtype, payload)
    if message_type == MESSAGE_AWARENESS:
        payload, pos = _read_var_bytes(data, pos)
        if pos != len(data):
            raise _BadMessage("trailing bytes")
        return _Message(message_type, 0, payload, _parse_awareness(payload))
    return _Message(message_type, 0, b"")


def _parse_awareness(payload: bytes) -> tuple[tuple[int, bool], ...]:
    count, pos = _read_var_uint(payload, 0)
    if count > MAX_AWARENESS_ENTRIES:
        raise _BadMessage("too many awareness entries")
    entries = []
    for _ in range(count):
        client_id, pos = _read_var_uint(payload, pos)
        _clock, pos = _read_var_uint(payload, pos)
        raw, pos = _read_var_bytes(payload, pos)
        try:
            state = json.loads(raw.decode()) if raw else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _BadMessage("awareness state is not JSON") from None
        entries.append((client_id, state is not None))
    if pos != len(payload):
        raise _BadMessage("trailing bytes in awareness")
    return tuple(entries)


# Rooms and their persistence.


class _DocStore(BaseYStore):
    """pycrdt.store's interface over the shared editor database, for one document.

    Not SQLiteYStore: that opens a connection per document, creates its schema
    racily when several stores start on a new file, and its history squash writes
    an empty document unless compression is configured (pycrdt-store 0.1.5).
    """

    def __init__(
        self,
        path: str,
        metadata_callback: Callable[[], Awaitable[bytes] | bytes] | None = None,
        log: logging.Logger | None = None,
        *,
        database: _Database,
    ) -> None:
        self.path = path
        self.metadata_callback = metadata_callback
        self.log = log or logging.getLogger(__name__)
        self._database = database

    async def write(self, data: bytes) -> None:
        await self._database.append(self.path, [data])

    async def write_many(self, updates: list[bytes]) -> None:
        await self._database.append(self.path, updates)

    async def replace(self, snapshot: bytes) -> None:
        await self._database.replace(self.path, snapshot)

    async def read(self) -> AsyncIterator[tuple[bytes, bytes, float]]:
        rows = await self._database.load(self.path)
        if not rows:
            raise YDocNotFound
        for update, created_at in rows:
            yield update, b"", created_at


class _EditorRoom(YRoom):
    """A YRoom that commits every update to its store before anyone sees it."""

    def __init__(self, name: str, store: _DocStore) -> None:
        super().__init__(ready=False, ystore=store, exception_handler=_log_exception, log=log)
        self.name = name
        self.store = store
        self.users = 0
        self.channels: set[_Channel] = set()
        self.shutdown: asyncio.Task[None] | None = None
        self.size = 0  # about len(ydoc.get_update()); measured exactly near the limit
        self.stored_rows = 0
        self.stored_bytes = 0
        self.changed = False  # updates since the last snapshot
        self.broken = False
        self.on_message_error = self._message_failed
        self.on_store_failure: Callable[[str], None] | None = None
        self.store_failing = False

    def restore(self, rows: list[tuple[bytes, float]]) -> None:
        """Apply stored updates before the room starts, so that none is echoed or stored again."""
        _apply_stored(self.ydoc, rows, self.name)
        self.size = len(self.ydoc.get_update())
        self.stored_rows = len(rows)
        self.stored_bytes = sum(len(update) for update, _ in rows)

    def admit(self, update: bytes) -> bool:
        """Whether the document stays within MAX_DOC_SIZE with this update applied."""
        if self.size + len(update) <= MAX_DOC_SIZE:
            self.size += len(update)
            return True
        # An update adds about its own size to the encoded state, so only near
        # the limit is the exact (O(document)) measurement needed.
        state = self.ydoc.get_update()
        self.size = len(state)
        if self.size + len(update) <= MAX_DOC_SIZE:
            self.size += len(update)
            return True
        trial = Doc()
        trial.apply_update(state)
        try:
            trial.apply_update(update)
        except ValueError:
            return True  # malformed: applying it fails and closes the connection
        size = len(trial.get_update())
        if size > MAX_DOC_SIZE:
            return False
        self.size = size
        return True

    async def compact(self) -> None:
        """Replace the stored history with one snapshot of the document."""
        snapshot = self.ydoc.get_update()
        self.changed = False
        if snapshot == EMPTY_UPDATE and self.stored_rows == 0:
            return
        await self.store.replace(snapshot)
        self.stored_rows, self.stored_bytes = 1, len(snapshot)

    async def unload(self, *, persist: bool) -> None:
        try:
            if persist and self.changed:
                await self.compact()
        except Exception:
            log.exception("editor %s: could not save the document's snapshot", self.name)
        finally:
            if self._task_group is not None:
                await self.stop()
                # YRoom.stop leaves its update stream open (a ResourceWarning each time).
                self._update_send_stream.close()

    def forget_awareness(self, channel: _Channel) -> None:
        """Remove the cursors a departed client announced, as y-websocket's own server does.

        Ids that another connection also claims (the same tab, reconnected) stay.
        """
        claimed = {
            i for other in self.channels if other is not channel for i in other.awareness_ids
        }
        states, meta = self.awareness.states, self.awareness.meta
        gone = [i for i in channel.awareness_ids if i in states and i not in claimed]
        if not gone:
            return
        encoder = Encoder()
        encoder.write_var_uint(len(gone))
        for client_id in gone:
            encoder.write_var_uint(client_id)
            encoder.write_var_uint(meta[client_id]["clock"] + 1)
            encoder.write_var_string("null")
        update = encoder.to_bytes()
        self.awareness.apply_awareness_update(update, "disconnect")
        message = create_awareness_message(update)
        for client in self._channels_served():
            client.enqueue(message)

    def close_clients(self, code: int, reason: str) -> None:
        for channel in list(self.channels):
            channel.close(code, reason)

    async def _broadcast_updates(self) -> None:
        async with self._update_receive_stream:
            async for first in self._update_receive_stream:
                batch = [first]
                with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                    while True:
                        batch.append(self._update_receive_stream.receive_nowait())
                batch = [update for update in batch if update != EMPTY_UPDATE]
                if not batch:
                    continue
                # Committed first: whatever a client has seen survives a kill -9.
                await self._persist(batch)
                for update in batch:
                    message = create_update_message(update)
                    for client in self._channels_served():
                        client.enqueue(message)

    async def _persist(self, batch: list[bytes]) -> None:
        self.changed = True
        try:
            await self.store.write_many(batch)
            self.stored_rows += len(batch)
            self.stored_bytes += sum(len(update) for update in batch)
            if self.stored_rows > COMPACT_ROWS or self.stored_bytes > COMPACT_BYTES:
                await self.compact()
        except Exception as error:
            # The document keeps the update; the snapshot on unload saves it.
            log.error("editor %s: could not store an update: %r", self.name, error)
            if not self.store_failing and self.on_store_failure is not None:
                self.on_store_failure(self.name)
            self.store_failing = True
        else:
            self.store_failing = False

    def _channels_served(self) -> list[_Channel]:
        return [cast(_Channel, client) for client in self.clients]

    def _message_failed(self, error: Exception, message: bytes, channel: Channel) -> bool:
        log.warning("editor %s: a client's message failed: %r", self.name, error)
        cast(_Channel, channel).close(CLOSE_BAD_MESSAGE, "malformed y-protocol message")
        return True


class _EditorServer(WebsocketServer):
    """pycrdt-websocket's server with stored rooms, one load per room, and unloading."""

    def __init__(self, database: _Database) -> None:
        super().__init__(
            rooms_ready=False, auto_clean_rooms=True, exception_handler=_log_exception, log=log
        )
        self._database = database
        self._loading: dict[str, asyncio.Future[_EditorRoom]] = {}
        self._deleting: dict[str, asyncio.Future[None]] = {}
        self._shutdowns: set[asyncio.Task[None]] = set()
        self.closing = False
        self.on_store_failure: Callable[[str], None] | None = None

    async def get_room(self, name: str) -> _EditorRoom:
        """The started, loaded room of a document.

        Concurrent callers share one load (a future, the lock of this design), and
        nobody gets a room that is being unloaded or deleted.
        """
        while True:
            if self.closing:
                raise _Unavailable
            deleting = self._deleting.get(_room_of(name))
            if deleting is not None:
                await asyncio.shield(deleting)
                continue
            room = self.rooms.get(name)
            if room is not None:
                room = cast(_EditorRoom, room)
                if room.shutdown is None:
                    return room
                with contextlib.suppress(Exception):
                    await asyncio.shield(room.shutdown)
                continue
            loading = self._loading.get(name)
            if loading is None:
                loading = asyncio.ensure_future(self._load(name))
                self._loading[name] = loading
                loading.add_done_callback(functools.partial(self._loaded, name))
            await asyncio.shield(loading)

    async def loaded_room(self, name: str) -> _EditorRoom | None:
        """The room of a document if it is in memory (or being loaded), without loading it."""
        loading = self._loading.get(name)
        if loading is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(loading)
        room = self.rooms.get(name)
        return cast(_EditorRoom, room) if room is not None else None

    async def serve(self, websocket: Channel) -> None:
        channel = cast(_Channel, websocket)
        room = await self.get_room(channel.path)
        # No await between get_room's return and this: a room with users is never unloaded.
        room.users += 1
        room.channels.add(channel)
        channel.room = room
        # The cursors already in the room, or the newcomer would see them only
        # when each member next moves (y-websocket's own server does the same).
        known = [i for i, state in room.awareness.states.items() if state]  # not the room's own
        if known:
            update = room.awareness.encode_awareness_update(known)
            channel.enqueue(create_awareness_message(update))
        try:
            await room.serve(channel)
        except BaseException as error:
            if _is_panic(error):
                # A Rust panic in pycrdt: the document may be inconsistent, so the
                # room goes without a snapshot (its committed updates stay stored).
                log.error("editor %s: pycrdt panicked", room.name, exc_info=error)
                room.broken = True
                room.close_clients(CLOSE_ERROR, "internal error")
            raise
        finally:
            room.channels.discard(channel)
            room.forget_awareness(channel)
            room.users -= 1
            if room.users == 0 and self.auto_clean_rooms:
                await asyncio.shield(self._shut(room, persist=not room.broken))

    async def delete(self, room_id: str) -> None:
        if room_id in self._deleting:
            await asyncio.shield(self._deleting[room_id])
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._deleting[room_id] = done
        try:
            # A load in flight would otherwise bring the rows back into memory.
            for name, loading in list(self._loading.items()):
                if _room_of(name) == room_id:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(loading)
            rooms = [
                cast(_EditorRoom, room)
                for name, room in self.rooms.items()
                if _room_of(name) == room_id
            ]
            shutdowns = []
            for room in rooms:
                room.close_clients(protocol.CLOSE_NOT_FOUND, "room not found")
                shutdowns.append(self._shut(room, persist=False))
            await asyncio.gather(*shutdowns, return_exceptions=True)
            await self._database.delete_room(room_id)
        finally:
            del self._deleting[room_id]
            done.set_result(None)

    async def close(self) -> None:
        """Disconnect everyone and save every room, before the task group stops."""
        self.closing = True
        for loading in list(self._loading.values()):
            with contextlib.suppress(Exception):
                await asyncio.shield(loading)
        for room in [cast(_EditorRoom, room) for room in self.rooms.values()]:
            room.close_clients(protocol.CLOSE_SHUTDOWN, "the server is restarting")
            self._shut(room, persist=not room.broken)
        await asyncio.gather(*self._shutdowns, return_exceptions=True)

    def _shut(self, room: _EditorRoom, *, persist: bool) -> asyncio.Task[None]:
        if room.shutdown is None:
            room.shutdown = asyncio.create_task(self._unload(room, persist=persist))
            self._shutdowns.add(room.shutdown)
            room.shutdown.add_done_callback(self._shutdowns.discard)
        return room.shutdown

    async def _unload(self, room: _EditorRoom, *, persist: bool) -> None:
        try:
            await room.unload(persist=persist)
        finally:
            if self.rooms.get(room.name) is room:
                del self.rooms[room.name]

    async def _load(self, name: str) -> _EditorRoom:
        room = _EditorRoom(name, _DocStore(name, database=self._database))
        room.on_store_failure = self.on_store_failure
        rows = await self._database.load(name)
        room.restore(rows)
        if len(rows) > 1:
            await room.compact()
        if self.closing or not self.running:
            raise _Unavailable
        await self.start_room(room)
        # Ready only now, with the stored content in place: the first client's
        # sync step 1 is answered from the full document.
        room.ready = True
        await room.ydoc_observed.wait()
        self.rooms[name] = room
        return room

    def _loaded(self, name: str, loading: asyncio.Future[_EditorRoom]) -> None:
        self._loading.pop(name, None)
        error = None if loading.cancelled() else loading.exception()
        if error is not None and not isinstance(error, _Unavailable):
            log.error("editor %s: loading failed", name, exc_info=error)


# The database.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS editor_updates (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    doc        TEXT NOT NULL,
    data       BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS editor_updates_doc ON editor_updates (doc, id);
"""


class _Database:
    """Yjs updates per document in one SQLite file, used from one worker thread.

    Every operation is one transaction run whole in that thread, so operations
    never interleave. WAL with synchronous=NORMAL: a commit survives the server
    process being killed (it is in the OS's page cache); only a power loss may
    take the last few. Rows are ordered by id, not by clock time.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="editor-db")
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=False)

    async def load(self, doc: str) -> list[tuple[bytes, float]]:
        return await self._run(self._load, doc)

    async def append(self, doc: str, updates: list[bytes]) -> None:
        await self._run(self._append, doc, updates)

    async def replace(self, doc: str, snapshot: bytes) -> None:
        await self._run(self._replace, doc, snapshot)

    async def delete_room(self, room_id: str) -> None:
        await self._run(self._delete_room, room_id)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the editor database is closed")
        return self._connection

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        make_private(self._path)
        connection = sqlite3.connect(self._path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.executescript(_SCHEMA)
        self._connection = connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _load(self, doc: str) -> list[tuple[bytes, float]]:
        rows = self._db.execute(
            "SELECT data, created_at FROM editor_updates WHERE doc = ? ORDER BY id", (doc,)
        )
        return [(bytes(data), created_at) for data, created_at in rows]

    def _append(self, doc: str, updates: list[bytes]) -> None:
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO editor_updates (doc, data, created_at) VALUES (?, ?, ?)",
                [(doc, update, now) for update in updates],
            )

    def _replace(self, doc: str, snapshot: bytes) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM editor_updates WHERE doc = ?", (doc,))
            db.execute(
                "INSERT INTO editor_updates (doc, data, created_at) VALUES (?, ?, ?)",
                (doc, snapshot, time.time()),
            )

    def _delete_room(self, room_id: str) -> None:
        # substr, not LIKE: room ids may contain "_", LIKE's wildcard.
        prefix = room_id + "/"
        with self._transaction() as db:
            db.execute(
                "DELETE FROM editor_updates WHERE doc = ? OR substr(doc, 1, ?) = ?",
                (room_id, len(prefix), prefix),
            )


# Helpers.


def _room_of(doc_name: str) -> str:
    return doc_name.partition("/")[0]


def _valid_doc_name(name: str) -> bool:
    return 0 < len(name) <= MAX_DOC_NAME and name.isprintable()


def _text_of(doc: Doc) -> str:
    try:
        return str(doc.get(TEXT_NAME, type=Text))
    except Exception:
        return ""  # the root exists with another type: no text to show


def _apply_stored(doc: Doc, rows: list[tuple[bytes, float]], name: str) -> None:
    for update, _ in rows:
        try:
            doc.apply_update(update)
        except ValueError:
            log.error("editor %s: skipping a stored update that does not decode", name)


def _is_panic(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return any(_is_panic(inner) for inner in error.exceptions)
    return type(error).__name__ == "PanicException"


def _log_exception(exception: Exception, logger: logging.Logger) -> bool:
    logger.error("editor room failed", exc_info=exception)
    return True


async def _close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code, reason)

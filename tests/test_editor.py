"""The shared editor: real uvicorn on 127.0.0.1, real y-websocket clients, a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import sqlite3
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import (
    Awareness,
    Doc,
    Encoder,
    Provider,
    Text,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    read_message,
)
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from replroom import editor as editor_module
from replroom import protocol
from replroom.editor import TEXT_NAME, ChannelState, EditorSync, wire
from replroom.editor import channel as editor_channel
from replroom.editor import document as editor_document
from replroom.editor import sync as editor_sync
from replroom.protocol import CloseCode

REPO = Path(__file__).resolve().parent.parent
WAIT = 10.0  # generous bound on any single wait; tests finish far sooner


# -- server -------------------------------------------------------------------


LEAVE: dict[str, asyncio.Event] = {}
# /switch/{name}: whether its clients are read-only now, and how many updates were refused.
READ_ONLY: dict[str, bool] = {}
REFUSED: dict[str, int] = {}


def make_app(editor: EditorSync) -> Starlette:
    async def yjs(websocket: WebSocket) -> None:
        await websocket.accept()
        read_only = websocket.query_params.get("ro") == "1"
        await editor.serve(websocket, websocket.path_params["name"], read_only=read_only)

    async def yjs_until_leave(websocket: WebSocket) -> None:
        # As the app does: serve() runs in a task, cancelled when the member
        # leaves the room, and the app closes the socket with its own code.
        await websocket.accept()
        name = websocket.path_params["name"]
        serving = asyncio.create_task(editor.serve(websocket, name, read_only=False))
        leave = asyncio.create_task(LEAVE.setdefault(name, asyncio.Event()).wait())
        await asyncio.wait({serving, leave}, return_when=asyncio.FIRST_COMPLETED)
        for task in (serving, leave):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await websocket.close(4003, "the member left the room")

    async def yjs_switched(websocket: WebSocket) -> None:
        # As the app does: write access asked at each update (an owner may lock the room).
        await websocket.accept()
        name = websocket.path_params["name"]

        def refused() -> None:
            REFUSED[name] = REFUSED.get(name, 0) + 1

        await editor.serve(
            websocket, name, read_only=lambda: READ_ONLY.get(name, False), on_refused=refused
        )

    return Starlette(
        routes=[
            WebSocketRoute("/yjs/{name:path}", yjs),
            WebSocketRoute("/switch/{name:path}", yjs_switched),
            WebSocketRoute("/leave/{name:path}", yjs_until_leave),
        ]
    )


def _listening_socket() -> socket.socket:
    # Listening before uvicorn runs: clients may connect at once, no readiness poll.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _uvicorn(editor: EditorSync) -> uvicorn.Server:
    config = uvicorn.Config(
        make_app(editor),
        log_level="warning",
        lifespan="off",
        ws_max_size=4 * protocol.MiB,  # so that the editor's own 1 MiB limit is what acts
    )
    return uvicorn.Server(config)


@asynccontextmanager
async def serving(editor: EditorSync) -> AsyncIterator[str]:
    """uvicorn in this process on a free port; yields the base URL of the editor route."""
    sock = _listening_socket()
    server = _uvicorn(editor)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/yjs"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def editor(tmp_path: Path) -> AsyncIterator[EditorSync]:
    made = EditorSync(tmp_path / "editor.sqlite3")
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


@pytest.fixture
async def url(editor: EditorSync) -> AsyncIterator[str]:
    async with serving(editor) as base:
        yield base


def serve_main(db_path: str) -> None:
    """A server process for the kill tests: prints its port, serves until signalled."""

    async def main() -> None:
        made = EditorSync(Path(db_path))
        await made.start()
        sock = _listening_socket()
        print(sock.getsockname()[1], flush=True)
        try:
            await _uvicorn(made).serve(sockets=[sock])
        finally:
            await made.stop()

    asyncio.run(main())


# -- a minimal y-websocket client ---------------------------------------------


class YClient:
    """What y-websocket does on the wire: sync step 1/2, updates, awareness.

    Local edits are sent explicitly (``insert``), so a test knows exactly what
    went out and in which order.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.doc = Doc()
        self.text = self.doc.get(TEXT_NAME, type=Text)
        self.awareness = Awareness(self.doc)
        self.synced = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._changed = asyncio.Event()
        self._clock = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, *, sync: bool = True) -> YClient:
        ws = await connect(url, max_size=16 * protocol.MiB, open_timeout=WAIT)
        client = cls(ws)
        await ws.send(create_sync_message(client.doc))
        if sync:
            await client.wait_synced()
        return client

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, bytes)
                if message[0] == 0:
                    reply = handle_sync_message(message[1:], self.doc)
                    if reply is not None:
                        await self.ws.send(reply)
                    if message[1] == 1:
                        self.synced.set()
                elif message[0] == 1:
                    self.awareness.apply_awareness_update(read_message(message[1:]), "remote")
                self._tick()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            self.closed.set()
            self._tick()

    def _tick(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def wait_synced(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.synced.wait()

    async def wait_text(self, expected: str) -> None:
        await self.wait_for(lambda: str(self.text) == expected)

    async def wait_closed(self) -> int | None:
        async with asyncio.timeout(WAIT):
            await self.closed.wait()
        return self.close_code

    async def insert(self, index: int, value: str) -> None:
        before = self.doc.get_state()
        self.text.insert(index, value)
        await self.ws.send(create_update_message(self.doc.get_update(before)))

    async def send_awareness(self, state: dict[str, object] | None) -> None:
        self._clock += 1
        encoder = Encoder()
        encoder.write_var_uint(1)
        encoder.write_var_uint(self.doc.client_id)
        encoder.write_var_uint(self._clock)
        encoder.write_var_string(json.dumps(state))
        await self.ws.send(create_awareness_message(encoder.to_bytes()))

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


class WebsocketsChannel:
    """pycrdt's Channel over a `websockets` client, for pycrdt's own Provider."""

    def __init__(self, ws: ClientConnection, path: str) -> None:
        self._ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WebsocketsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self._ws.send(message)

    async def recv(self) -> bytes:
        message = await self._ws.recv()
        assert isinstance(message, bytes)
        return message


@asynccontextmanager
async def clients(*urls: str) -> AsyncIterator[list[YClient]]:
    opened = [await YClient.open(u) for u in urls]
    try:
        yield opened
    finally:
        for client in opened:
            await client.close()


def doc_rows(db: Path, doc: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM editor_updates WHERE doc = ?", (doc,)
        ).fetchone()
    return int(count)


async def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """A bounded poll, for conditions that no event announces (e.g. a room unloaded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


ROOM = "K9H6sVPIc180J9I56oQYow"


# -- tests --------------------------------------------------------------------


async def test_edit_appears_in_other_client(url: str, editor: EditorSync) -> None:
    async with clients(f"{url}/{ROOM}/python", f"{url}/{ROOM}/python") as (a, b):
        await a.insert(0, "print('hi')\n")
        await b.wait_text("print('hi')\n")
        await b.insert(0, "# shared\n")
        await a.wait_text("# shared\nprint('hi')\n")
        assert await editor.text(f"{ROOM}/python") == "# shared\nprint('hi')\n"


async def test_documents_are_per_language(url: str, editor: EditorSync) -> None:
    async with clients(f"{url}/{ROOM}/python", f"{url}/{ROOM}/ruby") as (py, rb):
        await py.insert(0, "x = 1")
        await rb.insert(0, "x = 2")
        await py.wait_text("x = 1")
        await rb.wait_text("x = 2")
    assert await editor.text(f"{ROOM}/python") == "x = 1"
    assert await editor.text(f"{ROOM}/ruby") == "x = 2"
    assert await editor.text(f"{ROOM}/node") == ""


async def test_concurrent_inserts_at_one_position_converge(url: str, editor: EditorSync) -> None:
    async with clients(f"{url}/{ROOM}/python", f"{url}/{ROOM}/python") as (a, b):
        await a.insert(0, "()")
        await b.wait_text("()")
        # Both edit the same spot before either has seen the other's edit.
        await asyncio.gather(a.insert(1, "alice"), b.insert(1, "bob"))
        await a.wait_for(lambda: len(str(a.text)) == len("(alicebob)"))
        await b.wait_for(lambda: len(str(b.text)) == len("(alicebob)"))
        merged = str(a.text)
        assert merged == str(b.text)
        assert merged in ("(alicebob)", "(bobalice)")
        assert await editor.text(f"{ROOM}/python") == merged


async def test_late_joiner_gets_the_document_through_pycrdt_provider(url: str) -> None:
    async with clients(f"{url}/{ROOM}/python") as (a,):
        await a.insert(0, "def f():\n    return 42\n")
        late = Doc()
        async with connect(f"{url}/{ROOM}/python") as ws:
            channel = WebsocketsChannel(ws, f"{ROOM}/python")
            async with Provider(late, channel) as provider:
                async with asyncio.timeout(WAIT):
                    await provider.synced.wait()
                assert str(late.get(TEXT_NAME, type=Text)) == "def f():\n    return 42\n"
                # and it edits like any client
                late.get(TEXT_NAME, type=Text).insert(0, "# late\n")
                await a.wait_text("# late\ndef f():\n    return 42\n")


async def test_read_only_client_cannot_change_the_document(url: str, editor: EditorSync) -> None:
    writer_url, viewer_url = f"{url}/{ROOM}/python", f"{url}/{ROOM}/python?ro=1"
    async with clients(writer_url, viewer_url, writer_url) as (writer, viewer, other):
        await writer.insert(0, "shared")
        await viewer.wait_text("shared")
        await viewer.insert(0, "SPECTATOR ")
        # Messages of one connection are handled in order: once the viewer's
        # cursor reached the others, its update before it was handled too.
        await viewer.send_awareness({"user": {"name": "viewer"}, "cursor": None})
        for client in (writer, other):
            await client.wait_for(lambda c=client: viewer.doc.client_id in c.awareness.states)
        assert await editor.text(f"{ROOM}/python") == "shared"
        assert str(writer.text) == str(other.text) == "shared"
        # It still follows the others' edits.
        await writer.insert(6, "!")
        await other.wait_text("shared!")
        await viewer.wait_for(lambda: str(viewer.text).endswith("shared!"))
        # A late read-only joiner gets the document too.
        async with clients(viewer_url) as (late,):
            assert str(late.text) == "shared!"
        # Its cursor goes away for the others when it leaves.
        await viewer.close()
        await writer.wait_for(lambda: viewer.doc.client_id not in writer.awareness.states)
    assert await editor.text(f"{ROOM}/python") == "shared!"


async def test_write_access_is_asked_at_each_update(url: str, editor: EditorSync) -> None:
    name = f"{ROOM}/ruby"
    switched = url.removesuffix("/yjs") + f"/switch/{name}"
    async with clients(switched, switched, f"{url}/{name}") as (member, idle, other):
        await member.insert(0, "one")
        await other.wait_text("one")
        await idle.wait_text("one")
        READ_ONLY[name] = True  # locked, on the same connections
        await member.insert(3, " two")
        await member.send_awareness({"user": {"name": "member"}, "cursor": None})
        await other.wait_for(lambda: member.doc.client_id in other.awareness.states)
        assert str(other.text) == "one" and await editor.text(name) == "one"
        assert REFUSED[name] == 1  # a live update, told; the syncs at connect were not
        READ_ONLY[name] = False
        # (The member's own later updates build on the dropped one: the page keeps a
        # read-only member's editor read-only, so that it has none.)
        await idle.insert(3, " three")
        await other.wait_text("one three")
    assert REFUSED[name] == 1


async def test_content_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "editor.sqlite3"
    first = EditorSync(db)
    await first.start()
    async with (
        serving(first) as base,
        clients(f"{base}/{ROOM}/python", f"{base}/{ROOM}/python") as (a, b),
    ):
        for word in ["alpha ", "beta ", "gamma"]:
            await a.insert(len(str(a.text)), word)
        await b.wait_text("alpha beta gamma")
    await first.stop()
    await first.stop()  # idempotent

    second = EditorSync(db)
    await second.start()
    try:
        assert await second.text(f"{ROOM}/python") == "alpha beta gamma"
        async with serving(second) as base, clients(f"{base}/{ROOM}/python") as (b,):
            assert str(b.text) == "alpha beta gamma"
    finally:
        await second.stop()


async def test_room_unloads_when_its_last_client_leaves(url: str, editor: EditorSync) -> None:
    server = editor._server
    assert server is not None
    async with clients(f"{url}/{ROOM}/python", f"{url}/{ROOM}/python") as (a, b):
        for i in range(20):
            await a.insert(i, "x")
        await b.wait_text("x" * 20)
        assert f"{ROOM}/python" in server.documents
    await eventually(lambda: not server.documents)
    # The history was squashed into one snapshot when the room unloaded.
    assert doc_rows(editor._db_path, f"{ROOM}/python") == 1
    assert await editor.text(f"{ROOM}/python") == "x" * 20
    async with clients(f"{url}/{ROOM}/python") as (c,):
        assert str(c.text) == "x" * 20


async def test_a_created_document_holds_its_text_for_its_first_client(
    url: str, editor: EditorSync
) -> None:
    name = f"{ROOM}/python/helper"
    await editor.create(name, "def helper():\n    return 'ü'\n")
    assert doc_rows(editor._db_path, name) == 1
    async with clients(f"{url}/{name}") as (client,):
        assert str(client.text) == "def helper():\n    return 'ü'\n"
    await editor.create(f"{ROOM}/python/empty", "")  # an empty file needs no row
    assert doc_rows(editor._db_path, f"{ROOM}/python/empty") == 0


async def test_a_deleted_document_closes_its_clients_and_leaves_the_others(
    url: str, editor: EditorSync
) -> None:
    gone, kept = f"{ROOM}/python/gone", f"{ROOM}/python/main"
    async with clients(f"{url}/{gone}", f"{url}/{kept}") as (a, b):
        await a.insert(0, "bye\n")
        await b.insert(0, "stays\n")
        await eventually(lambda: doc_rows(editor._db_path, gone) > 0)
        await editor.delete_document(gone)
        assert await a.wait_closed() == CloseCode.NOT_FOUND
        await b.insert(0, "# ")
        await eventually(lambda: doc_rows(editor._db_path, kept) == 2)
    assert doc_rows(editor._db_path, gone) == 0
    assert await editor.text(gone) == ""
    assert await editor.text(kept) == "# stays\n"


async def test_edit_then_immediate_disconnect_is_kept(url: str, editor: EditorSync) -> None:
    for i in range(10):
        client = await YClient.open(f"{url}/{ROOM}/python")
        await client.insert(len(str(client.text)), str(i))
        await client.close()  # 0 ms after the edit
    expected = "0123456789"
    await eventually(lambda: not editor._server or not editor._server.documents)
    assert await editor.text(f"{ROOM}/python") == expected


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_acknowledged_edit_survives_killed_server(
    tmp_path: Path, sig: signal.Signals
) -> None:
    db = tmp_path / "editor.sqlite3"
    code = "import sys; from tests.test_editor import serve_main; serve_main(sys.argv[1])"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(db), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(WAIT):
            port = int(await process.stdout.readline())
        base = f"ws://127.0.0.1:{port}/yjs"
        writer = await YClient.open(f"{base}/{ROOM}/python")
        watcher = await YClient.open(f"{base}/{ROOM}/python")
        await writer.insert(0, "before the kill")
        # The server commits an update before broadcasting it: another client
        # having it is the acknowledgement.
        await watcher.wait_text("before the kill")
        process.send_signal(sig)
        async with asyncio.timeout(WAIT):
            await process.wait()
        await writer.wait_closed()
        await watcher.wait_closed()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    after = EditorSync(db)
    await after.start()
    try:
        assert await after.text(f"{ROOM}/python") == "before the kill"
    finally:
        await after.stop()


async def test_simultaneous_first_clients_of_a_new_doc_all_sync(url: str) -> None:
    # pycrdt-websocket 0.16.5 never answered the second of two such clients.
    for attempt in range(5):
        name = f"{url}/{ROOM}/new{attempt}"
        opened = await asyncio.gather(*(YClient.open(name, sync=False) for _ in range(4)))
        await asyncio.gather(*(client.wait_synced() for client in opened))
        await opened[0].insert(0, "first")
        await asyncio.gather(*(client.wait_text("first") for client in opened))
        for client in opened:
            await client.close()


@pytest.mark.parametrize(
    ("garbage", "closes"),
    [
        (b"\x00\x02\x0a\x01\x02", True),  # update whose length runs past the end
        (b"\x00\x07\x00", True),  # unknown sync message
        (b"\x00", True),  # truncated
        (b"\x00\x02\x05garbage", True),  # trailing bytes
        (b"\x00\x02\x07garbage", True),  # an update that does not decode
        (b"\x00\x00\x03\xff\xff\xff", True),  # a state vector that does not decode
        (b"\x01\x0c\x01\x01\x01\x08not json", True),  # awareness with a bad state
        (b"\x01\x01\x05", True),  # awareness with missing entries
        (b"\xff" * 11, True),  # a varint that never ends
        (b"\x05\x00\x01", False),  # an unknown message type: ignored
        (b"\x00" + random.Random(7).randbytes(63), True),  # noise after a sync type
        ("text frame", True),
    ],
    ids=lambda g: g[:12].hex() if isinstance(g, bytes) else str(g),
)
async def test_bad_input_closes_only_that_connection(
    url: str, editor: EditorSync, garbage: bytes | str, closes: bool
) -> None:
    async with clients(f"{url}/{ROOM}/python", f"{url}/{ROOM}/python") as (good, other):
        await good.insert(0, "intact")
        await other.wait_text("intact")
        bad = await YClient.open(f"{url}/{ROOM}/python")
        await bad.ws.send(garbage)
        if closes:
            assert await bad.wait_closed() in (1003, 1007)
        else:
            await bad.insert(0, "still served ")
            await other.wait_text("still served intact")
            await bad.close()
        await good.insert(len(str(good.text)), "!")
        await other.wait_for(lambda: str(other.text).endswith("intact!"))
        assert (await editor.text(f"{ROOM}/python")).endswith("intact!")
        assert not good.closed.is_set() and not other.closed.is_set()


class PanicException(BaseException):
    """Stands in for pyo3's: a Rust panic reaches Python as a BaseException."""


async def test_a_panic_in_pycrdt_drops_only_that_room(
    url: str, editor: EditorSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, elsewhere = f"{ROOM}/python", f"{ROOM}/ruby"
    async with clients(f"{url}/{name}", f"{url}/{name}", f"{url}/{elsewhere}") as (a, b, c):
        await a.insert(0, "committed")
        await b.wait_text("committed")
        real = editor_document.handle_sync_message

        def panicking(message: bytes, doc: Doc) -> bytes | None:
            if b"boom" in message:
                raise PanicException("yrs panicked")
            return real(message, doc)

        monkeypatch.setattr(editor_document, "handle_sync_message", panicking)
        await a.insert(0, "boom")
        assert await a.wait_closed() == 1011
        assert await b.wait_closed() == 1011
        await c.insert(0, "unaffected")
        async with clients(f"{url}/{elsewhere}") as (c2,):
            assert str(c2.text) == "unaffected"
        monkeypatch.setattr(editor_document, "handle_sync_message", real)
        async with clients(f"{url}/{name}") as (fresh,):
            assert str(fresh.text) == "committed"


async def test_oversized_message_is_refused(url: str, editor: EditorSync) -> None:
    async with clients(f"{url}/{ROOM}/python") as (other,):
        big = await YClient.open(f"{url}/{ROOM}/python")
        await big.insert(0, "y" * (editor_module.MAX_MESSAGE_SIZE + 1))
        assert await big.wait_closed() == 1009
        assert await editor.text(f"{ROOM}/python") == ""
        assert not other.closed.is_set()


async def test_oversized_document_is_refused(url: str, editor: EditorSync) -> None:
    chunk = "z" * (900 * 1024)
    async with clients(f"{url}/{ROOM}/python") as (other,):
        filler = await YClient.open(f"{url}/{ROOM}/python")
        await filler.insert(0, chunk)
        await filler.insert(0, chunk)
        await other.wait_for(lambda: len(other.text) == 2 * len(chunk))
        await filler.insert(0, chunk)
        assert await filler.wait_closed() == CloseCode.DOC_TOO_LARGE
        assert "too large" in filler.close_reason
        assert len(await editor.text(f"{ROOM}/python")) == 2 * len(chunk)
        # Edits that keep it under the limit still go through, deletions too.
        editor_client = await YClient.open(f"{url}/{ROOM}/python")
        await editor_client.insert(0, "ok")
        await other.wait_for(lambda: str(other.text).startswith("ok"))
        before = editor_client.doc.get_state()
        del editor_client.text[0 : len(chunk)]
        update = editor_client.doc.get_update(before)
        await editor_client.ws.send(create_update_message(update))
        await other.wait_for(lambda: len(other.text) == len(chunk) + 2)
        await editor_client.close()
        assert not other.closed.is_set()


async def test_a_client_that_stops_reading_is_dropped(
    url: str, editor: EditorSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(editor_channel, "MAX_OUTBOX", protocol.MiB)
    server = editor._server
    assert server is not None
    name = f"{ROOM}/python"
    port = int(url.split(":")[2].split("/", maxsplit=1)[0])
    async with clients(f"{url}/{name}", f"{url}/{name}") as (writer, other):
        # A peer that never reads, with a small receive buffer (loopback's
        # autotuning would otherwise absorb tens of MiB first) and without
        # compression (which would shrink this test's text a thousandfold).
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        raw.setblocking(False)
        await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", port))
        async with connect(f"{url}/{name}", sock=raw, compression=None) as stuck:
            await stuck.send(create_sync_message(Doc()))
            await eventually(lambda: len(server.documents[name].clients) == 3)
            stuck.transport.pause_reading()
            chunk = "w" * (900 * 1024)
            room = server.documents[name]
            for _ in range(30):
                await writer.insert(0, chunk)
                before = writer.doc.get_state()
                del writer.text[0 : len(chunk)]
                await writer.ws.send(create_update_message(writer.doc.get_update(before)))
                await other.wait_for(lambda: other.doc.get_state() == writer.doc.get_state())
                if any(channel.closed for channel in room.clients):
                    break
            await eventually(lambda: len(room.clients) == 2)
            stuck.transport.abort()  # a closing handshake would wait on the paused reader
        assert not writer.closed.is_set() and not other.closed.is_set()


async def test_delete_drops_a_rooms_documents(url: str, editor: EditorSync) -> None:
    other_room = "Zz_-Zz_-Zz_-Zz_-Zz_-Zz"
    lookalike = ROOM[:-1] + "_"  # "_" must not act as a wildcard
    async with clients(f"{url}/{other_room}/python", f"{url}/{lookalike}/python") as (o, lk):
        await o.insert(0, "keep me")
        await lk.insert(0, "keep me too")
        watcher = await YClient.open(f"{url}/{ROOM}/python")
        await watcher.insert(0, "doomed")
        async with clients(f"{url}/{ROOM}/ruby") as (rb,):
            await rb.insert(0, "doomed too")
        await editor.delete(ROOM)
        assert await watcher.wait_closed() == 4004
        await o.wait_text("keep me")
        assert not o.closed.is_set() and not lk.closed.is_set()
        assert await editor.text(f"{ROOM}/python") == ""
        assert await editor.text(f"{ROOM}/ruby") == ""
        assert doc_rows(editor._db_path, f"{ROOM}/python") == 0
        assert doc_rows(editor._db_path, f"{ROOM}/ruby") == 0
        async with clients(f"{url}/{ROOM}/python") as (fresh,):
            assert str(fresh.text) == ""
    assert await editor.text(f"{other_room}/python") == "keep me"
    assert await editor.text(f"{lookalike}/python") == "keep me too"


async def test_stop_disconnects_clients_with_1012(tmp_path: Path) -> None:
    made = EditorSync(tmp_path / "editor.sqlite3")
    await made.start()
    async with serving(made) as base:
        client = await YClient.open(f"{base}/{ROOM}/python")
        watcher = await YClient.open(f"{base}/{ROOM}/python")
        await client.insert(0, "saved on stop")
        await watcher.wait_text("saved on stop")
        await made.stop()
        for each in (client, watcher):
            assert await each.wait_closed() == 1012
            await each.close()
    again = EditorSync(tmp_path / "editor.sqlite3")
    await again.start()
    try:
        assert await again.text(f"{ROOM}/python") == "saved on stop"
    finally:
        await again.stop()


async def test_cancelled_serve_leaves_the_socket_to_its_caller(
    url: str, editor: EditorSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    # serve() returns as soon as what was queued went out, not after the grace
    # period for a peer that stopped reading.
    monkeypatch.setattr(editor_sync, "WRITER_GRACE", 3600)
    server = editor._server
    assert server is not None
    name = f"{ROOM}/python"
    leave_url = url.removesuffix("/yjs") + f"/leave/{name}"
    async with clients(f"{url}/{name}") as (watcher,):
        member = await YClient.open(leave_url)
        await member.insert(0, "bye")
        await watcher.wait_text("bye")
        await member.send_awareness({"user": {"name": "member"}})
        await watcher.wait_for(lambda: member.doc.client_id in watcher.awareness.states)
        LEAVE[name].set()
        assert await member.wait_closed() == 4003
        await watcher.wait_for(lambda: member.doc.client_id not in watcher.awareness.states)
        await member.close()
    await eventually(lambda: not server.documents)
    assert await editor.text(name) == "bye"


async def test_edit_latency(url: str) -> None:
    async with clients(f"{url}/{ROOM}/python", f"{url}/{ROOM}/python") as (a, b):
        samples = []
        for i in range(100):
            started = time.perf_counter()
            await a.insert(i, "k")
            await b.wait_for(lambda n=i + 1: len(b.text) == n)
            samples.append(time.perf_counter() - started)
    samples.sort()
    p50, p95 = statistics.median(samples), samples[94]
    print(f"\nedit → other client on loopback: p50 {p50 * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms")
    assert p50 < 0.05


async def test_a_newcomer_gets_the_cursors_already_there(url: str) -> None:
    async with clients(f"{url}/{ROOM}/python") as (first,):
        await first.send_awareness({"user": {"name": "first"}, "cursor": None})
        async with clients(f"{url}/{ROOM}/python") as (second,):
            # Without being sent, first's state would reach second only when
            # first next moves; it is sent when second arrives.
            await second.wait_for(lambda: first.doc.client_id in second.awareness.states)


# -- the y-protocol parser and the connection's lifecycle (no server) ---------


def var_uint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def awareness_payload(*entries: tuple[int, int, str]) -> bytes:
    out = var_uint(len(entries))
    for client_id, clock, state in entries:
        raw = state.encode()
        out += var_uint(client_id) + var_uint(clock) + var_uint(len(raw)) + raw
    return out


def awareness_message(payload: bytes) -> bytes:
    return bytes([wire.MESSAGE_AWARENESS]) + var_uint(len(payload)) + payload


@pytest.mark.fast
def test_parser_reads_what_pycrdt_writes() -> None:
    doc = Doc()
    doc.get(TEXT_NAME, type=Text).insert(0, "x" * 300)  # lengths of two varuint bytes
    update = doc.get_update()
    step1 = wire.parse_message(create_sync_message(doc))
    assert (step1.type, step1.subtype, step1.payload) == (0, wire.SYNC_STEP1, doc.get_state())
    assert not step1.changes_document
    message = wire.parse_message(create_update_message(update))
    assert (message.subtype, message.payload) == (wire.SYNC_UPDATE, update)
    assert message.changes_document and message.raw == create_update_message(update)
    step2 = handle_sync_message(create_sync_message(Doc())[1:], doc)
    assert step2 is not None and wire.parse_message(step2).subtype == wire.SYNC_STEP2
    awareness = Awareness(doc)
    awareness.set_local_state({"user": {"name": "ada"}})
    encoded = awareness.encode_awareness_update([doc.client_id])
    parsed = wire.parse_message(create_awareness_message(encoded))
    assert parsed.type == wire.MESSAGE_AWARENESS and parsed.payload == encoded
    # The constructor set a first, empty state (clock 0).
    assert parsed.awareness == (wire.AwarenessEntry(doc.client_id, 1, present=True),)
    assert not parsed.leaves


@pytest.mark.fast
def test_parser_reads_awareness_entries() -> None:
    entries = awareness_payload((7, 3, '{"cursor": null}'), (2**53, 0, "null"), (9, 1, ""))
    parsed = wire.parse_message(awareness_message(entries))
    assert [(e.client_id, e.clock, e.present) for e in parsed.awareness] == [
        (7, 3, True),
        (2**53, 0, False),
        (9, 1, False),  # an empty state is no state
    ]
    leaving = awareness_payload((7, 4, "null"))
    assert wire.parse_message(awareness_message(leaving)).leaves


@pytest.mark.fast
@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "truncated"),
        (b"\x00", "truncated"),
        (b"\x00\x02", "truncated"),
        (b"\x00\x02\x05ab", "truncated"),
        (b"\x00\x02\x01ab", "trailing bytes"),
        (b"\x00\x03\x00", "unknown sync message 3"),
        (b"\x80" * 9 + b"\x01", "out of range"),  # a varuint that does not end in time
        (b"\x00\x02" + var_uint(2**53 + 1), "out of range"),  # beyond JavaScript's integers
        (b"\x01\x00", "truncated"),  # no entry count
        (awareness_message(var_uint(257) + b"\x00"), "too many awareness entries"),
        (awareness_message(awareness_payload((1, 1, "{"))), "not JSON"),
        (awareness_message(awareness_payload((1, 1, "{}")) + b"!"), "trailing bytes in awareness"),
        (awareness_message(awareness_payload((1, 1, "{}"))) + b"!", "trailing bytes"),
        (awareness_message(var_uint(2) + awareness_payload((1, 1, "{}"))[1:]), "truncated"),
    ],
    ids=lambda value: value.hex() if isinstance(value, bytes) else value,
)
def test_parser_refuses_malformed_messages(data: bytes, problem: str) -> None:
    with pytest.raises(wire.BadMessage, match=problem):
        wire.parse_message(data)


@pytest.mark.fast
def test_parser_passes_unknown_message_types_without_payload() -> None:
    # y-protocols' auth (2) and awareness query (3): nothing this server answers.
    for data in (b"\x02\x00\x05", b"\x03", b"\xff\x01"):
        message = wire.parse_message(data)
        assert message.type not in (wire.MESSAGE_SYNC, wire.MESSAGE_AWARENESS)
        assert message.payload == b"" and not message.changes_document


@pytest.mark.fast
@given(data=st.binary(max_size=64))
def test_parser_on_any_bytes_returns_or_says_why(data: bytes) -> None:
    try:
        message = wire.parse_message(data)
    except wire.BadMessage:
        return
    assert message.raw == data
    if message.type == wire.MESSAGE_SYNC:  # what it read accounts for every byte
        assert data.endswith(message.payload) and len(message.payload) < len(data)


@pytest.mark.fast
def test_a_connection_changes_state_only_along_its_lifecycle() -> None:
    # Only the state machine is exercised: no socket is touched.
    channel = editor_channel.Channel(cast(WebSocket, None), "room/python", read_only=False)
    assert channel.state is ChannelState.OPEN and not channel.closed
    channel.close(1012, "restarting")
    assert channel.state is ChannelState.CLOSING and channel.closed
    channel.close(1011, "later")  # a second close changes nothing
    channel.release()
    channel.enqueue(b"dropped")
    assert channel.state is ChannelState.CLOSING
    with pytest.raises(editor_channel.ChannelStateError, match="cannot become open when closing"):
        channel._become(ChannelState.OPEN)
    released = editor_channel.Channel(cast(WebSocket, None), "room/ruby", read_only=True)
    released.release()
    assert released.state is ChannelState.RELEASED
    with pytest.raises(editor_channel.ChannelStateError, match="room/ruby: cannot become closed"):
        released._become(ChannelState.CLOSED)

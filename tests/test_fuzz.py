"""Hostile input, fuzzed: the room WebSocket, the editor WebSocket and the HTTP API.

Hypothesis drives a real `replroom serve` (bwrap) on loopback. Whatever it sends,
the server must stay up, answer with the error message or close code that
docs/protocol.md documents, never show a client a traceback or a server path,
and a bystander room must keep answering (its keystroke echo is measured before
and after; the figures are printed).

The number of examples comes from a hypothesis profile: `ci` (the default, a
bounded run for `make test`) or `long` (`make fuzz`, thousands of examples),
chosen with the HYPOTHESIS_PROFILE environment variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import socket
import statistics
import string
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
import websockets
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Encoder, Text, create_awareness_message, create_sync_message
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from replroom import editor as editor_module
from replroom import protocol
from replroom.languages import LANGUAGES
from replroom.protocol import MAX_PENDING_INPUT
from replroom.routes.common import INTERNAL_ERROR as INTERNAL_MESSAGE
from replroom.routes.guards import HttpGuard
from tests.client import RoomClient, Server

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=5000)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def fuzz(share: float = 1.0) -> settings:
    """The profile's settings, with ``share`` of its examples (for costly properties)."""
    return settings(PROFILE, max_examples=max(5, int(PROFILE.max_examples * share)))


pytestmark = pytest.mark.timeout(3600 if PROFILE.max_examples > 100 else 300)

REPO = Path(__file__).resolve().parent.parent
WAIT = 30.0
MAX_MEMBERS = 8
# What `replroom serve` gives uvicorn (cli.py): larger frames are refused with 1009.
WS_MAX_SIZE = protocol.MAX_FRAME
ECHO_KEYS = 50


# -- the server, the rooms and the bystander -----------------------------------


@dataclass(repr=False)
class Rooms:
    target: dict[str, Any]  # fuzzed; its holder keeps it (and its editor ticket) alive
    holder: RoomClient
    ticket: str
    flood: dict[str, Any]  # join floods and random keystrokes
    flood_holder: RoomClient
    bystander: dict[str, Any]
    watcher: RoomClient  # the bystander room's member
    echo_before_ms: float = 0.0

    def holder_of(self, room_id: str) -> RoomClient:
        return self.holder if room_id == self.target["id"] else self.flood_holder


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    started = Server(
        tmp_path_factory.mktemp("fuzz"),
        runtime_dir,
        env={
            "REPLROOM_BACKEND": "bwrap",
            "REPLROOM_MAX_MEMBERS": str(MAX_MEMBERS),
            # Rooms only the fuzzer touched give their sandbox back soon.
            "REPLROOM_IDLE_TIMEOUT": "5",
        },
    )
    started.start()
    yield started
    started.stop()


async def echo_median_ms(client: RoomClient) -> float:
    """Median time from a keystroke to its echo on the member's screen."""
    times = []
    for i in range(ECHO_KEYS):
        key = string.ascii_lowercase[i % 26]
        at = len(client.output)
        started = time.perf_counter()
        await client.type(key)
        await client.wait_output(key, after=at)
        times.append(time.perf_counter() - started)
    await client.type("\x15")  # Ctrl-U: an empty line again
    return statistics.median(times) * 1000


@pytest.fixture(scope="module")
async def rooms(server: Server) -> AsyncIterator[Rooms]:
    target, flood, bystander = [await server.create_room() for _ in range(3)]
    holder = await RoomClient.connect(server, target["id"], target["invite_token"], name="holder")
    flood_holder = await RoomClient.connect(server, flood["id"], flood["invite_token"], name="h")
    watcher = await RoomClient.connect(
        server, bystander["id"], bystander["invite_token"], name="bystander"
    )
    try:
        ticket = (await holder.wait_message("welcome"))["editor"]["ticket"]
        await holder.wait_output(">>> ")
        await watcher.wait_output(">>> ")
        at = len(watcher.output)
        await watcher.type("marker = 21 * 2\r")
        await watcher.wait_output(">>> ", after=at + 1)
        made = Rooms(target, holder, ticket, flood, flood_holder, bystander, watcher)
        made.echo_before_ms = await echo_median_ms(watcher)
        print(f"\nbystander keystroke echo before the fuzz run: {made.echo_before_ms:.2f} ms")
        yield made
    finally:
        for client in (holder, flood_holder, watcher):
            await client.close()


LEAK_MARKERS = ("Traceback", 'File "', "site-packages", str(REPO), "/run/replroom")


def check_no_leak(received: str, sent: str | bytes = "") -> None:
    """No traceback and no server path in what a client got (unless it sent it itself)."""
    sent_text = sent.decode(errors="replace") if isinstance(sent, bytes) else sent
    for marker in LEAK_MARKERS:
        assert marker not in received or marker in sent_text, f"{marker!r} shown: {received}"


def seen_by(client: RoomClient) -> str:
    """Everything a client got that is not terminal output, as text."""
    closed = f"{client.closed.code} {client.closed.reason}" if client.closed else ""
    return json.dumps(client.messages) + closed


async def assert_alive(server: Server) -> None:
    assert server.process is not None and server.process.poll() is None, server.log()[-3000:]
    async with httpx.AsyncClient(timeout=WAIT) as http:
        response = await http.get(f"{server.url}/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def joined(
    server: Server, room: dict[str, Any], token: str = "spectator", name: str = "fuzz"
) -> RoomClient:
    client = await RoomClient.connect(server, room["id"], room[f"{token}_token"], name=name)
    await client.wait_message("welcome")
    return client


async def leave(rooms: Rooms, client: RoomClient) -> None:
    """Close, and wait until the room's holder sees the member gone.

    The server handles a departure a moment after the close; the next example must find
    the room as it was (or it may be full: 4029).
    """
    await client.close()
    welcome = next((m for m in client.messages if m["type"] == "welcome"), None)
    if welcome is None:
        return
    await wait_gone(rooms.holder_of(welcome["room"]["id"]), welcome["you"]["id"])


async def wait_gone(holder: RoomClient, member: str) -> None:
    """Until the member list the holder last got lacks ``member``."""

    def gone() -> bool:
        for message in reversed(holder.messages):
            if message["type"] in ("members", "welcome"):
                return all(each["id"] != member for each in message["members"])
        return False

    await holder._until(gone, f"member {member} to leave", WAIT)


async def probe(client: RoomClient) -> list[dict[str, Any]]:
    """Prove the connection still serves, and return what came since the last probe.

    The server handles a member's messages in order, so everything the fuzzed
    message caused has been queued before the probe's own answer.
    """
    name = "p-" + uuid.uuid4().hex[:8]
    after = len(client.messages)
    await client.send({"type": "rename", "name": name})
    answer = await client.wait_message("members", WAIT, after=after, event="renamed")
    index = client.messages.index(answer, after)
    return client.messages[after:index]


def errors(messages: list[dict[str, Any]]) -> list[str]:
    return [m["code"] for m in messages if m.get("type") == "error"]


# -- room messages: labelled strategies ----------------------------------------

# type -> (field -> kind, required fields)
FIELDS: dict[str, tuple[dict[str, str], set[str]]] = {
    "join": (
        {"v": "int", "token": "str", "name": "name", "cols": "cols", "rows": "rows"},
        {"v", "token", "name"},
    ),
    "resize": ({"cols": "cols", "rows": "rows"}, {"cols", "rows"}),
    "language": ({"language": "str"}, {"language"}),
    "run": ({"code": "code", "language": "optional"}, {"code"}),
    "restart": ({}, set()),
    "rename": ({"name": "name"}, {"name"}),
}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.floats()
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
not_numbers = st.text(alphabet="xyzq ", min_size=1, max_size=10)
containers = st.lists(json_values, max_size=3) | st.dictionaries(
    st.text(max_size=5), json_values, max_size=3
)
fractions = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f))


def valid_values(kind: str) -> st.SearchStrategy[Any]:
    return {
        "int": st.integers(min_value=-(2**40), max_value=2**40),
        "str": st.text(min_size=1, max_size=40),
        "name": st.text(min_size=1, max_size=protocol.MAX_NAME),
        "cols": st.integers(protocol.MIN_COLS, protocol.MAX_COLS),
        "rows": st.integers(protocol.MIN_ROWS, protocol.MAX_ROWS),
        "code": st.text(max_size=200),
        "optional": st.none() | st.text(min_size=1, max_size=40),
    }[kind]


def wrong_values(kind: str) -> st.SearchStrategy[Any]:
    numeric = (
        st.none()
        | not_numbers
        | containers
        | fractions
        | st.floats().filter(lambda f: math.isnan(f) or math.isinf(f))
    )
    strings = st.integers() | st.floats() | st.booleans() | containers
    return {
        "int": numeric,
        "str": strings | st.none() | st.just(""),
        "name": strings | st.none() | st.just("") | st.text(min_size=protocol.MAX_NAME + 1),
        "cols": numeric
        | st.integers(max_value=protocol.MIN_COLS - 1)
        | st.integers(min_value=protocol.MAX_COLS + 1),
        "rows": numeric
        | st.integers(max_value=protocol.MIN_ROWS - 1)
        | st.integers(min_value=protocol.MAX_ROWS + 1),
        "code": strings | st.none(),
        "optional": strings | st.just(""),
    }[kind]


@st.composite
def valid_message(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(FIELDS)))
    fields, required = FIELDS[kind]
    message: dict[str, Any] = {"type": kind}
    for name, value_kind in fields.items():
        if name in required or draw(st.booleans()):
            message[name] = draw(valid_values(value_kind))
    return message


@st.composite
def invalid_message(draw: st.DrawFn) -> str:
    """Text that is not a valid client message, for a structural reason."""
    how = draw(st.sampled_from(
        ["text", "scalar", "no type", "unknown type", "missing", "extra", "wrong", "deep"]
    ))  # fmt: skip
    if how == "text":
        text = draw(st.text(max_size=200))
        try:
            json.loads(text)
        except ValueError:
            return text
        return text + "}"  # "}" ends no JSON document that text started
    if how == "scalar":
        return json.dumps(draw(json_scalars | st.lists(json_values, max_size=4)))
    if how == "deep":
        depth = draw(st.integers(100, 20_000))
        inner = draw(st.sampled_from(["[", '{"a":']))
        closing = "]" if inner == "[" else "}"
        return '{"type": "resize", "cols": ' + inner * depth + "1" + closing * depth + "}"
    message = draw(valid_message())
    fields, required = FIELDS[message["type"]]
    if how == "no type":
        del message["type"]
    elif how == "unknown type":
        message["type"] = draw(
            json_values.filter(lambda v: not isinstance(v, str) or v not in FIELDS)
        )
    elif how == "missing":
        assume(required)
        del message[draw(st.sampled_from(sorted(required)))]
    elif how == "extra":
        key = draw(st.text(max_size=10).filter(lambda k: k not in fields and k != "type"))
        message[key] = draw(json_values)
    else:  # wrong
        assume(fields)
        name = draw(st.sampled_from(sorted(fields)))
        message[name] = draw(wrong_values(fields[name]))
    return json.dumps(message)


@st.composite
def random_object(draw: st.DrawFn) -> str:
    """Any JSON object with a plausible type: valid or not, no one says."""
    kind = draw(st.sampled_from(sorted(FIELDS)) | st.text(max_size=8))
    keys = st.sampled_from(["v", "token", "name", "cols", "rows", "language", "code"]) | st.text(
        max_size=6
    )
    body = draw(st.dictionaries(keys, json_values, max_size=5))
    return json.dumps({"type": kind, **body})


# -- the room WebSocket ----------------------------------------------------------


@fuzz()
@given(text=invalid_message())
async def test_invalid_messages_get_bad_message(server: Server, rooms: Rooms, text: str) -> None:
    client = await joined(server, rooms.target)
    try:
        await client.ws.send(text)
        got = await probe(client)
        check_no_leak(json.dumps(got), text)
        assert errors(got) == ["bad_message"], (text[:200], got)
    finally:
        await leave(rooms, client)


SPECTATOR_ANSWERS = {
    "join": ["bad_message"],  # already joined
    "language": ["read_only"],
    "run": ["read_only"],
    "restart": ["read_only"],
    "resize": [],
    "rename": [],
}


@fuzz(0.5)
@given(message=valid_message())
async def test_valid_messages_of_a_spectator(
    server: Server, rooms: Rooms, message: dict[str, Any]
) -> None:
    client = await joined(server, rooms.target)
    try:
        await client.send(message)
        got = await probe(client)
        check_no_leak(json.dumps(got), json.dumps(message))
        assert errors(got) == SPECTATOR_ANSWERS[message["type"]], (message, got)
    finally:
        await leave(rooms, client)


@fuzz()
@given(text=random_object() | invalid_message(), fragments=st.integers(1, 6), data=st.data())
async def test_any_message_whole_or_fragmented(
    server: Server, rooms: Rooms, text: str, fragments: int, data: st.DataObject
) -> None:
    """Whatever the message, and however it is cut into frames, the answer is the same."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=fragments - 1)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    answers = []
    for sent in (text, pieces):
        client = await joined(server, rooms.target)
        try:
            await client.ws.send(sent)
            got = await probe(client)
            check_no_leak(json.dumps(got), text)
            assert set(errors(got)) <= {"bad_message", "read_only"}, (text[:200], got)
            assert len(errors(got)) <= 1, got
            answers.append(errors(got))
        finally:
            await leave(rooms, client)
    assert answers[0] == answers[1], (text[:200], pieces, answers)


@fuzz()
@given(
    language=st.text(min_size=1, max_size=40).filter(lambda name: name not in LANGUAGES),
    as_run=st.booleans(),
)
async def test_unknown_languages_fail_for_members(
    server: Server, rooms: Rooms, language: str, as_run: bool
) -> None:
    client = await joined(server, rooms.target, token="invite")
    message = (
        {"type": "run", "code": "1", "language": language}
        if as_run
        else {"type": "language", "language": language}
    )
    try:
        await client.send(message)
        got = await probe(client)
        check_no_leak(json.dumps(got), language)
        assert errors(got) == ["failed"], (message, got)
    finally:
        await leave(rooms, client)


XOFF = b"\x13"  # Ctrl-S: stops the REPL's output, and so its reading (tested below)


@fuzz()
@given(
    frame=st.binary(max_size=256).map(lambda keys: keys.replace(XOFF, b""))
    | st.integers(1, protocol.MAX_INPUT_FRAME).map(lambda n: b"\x00" * n)
    | st.integers(protocol.MAX_INPUT_FRAME + 1, WS_MAX_SIZE).map(lambda n: b"k" * n),
    as_member=st.booleans(),
)
async def test_binary_frames(server: Server, rooms: Rooms, frame: bytes, as_member: bool) -> None:
    """Keystrokes of any bytes; over 64 KiB they are refused with too_large."""
    if as_member:  # random keystrokes go to the flood room's REPL, not the target's
        client = await joined(server, rooms.flood, token="invite")
    else:
        client = await joined(server, rooms.target)
    try:
        await client.ws.send(frame)
        got = await probe(client)
        check_no_leak(json.dumps(got), frame)
        if len(frame) > protocol.MAX_INPUT_FRAME:
            expected = ["too_large"]
        else:
            expected = [] if as_member else ["read_only"]
        assert errors(got) == expected, got
    finally:
        await leave(rooms, client)


@fuzz(0.5)
@given(
    size=st.integers(WS_MAX_SIZE + 1, WS_MAX_SIZE + 256 * 1024),
    binary=st.booleans(),
    fragments=st.integers(1, 4),
    before_join=st.booleans(),
)
async def test_oversized_messages_are_closed_with_1009(
    server: Server, rooms: Rooms, size: int, binary: bool, fragments: int, before_join: bool
) -> None:
    if before_join:
        client = await RoomClient.connect(server, rooms.target["id"], "", join=False)
    else:
        client = await joined(server, rooms.target)
    payload: bytes | str = b"\x01" * size if binary else "a" * size
    step = -(-size // fragments)
    pieces = [payload[i : i + step] for i in range(0, size, step)]
    try:
        with_close = asyncio.ensure_future(client.wait_closed())
        # The server may close while the rest is on its way.
        with contextlib.suppress(websockets.ConnectionClosed):
            await client.ws.send(pieces if fragments > 1 else payload)
        closed = await with_close
        check_no_leak(seen_by(client))
        assert closed.code == protocol.CloseCode.TOO_BIG, closed
    finally:
        await leave(rooms, client)


@fuzz(0.5)
@given(size=st.integers(protocol.MAX_TEXT_MESSAGE + 1, WS_MAX_SIZE))
async def test_text_over_the_message_limit_gets_bad_message(
    server: Server, rooms: Rooms, size: int
) -> None:
    client = await joined(server, rooms.target)
    try:
        await client.ws.send('{"type":"run","code":"' + "c" * (size - 24) + '"}')
        got = await probe(client)
        assert errors(got) == ["bad_message"] and "too large" in got[-1]["message"], got
    finally:
        await leave(rooms, client)


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    text = draw(st.text(max_size=50)).encode()
    bad = draw(
        st.sampled_from(
            [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80"]
        )
    )
    at = draw(st.integers(0, len(text)))
    return text[:at] + bad + text[at:]


@fuzz(0.5)
@given(data=invalid_utf8(), fragments=st.integers(1, 4), before_join=st.booleans())
async def test_invalid_utf8_is_closed_with_1007(
    server: Server, rooms: Rooms, data: bytes, fragments: int, before_join: bool
) -> None:
    if before_join:
        client = await RoomClient.connect(server, rooms.target["id"], "", join=False)
    else:
        client = await joined(server, rooms.target)
    step = max(1, -(-len(data) // fragments))
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    try:
        with contextlib.suppress(websockets.ConnectionClosed):
            await client.ws.send(pieces if len(pieces) > 1 else data, text=True)
        closed = await client.wait_closed()
        check_no_leak(seen_by(client))
        assert closed.code == 1007, closed
    finally:
        await leave(rooms, client)


CLOSE_OPCODE = 8


def raw_frame(opcode: int, payload: bytes, *, fin: bool, rsv: int, mask: bool) -> bytes:
    """One WebSocket frame as RFC 6455 lays it out, whatever the rules say about it."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 2**16:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@fuzz(0.5)
@given(
    frames=st.lists(
        st.tuples(
            st.integers(0, 15),  # continuation, text, binary, reserved, close, ping, pong
            st.binary(max_size=300),
            st.booleans(),
            st.sampled_from([0, 0, 0, 1, 2, 4, 7]),
            st.sampled_from([True, True, True, False]),
        ),
        min_size=1,
        max_size=5,
    ),
)
async def test_frames_that_break_the_rules(
    server: Server, rooms: Rooms, frames: list[tuple[int, bytes, bool, int, bool]]
) -> None:
    """Frames as a broken client might send them: continuations without a start, fragmented
    or long control frames, reserved opcodes and bits, unmasked frames. The server answers
    or closes; it does not fail.

    Without compression: with permessage-deflate, RSV1 marks a compressed frame, and a
    made-up one spoils the shared window, so that the client's own later frames decode
    as garbage (the server answers bad_message, correctly, to each).
    """
    ws = await websockets.connect(
        f"{server.ws_url}/ws/rooms/{rooms.target['id']}", compression=None, open_timeout=WAIT
    )
    client = RoomClient(ws)
    try:
        await client.send({"type": "join", "v": 1, "token": rooms.target["spectator_token"],
                           "name": "fuzz"})  # fmt: skip
        await client.wait_message("welcome")
        for opcode, payload, fin, rsv, mask in frames:
            ws.transport.write(raw_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask))
        try:
            await probe(client)
        except Exception:  # the connection was closed (or the close handshake failed)
            closed = await client.wait_closed()
            # 1006: the server may hang up at once on a protocol error, and what the
            # client still sends then makes its kernel drop the close frame.
            closed_itself = any(opcode == CLOSE_OPCODE for opcode, *_ in frames)
            assert closed_itself or closed.code in (1002, 1006, 1007, 1009), closed
        check_no_leak(seen_by(client))
    finally:
        await leave(rooms, client)


@st.composite
def first_frames(draw: st.DrawFn) -> tuple[str, str | bytes, int]:
    """(which room, the first frame, the close code docs/protocol.md gives for it)."""
    case = draw(st.sampled_from(["text", "binary", "not join", "version", "token", "room"]))
    join = {"type": "join", "v": protocol.PROTOCOL_VERSION, "token": "x", "name": "n"}
    if case == "text":
        text = draw(invalid_message() | random_object().filter(lambda t: '"join"' not in t))
        return "target", text, protocol.CloseCode.BAD_JOIN
    if case == "binary":
        return "target", draw(st.binary(max_size=300)), protocol.CloseCode.BAD_JOIN
    if case == "not join":
        message = draw(valid_message().filter(lambda m: m["type"] != "join"))
        return "target", json.dumps(message), protocol.CloseCode.BAD_JOIN
    if case == "version":
        version = draw(st.integers().filter(lambda v: v != protocol.PROTOCOL_VERSION))
        return "target", json.dumps({**join, "v": version}), protocol.CloseCode.BAD_JOIN
    if case == "token":
        join["token"] = draw(st.text(min_size=1, max_size=200))
        return "target", json.dumps(join), protocol.CloseCode.FORBIDDEN
    return draw(st.text(min_size=1, max_size=60)), json.dumps(join), protocol.CloseCode.NOT_FOUND


@fuzz()
@given(first=first_frames())
async def test_messages_before_join(
    server: Server, rooms: Rooms, first: tuple[str, str | bytes, int]
) -> None:
    room, frame, code = first
    room_id = rooms.target["id"] if room == "target" else quote(room, safe="")
    try:
        ws = await websockets.connect(
            f"{server.ws_url}/ws/rooms/{room_id}", max_size=None, open_timeout=WAIT
        )
    except websockets.InvalidStatus as refused:
        # An id that the router cannot take (e.g. "." or ".."): refused at the handshake.
        assert room != "target" and refused.response.status_code in (403, 404)
        return
    client = RoomClient(ws)
    try:
        await client.ws.send(frame)
        closed = await client.wait_closed()
        check_no_leak(seen_by(client), frame)
        assert closed.code == code and closed.reason, (frame, closed)
        assert not client.messages, client.messages
    finally:
        await leave(rooms, client)


@fuzz(0.5)
@given(
    kinds=st.lists(
        st.sampled_from(["invite", "spectator", "again", "bad token", "no room"]),
        min_size=2,
        max_size=MAX_MEMBERS + 4,
    )
)
async def test_join_floods(server: Server, rooms: Rooms, kinds: list[str]) -> None:
    """Many joins at once, some repeated on one connection, some bad."""
    room = rooms.flood

    async def one(kind: str) -> tuple[str, RoomClient]:
        room_id = "no-such-room-" + uuid.uuid4().hex if kind == "no room" else room["id"]
        token = (
            "bad"
            if kind == "bad token"
            else room["spectator_token" if kind == "spectator" else "invite_token"]
        )
        client = await RoomClient.connect(server, room_id, token)
        if kind == "again":
            await client.send({"type": "join", "v": 1, "token": token, "name": "twice"})
        return kind, client

    made = await asyncio.gather(*(one(kind) for kind in kinds))
    try:
        # Members of earlier examples may still be leaving, so only the upper bound is sure.
        welcomed = 0
        for kind, client in made:
            await client._until(
                lambda c=client: c.closed or any(m["type"] == "welcome" for m in c.messages),
                "a welcome or a close",
                WAIT,
            )
            check_no_leak(seen_by(client))
            if kind == "bad token":
                assert client.closed and client.closed.code == protocol.CloseCode.FORBIDDEN
            elif kind == "no room":
                assert client.closed and client.closed.code == protocol.CloseCode.NOT_FOUND
            elif client.closed:
                assert client.closed.code == protocol.CloseCode.AT_CAPACITY, client.closed
            else:
                welcomed += 1
                if kind == "again":
                    await client.wait_message("error", WAIT, code="bad_message")
        assert welcomed <= MAX_MEMBERS
    finally:
        await asyncio.gather(*(leave(rooms, client) for _, client in made))


async def test_a_repl_that_stops_reading_holds_up_no_one(server: Server) -> None:
    """Ctrl-S stops the REPL's output, so it stops reading its input; typing on fills the
    pty and the room's input waits. The member is told (busy), a restart gets through at
    once, and a member who leaves is gone, whatever was still waiting."""
    room = await server.create_room()
    holder = await RoomClient.connect(server, room["id"], room["invite_token"], name="holder")
    typist = await RoomClient.connect(server, room["id"], room["invite_token"], name="typist")
    try:
        await typist.wait_output(">>> ")
        await typist.type(XOFF)
        chunk = b"a" * protocol.MAX_INPUT_FRAME
        for _ in range(2 * MAX_PENDING_INPUT // len(chunk)):
            await typist.type(chunk)
        await typist.wait_message("error", code="busy")
        resets = typist.resets
        await typist.send({"type": "restart"})
        await typist._until(lambda: typist.resets > resets, "the restart's terminal reset", WAIT)
        await typist.wait_output(">>> ")
        typist_id = (await typist.wait_message("welcome"))["you"]["id"]
        await typist.close()
        await wait_gone(holder, typist_id)
        await probe(holder)
    finally:
        for client in (holder, typist):
            await client.close()


# -- the editor WebSocket -----------------------------------------------------------


def var_uint(value: int) -> bytes:
    encoder = Encoder()
    encoder.write_var_uint(value)
    return encoder.to_bytes()


@st.composite
def y_messages(draw: st.DrawFn) -> bytes:
    """y-websocket messages: well-formed ones, then cut, flipped, lengthened or made up."""
    doc = Doc(client_id=draw(st.integers(0, 2**32 - 1)))  # not random: hypothesis replays it
    text = doc.get(editor_module.TEXT_NAME, type=Text)
    kind = draw(st.sampled_from(["step1", "step2", "update", "awareness", "other", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "step1":
        message = create_sync_message(doc)
    elif kind in ("step2", "update"):
        before = doc.get_state()
        text.insert(0, draw(st.text(min_size=1, max_size=50)))
        update = doc.get_update(before)
        subtype = editor_module.SYNC_STEP2 if kind == "step2" else editor_module.SYNC_UPDATE
        message = bytes([editor_module.MESSAGE_SYNC, subtype]) + var_uint(len(update)) + update
    elif kind == "awareness":
        entries = draw(st.lists(st.tuples(st.integers(0, 2**53), json_values), max_size=3))
        encoder = Encoder()
        encoder.write_var_uint(len(entries))
        for client_id, state in entries:
            encoder.write_var_uint(client_id)
            encoder.write_var_uint(draw(st.integers(0, 2**32)))
            encoder.write_var_string(json.dumps(state))
        message = create_awareness_message(encoder.to_bytes())
    else:  # a message type this server has no use for (auth, queries)
        message = var_uint(draw(st.integers(2, 2**40))) + draw(st.binary(max_size=20))
    mutation = draw(
        st.sampled_from(["none", "truncate", "flip", "insert", "huge varint", "length"])
    )
    if mutation == "truncate":
        message = message[: draw(st.integers(0, max(0, len(message) - 1)))]
    elif mutation == "flip" and message:
        at = draw(st.integers(0, len(message) - 1))
        message = (
            message[:at] + bytes([message[at] ^ draw(st.integers(1, 255))]) + message[at + 1 :]
        )
    elif mutation == "insert":
        at = draw(st.integers(0, len(message)))
        message = message[:at] + draw(st.binary(min_size=1, max_size=20)) + message[at:]
    elif mutation == "huge varint":
        at = draw(st.integers(0, len(message)))
        message = message[:at] + b"\xff" * draw(st.integers(8, 40)) + b"\x01" + message[at:]
    elif mutation == "length":  # a length that runs past the end
        message = message[:2] + var_uint(draw(st.integers(len(message), 2**60))) + message[2:]
    return message


EDITOR_CLOSES = {
    protocol.CloseCode.UNSUPPORTED,
    protocol.CloseCode.BAD_DATA,
    protocol.CloseCode.TOO_BIG,
    protocol.CloseCode.DOC_TOO_LARGE,
}


async def editor_probe(ws: websockets.ClientConnection) -> None:
    """A sync step 1 is answered with a sync step 2: the connection still serves."""
    await ws.send(create_sync_message(Doc()))
    async with asyncio.timeout(WAIT):
        while True:
            reply = await ws.recv()
            if isinstance(reply, bytes) and reply[:2] == STEP2:
                return


STEP2 = bytes([editor_module.MESSAGE_SYNC, editor_module.SYNC_STEP2])


class Observer:
    """A well-behaved editor client of the fuzzed document, reading all along."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.step2 = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.ws:
                if isinstance(message, bytes) and message[:2] == STEP2:
                    self.step2.set()

    async def probe(self) -> None:
        self.step2.clear()
        await self.ws.send(create_sync_message(Doc()))
        await asyncio.wait_for(self.step2.wait(), WAIT)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


@pytest.fixture(scope="module")
async def observer(server: Server, rooms: Rooms) -> AsyncIterator[Observer]:
    ws = await websockets.connect(
        f"{server.ws_url}/yjs/{rooms.target['id']}/python?ticket={rooms.ticket}",
        max_size=None,
        open_timeout=WAIT,
    )
    made = Observer(ws)
    yield made
    await made.close()


@fuzz()
@given(messages=st.lists(y_messages(), min_size=1, max_size=4))
async def test_editor_socket(
    server: Server, rooms: Rooms, observer: Observer, messages: list[bytes]
) -> None:
    """Malformed y-protocol input closes only its own connection, with 1007; the rest is
    served (or, for message types this server has no use for, ignored)."""
    url = f"{server.ws_url}/yjs/{rooms.target['id']}/python?ticket={rooms.ticket}"
    async with websockets.connect(url, max_size=None, open_timeout=WAIT) as ws:
        try:
            for message in messages:
                await ws.send(message)
            await editor_probe(ws)
        except websockets.ConnectionClosed:
            assert ws.close_code in EDITOR_CLOSES, (ws.close_code, ws.close_reason, messages)
            check_no_leak(ws.close_reason or "")
    assert observer.ws.close_code is None, (observer.ws.close_code, observer.ws.close_reason)


@fuzz(0.5)
@given(message=y_messages() | st.text(max_size=100).map(str.encode))
async def test_editor_text_frames_are_closed(server: Server, rooms: Rooms, message: bytes) -> None:
    """y-websocket speaks binary frames: a text frame closes the connection, 1003 (1007 if
    it is not even UTF-8). One frame only: the server may hang up at once on bad UTF-8."""
    url = f"{server.ws_url}/yjs/{rooms.target['id']}/python?ticket={rooms.ticket}"
    async with websockets.connect(url, max_size=None, open_timeout=WAIT) as ws:
        await ws.send(message, text=True)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), WAIT)
        try:
            message.decode()
        except UnicodeDecodeError:
            assert ws.close_code == protocol.CloseCode.BAD_DATA
        else:
            assert ws.close_code == protocol.CloseCode.UNSUPPORTED
        check_no_leak(ws.close_reason or "")


@fuzz(0.25)
@given(size=st.integers(editor_module.MAX_MESSAGE_SIZE + 1, WS_MAX_SIZE + 64 * 1024))
async def test_editor_oversized_messages(server: Server, rooms: Rooms, size: int) -> None:
    url = f"{server.ws_url}/yjs/{rooms.target['id']}/python?ticket={rooms.ticket}"
    async with websockets.connect(url, max_size=None, open_timeout=WAIT) as ws:
        message = bytes([0, editor_module.SYNC_UPDATE]) + var_uint(size) + b"\x00" * size
        with pytest.raises(websockets.ConnectionClosed):
            await ws.send(message)
            await editor_probe(ws)
        assert ws.close_code == protocol.CloseCode.TOO_BIG


@fuzz(0.5)
@given(
    case=st.sampled_from(["forged", "other room", "no room", "language"]),
    text=st.text(max_size=60),
)
async def test_editor_bad_tickets_are_refused(
    server: Server, rooms: Rooms, case: str, text: str
) -> None:
    """A forged ticket, or a real one for another room or an unknown language, is refused
    before the handshake completes: HTTP 403 (docs/protocol.md)."""
    ticket, room_id, language = rooms.ticket, rooms.target["id"], "python"
    if case == "forged":
        assume(text != rooms.ticket)
        ticket = text
    elif case == "other room":
        room_id = rooms.flood["id"]
    elif case == "no room":
        assume(text and text != rooms.target["id"])
        room_id = quote(text, safe="")
    else:
        assume(text and text not in LANGUAGES)
        language = quote(text, safe="")
    url = f"{server.ws_url}/yjs/{room_id}/{language}?ticket={quote(ticket)}"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, open_timeout=WAIT)
    assert refused.value.response.status_code == 403
    check_no_leak(refused.value.response.body.decode(errors="replace"))


# -- the HTTP API -----------------------------------------------------------------


@st.composite
def requests(draw: st.DrawFn, rooms: Rooms) -> tuple[str, str, dict[str, str], bytes]:
    room_id = draw(
        st.sampled_from([rooms.target["id"], "x" * 22]) | st.text(min_size=1, max_size=40)
    )
    quoted = quote(room_id, safe="")
    path = draw(st.sampled_from([
        "/", "/api/rooms", f"/api/rooms/{quoted}", f"/api/rooms/{quoted}/rotate",
        f"/r/{quoted}", "/api/capacity", "/healthz", f"/api/{quoted}",
    ]))  # fmt: skip
    if draw(st.booleans()):
        path += "?token=" + quote(draw(st.text(max_size=80)))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    printable = st.text(
        alphabet=string.ascii_letters + string.digits + string.punctuation + " \t", max_size=120
    ).map(str.strip)
    headers: dict[str, str] = {}
    token = draw(
        st.sampled_from([rooms.target["owner_token"], rooms.target["invite_token"]]) | printable
    )
    if draw(st.booleans()):
        headers["Authorization"] = (
            draw(st.sampled_from(["Bearer ", "bearer ", "Basic ", ""])) + token
        ).strip()
    if draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", "text/plain"]) | printable
        )
    if draw(st.booleans()):
        headers["Origin"] = draw(printable)
    body = draw(st.binary(max_size=2000) | json_values.map(lambda v: json.dumps(v).encode()))
    return method, path, headers, body


@fuzz()
@given(data=st.data())
async def test_http_api(server: Server, rooms: Rooms, data: st.DataObject) -> None:
    method, path, headers, body = data.draw(requests(rooms))
    async with httpx.AsyncClient(timeout=WAIT) as http:
        response = await http.request(
            method, server.url + path, headers=headers, content=body, follow_redirects=False
        )
    assert response.status_code < 500, (method, path, headers, response.status_code, response.text)
    check_no_leak(response.text, path + json.dumps(headers) + body.decode(errors="replace"))
    if path.startswith("/api/") and response.status_code >= 400 and method != "HEAD":
        assert "detail" in response.json() or "error" in response.json()


@fuzz(0.5)
@given(
    request=st.binary(max_size=600) | st.text(max_size=300).map(lambda t: f"{t}\r\n\r\n".encode())
)
async def test_malformed_http_requests(server: Server, rooms: Rooms, request: bytes) -> None:
    """Bytes that are not HTTP at all; uvicorn answers 400 or hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), WAIT)
    except OSError:
        answer = b""
    finally:
        writer.close()
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.1 ") else b"000"
    assert not status.startswith(b"5"), answer[:300]
    check_no_leak(answer.decode(errors="replace"), request)


# -- unexpected failures: logged once, 1011 to the member -----------------------------

UID_LEASES = Path("/run/replroom-uids")  # replroom.sandbox.bwrap's host-wide uid leases


@pytest.fixture
def lease_uid() -> Iterator[int]:
    """A host uid of its own for a server started with uid_count 1; its lease path is removed
    afterwards, whatever the test left there."""
    UID_LEASES.mkdir(mode=0o700, parents=True, exist_ok=True)
    while True:
        uid = 3_000_000 + int.from_bytes(os.urandom(3), "big")
        if not (UID_LEASES / str(uid)).exists():
            break
    yield uid
    path = UID_LEASES / str(uid)
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


async def test_an_unexpected_failure_reaches_the_member_as_1011(
    tmp_path: Path, runtime_dir: Path, room_image: object, lease_uid: int
) -> None:
    """A real fault: the only uid lease of the server is a directory, so starting a sandbox
    fails with IsADirectoryError, not a SandboxError. A keystroke that needs the sandbox gets
    `error`/internal and the member stays; a join gets `error`/internal and close 1011. Each
    failure is logged once, with the room id; nothing reaches uvicorn's traceback handler."""
    lease = UID_LEASES / str(lease_uid)
    server = Server(
        tmp_path / "data",
        runtime_dir,
        env={
            "REPLROOM_BACKEND": "bwrap",
            "REPLROOM_UID_BASE": str(lease_uid),
            "REPLROOM_UID_COUNT": "1",
            # No pool: a spare made between this test's release of the lease and its
            # replacement by a directory would take the one uid (1 run in 3 here).
            "REPLROOM_POOL_SIZE": "0",
        },
    )
    clients: list[RoomClient] = []
    # While this process holds the lease, the room cannot start its sandbox (an expected
    # failure: the member is told and stays).
    held = os.open(lease, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        server.start()
        room = await server.create_room()
        alice = await RoomClient.connect(server, room["id"], room["invite_token"], name="alice")
        clients.append(alice)
        await alice.wait_message("notice", level="error")
    finally:
        os.close(held)
    lease.unlink()
    lease.mkdir()
    try:
        at = len(alice.messages)
        await alice.type("\r")  # Enter starts the REPL, so a sandbox
        failed = await alice.wait_message("error", after=at, code="internal")
        assert failed["message"] == INTERNAL_MESSAGE
        # The room does not go on showing "starting": the failed start is over. (What
        # the start told the room was sent before the error.)
        status = [m for m in alice.messages if m["type"] == "status"][-1]
        assert (status["sandbox"], status["repl"]) == ("stopped", "stopped"), status
        await probe(alice)  # still a member, still served

        bob = await RoomClient.connect(server, room["id"], room["invite_token"], name="bob")
        clients.append(bob)
        closed = await bob.wait_closed()
        assert closed.code == protocol.CloseCode.INTERNAL == 1011
        assert closed.reason == "internal error"
        assert [m for m in bob.messages if m["type"] == "error"] == [
            {"type": "error", "code": "internal", "message": INTERNAL_MESSAGE}
        ]
        for client in clients:
            check_no_leak(seen_by(client))
        await assert_alive(server)

        # The fault gone, the same room works: nothing was left half-done.
        lease.rmdir()
        at = len(alice.output)
        await alice.type("\r")
        await alice.wait_output(">>> ", after=at)
        carol = await RoomClient.connect(server, room["id"], room["invite_token"], name="carol")
        clients.append(carol)
        await carol.wait_output(">>> ")
    finally:
        try:
            for client in clients:
                await client.close()
        finally:
            server.stop()  # whatever failed: a failed run of this test once left it running
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    failures = [r for r in records if r["level"] == "error"]
    assert [r["message"] for r in failures] == [
        f"room {room['id']}: a message from member {failed_member(alice)} failed",
        f"room {room['id']}: serving a member failed",
    ], failures
    assert all("IsADirectoryError" in r["exception"] for r in failures)
    for sign in ("Exception in ASGI application", "Task exception was never"):
        assert sign not in server.log()


def failed_member(client: RoomClient) -> str:
    return next(m for m in client.messages if m["type"] == "welcome")["you"]["id"]


async def test_an_unexpected_http_failure_is_a_500_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The app's HTTP guard, under uvicorn, on a route that fails for real (a file that is
    not there). No route of the app fails unexpectedly on purpose (storage failures are
    answered 507/503), so the guard is checked on a small app of its own."""
    missing = tmp_path / "not-there"

    async def fails(request: Request) -> PlainTextResponse:
        return PlainTextResponse(missing.read_text())

    app = Starlette(routes=[Route("/fails", fails)])
    app.add_middleware(HttpGuard)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with httpx.AsyncClient(timeout=WAIT) as http:
            response = await http.get(f"http://127.0.0.1:{sock.getsockname()[1]}/fails")
    finally:
        server.should_exit = True
        await serving
        sock.close()
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": INTERNAL_MESSAGE}
    check_no_leak(response.text)
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in failures] == ["GET /fails failed"]  # not uvicorn's too
    assert failures[0].exc_info and failures[0].exc_info[0] is FileNotFoundError


# -- afterwards ----------------------------------------------------------------------


async def test_afterwards_the_server_and_the_bystander_room_are_fine(
    server: Server, rooms: Rooms, observer: Observer
) -> None:
    await assert_alive(server)
    assert rooms.watcher.closed is None and rooms.holder.closed is None
    after = await echo_median_ms(rooms.watcher)
    figures = (
        f"bystander keystroke echo (median of {ECHO_KEYS}): before the fuzz run "
        f"{rooms.echo_before_ms:.2f} ms, after {after:.2f} ms"
    )
    print(f"\n{figures}")
    # The bystander's REPL is the one it had before: nothing restarted it.
    at = len(rooms.watcher.output)
    await rooms.watcher.type("print(marker * 100)\r")
    await rooms.watcher.wait_output("4200", after=at)
    # The fuzzed document still syncs and the holder's room still runs code.
    await observer.probe()
    at = len(rooms.holder.output)
    await rooms.holder.type("print(6 * 7)\r")
    await rooms.holder.wait_output("42\r\n", after=at)
    log = server.log()
    for sign in ("Traceback", "Exception in ASGI application", "Task exception was never"):
        assert sign not in log, f"{figures}\n{sign!r} in the server log:\n{log[-5000:]}"

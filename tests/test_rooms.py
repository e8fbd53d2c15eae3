"""Collaborative rooms end to end: a real server on loopback, real WebSocket clients,
real sandboxes (every test runs on bwrap, and on docker+runc when a Docker Engine is there)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.client import RoomClient, Server

pytestmark = pytest.mark.timeout(180)


BACKEND_ENV = {
    "bwrap": {"REPLROOM_BACKEND": "bwrap"},
    "docker-runc": {"REPLROOM_BACKEND": "docker", "REPLROOM_DOCKER_RUNTIME": "runc"},
}


@pytest.fixture(scope="module", params=list(BACKEND_ENV))
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    runtime_dir: Path,
    room_image: object,
) -> Iterator[Server]:
    if request.param != "bwrap" and not os.environ.get("DOCKER_HOST"):
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")
    started = Server(tmp_path_factory.mktemp("data"), runtime_dir, env=BACKEND_ENV[request.param])
    started.start()
    yield started
    started.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[RoomClient]]:
    made: list[RoomClient] = []
    yield made
    for client in made:
        await client.close()


async def join(
    server: Server,
    room: dict,
    clients: list[RoomClient],
    *,
    token: str = "invite",
    **kwargs: object,
) -> RoomClient:
    client = await RoomClient.connect(server, room["id"], room[f"{token}_token"], **kwargs)  # type: ignore[arg-type]
    clients.append(client)
    return client


async def test_two_members_share_input_and_output(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    alice = await join(server, room, clients, name="alice")
    await alice.wait_output(">>> ")
    bob = await join(server, room, clients, name="bob")
    await bob.wait_output(">>> ")
    await alice.type("x = 6 * 7\r")
    await bob.type("print('x is', x)\r")
    for client in (alice, bob):
        await client.wait_output("x is 42")
    # Both see the same stream, each other's keystrokes included.
    assert b"x = 6 * 7" in bob.output and b"print('x is', x)" in alice.output
    latest = [m for m in alice.messages if m["type"] == "members"][-1]
    assert {m["name"] for m in latest["members"]} == {"alice", "bob"}


async def test_spectator_watches_but_cannot_type_or_change_the_room(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    alice = await join(server, room, clients, name="alice")
    await alice.wait_output(">>> ")
    watcher = await join(server, room, clients, token="spectator", name="watcher")
    welcome = await watcher.wait_message("welcome")
    assert welcome["you"]["role"] == "spectator"
    await watcher.type("print('spectator wrote this')\r")
    await watcher.wait_message("error", code="read_only")
    await watcher.send({"type": "language", "language": "ruby"})
    await watcher.send({"type": "run", "code": "print('nope')"})
    await alice.type("print('member wrote this')\r")
    await watcher.wait_output("member wrote this\r\n")
    assert b"spectator wrote this" not in alice.output
    assert b"nope" not in alice.output
    assert all(m.get("type") != "language" for m in alice.messages)


async def test_late_joiner_gets_the_current_screen(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    alice = await join(server, room, clients, name="alice")
    await alice.wait_output(">>> ")
    await alice.type("for i in range(3): print('line', i)\r\r")
    await alice.wait_output("line 2")
    late = await join(server, room, clients, name="late")
    await late.wait_output("line 2")
    assert b"line 0" in late.output  # the whole screen, not only what came after the join


async def test_terminal_size_is_the_smallest_members(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    big = await join(server, room, clients, name="big", cols=120, rows=40)
    await big.wait_output(">>> ")
    await big.type("import os\r")
    seen = len(big.messages)
    small = await join(server, room, clients, name="small", cols=90, rows=30)
    await big.wait_message("size", cols=90, rows=30, after=seen)
    at = len(big.output)
    await big.type("print(os.get_terminal_size())\r")
    at = await big.wait_output("columns=90, lines=30", after=at)
    await small.send({"type": "resize", "cols": 70, "rows": 20})
    await big.wait_message("size", cols=70, rows=20)
    await big.type("print(os.get_terminal_size())\r")
    at = await big.wait_output("columns=70, lines=20", after=at)
    await small.close()
    clients.remove(small)
    await big.wait_message("size", cols=120, rows=40, after=seen)
    await big.type("print(os.get_terminal_size())\r")
    await big.wait_output("columns=120, lines=40", after=at)


RUN_CASES = {
    "python": (
        "def greet(name):\n    prefix = 'hello'\n\n    return f'{prefix}, {name}'\n\n"
        "class Counter:\n    def __init__(self):\n        self.n = 0\n\n"
        "    def bump(self):\n        self.n += 1\n        return self.n\n",
        "print(greet('py'), Counter().bump())\r",
        "hello, py 1",
    ),
    "node": (
        "function greet(name) {\n  const prefix = 'hello';\n\n  return `${prefix}, ${name}`;\n}\n"
        "class Counter {\n  constructor() { this.n = 0; }\n  bump() { return ++this.n; }\n}\n",
        "console.log(greet('js') + ' ' + new Counter().bump())\r",
        "hello, js 1",
    ),
    "ruby": (
        "def greet(name)\n  prefix = 'hello'\n\n  \"#{prefix}, #{name}\"\nend\n\n"
        "class Counter\n  def initialize\n    @n = 0\n  end\n\n"
        "  def bump\n    @n += 1\n  end\nend\n",
        "puts greet('rb') + ' ' + Counter.new.bump.to_s\r",
        "hello, rb 1",
    ),
}


@pytest.mark.parametrize("language", list(RUN_CASES))
async def test_run_loads_multiline_code_and_keeps_definitions(
    server: Server, room: dict, clients: list[RoomClient], language: str
) -> None:
    code, call, expected = RUN_CASES[language]
    alice = await join(server, room, clients, name="alice")
    await alice.wait_output(">>> ")
    await alice.send({"type": "run", "code": code, "language": language})
    # The server handles one member's messages in order: the call is typed
    # after the load line, and the REPL runs it once the load is done.
    await alice.type(call)
    await alice.wait_output(expected)


async def test_language_switch_is_for_everyone_and_keeps_each_repls_state(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    alice = await join(server, room, clients, name="alice")
    bob = await join(server, room, clients, name="bob")
    await alice.wait_output(">>> ")
    await alice.type("kept = 'python state'\r")
    await alice.send({"type": "language", "language": "ruby"})
    for client in (alice, bob):
        await client.wait_message("language", language="ruby", by="alice")
        await client.wait_output("irb(")
    await bob.type("ruby_kept = 21 * 2; puts 'ruby' + ' state'\r")
    await alice.wait_output("ruby state\r\n")
    await bob.send({"type": "language", "language": "python"})
    await alice.wait_message("language", language="python", by="bob")
    await alice.type("print(kept)\r")
    await alice.wait_output("python state\r\n")
    await alice.send({"type": "language", "language": "ruby"})
    await alice.wait_message("language", language="ruby", by="alice")
    await alice.wait_output("ruby state\r\n")  # the ruby screen came back with its history
    await alice.type("puts ruby_kept.to_s + ' kept'\r")
    await alice.wait_output("42 kept\r\n")


async def test_exit_shows_a_notice_and_enter_restarts(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    alice = await join(server, room, clients, name="alice")
    await alice.wait_output(">>> ")
    await alice.type("exit()\r")
    at = await alice.wait_output("exited with code 0 — press Enter to restart")
    await alice.wait_message("status", repl="exited")
    await alice.type("\r")
    await alice.wait_output(">>> ", after=at)
    await alice.type("print('back')\r")
    await alice.wait_output("back\r\n")


async def test_out_of_memory_is_reported_and_the_repl_restarts(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    alice = await join(server, room, clients, name="alice")
    at = await alice.wait_output(">>> ")
    await alice.type("hog = []\r")
    await alice.type("while True: hog.append(bytearray(1 << 20))\r\r")
    notice = await alice.wait_message("notice", level="warning")
    assert re.search(r"out of memory \(limit 256 MiB\) — restarting", notice["text"]), notice
    at = await alice.wait_output("out of memory (limit 256 MiB)", after=at)
    await alice.wait_output(">>> ", after=at)
    await alice.type("print('recovered')\r")
    await alice.wait_output("recovered\r\n")
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{server.url}/metrics")).text
    assert re.search(r"^replroom_oom_kills_total [1-9]", text, re.M), text


async def test_a_sandbox_destroyed_from_outside_is_replaced(
    server: Server, room: dict, clients: list[RoomClient], runtime_dir: Path
) -> None:
    alice = await join(server, room, clients, name="alice")
    await alice.wait_output(">>> ")
    await alice.type("marker = 1\r")
    # What an operator's `replroom sandbox cleanup` does to a running room
    # (bwrap: every process killed, the mounts gone; docker: the container
    # removed), as would a crash of the host's cgroups or of the Engine.
    env = {
        **os.environ,
        "REPLROOM_RUNTIME_DIR": str(runtime_dir),
        "REPLROOM_INSTANCE": server.instance,
        **server.env,
    }
    process = await asyncio.create_subprocess_exec(
        *_replroom(), "sandbox", "cleanup", env=env, stdout=asyncio.subprocess.PIPE
    )
    await process.communicate()
    notice = "the sandbox stopped — starting a new one"
    await alice.wait_message("notice", text=notice)
    # The room may get a pool spare that the cleanup, still going, removes in
    # turn (it lists the instance's sandboxes first): then the room replaces
    # that one too. The sandbox left standing must be a new one, and work.
    while True:
        replaced = max(i for i, m in enumerate(alice.messages) if m.get("text") == notice)
        await alice.wait_message("status", after=replaced, sandbox="ready", repl="running")
        await alice.type("print('new sandbox', 'marker' in dir())\r")

        def answered_or_replaced(after: int = replaced) -> str | None:
            if b"new sandbox False" in alice.output:
                return "answered"
            later = alice.messages[after + 1 :]
            return "replaced" if any(m.get("text") == notice for m in later) else None

        if await alice.wait_until(answered_or_replaced, "an answer or another replacement") == (
            "answered"
        ):
            break


def _replroom() -> list[str]:
    import sys

    return [sys.executable, "-m", "replroom.cli"]


async def test_flood_with_a_stalled_member(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    alice = await join(server, room, clients, name="alice")
    await alice.wait_output(">>> ")
    # A member whose connection stops reading entirely.
    await join(server, room, clients, name="stalled", read=False)
    rss_before = server.rss()
    await alice.type("while True: print('y' * 60)\r\r")
    # Alice keeps receiving far beyond what the stalled member's queue may hold.
    await alice.until_members(2)
    await alice._until(lambda: len(alice.output) > 3 * 1024 * 1024, "3 MiB of output", 60)
    assert server.rss() - rss_before < 50 * 1024 * 1024
    await alice.type("\x03")
    # Output already in flight may be skipped (only while the room's output
    # is being limited), so the skip note is not asserted; the interrupt is.
    at = await alice.wait_output("KeyboardInterrupt")
    await alice.wait_output(">>> ", after=at)
    await alice.type("print('quiet ' + 'now')\r")
    await alice.wait_output("quiet now\r\n")


async def test_server_restart_keeps_rooms(
    tmp_path: Path, runtime_dir: Path, clients: list[RoomClient], room_image: object
) -> None:
    server = Server(tmp_path / "data", runtime_dir)
    server.start()
    try:
        room = await server.create_room()
        alice = await join(server, room, clients, name="alice")
        await alice.wait_output(">>> ")
        await alice.send({"type": "language", "language": "ruby"})
        await alice.wait_message("language", language="ruby")
        await server.stop_async()
        closed = await alice.wait_closed()
        assert closed.code == 1012
        server.start()
        again = await join(server, room, clients, name="alice")
        welcome = await again.wait_message("welcome")
        assert welcome["room"]["language"] == "ruby"
        await again.wait_output("irb(")
    finally:
        server.stop()


async def test_rotating_links_disconnects_old_holders(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    alice = await join(server, room, clients, name="alice")
    await alice.wait_message("welcome")
    owner = await join(server, room, clients, token="owner", name="owner")
    assert (await owner.wait_message("welcome"))["you"]["role"] == "owner"
    async with httpx.AsyncClient() as http:
        url = f"{server.url}/api/rooms/{room['id']}/rotate"
        refused = await http.post(url, headers={"Authorization": f"Bearer {room['invite_token']}"})
        assert refused.status_code == 403
        response = await http.post(url, headers={"Authorization": f"Bearer {room['owner_token']}"})
        assert response.status_code == 200
        fresh = response.json()
    closed = await alice.wait_closed()
    assert closed.code == 4003
    assert owner.closed is None
    stale = await RoomClient.connect(server, room["id"], room["invite_token"])
    clients.append(stale)
    assert (await stale.wait_closed()).code == 4003
    renewed = await RoomClient.connect(server, room["id"], fresh["invite_token"])
    clients.append(renewed)
    await renewed.wait_message("welcome")


async def test_room_api(server: Server, room: dict) -> None:
    assert len(room["id"]) >= 22  # 128 random bits, base64url
    assert room["invite_url"].endswith(f"/r/{room['id']}#t={room['invite_token']}")
    async with httpx.AsyncClient() as http:
        url = f"{server.url}/api/rooms/{room['id']}"
        assert (await http.get(url)).status_code == 403
        response = await http.get(
            url, headers={"Authorization": f"Bearer {room['spectator_token']}"}
        )
        assert response.status_code == 200
        assert response.json()["language"] == "python"
        assert (await http.get(f"{server.url}/api/rooms/nosuchroom")).status_code == 404
        # The site's address gives the page of a new room at once (no redirect): it moves
        # the address bar to the room's owner link, and no cache keeps it.
        new = await http.get(f"{server.url}/", follow_redirects=False)
        assert new.status_code == 200 and new.headers["cache-control"] == "no-store"
        moved = re.search(r'history\.replaceState\(null, \'\', "/r/([^"#]+)#t=([^"]+)"\)', new.text)
        assert moved is not None, new.text[:500]
        owner = await http.get(
            f"{server.url}/api/rooms/{moved[1]}", headers={"Authorization": f"Bearer {moved[2]}"}
        )
        assert owner.status_code == 200
        health = (await http.get(f"{server.url}/healthz")).json()
        assert health["status"] == "ok"
        assert health["backend"] == server.env.get("REPLROOM_BACKEND", "bwrap")
        metrics = (await http.get(f"{server.url}/metrics")).text
        for name in (
            "replroom_rooms_active",
            "replroom_members",
            "replroom_sandboxes",
            "replroom_sandbox_starts_total",
            "replroom_sandbox_start_seconds_bucket",
            "replroom_terminal_bytes_relayed_total",
        ):
            assert name in metrics


BAD_MESSAGES = [
    ("{not json", "malformed JSON"),
    ('{"type": "teleport"}', "unknown or missing message type"),
    ('{"cols": 80}', "unknown or missing message type"),
    ('{"type": "resize", "cols": "wide", "rows": 24}', "cols"),
    ('{"type": "resize", "cols": 100000, "rows": 24}', "cols"),
    ('{"type": "language", "language": "cobol"}', "unknown language"),
    ('{"type": "run", "code": 5}', "code"),
    ('{"type": "resize", "cols": 80, "rows": 24, "extra": 1}', "extra"),
    ("[]", "JSON object"),
]


async def test_bad_input_gets_an_error_and_the_server_goes_on(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    alice = await join(server, room, clients, name="alice")
    await alice.wait_output(">>> ")
    bystander = await join(server, room, clients, name="bystander")
    for text, expected in BAD_MESSAGES:
        count = sum(m["type"] == "error" for m in alice.messages)
        await alice.ws.send(text)
        await alice._until(
            lambda c=count: sum(m["type"] == "error" for m in alice.messages) > c or None,
            f"error for {text}",
            30,
        )
        error = [m for m in alice.messages if m["type"] == "error"][-1]
        assert expected in error["message"], (text, error)
    await alice.ws.send(b"x" * (64 * 1024 + 1))
    await alice.wait_message("error", code="too_large")
    await alice.type("print('still serving')\r")
    await bystander.wait_output("still serving\r\n")


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ('{"type": "resize", "cols": 80, "rows": 24}', 4000),
        ("garbage", 4000),
        ('{"type": "join", "v": 99, "token": "x", "name": "n"}', 4000),
        ('{"type": "join", "v": 1, "token": "wrong", "name": "n"}', 4003),
    ],
)
async def test_bad_joins_are_closed_with_a_reason(
    server: Server, room: dict, first: str, code: int
) -> None:
    client = await RoomClient.connect(server, room["id"], "", join=False)
    try:
        await client.ws.send(first)
        closed = await client.wait_closed()
        assert closed.code == code and closed.reason
    finally:
        await client.close()


async def test_unknown_room_and_foreign_origin_are_refused(server: Server, room: dict) -> None:
    client = await RoomClient.connect(server, "no-such-room", "token")
    assert (await client.wait_closed()).code == 4004
    await client.close()
    with pytest.raises(Exception, match="403"):
        await RoomClient.connect(
            server, room["id"], room["invite_token"], origin="https://evil.example"
        )
    same_origin = await RoomClient.connect(
        server, room["id"], room["invite_token"], origin=server.url
    )
    await same_origin.wait_message("welcome")
    await same_origin.close()


async def test_capacity_limit_returns_503(
    tmp_path: Path, runtime_dir: Path, clients: list[RoomClient], room_image: object
) -> None:
    server = Server(tmp_path / "data", runtime_dir,
                    env={"REPLROOM_MEMORY_BUDGET": "512m"})  # 2 rooms of 256 MiB # fmt: skip
    server.start()
    try:
        for _ in range(2):
            room = await server.create_room()
            member = await join(server, room, clients)
            await member.wait_output(">>> ")
        async with httpx.AsyncClient() as http:
            refused = await http.post(f"{server.url}/api/rooms")
            assert refused.status_code == 503
            assert refused.json()["error"] == "at_capacity"
            page = await http.get(f"{server.url}/")
            assert page.status_code == 503 and "Server at capacity" in page.text
            capacity = (await http.get(f"{server.url}/api/capacity")).json()
            assert capacity["sandboxes"] == 2 and capacity["max_sandboxes"] == 2
        # Rooms that are open keep working.
        await clients[0].type("print('still fine')\r")
        await clients[0].wait_output("still fine\r\n")
    finally:
        server.stop()


async def test_owner_is_shown_the_links_and_others_are_not(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    owner = await join(server, room, clients, token="owner", name="owner")
    welcome = await owner.wait_message("welcome")
    assert welcome["links"] == {
        "invite": room["invite_token"],
        "spectator": room["spectator_token"],
    }
    assert welcome["editor"]["path"] == f"/yjs/{room['id']}" and welcome["editor"]["ticket"]
    member = await join(server, room, clients, name="member")
    assert "links" not in await member.wait_message("welcome")
    async with httpx.AsyncClient() as http:
        rotated = await http.post(
            f"{server.url}/api/rooms/{room['id']}/rotate",
            headers={"Authorization": f"Bearer {room['owner_token']}"},
        )
    again = await join(server, room, clients, token="owner", name="owner again")
    links = (await again.wait_message("welcome"))["links"]
    assert links["invite"] == rotated.json()["invite_token"] != room["invite_token"]


async def test_editor_socket_needs_a_live_members_ticket(
    server: Server, room: dict, clients: list[RoomClient]
) -> None:
    base = f"{server.ws_url}/yjs/{room['id']}"
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"{base}/python?ticket=forged")
    alice = await join(server, room, clients, name="alice")
    ticket = (await alice.wait_message("welcome"))["editor"]["ticket"]
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"{base}/cobol?ticket={ticket}")
    editor = await websockets.connect(f"{base}/python?ticket={ticket}")
    first = await asyncio.wait_for(editor.recv(), 30)
    assert isinstance(first, bytes) and first[0] == 0  # y-protocol: a sync message
    await alice.close()
    clients.remove(alice)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(editor.recv(), 30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003

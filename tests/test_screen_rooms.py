"""The exact screen behind a real server: what a late joiner's connection gets.

Real server on 127.0.0.1, real bwrap rooms, WebSocket clients; the output a
late joiner gets is parsed by the screen sidecar (the page's parser) and
compared with the output a member who watched from the start got.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from replroom.room.screen import Emulator
from tests.client import RoomClient, Server

pytestmark = pytest.mark.timeout(180)

SIZE = (100, 30)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    # Floods of many MB, to get past the socket buffers: at 4 MiB/s, not the
    # default 256 KiB/s (test_rooms.py and test_web.py flood at the default).
    rate = {"REPLROOM_OUTPUT_RATE": str(4 * 1024 * 1024)}
    started = Server(tmp_path_factory.mktemp("data"), runtime_dir, env=rate)
    started.start()
    yield started
    started.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[RoomClient]]:
    made: list[RoomClient] = []
    yield made
    for client in made:
        await client.close()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    started = Emulator()
    yield started
    await started.close()


async def in_bash(server: Server, clients: list[RoomClient]) -> tuple[dict[str, Any], RoomClient]:
    room = await server.create_room()
    watcher = await RoomClient.connect(
        server, room["id"], room["owner_token"], name="watcher", cols=SIZE[0], rows=SIZE[1]
    )
    clients.append(watcher)
    await watcher.wait_output(">>> ")
    await watcher.send({"type": "language", "language": "bash"})
    await watcher.wait_output("$ ")
    return room, watcher


async def screen_of(emulator: Emulator, output: bytes) -> Any:
    return await emulator.dump(SIZE, 1000, [output])


async def test_redraws_without_a_newline_reach_a_late_joiner(
    server: Server, clients: list[RoomClient], emulator: Emulator
) -> None:
    """The issue's case: the byte replay gave a late joiner a blank terminal."""
    room, watcher = await in_bash(server, clients)
    await watcher.type(
        'python3 -c \'import sys; w = sys.stdout.write; w("\\x1b[?1049h"); '
        '[w("\\x1b[H" + "0123456789" * 9) for _ in range(13000)]; '
        'w("MARK" + "ER"); sys.stdout.flush(); input()\'\r'
    )
    await watcher.wait_output("MARKER", timeout=60)
    late = await RoomClient.connect(
        server, room["id"], room["invite_token"], name="late", cols=SIZE[0], rows=SIZE[1]
    )
    clients.append(late)
    await late.wait_output("MARKER")
    watched = await screen_of(emulator, bytes(watcher.output))
    rebuilt = await screen_of(emulator, bytes(late.output))
    assert rebuilt["active"] == "alternate"
    assert rebuilt == watched


async def test_a_language_switch_brings_back_that_repls_screen(
    server: Server, clients: list[RoomClient], emulator: Emulator
) -> None:
    _room, watcher = await in_bash(server, clients)
    await watcher.type("printf '\\e[?2004l\\e[1;33mbash %s\\e[0m\\n' screen\r")
    await watcher.wait_output("bash screen")
    await watcher.wait_output("$ ", after=watcher.output.rindex(b"bash screen"))
    bash_screen = await screen_of(emulator, bytes(watcher.output))
    resets = watcher.resets
    await watcher.send({"type": "language", "language": "python"})
    await watcher.wait_until(lambda: watcher.resets > resets, "the switch to Python")
    await watcher.wait_output(">>> ")
    await watcher.type("print('python ' + 'screen')\r")
    await watcher.wait_output("python screen\r\n>>> ")
    resets = watcher.resets
    await watcher.send({"type": "language", "language": "bash"})
    await watcher.wait_until(lambda: watcher.resets > resets, "the switch back to Bash")
    await watcher.wait_output("bash screen")
    await watcher.wait_output("$ ", after=watcher.output.rindex(b"bash screen"))
    assert await screen_of(emulator, bytes(watcher.output)) == bash_screen


async def test_a_member_who_fell_behind_gets_the_exact_screen(
    server: Server, clients: list[RoomClient], emulator: Emulator
) -> None:
    room, watcher = await in_bash(server, clients)
    stalled = await RoomClient.connect(
        server, room["id"], room["invite_token"], name="stalled", cols=SIZE[0], rows=SIZE[1],
        read=False,
    )  # fmt: skip
    clients.append(stalled)
    await watcher.until_members(2)
    await watcher.type(
        'python3 -c \'[print(f"\\x1b[3{i % 8}mrow {i}\\x1b[0m") for i in range(900000)]; '
        'print("flood " + "done")\'\r'
    )
    at = await watcher.wait_output("flood done", timeout=120)
    await watcher.wait_output("$ ", after=at)
    # 18 MB: more than the socket buffers and the client library hold, so the
    # server dropped the stalled member's queued output. It reads again.
    stalled._task = asyncio.create_task(stalled._receive())  # the helper's own reader
    await stalled.wait_until(
        lambda: stalled.resets >= 2 and b"flood done" in stalled.output, "the rebuilt screen"
    )
    await stalled.wait_output("$ ", after=bytes(stalled.output).index(b"flood done"))
    watched = await screen_of(emulator, bytes(watcher.output))
    assert await screen_of(emulator, bytes(stalled.output)) == watched

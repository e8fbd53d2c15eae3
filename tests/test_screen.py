"""The exact screen (replroom.room.screen) on crafted output, against the real sidecar.

A screen rebuilt from what the server keeps must equal the screen of a
terminal that parsed every byte: both are parsed by the sidecar's
@xterm/headless (the page's parser) and compared cell by cell, with the
cursor, the active buffer, the modes and the title. Output comes in odd
chunkings (split UTF-8 characters, split escape sequences) and is folded
after every chunk, the hardest case for the serializer.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from replroom.room import screen as screen_module
from replroom.room.screen import Emulator, EmulatorError, Screen, Segment

pytestmark = pytest.mark.fast

SIZE = (80, 24)
SCROLLBACK = 200


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    started = Emulator()
    yield started
    await started.close()


def segments_of(frames: Iterable[str | bytes]) -> list[Segment]:
    """A screen's frames as the sidecar's segments (size messages become resizes)."""
    segments: list[Segment] = []
    for frame in frames:
        if isinstance(frame, bytes):
            segments.append(frame)
        else:
            message = json.loads(frame)
            assert message["type"] == "size", message
            segments.append((message["cols"], message["rows"]))
    return segments


async def watched(emulator: Emulator, stream: bytes, size: tuple[int, int] = SIZE) -> Any:
    """The screen of a member who watched ``stream`` from the start."""
    return await emulator.dump(size, SCROLLBACK, [stream])


async def rebuilt(emulator: Emulator, screen: Screen, size: tuple[int, int] = SIZE) -> Any:
    """The screen of a member whose terminal was rebuilt from ``screen``."""
    return await emulator.dump(size, SCROLLBACK, segments_of(screen.frames(size)))


async def fed(emulator: Emulator, chunks: Iterable[bytes], fold_every: int = 1) -> Screen:
    screen = Screen(SCROLLBACK, SIZE, emulator)
    for i, chunk in enumerate(chunks):
        screen.feed(chunk, SIZE)
        if fold_every and i % fold_every == 0:
            await screen.folded()
    return screen


def chunked(stream: bytes, sizes: Iterable[int]) -> list[bytes]:
    chunks, at = [], 0
    for size in sizes:
        if at >= len(stream):
            break
        chunks.append(stream[at : at + size])
        at += size
    if at < len(stream):
        chunks.append(stream[at:])
    return chunks


def assert_same(expected: Any, actual: Any) -> None:
    """Cell by cell, with a readable first difference."""
    for key in expected:
        if key == "buffers":
            for name, buffer in expected["buffers"].items():
                other = actual["buffers"][name]
                assert buffer["cursor"] == other["cursor"], (name, "cursor")
                lines, others = buffer["lines"], other["lines"]
                for y, (line, theirs) in enumerate(zip(lines, others, strict=False)):
                    if line != theirs:
                        cells = zip(line["cells"], theirs["cells"], strict=False)
                        first = next((x, a, b) for x, (a, b) in enumerate(cells) if a != b)
                        pytest.fail(f"{name} line {y} differs at (x, watched, rebuilt) {first}")
                    assert line == theirs, (name, y)
                assert len(lines) == len(others), (name, "lines")
        else:
            assert expected[key] == actual[key], key


CSI = "\x1b["
STREAMS: dict[str, bytes] = {
    "sgr": (
        "plain "
        + "".join(f"{CSI}{30 + i}m{i}{CSI}{40 + (7 - i)}mbg" for i in range(8))
        + f"{CSI}0m {CSI}38;5;208morange{CSI}48;2;10;20;30mtruecolor{CSI}0m "
        + f"{CSI}1mbold{CSI}22m {CSI}3mitalic{CSI}23m {CSI}4munder{CSI}24m "
        + f"{CSI}7minverse{CSI}27m {CSI}2mdim{CSI}22m {CSI}9mstrike{CSI}29m "
        + f"{CSI}91mbright{CSI}0m\r\n{CSI}33mthe pen stays yellow"
    ).encode(),
    "wide": (
        "中文字符 and emoji 🙂 é è ü\r\n"
        + "x" * 79
        + "中"  # a wide character that does not fit: it wraps
        + "\r\n"
        + "末" * 45
    ).encode(),
    "scroll region": (
        "".join(f"line {i}\r\n" for i in range(30))
        + f"{CSI}5;15r{CSI}15;1H"
        + "".join(f"region {i}\r\n" for i in range(20))
        + f"{CSI}7;3Hinside"
    ).encode(),
    "modes": (
        f"{CSI}?1h\x1b={CSI}?2004h{CSI}?1002h{CSI}?1006h{CSI}?1004h{CSI}?25l{CSI}4h"
        + "\x1b]0;a title\x07modes set"
    ).encode(),
    "alternate screen": (
        "".join(f"shell line {i}\r\n" for i in range(40))
        + f"$ less file{CSI}?1049h{CSI}H{CSI}2J"
        + "".join(
            f"{CSI}{row + 1};1H{CSI}{'7m' if row == 23 else '0m'}page row {row}"
            for row in range(24)
        )
        + f"{CSI}0m{CSI}12;5H"
    ).encode(),
    "after the alternate screen": (
        f"before\r\n$ {CSI}?1049h{CSI}Hfull screen{CSI}?1049l{CSI}?1h{CSI}?1l" + "after\r\n$ "
    ).encode(),
    "pending wrap": ("y" * 80).encode(),
    "redraws without newline": (f"{CSI}H" + "0123456789" * 9).encode() * 400 + b"MARKER",
    "line drawing": b"\x1b(0lqqqk\r\nx  x\r\nmqqqj\x1b)0\x0elqk\x0f\x1b(B ascii \x1b(0x",
    "origin mode": f"{CSI}3;10r{CSI}?6h{CSI}2;4Hat 2,4 of the region".encode(),
    "mouse any-event": f"{CSI}?1003h{CSI}?1016h{CSI}?1049h{CSI}5;5Hmouse".encode(),
}


@pytest.mark.parametrize("name", list(STREAMS))
async def test_rebuilt_screen_equals_the_watched_one(emulator: Emulator, name: str) -> None:
    stream = STREAMS[name]
    expected = await watched(emulator, stream)
    # Whole, and then folded after every chunk of odd sizes (sequences and characters cut).
    whole = await fed(emulator, [stream])
    assert_same(expected, await rebuilt(emulator, whole))
    rng = random.Random(name)
    pieces = chunked(stream, (rng.choice([1, 2, 3, 5, 7, 11, 64, 1000]) for _ in range(10_000)))
    if len(pieces) > 60:  # folding is a round trip: at most ~60 folds per stream
        pieces = chunked(stream, [len(stream) // 60 + 1] * 61)
    folded = await fed(emulator, pieces)
    assert_same(expected, await rebuilt(emulator, folded))


async def test_every_split_point_of_utf8_and_escape_sequences(emulator: Emulator) -> None:
    stream = f"a中{CSI}1;31mé{CSI}0m🙂\x1b]0;t\x07{CSI}?2004hz".encode()
    expected = await watched(emulator, stream)
    for cut in range(1, len(stream)):
        screen = await fed(emulator, [stream[:cut], stream[cut:]], fold_every=1)
        assert_same(expected, await rebuilt(emulator, screen))


async def test_output_is_never_dropped_or_reordered(emulator: Emulator) -> None:
    """Unfolded, the screen is the bytes themselves; folded, it parses to the same screen."""
    rng = random.Random(7)
    stream = b"".join(
        rng.choice([b"y\r\n", "é中".encode(), f"{CSI}3{rng.randint(0, 7)}m".encode(), b"\t", b"x"])
        for _ in range(20_000)
    )
    pieces = chunked(stream, (rng.randint(1, 700) for _ in range(100_000)))
    raw = await fed(emulator, pieces, fold_every=0)
    assert b"".join(f for f in raw.frames(SIZE) if isinstance(f, bytes)) == stream
    expected = await watched(emulator, stream)
    folded = await fed(emulator, pieces, fold_every=97)
    assert_same(expected, await rebuilt(emulator, folded))


async def test_resizes_between_output_are_replayed_in_order(emulator: Emulator) -> None:
    screen = Screen(SCROLLBACK, SIZE, emulator)
    screen.feed(b"".join(f"{i:03d} ".encode() * 30 + b"\r\n" for i in range(30)), SIZE)
    await screen.folded()
    screen.feed(b"narrow now\r\n", (40, 10))
    screen.feed(b"wide again " * 10, (100, 30))
    frames = screen.frames((100, 30))
    expected = await emulator.dump(
        SIZE,
        SCROLLBACK,
        [
            b"".join(f"{i:03d} ".encode() * 30 + b"\r\n" for i in range(30)),
            (40, 10),
            b"narrow now\r\n",
            (100, 30),
            b"wide again " * 10,
        ],
    )
    assert_same(expected, await emulator.dump(SIZE, SCROLLBACK, segments_of(frames)))
    await screen.folded()
    assert screen.raw_bytes == 0
    assert_same(expected, await rebuilt(emulator, screen, (100, 30)))


async def test_scrollback_is_bounded_by_the_setting(emulator: Emulator) -> None:
    screen = Screen(50, SIZE, emulator)
    screen.feed(b"".join(f"line {i}\r\n".encode() for i in range(500)), SIZE)
    await screen.folded()
    dump = await emulator.dump(SIZE, 1000, [screen.serialized])
    text = [
        "".join(c.split("|")[0] for c in line["cells"]).rstrip()
        for line in dump["buffers"]["normal"]["lines"]
    ]
    kept = [line for line in text if line]
    assert kept[0] == f"line {500 - 50 - 23}" and kept[-1] == "line 499", kept[:2]


async def test_a_killed_sidecar_is_started_again_and_nothing_is_lost(emulator: Emulator) -> None:
    stream = b"".join(f"{CSI}3{i % 8}mrow {i}\r\n".encode() for i in range(100))
    screen = Screen(SCROLLBACK, SIZE, emulator)
    screen.feed(stream[:500], SIZE)
    await screen.folded()
    pid = emulator.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the sidecar this test's emulator started
    screen.feed(stream[500:], SIZE)
    await asyncio.sleep(screen_module.RETRY_SECONDS)  # the emulator's back-off after a crash
    await screen.folded()
    assert emulator.starts == 2 and screen.raw_bytes == 0
    assert_same(await watched(emulator, stream), await rebuilt(emulator, screen))


async def test_without_node_the_screen_keeps_raw_output_then_degrades() -> None:
    missing = Emulator(command=["/nonexistent/node"])
    with pytest.raises(EmulatorError):
        await missing.serialize(SIZE, SCROLLBACK, [b"x"])
    screen = Screen(SCROLLBACK, SIZE, missing)
    line = b"0123456789" * 7 + b"\r\n"
    for _ in range(screen_module.RAW_LIMIT // len(line) + 10):
        screen.feed(line, SIZE)
        await asyncio.sleep(0)  # the failing folds run
        if screen.degraded:
            break
    assert screen.degraded
    kept = b"".join(f for f in screen.frames(SIZE) if isinstance(f, bytes))
    assert kept.startswith(screen_module.SGR_RESET) and kept.endswith(line)
    assert len(kept) <= screen_module.DEGRADED_KEEP + len(screen_module.SGR_RESET) + len(line)
    assert kept.removeprefix(screen_module.SGR_RESET).startswith(b"0123")  # from a line start


async def test_the_built_sidecar_runs_alone() -> None:
    """web/dist/screen-sidecar.cjs (what the server image runs) needs nothing but node."""
    built = screen_module.WEB / "dist" / "screen-sidecar.cjs"
    if not built.is_file():
        pytest.fail("the web client is not built: run scripts/setup (npm run build)")
    node = shutil.which("node")
    assert node
    alone = Emulator(command=[node, str(built)])
    source = Emulator()
    try:
        stream = STREAMS["alternate screen"] + STREAMS["modes"]
        assert await alone.serialize(SIZE, SCROLLBACK, [stream]) == await source.serialize(
            SIZE, SCROLLBACK, [stream]
        )
    finally:
        await alone.close()
        await source.close()


async def test_a_quiet_screen_folds_all_its_output(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an idle REPL keeps is its serialized screen alone, after a flood or a few lines."""
    monkeypatch.setattr(screen_module, "QUIET_SECONDS", 0.05)
    screen = Screen(SCROLLBACK, SIZE, emulator)
    flood = b"".join(f"line {i}\r\n".encode() for i in range(12_000))  # past FOLD_BYTES
    for at in range(0, len(flood), 4096):
        screen.feed(flood[at : at + 4096], SIZE)
    screen.feed(b">>> ", SIZE)
    for _ in range(200):  # folded by the quiet timer, not by the test: look now and then
        if not screen.raw_bytes:
            break
        await asyncio.sleep(0.05)
    assert screen.raw_bytes == 0
    assert screen.held_bytes < 10 * 1024
    assert_same(await watched(emulator, flood + b">>> "), await rebuilt(emulator, screen))


async def test_a_screen_with_much_scrollback_folds_less_often(emulator: Emulator) -> None:
    """A fold parses the serialized screen again: in a flood, it should not do so every 64 KiB."""
    screen = Screen(1000, SIZE, emulator)
    line = b"y" * 79 + b"\r\n"
    screen.feed(line * 1000, SIZE)
    await screen.folded()
    assert screen.fold_bytes == screen_module.FOLD_BYTES_MAX  # ~80 KB serialized, times 4
    screen.feed(line * (screen_module.FOLD_BYTES // len(line) + 100), SIZE)  # past 64 KiB
    assert screen.raw_bytes > screen_module.FOLD_BYTES and not screen.folding
    screen.feed(line * (screen_module.FOLD_BYTES_MAX // len(line)), SIZE)
    assert screen.folding
    await screen.folded()
    assert screen.raw_bytes == 0
    small = Screen(1000, SIZE, emulator)
    small.feed(b">>> ", SIZE)
    await small.folded()
    assert small.fold_bytes == screen_module.FOLD_BYTES


async def test_the_sidecar_runs_at_a_lower_priority_than_the_server(emulator: Emulator) -> None:
    """Folding waits for a CPU in a flood, not the other rooms' keystrokes: every thread."""
    screen = Screen(SCROLLBACK, SIZE, emulator)
    screen.feed(b"hello\r\n", SIZE)
    await screen.folded()
    assert emulator.pid is not None
    server = os.getpriority(os.PRIO_PROCESS, 0)
    tasks = os.listdir(f"/proc/{emulator.pid}/task")
    assert len(tasks) > 1  # node's own threads (V8's workers, libuv's) count too
    for task in tasks:
        assert os.getpriority(os.PRIO_PROCESS, int(task)) == min(19, server + screen_module.NICE)


async def test_a_fold_with_nothing_whole_to_fold_is_no_failure(emulator: Emulator) -> None:
    """Half a character waits for its end; the screen does not take it for a broken emulator."""
    screen = Screen(SCROLLBACK, SIZE, emulator)
    screen.feed("中".encode()[:2], SIZE)
    await screen.folded()
    assert screen.raw_bytes == 2
    screen.feed("中".encode()[2:] + b"\r\n", SIZE)
    for _ in range(10_000):  # 800 KB at once: past what a failing screen keeps
        screen.feed(b"x" * 79 + b"\r\n", SIZE)
    assert not screen.degraded
    await screen.folded()
    dump = await rebuilt(emulator, screen)
    assert dump["buffers"]["normal"]["lines"][-24]["cells"][0].startswith("x|")

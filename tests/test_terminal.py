"""The shared terminal's parts on their own: outbox, rate limit, flood skipping, prompt.

No root, no sandbox, no server: ``make test-fast`` runs these. The rooms tests
(test_rooms.py) show the same parts at work behind a real server.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from replroom.languages import get_language
from replroom.room.terminal import (
    FRAME_LIMIT,
    HARD_LIMIT,
    HIGH_WATER,
    LOW_WATER,
    Frame,
    Outbox,
    Pane,
    RateLimit,
)

pytestmark = pytest.mark.fast


# -- outbox ---------------------------------------------------------------------------


class Connection:
    """A member's connection that sends only while ``open`` is set (a slow network)."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.open = asyncio.Event()
        self.open.set()
        self.sent = asyncio.Event()

    async def send(self, frame: Frame) -> None:
        await self.open.wait()
        self.frames.append(frame)
        self.sent.set()

    async def until(self, count: int) -> None:
        while len(self.frames) < count:
            self.sent.clear()
            await self.sent.wait()


async def test_outbox_sends_in_order_and_says_when_drained() -> None:
    connection = Connection()
    drained: list[int] = []
    outbox = Outbox(connection.send, lambda: drained.append(outbox.output_bytes))
    sender = asyncio.create_task(outbox.run())
    try:
        outbox.send_json({"type": "notice", "text": "hi"})
        outbox.send_output(b"abc", lambda: [])
        await connection.until(2)
        assert json.loads(connection.frames[0]) == {"type": "notice", "text": "hi"}
        assert connection.frames[1] == b"abc"
        assert drained == [0]  # below LOW_WATER after the output went
    finally:
        outbox.close()
        await sender  # close() ends run()


async def test_outbox_behind_a_slow_member_drops_output_and_resyncs() -> None:
    connection = Connection()
    connection.open.clear()  # the member's network stalls
    outbox = Outbox(connection.send, lambda: None)
    sender = asyncio.create_task(outbox.run())
    try:
        chunk = b"y\n" * (32 * 1024)  # 64 KiB
        outbox.send_output(chunk, lambda: [])
        await asyncio.sleep(0)  # the sender takes it, and waits on the network
        for _ in range(HIGH_WATER // len(chunk)):
            outbox.send_output(chunk, lambda: [])
        assert outbox.behind
        outbox.send_json({"type": "status"})  # messages are never dropped
        screen: list[Frame] = [json.dumps({"type": "terminal", "reset": True}), b"screen"]
        while outbox.output_bytes + len(chunk) <= HARD_LIMIT:
            outbox.send_output(chunk, lambda: screen)
        outbox.send_output(chunk, lambda: screen)  # over the hard limit
        assert outbox.output_bytes == len(chunk)  # only the one being sent is left
        assert not outbox.behind
        connection.open.set()
        await connection.until(4)  # the first chunk, the status, the screen rebuilt
        assert connection.frames[0] == chunk
        assert json.loads(connection.frames[1]) == {"type": "status"}
        assert connection.frames[2:] == screen
        assert outbox.output_bytes == 0  # the count comes back to nothing, never below
    finally:
        outbox.close()
        await sender


async def test_outbox_replace_screen_keeps_messages_drops_output() -> None:
    connection = Connection()
    connection.open.clear()
    outbox = Outbox(connection.send, lambda: None)
    outbox.send_output(b"old output", lambda: [])
    outbox.send_json({"type": "language", "language": "ruby"})
    outbox.replace_screen([json.dumps({"type": "terminal", "reset": True}), b"irb> "])
    assert outbox.output_bytes == len(b"irb> ")
    connection.open.set()
    sender = asyncio.create_task(outbox.run())
    try:
        await connection.until(3)
        assert [json.loads(f)["type"] for f in connection.frames[:2]] == ["language", "terminal"]
        assert connection.frames[2] == b"irb> "
        assert b"old output" not in connection.frames
    finally:
        outbox.close()
        await sender


async def test_outbox_sends_the_output_queued_meanwhile_as_one_frame() -> None:
    connection = Connection()
    connection.open.clear()  # the first chunk is on its way, slowly
    drained: list[int] = []
    outbox = Outbox(connection.send, lambda: drained.append(outbox.output_bytes))
    sender = asyncio.create_task(outbox.run())
    try:
        outbox.send_output(b"1+1\r\n", lambda: [])
        await asyncio.sleep(0)  # the sender takes it, and waits on the network
        outbox.send_output(b"=> 2\r\n", lambda: [])
        outbox.send_output(b"irb> ", lambda: [])
        outbox.send_json({"type": "notice"})  # a message ends a frame of output
        outbox.send_output(b"after", lambda: [])
        big = b"y" * FRAME_LIMIT
        outbox.send_output(big, lambda: [])
        outbox.send_output(b"next frame", lambda: [])
        connection.open.set()
        await connection.until(5)
        assert connection.frames[0] == b"1+1\r\n"
        assert connection.frames[1] == b"=> 2\r\nirb> "
        assert json.loads(connection.frames[2]) == {"type": "notice"}
        assert connection.frames[3:] == [b"after" + big, b"next frame"]
        assert outbox.output_bytes == 0 and drained[-1] == 0
    finally:
        outbox.close()
        await sender


async def test_outbox_sends_at_once_what_the_connection_takes_never_overtaking() -> None:
    connection = Connection()
    taken: list[bytes | str] = []
    takes = True  # whether the connection takes frames at once (its client keeps up)

    def send_now(frame: bytes | str) -> bool:
        if takes:
            taken.append(frame)
        return takes

    outbox = Outbox(connection.send, lambda: None)
    outbox.send_now = send_now
    sender = asyncio.create_task(outbox.run())
    try:
        outbox.send_output(b"a", lambda: [])
        outbox.send_json({"type": "notice"})
        assert taken == [b"a", '{"type": "notice"}'] and outbox.output_bytes == 0  # no task woken
        takes = False  # the client stopped reading: what comes waits in the outbox
        outbox.send_json({"type": "typist"})
        takes = True
        outbox.send_output(b"b", lambda: [])  # must not overtake the waiting message
        await connection.until(2)
        assert connection.frames == ['{"type": "typist"}', b"b"]
        assert len(taken) == 2
    finally:
        outbox.close()
        await sender


def test_outbox_closed_takes_nothing() -> None:
    outbox = Outbox(Connection().send, lambda: None)
    outbox.close()
    outbox.send_json({"type": "notice"})
    outbox.send_output(b"x", lambda: [])
    assert outbox.output_bytes == 0 and not outbox.behind


def test_watermarks_leave_room_between_them() -> None:
    assert LOW_WATER < HIGH_WATER < HARD_LIMIT


# -- rate limit -----------------------------------------------------------------------


async def test_rate_limit_lets_a_burst_through_then_holds_back() -> None:
    limit = RateLimit(rate=100_000)
    await limit.spend(25_000)  # a quarter second's worth: a burst is allowed
    assert not limit.limiting
    held = asyncio.create_task(limit.spend(20_000))
    await asyncio.sleep(0)
    assert not held.done()  # waits for the bucket to refill
    assert limit.limiting  # a flood is going on
    await held


# -- flood skipping -------------------------------------------------------------------


def test_ctrl_c_in_a_flood_drops_output_until_the_prompt() -> None:
    pane = Pane(get_language("python"))
    assert not pane.skipping
    pane.start_skipping()
    flood = b"1\r\n" * 10_000
    assert pane.skip(flood) == b""
    assert pane.skipping
    end = b"1\r\n1\r\nTraceback (most recent call last):\r\nKeyboardInterrupt\r\n>>> "
    shown = pane.skip(end)
    assert shown.startswith(f"\r\n[{len(flood) + len(end):,} bytes of output skipped".encode())
    assert shown.endswith(b"KeyboardInterrupt\r\n>>> ")
    assert shown.count(b"\n") <= 2 + 4  # the note, then the last lines only
    assert not pane.skipping


async def test_pane_notices_its_prompt() -> None:
    pane = Pane(get_language("python"))
    pane.record(b"Python 3.11\r\n", (80, 24))
    assert not pane.prompt_shown.is_set()
    pane.record(b">>> ", (80, 24))
    assert pane.prompt_shown.is_set()

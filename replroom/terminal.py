"""Shared-terminal plumbing: bounded replay for late joiners, and per-member outboxes.

Output of a REPL goes to every member's :class:`Outbox`; each outbox has its
own sender task, so a slow member never delays the others. An outbox holds at
most ``HARD_LIMIT`` bytes of terminal output: past that its queued output is
dropped and, once the member catches up, the screen is rebuilt from the
:class:`Replay`. The room stops reading the pty while every member is above
``HIGH_WATER`` (see rooms.py), which throttles the REPL itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
HARD_LIMIT = 1024 * 1024
REPLAY_LIMIT = 256 * 1024
SGR_RESET = b"\x1b[0m"


class Replay:
    """The most recent output of a terminal, to bring a new viewer's screen up to date."""

    def __init__(self, limit: int = REPLAY_LIMIT) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.total = 0  # bytes ever appended

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.total += len(data)
        while self._size - len(self._chunks[0]) >= self.limit:
            self._size -= len(self._chunks.popleft())

    def tail(self, size: int = 512) -> bytes:
        """The last ``size`` bytes or so (whole chunks), to look for a prompt."""
        parts: list[bytes] = []
        length = 0
        for chunk in reversed(self._chunks):
            parts.append(chunk)
            length += len(chunk)
            if length >= size:
                break
        return b"".join(reversed(parts))[-size:]

    def clear(self) -> None:
        self._chunks.clear()
        self._size = 0

    def snapshot(self) -> bytes:
        """Recent output that starts at the beginning of a line.

        Starting after a newline means never starting inside an escape
        sequence or a UTF-8 character, so the replay renders as it first did.
        """
        data = b"".join(self._chunks)
        if len(data) > self.limit:
            data = data[-self.limit :]
            newline = data.find(b"\n")
            data = data[newline + 1 :] if newline >= 0 else b""
        return SGR_RESET + data if data else b""


class RateLimit:
    """A token bucket: ``rate`` bytes per second, bursts of up to one second's worth.

    A REPL that prints faster than this is paused (it blocks writing to its
    pty), so one room's flood cannot take the server's time from the others.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._stamp = time.monotonic()
        self._last_wait = float("-inf")

    @property
    def limiting(self) -> bool:
        """Whether output was held back in the last second (a flood is going on)."""
        return time.monotonic() - self._last_wait < 1.0

    async def spend(self, amount: int) -> None:
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount
        if self._tokens < 0:
            self._last_wait = now
            await asyncio.sleep(-self._tokens / self.rate)


Frame = str | bytes
Sender = Callable[[Frame], Awaitable[None]]


class Outbox:
    """What the server still has to send to one member, and the task that sends it."""

    def __init__(self, send: Sender, on_drained: Callable[[], None]) -> None:
        self._send = send
        self._on_drained = on_drained
        self._frames: deque[tuple[Frame, bool]] = deque()  # (frame, is terminal output)
        self._wakeup = asyncio.Event()
        self.output_bytes = 0
        self.resync: Callable[[], list[Frame]] | None = None
        self.closed = False

    @property
    def behind(self) -> bool:
        return self.output_bytes >= HIGH_WATER

    def send_json(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self._frames.append((json.dumps(message), False))
            self._wakeup.set()

    def send_output(self, data: bytes, resync: Callable[[], list[Frame]]) -> None:
        """Queue terminal output; past the hard limit, drop it and resync later."""
        if self.closed:
            return
        if self.output_bytes + len(data) > HARD_LIMIT:
            self._frames = deque(f for f in self._frames if not f[1])
            self.output_bytes = 0
            self.resync = resync
        else:
            self._frames.append((data, True))
            self.output_bytes += len(data)
        self._wakeup.set()

    def replace_screen(self, frames: list[Frame]) -> None:
        """Drop queued output and send ``frames`` (a terminal reset and a replay) instead."""
        self._frames = deque(f for f in self._frames if not f[1])
        self.output_bytes = 0
        self.resync = None
        for frame in frames:
            is_output = isinstance(frame, bytes)
            self._frames.append((frame, is_output))
            if is_output:
                self.output_bytes += len(frame)
        self._wakeup.set()

    async def run(self) -> None:
        """Send until closed; returns when the connection fails or close() is called."""
        while not self.closed:
            if not self._frames and self.resync is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.resync is not None and not any(is_output for _, is_output in self._frames):
                resync, self.resync = self.resync, None
                self.replace_screen(resync())
                continue
            frame, is_output = self._frames.popleft()
            await self._send(frame)
            if is_output:
                self.output_bytes -= len(frame)
                if self.output_bytes < LOW_WATER:
                    self._on_drained()

    def close(self) -> None:
        self.closed = True
        self._frames.clear()
        self.output_bytes = 0
        self._wakeup.set()

"""Each REPL's exact screen, kept on the server to rebuild a member's terminal.

A :class:`Screen` holds a REPL's screen as a *serialized screen* (the escape
sequences that rebuild it in xterm.js: both buffers, scrollback, colours,
cursor, scroll region, the modes that change input, the title) plus the
output and resizes since it was serialized. Rebuilding a member's terminal
sends both, so the member's xterm.js parses exactly what the emulator would
have. From time to time (after :attr:`Screen.fold_bytes` of output, or once
the REPL is quiet for ``QUIET_SECONDS``) the output is *folded* into the
serialized screen by the :class:`Emulator`, so what the server holds per
REPL stays small: an idle REPL keeps only its serialized screen.

The :class:`Emulator` is one Node process for the whole server
(``web/screen/sidecar.cjs``, bundled into ``web/dist`` by the page's build)
running ``@xterm/headless``, the page's own parser, with its serialize addon.
It keeps nothing between requests, so it may exit when idle (``IDLE_EXIT``),
crash or be slow without losing a screen: output to members never waits on
it, and a fold that fails leaves the raw output in place. So it runs at a
lower CPU priority than the server (``NICE``): in a flood, folding is what
waits for a CPU, not the other rooms' keystrokes. Only if folds fail
(node is missing, the sidecar keeps crashing) for ``2 * DEGRADED_KEEP``
bytes of output, or lag ``RAW_LIMIT`` behind, does a screen degrade to its
most recent output from a line boundary, as the server did before it had an
emulator (logged).
docs/architecture.md ("The exact screen") says why this emulator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from replroom import protocol

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parents[2] / "web"
# Raw output kept before it is folded into the serialized screen: FOLD_RATIO times the
# serialized screen, within these bounds. A fold parses the serialized screen again and
# serializes it anew (~5 ms for 1 000 lines of scrollback), so in a flood a fold per
# 64 KiB spent more on that than on the output itself.
FOLD_BYTES = 64 * 1024
FOLD_BYTES_MAX = 256 * 1024
FOLD_RATIO = 4
QUIET_SECONDS = 2.0  # a REPL quiet this long has its output folded (what an idle REPL keeps)
RAW_LIMIT = 4 * 1024 * 1024  # raw output kept while folds lag (the sidecar starting)
DEGRADED_KEEP = 256 * 1024  # what a degraded screen keeps (the old replay's size); twice
# that is the most raw output kept while folds fail (no node: the old replay, no more)
IDLE_EXIT = 30.0  # the sidecar exits after this long without a request
RETRY_SECONDS = 1.0  # after the sidecar failed, requests fail at once for this long
SGR_RESET = b"\x1b[0m"
NICE = 10  # the sidecar's nice value (the server's + 10: about a tenth of its CPU share)
# A small young generation: the sidecar makes short-lived terminals, and its RSS is the
# largest part of the screens' memory (2 MiB semi-spaces instead of 16 MiB).
NODE_OPTIONS = ("--max-semi-space-size=2",)

Size = tuple[int, int]
Segment = bytes | Size  # terminal output, or a resize to (cols, rows)
Frame = str | bytes


def sidecar_script() -> Path | None:
    """The sidecar to run: in a checkout its source; else (the server image) the
    self-contained build in web/dist (`npm run build`), which needs only node."""
    source = WEB / "screen" / "sidecar.cjs"
    if source.is_file() and (WEB / "node_modules" / "@xterm" / "headless").is_dir():
        return source  # never a stale build
    built = WEB / "dist" / "screen-sidecar.cjs"
    return built if built.is_file() else None


class EmulatorError(Exception):
    """The emulator could not answer (not installed, crashed, or refused the input)."""


def _encode(op: bytes, size: Size, scrollback: int, segments: Iterable[Segment]) -> list[bytes]:
    """One request in the sidecar's framing (see sidecar.cjs), as parts to write."""
    parts: list[bytes] = []
    length = 13
    for segment in segments:
        if isinstance(segment, bytes):
            parts.append(struct.pack("<BI", 1, len(segment)))
            parts.append(segment)
            length += 5 + len(segment)
        else:
            parts.append(struct.pack("<BHH", 2, *segment))
            length += 5
    head = struct.pack("<I", length)
    return [head, op, struct.pack("<HHI", size[0], size[1], scrollback), *parts]


class Emulator:
    """The screen sidecar: started on first use, restarted after a crash, stopped when idle."""

    def __init__(self, command: Sequence[str] | None = None) -> None:
        node, script = shutil.which("node"), sidecar_script()
        nice = shutil.which("nice")  # coreutils': all the sidecar's threads, from its start
        lower = [nice, "-n", str(NICE)] if nice else []
        default = [*lower, node, *NODE_OPTIONS, str(script)] if node and script else []
        self._command = list(command) if command else default
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 1
        self._starting = asyncio.Lock()
        self._idle: asyncio.TimerHandle | None = None
        self._retry_after = 0.0
        self._closed = False
        self._told_missing = False
        self.loop = asyncio.get_running_loop()
        self.starts = 0  # how many times the sidecar was started (for tests and logs)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def serialize(
        self, size: Size, scrollback: int, segments: Sequence[Segment]
    ) -> tuple[int, int, bytes]:
        """The serialized screen after ``segments`` on a terminal of ``size``.

        Up to the last point where no escape sequence or UTF-8 character is
        cut short: answers that point (the index of a segment, an offset in
        it) with the screen; what comes after it is for the next fold.
        """
        answer = await self._request(b"C", size, scrollback, segments)
        index, offset = struct.unpack_from("<II", answer)
        return index, offset, answer[8:]

    async def dump(self, size: Size, scrollback: int, segments: Sequence[Segment]) -> Any:
        """Every cell, the cursor and the modes after ``segments`` (to compare screens)."""
        return json.loads(await self._request(b"D", size, scrollback, segments))

    async def _request(
        self, op: bytes, size: Size, scrollback: int, segments: Sequence[Segment]
    ) -> bytes:
        process = await self._started()
        request_id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        answer: asyncio.Future[bytes] = self.loop.create_future()
        self._pending[request_id] = answer
        if self._idle:
            self._idle.cancel()
            self._idle = None
        parts = _encode(op, size, scrollback, segments)
        parts.insert(1, struct.pack("<I", request_id))
        assert process.stdin is not None
        try:
            process.stdin.writelines(parts)
            await process.stdin.drain()
            return await answer
        except (ConnectionError, BrokenPipeError) as error:
            raise EmulatorError(f"the screen emulator stopped: {error}") from error
        finally:
            self._pending.pop(request_id, None)
            if not self._pending and self._process is process:
                self._idle = self.loop.call_later(IDLE_EXIT, self._stop_idle, process)

    async def _started(self) -> asyncio.subprocess.Process:
        async with self._starting:
            if self._process is not None and self._process.returncode is None:
                return self._process
            if self._closed:
                raise EmulatorError("the screen emulator is closed")
            if not self._command:
                if not self._told_missing:
                    self._told_missing = True
                    log.warning(
                        "node or the screen sidecar (web/dist/screen-sidecar.cjs) is missing: "
                        "screens degrade to recent raw output"
                    )
                raise EmulatorError("no node or no screen sidecar")
            if time.monotonic() < self._retry_after:
                raise EmulatorError("the screen emulator failed a moment ago")
            try:
                process = await asyncio.create_subprocess_exec(
                    *self._command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            except OSError as error:
                self._retry_after = time.monotonic() + RETRY_SECONDS
                log.warning("the screen emulator did not start: %s", error)
                raise EmulatorError(f"the screen emulator did not start: {error}") from error
            self.starts += 1
            self._process = process
            self._reader = asyncio.create_task(self._read(process), name="screen emulator")
            return process

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        """Hand each answer to its request; when the sidecar ends, fail what is still asked."""
        assert process.stdout is not None
        try:
            while True:
                head = await process.stdout.readexactly(4)
                (length,) = struct.unpack("<I", head)
                body = await process.stdout.readexactly(length)
                request_id, status = struct.unpack_from("<IB", body)
                answer = self._pending.get(request_id)
                if answer is None or answer.done():
                    continue
                if status == 0:
                    answer.set_result(body[5:])
                else:
                    text = body[5:].decode(errors="replace")
                    answer.set_exception(EmulatorError(f"the screen emulator refused: {text}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            await process.wait()
        except asyncio.CancelledError:  # the loop is closing: take the sidecar along
            if process.returncode is None:
                process.kill()
            raise
        finally:
            code = process.returncode
            if self._process is process:
                self._process = None
                if self._pending:
                    log.warning("screen emulator exited (%s) with requests pending", code)
                    self._retry_after = time.monotonic() + RETRY_SECONDS
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(EmulatorError(f"the screen emulator exited ({code})"))

    def _stop_idle(self, process: asyncio.subprocess.Process) -> None:
        """No request for a while: let the sidecar go (its memory is the server's biggest)."""
        self._idle = None
        if self._process is process and not self._pending and process.stdin:
            process.stdin.close()  # it finishes what it has and exits

    async def close(self) -> None:
        self._closed = True
        if self._idle:
            self._idle.cancel()
            self._idle = None
        process, self._process = self._process, None
        if process is not None:
            if process.stdin:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader:
            await self._reader


_shared: dict[str, Emulator] = {}


def shared_emulator() -> Emulator:
    """The server's one emulator (one per event loop: tests run several loops)."""
    emulator = _shared.get("server")
    if emulator is None or emulator.loop is not asyncio.get_running_loop():
        emulator = _shared["server"] = Emulator()
    return emulator


class Screen:
    """One REPL's screen: a serialized screen and the output since, folded from time to time."""

    def __init__(self, scrollback: int, size: Size, emulator: Emulator | None = None) -> None:
        self.scrollback = scrollback
        self._emulator = emulator
        self._compressed = b""  # the serialized screen (zlib), on a terminal of _serialized_size
        self.fold_bytes = FOLD_BYTES  # raw output that is folded at once, not when quiet
        self._serialized_size = size
        self._raw: list[Segment] = []  # output and resizes since, in order
        self.raw_bytes = 0
        self._size = size  # the size at the end of _raw
        self._generation = 0  # changes when the screen is cleared or degraded
        self._folding: asyncio.Task[None] | None = None
        self._last_output = 0.0
        self._quiet: asyncio.TimerHandle | None = None
        self._retry_at = 0.0  # after a failed fold, none before then
        self.degraded = False  # lost what came before its latest output (see _degrade)

    @property
    def serialized(self) -> bytes:
        """The escape sequences that rebuild the screen as it was at the last fold."""
        return zlib.decompress(self._compressed) if self._compressed else b""

    @serialized.setter
    def serialized(self, data: bytes) -> None:
        # Kept compressed: escape sequences and scrollback text shrink 5-10x, and
        # the screen is read only to rebuild a member's terminal or fold.
        self._compressed = zlib.compress(data, 1) if data else b""
        self.fold_bytes = min(FOLD_BYTES_MAX, max(FOLD_BYTES, FOLD_RATIO * len(data)))

    @property
    def held_bytes(self) -> int:
        """What the server holds for this screen (serialized screen and raw output)."""
        return len(self._compressed) + self.raw_bytes

    @property
    def folding(self) -> bool:
        """A fold is under way."""
        return self._folding is not None

    @property
    def emulator(self) -> Emulator:
        if self._emulator is None:
            self._emulator = shared_emulator()
        return self._emulator

    def feed(self, data: bytes, size: Size) -> None:
        """Output of the REPL (or a note of ours), shown on a terminal of ``size``."""
        self._resize(size)
        self._raw.append(data)
        self.raw_bytes += len(data)
        self._last_output = time.monotonic()
        if self.raw_bytes >= self.fold_bytes:
            self._fold()
            failing = time.monotonic() < self._retry_at  # the last fold failed
            if self.raw_bytes > RAW_LIMIT or (failing and self.raw_bytes > 2 * DEGRADED_KEEP):
                self._degrade()
        if self._quiet is None:  # what is left once the output stops is folded then
            self._quiet = asyncio.get_running_loop().call_later(QUIET_SECONDS, self._when_quiet)

    def frames(self, size: Size) -> list[Frame]:
        """What rebuilds the screen in a reset terminal of ``size``.

        The serialized screen, then the output since, with the size messages
        members got between them, so the member's terminal parses and
        reflows exactly what the emulator would.
        """
        self._resize(size)
        frames: list[Frame] = []
        if self._serialized_size != size:
            frames.append(json.dumps(protocol.terminal_size(*self._serialized_size)))
        serialized = self.serialized
        if serialized:
            frames.append(serialized)
        output: list[bytes] = []
        for segment in self._raw:
            if isinstance(segment, bytes):
                output.append(segment)
                continue
            if output:
                frames.append(b"".join(output))
                output = []
            frames.append(json.dumps(protocol.terminal_size(*segment)))
        if output:
            frames.append(b"".join(output))
        return frames

    def clear(self) -> None:
        """Forget the screen (a restarted REPL starts on a blank one)."""
        self._generation += 1
        self.serialized = b""
        self._serialized_size = self._size
        self._raw.clear()
        self.raw_bytes = 0
        self.degraded = False

    async def folded(self) -> None:
        """Fold the output so far now, and wait for it (tests and benchmarks)."""
        if self._folding:
            await asyncio.shield(self._folding)
        if self._raw:
            self._retry_at = 0.0
            self._fold()
            if self._folding:
                await asyncio.shield(self._folding)

    def _resize(self, size: Size) -> None:
        if size != self._size:
            self._size = size
            self._raw.append(size)

    def _when_quiet(self) -> None:
        self._quiet = None
        if not self._raw:
            return
        wait = self._last_output + QUIET_SECONDS - time.monotonic()
        if wait > 0.01:
            self._quiet = asyncio.get_running_loop().call_later(wait, self._when_quiet)
        else:
            self._fold()

    def _fold(self) -> None:
        if self._folding is None and time.monotonic() >= self._retry_at:
            self._folding = asyncio.create_task(self._fold_all(), name="folding a screen")

    async def _fold_all(self) -> None:
        try:
            while self._raw:
                folded = await self._fold_once()
                if folded is None:  # the emulator failed: try again later
                    self._retry_at = time.monotonic() + RETRY_SECONDS
                    if self._quiet is None:  # once quiet, if nothing else does
                        loop = asyncio.get_running_loop()
                        self._quiet = loop.call_later(QUIET_SECONDS, self._when_quiet)
                    return
                if not folded or self.raw_bytes < self.fold_bytes:
                    return
        finally:
            self._folding = None

    async def _fold_once(self) -> int | None:
        """Fold the output so far into the serialized screen.

        Returns how many bytes were folded (0: all of it ends inside a
        sequence or character, or the screen was cleared meanwhile), None if
        the emulator failed.
        """
        generation = self._generation
        count = len(self._raw)
        taken = self._raw[:count]
        base = self.serialized
        first = 1 if base else 0  # where the raw segments start in the request
        segments: list[Segment] = [base, *taken] if base else taken
        try:
            index, offset, serialized = await self.emulator.serialize(
                self._serialized_size, self.scrollback, segments
            )
        except EmulatorError as error:
            log.debug("screen not folded (its output stays raw): %s", error)
            return None
        if generation != self._generation:
            return 0  # cleared meanwhile: what was folded is gone
        index -= first
        if index < 0 or index > count or (index == count and offset):
            log.warning("screen emulator answered a fold point out of range")
            return None
        # The sizes in effect at the fold point: the last resize before it.
        size = next(
            (s for s in reversed(taken[:index]) if isinstance(s, tuple)), self._serialized_size
        )
        kept: list[Segment] = []
        if index < count:
            rest = taken[index]
            assert isinstance(rest, bytes)  # the sidecar cuts only output
            kept = [rest[offset:]] if offset < len(rest) else []
        folded = sum(len(s) for s in taken[:index] if isinstance(s, bytes)) + offset
        if not folded and index == 0:
            return 0  # nothing could be folded yet (a sequence is still open)
        self.serialized, self._serialized_size = serialized, size
        self.degraded = False
        self._raw[: index + (1 if kept or index < count else 0)] = kept
        self.raw_bytes -= folded
        return folded

    def _degrade(self) -> None:
        """Folding fails: keep the latest output from a line start, as a byte replay would."""
        log.warning("screen emulator unavailable: a screen keeps only its latest output")
        self._generation += 1
        data = b"".join(s for s in self._raw if isinstance(s, bytes))[-DEGRADED_KEEP:]
        newline = data.find(b"\n")
        data = data[newline + 1 :] if newline >= 0 else b""
        self.serialized = SGR_RESET + data if data else b""
        self._serialized_size = self._size
        self._raw.clear()
        self.raw_bytes = 0
        self.degraded = True

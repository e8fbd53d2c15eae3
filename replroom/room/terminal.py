"""The shared terminal: every member sees the same screen, as in tmux.

Each REPL has a :class:`Pane` (tmux's word): its exact :class:`Screen`
(replroom.room.screen), which rebuilds the terminal of a late joiner, a
reconnecting member, a member that fell behind and everyone at a language
switch; whether its prompt has shown; and the dropping of a flood's output
after Ctrl-C. The :class:`SharedTerminal` shows one pane, the room's
language, to every member.

Output goes to every member's :class:`Outbox`; each outbox has its own sender
task, so a slow member never delays the others, and sends at once, without
waking that task, what the member's connection takes at once. An outbox holds at most
``HARD_LIMIT`` bytes of terminal output: past that its queued output is
dropped and, once the member catches up, the screen is rebuilt from the
pane's screen. The terminal stops reading the shown REPL's pty while every member is
above ``HIGH_WATER`` (flow control), which throttles the REPL itself, and
never relays more than the room's output rate (:class:`RateLimit`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping

from replroom import metrics, protocol
from replroom.languages import Language
from replroom.room.screen import Frame as ScreenFrame
from replroom.room.screen import Screen
from replroom.sandbox import Process

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
HARD_LIMIT = 1024 * 1024
FRAME_LIMIT = 64 * 1024  # queued output is sent in frames of up to this size
PROMPT_TAIL = 512  # the latest output looked at for a REPL's prompt
CONTROLS = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")  # CSI sequences and carriage returns
DEFAULT_SCROLLBACK = 1000
SKIP_SECONDS = 3.0  # longest a Ctrl-C drops a flood's output
SKIP_TAIL = 4096

Frame = ScreenFrame  # what goes to a member: a JSON message (str) or terminal output
Sender = Callable[[Frame], Awaitable[None]]


class RateLimit:
    """A token bucket: ``rate`` bytes per second, bursts of up to ``BURST_SECONDS``' worth.

    A REPL that prints faster than this is paused (it blocks writing to its
    pty), so one room's flood cannot take the server's time from the others:
    not even when it starts, which with a second's worth at once held the
    other rooms' echo back for 100-300 ms when five rooms began a flood together.
    """

    BURST_SECONDS = 0.25

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.burst = rate * self.BURST_SECONDS
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._last_wait = float("-inf")

    @property
    def limiting(self) -> bool:
        """Whether output was held back in the last second (a flood is going on)."""
        return time.monotonic() - self._last_wait < 1.0

    async def spend(self, amount: int) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount
        if self._tokens < 0:
            self._last_wait = now
            await asyncio.sleep(-self._tokens / self.rate)


class Outbox:
    """What the server still has to send to one member, and the task that sends it."""

    def __init__(self, send: Sender, on_drained: Callable[[], None]) -> None:
        self._send = send
        self._on_drained = on_drained
        self._frames: deque[Frame] = deque()  # terminal output is bytes, messages str
        self._wakeup = asyncio.Event()
        self.output_bytes = 0  # terminal output queued or being sent
        self._sending = 0  # bytes of terminal output being sent now
        self._in_flight = False  # a frame is being sent by run()
        self.resync: Callable[[], list[Frame]] | None = None
        self.closed = False
        # Sends output at once if the connection takes it without waiting; else
        # returns False (the connection sets it if it can: routes.common.send_now).
        self.send_now: Callable[[bytes | str], bool] | None = None

    @property
    def behind(self) -> bool:
        return self.output_bytes >= HIGH_WATER

    def send_json(self, message: Mapping[str, object]) -> None:
        self.send_text(json.dumps(message))

    def send_text(self, text: str) -> None:
        """A message already encoded as JSON (once for every member it goes to)."""
        if self.closed:
            return
        # Directly, as output is: a message for everyone (who types now, say) would
        # otherwise wake a task per member in the way of the output that follows.
        if self._idle and self.send_now is not None and self.send_now(text):
            return
        self._frames.append(text)
        self._wakeup.set()

    def send_output(self, data: bytes, resync: Callable[[], list[Frame]]) -> None:
        """Send terminal output, or queue it; past the hard limit, drop it and resync later."""
        if self.closed:
            return
        if self._idle and self.send_now is not None and self.send_now(data):
            return
        if self.output_bytes + len(data) > HARD_LIMIT:
            self._drop_output()
            self.resync = resync
        else:
            self._frames.append(data)
            self.output_bytes += len(data)
        self._wakeup.set()

    def replace_screen(self, frames: list[Frame]) -> None:
        """Drop queued output and send ``frames`` (a terminal reset and the screen) instead."""
        self._drop_output()
        self.resync = None
        for frame in frames:
            self._frames.append(frame)
            if isinstance(frame, bytes):
                self.output_bytes += len(frame)
        self._wakeup.set()

    @property
    def _idle(self) -> bool:
        """Nothing to send before new output: it may overtake nothing."""
        return not self._frames and not self._in_flight and self.resync is None

    async def run(self) -> None:
        """Send until closed; returns when the connection fails or close() is called."""
        while not self.closed:
            if not self._frames and self.resync is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.resync is not None and all(isinstance(f, str) for f in self._frames):
                resync, self.resync = self.resync, None
                self.replace_screen(resync())
                continue
            frame = self._frames.popleft()
            self._in_flight = True
            if isinstance(frame, str):
                await self._send(frame)
                self._in_flight = False
                continue
            output = self._take_output(frame)
            self._sending = len(output)
            await self._send(output)
            self._in_flight = False
            self.output_bytes -= self._sending
            self._sending = 0
            if self.output_bytes < LOW_WATER:
                self._on_drained()

    def _take_output(self, first: bytes) -> bytes:
        """``first`` and the output queued right after it, as one frame.

        Output queues up while the member's previous frame is being sent or
        while the REPL writes faster than its pty is read: one frame for all
        of it costs the server one write to the member's socket, not one per chunk.
        """
        if not self._frames or not isinstance(self._frames[0], bytes):
            return first
        parts = [first]
        size = len(first)
        while self._frames and isinstance(self._frames[0], bytes) and size < FRAME_LIMIT:
            chunk = self._frames.popleft()
            assert isinstance(chunk, bytes)  # checked above; mypy does not narrow deque items
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    def _drop_output(self) -> None:
        """Drop the queued terminal output (not the frame being sent, which still counts)."""
        self._frames = deque(f for f in self._frames if isinstance(f, str))
        self.output_bytes = self._sending

    def close(self) -> None:
        self.closed = True
        self._frames.clear()
        self.output_bytes = 0
        self._wakeup.set()


class Pane:
    """One REPL's screen as the room keeps it, whether or not it is shown now."""

    def __init__(self, language: Language, screen: Screen | None = None) -> None:
        self.language = language
        self.screen = screen or Screen(DEFAULT_SCROLLBACK, (80, 24))
        self._recent = b""  # the latest output, until the prompt shows
        # Set once the REPL shows its prompt: input typed before that may be
        # thrown away by the REPL's line editor as it starts (irb does).
        self.prompt_shown = asyncio.Event()
        self._tail = b""  # the latest output, for at_prompt
        self._skip_until = 0.0  # dropping a flood's output until then (see skip)
        self._skip_tail = b""
        self._skipped = 0

    def record(self, chunk: bytes, size: tuple[int, int]) -> None:
        """Keep output on the screen (of ``size``), and notice the REPL's prompt."""
        self.screen.feed(chunk, size)
        if not self.prompt_shown.is_set():
            self._recent = (self._recent + chunk)[-PROMPT_TAIL:]
            if self.language.ready(self._recent):
                self.prompt_shown.set()
                self._recent = b""

    def at_prompt(self, chunk: bytes) -> bool:
        """Whether the REPL shows its prompt again after ``chunk`` (a line has ended).

        Line editors switch modes between the end of a line and the next prompt
        (R ends bracketed paste after the line and starts it again before "> "),
        which a prompt pattern made for the first prompt does not expect: the
        tail is looked at without control sequences as well.
        """
        self._tail = (self._tail + chunk[-PROMPT_TAIL:])[-PROMPT_TAIL:]
        if self.language.ready(self._tail):
            return True
        return self.language.ready(CONTROLS.sub(b"", self._tail))

    def clear(self) -> None:
        """A blank screen (the REPL is restarted)."""
        self.screen.clear()
        self._recent = b""

    def start_skipping(self) -> None:
        self._skip_until = time.monotonic() + SKIP_SECONDS

    @property
    def skipping(self) -> bool:
        return bool(self._skip_until)

    def skip(self, chunk: bytes) -> bytes:
        """After Ctrl-C in a flood, drop the output already on its way.

        A flood leaves up to megabytes in the pipes between the REPL and us
        (Docker's exec streams hold about 2 MiB); shown at the room's output
        rate, Ctrl-C would seem to do nothing for seconds. So that output is
        read at full speed and dropped, until the REPL's prompt shows (or a
        few seconds pass); the end of it, from its last lines, is shown.
        """
        self._skipped += len(chunk)
        self._skip_tail = (self._skip_tail + chunk)[-SKIP_TAIL:]
        if not self.language.ready(self._skip_tail) and time.monotonic() < self._skip_until:
            return b""
        tail = self._skip_tail
        lines = tail.split(b"\n")
        tail = b"\n".join(lines[-4:]) if len(lines) > 4 else tail
        note = f"\r\n[{self._skipped:,} bytes of output skipped after Ctrl-C]\r\n".encode()
        self._skip_until, self._skip_tail, self._skipped = 0.0, b"", 0
        return note + tail


class SharedTerminal:
    """The one screen a room's members share: the pane of the room's language.

    ``shown`` names that language (the room's record holds it); ``outboxes``
    gives the members' outboxes, the terminal's viewers.
    """

    def __init__(
        self,
        rate: int,
        shown: Callable[[], str],
        outboxes: Callable[[], Iterable[Outbox]],
        scrollback: int = DEFAULT_SCROLLBACK,
    ) -> None:
        self.panes: dict[str, Pane] = {}
        self.scrollback = scrollback
        self.cols, self.rows = 80, 24
        self._shown = shown
        self._outboxes = outboxes
        self._rate = RateLimit(rate)
        self._output_allowed = asyncio.Event()
        self._output_allowed.set()
        # Called, by language, when its REPL shows its prompt.
        self.on_prompt: dict[str, Callable[[], None]] = {}
        # The room's recording: every pane's output (language, bytes), and our notes.
        self.on_output: Callable[[str, bytes], None] | None = None
        self.on_note: Callable[[str], None] | None = None

    def pane(self, language: Language) -> Pane:
        pane = self.panes.get(language.name)
        if pane is None:
            screen = Screen(self.scrollback, (self.cols, self.rows))
            pane = self.panes[language.name] = Pane(language, screen)
        return pane

    def is_shown(self, pane: Pane) -> bool:
        return pane.language.name == self._shown()

    def make_outbox(self, send: Sender) -> Outbox:
        return Outbox(send, self.resume)

    def screen(self) -> list[Frame]:
        """What rebuilds a member's screen: a terminal reset, then the shown pane's screen."""
        language = self._shown()
        frames: list[Frame] = [json.dumps(protocol.terminal_reset(language))]
        pane = self.panes.get(language)
        if pane:
            frames += pane.screen.frames((self.cols, self.rows))
        return frames

    def redraw(self, outboxes: Iterable[Outbox] | None = None) -> None:
        """Rebuild the screen of ``outboxes`` (everyone's by default) from the shown pane's."""
        screen = self.screen()  # built once for all of them
        for outbox in self._outboxes() if outboxes is None else outboxes:
            outbox.replace_screen(screen)

    def write(self, pane: Pane, text: str) -> None:
        """Put a note of ours (not the REPL's) on a pane, as if the REPL had printed it."""
        data = text.encode()
        pane.record(data, (self.cols, self.rows))
        if self.on_output is not None and self.on_note is not None:
            self.on_output(pane.language.name, data)
            self.on_note(text.strip("\r\n[] "))
        if self.is_shown(pane):
            for outbox in self._outboxes():
                outbox.send_output(data, self.screen)

    def typed(self, pane: Pane, data: bytes) -> None:
        """Keystrokes for ``pane``'s REPL: a Ctrl-C in a flood drops what is on its way."""
        if b"\x03" in data and self._rate.limiting:
            pane.start_skipping()

    def update_flow(self, outboxes: list[Outbox] | None = None) -> None:
        """Pause reading the pty while every member is behind; resume when one catches up."""
        if outboxes is None:
            outboxes = list(self._outboxes())
        if outboxes and all(outbox.behind for outbox in outboxes):
            self._output_allowed.clear()
        else:
            self._output_allowed.set()

    def resume(self) -> None:
        """Read the shown pty again (a member caught up or left, or another pane is shown)."""
        self._output_allowed.set()

    async def relay(self, pane: Pane, process: Process) -> None:
        """Relay ``process``'s output to ``pane`` (and, when shown, the members) until it ends."""
        while True:
            if self.is_shown(pane):
                await self._output_allowed.wait()
            chunk = await process.read()
            if not chunk:
                return
            if pane.skipping:
                chunk = pane.skip(chunk)
                if not chunk:
                    continue
            else:
                await self._rate.spend(len(chunk))
            pane.record(chunk, (self.cols, self.rows))
            if self.on_output is not None:
                self.on_output(pane.language.name, chunk)
            on_prompt = self.on_prompt.get(pane.language.name)
            # Every prompt, the first too: it may come in one chunk with the line typed
            # ahead and that line's output (a plot) and next prompt.
            if on_prompt is not None and pane.at_prompt(chunk):
                on_prompt()
            if self.is_shown(pane):
                outboxes = list(self._outboxes())
                for outbox in outboxes:
                    outbox.send_output(chunk, self.screen)
                metrics.BYTES_RELAYED.inc(len(chunk) * len(outboxes))
                self.update_flow(outboxes)

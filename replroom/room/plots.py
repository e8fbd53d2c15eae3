"""A room's plots: taken from its sandbox, kept, and shown to every member.

A REPL that draws (replroom/plotting.py) writes each image into
``plotting.PLOTS_DIR`` in its sandbox. When such a REPL shows its prompt
again (the end of a Run, of ``plt.show()``, of any line), the room takes the
images from outside the sandbox (``Sandbox.take_files``: a file's size is
looked at before it is read; one over ``plot_max_bytes`` is removed unread and
the members are told at once). Each image is checked to be what its name
says (PNG or SVG), kept in memory (the latest :data:`HISTORY` per room, at
most :data:`HISTORY_BYTES` of them) and
announced with a ``plot`` message; its bytes are fetched over HTTP
(``GET /api/rooms/{room}/plots/{id}``), and a late joiner's welcome lists
the ones kept.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from replroom import protocol
from replroom.config import format_size
from replroom.plotting import DRAWING, PLOTS_DIR
from replroom.protocol import PlotInfo, PlotMime
from replroom.room.members import Members
from replroom.room.tasks import Background
from replroom.sandbox import Sandbox, SandboxError
from replroom.sandbox.base import TakenFile

log = logging.getLogger(__name__)

HISTORY = 20  # plots kept per room
# Bytes of plots kept per room (at least one plot of the largest size): a room
# drawing large images must not hold much of the server's memory.
HISTORY_BYTES = 16 * 1024 * 1024
TAKE_COUNT = 8  # files taken from the sandbox at once (at most this many images in memory)
# Seconds between the starts of two takes: a take is an exec on docker and kubernetes
# (~65 ms of the Engine's work here); a burst of prompts (lines pasted) makes one take
# now and one at the end, not one per line.
TAKE_INTERVAL = 0.25
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Plot:
    info: PlotInfo
    data: bytes


def image_type(name: str, data: bytes) -> PlotMime | None:
    """The image's type if its content is what its name says, else None."""
    if name.endswith(".png") and data.startswith(PNG_MAGIC):
        return "image/png"
    if name.endswith(".svg"):
        head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
        if head.startswith((b"<?xml", b"<svg", b"<!--", b"<!DOCTYPE svg")) and b"<svg" in data:
            return "image/svg+xml"
    return None


class Plots:
    """The plots of one room.

    ``sandbox`` gives the room's sandbox now (None while it has none);
    ``by`` is who typed or ran last, named in the plots that appear next.
    """

    def __init__(
        self,
        members: Members,
        tasks: Background,
        sandbox: Callable[[], Sandbox | None],
        max_bytes: int,
    ) -> None:
        self.members = members
        self.tasks = tasks
        self._sandbox = sandbox
        self.max_bytes = max_bytes
        self.history: deque[Plot] = deque()
        self._kept_bytes = 0
        self.by: tuple[str, str] = ("", "")  # (member id, name)
        self._taking: asyncio.Task[None] | None = None
        # A prompt shown while a take runs: the language to take for once more.
        self._again: str | None = None
        self._last_take = float("-inf")  # when the last take started (monotonic)

    def infos(self) -> list[PlotInfo]:
        return [plot.info for plot in self.history]

    def get(self, plot_id: str) -> Plot | None:
        return next((plot for plot in self.history if plot.info["id"] == plot_id), None)

    def prompt_shown(self, language: str) -> None:
        """``language``'s REPL shows its prompt: take what it drew (one taker at a time)."""
        if self._taking is not None and not self._taking.done():
            self._again = language  # the running take may have listed the directory already
            return
        self._taking = self.tasks.spawn(self._take(language), "taking its plots")

    async def _take(self, language: str) -> None:
        while True:
            await asyncio.sleep(self._last_take + TAKE_INTERVAL - time.monotonic())
            self._last_take = time.monotonic()
            # What appeared since is named after the REPL that showed its prompt last,
            # when its name does not say.
            language, self._again = self._again or language, None
            sandbox = self._sandbox()
            if sandbox is None:
                return
            try:
                taken = await sandbox.take_files(PLOTS_DIR, self.max_bytes, TAKE_COUNT)
            except SandboxError as error:
                # The sandbox went away or does not answer: its plots went with it.
                log.warning("room %s: cannot take plots: %s", sandbox.room_id, error)
                return
            for found in taken:
                self._add(found, language)
            if len(taken) < TAKE_COUNT and self._again is None:
                return

    def _add(self, found: TakenFile, language: str) -> None:
        if found.data is None:
            self.members.notice(
                f"plot refused: the image is {format_size(found.size)}, over the limit of "
                f"{format_size(self.max_bytes)} (draw it smaller, or at a lower dpi)",
                "error",
            )
            return
        mime = image_type(found.name, found.data)
        if mime is None:
            self.members.notice(f"plot refused: {found.name} is not a PNG or SVG image", "error")
            return
        member, name = self.by
        # The hooks name the language in the file's name (time-language-…): another
        # REPL's prompt may be the one that found it.
        parts = found.name.split("-")
        if len(parts) > 2 and parts[1] in DRAWING:
            language = parts[1]
        info: PlotInfo = {
            "id": secrets.token_urlsafe(9),
            "language": language,
            "mime": mime,
            "size": len(found.data),
            "member": member,
            "by": name,
            "at": time.time(),
        }
        self.history.append(Plot(info, found.data))
        self._kept_bytes += len(found.data)
        budget = max(HISTORY_BYTES, self.max_bytes)
        while len(self.history) > HISTORY or self._kept_bytes > budget:
            self._kept_bytes -= len(self.history.popleft().data)
        self.members.broadcast(protocol.plot_shown(info))

"""Session recordings: each room's terminal output, markers and editor updates on one clock.

A room's recording is a directory ``<data_dir>/recordings/<room>/`` of *parts*,
``part-000001.jsonl`` and on, each a header line and then one event per line,
appended and never rewritten (docs/operations.md, Recordings):

- ``[t, "o", language, text]``: output of a language's REPL (the typed bytes
  never: only what the REPL printed, as every member saw it);
- ``[t, "S", language, text]``: the REPL's screen when the part started (what
  rebuilds it in a reset terminal), so that a part stands on its own once older
  ones are dropped;
- ``[t, "r", null, "COLSxROWS"]``: the shared terminal's size;
- ``[t, "m", null, label]``: a marker (Run, language switch, restart, out of
  memory, joined, left, who started typing);
- ``[t, "y", document, base64]``: a Yjs update of an editor document;
  ``[t, "Y", document, base64]``: a document's whole state (when it loads, and
  at a part's start);
- ``[t, "a", document, json]``: who makes the document's updates from here on,
  as the server knows the member (not what their page claims):
  ``{"member", "name", "color", "clients"}``, ``clients`` being the Yjs client
  ids whose text is theirs. Written before the first update of another member
  (or of a new client id), and at a part's start for every author known then.

The header is ``{"format": "replroom-recording", "version": 1, "room", "start",
"cols", "rows", "continues", "runs"}``; ``runs`` (when known) is how many Runs
the room had before the part, so that "Run #n" goes on counting when the room
comes back into memory; ``continues`` says the part follows the one
before without a gap (that one ended at its size), so its snapshots repeat
what was drawn already; otherwise (recording turned back on, the room back in
memory) they bridge what was not recorded.

``t`` is Unix time in seconds, one clock for all of it. Writes are buffered and
go to the file every second (or 64 KiB); a part is fsynced when it ends. A crash
loses at most the last second, and leaves at most one truncated line, which the
reader skips. A part ends at an eighth of ``recording_max_bytes``; past that cap
a room's oldest parts are deleted, past ``recordings_max_bytes`` the oldest of
any room's, and parts older than ``recording_retention`` go too.

The exports are an asciicast v2 per REPL (what ``asciinema play`` reads) and the
editor's timeline as JSON (:class:`Timeline`).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import json
import logging
import os
import re
import shutil
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycrdt import TransactionEvent, get_state

from replroom.config import Settings, format_size
from replroom.editor.wire import BadMessage, read_var_uint

if TYPE_CHECKING:
    from replroom.editor.channel import Channel
    from replroom.editor.document import Document

log = logging.getLogger(__name__)

FORMAT = "replroom-recording"
VERSION = 1
PART_NAME = re.compile(r"part-(\d{6,})\.jsonl")
FLUSH_BYTES = 64 * 1024
FLUSH_SECONDS = 1.0
MIN_PART_BYTES = 64 * 1024
PARTS_PER_CAP = 8  # a part ends at this fraction of the room's cap: dropping one frees that much
TYPING_PAUSE = 10.0  # seconds without keystrokes after which typing again is a new marker
EMPTY_UPDATE = b"\x00\x00"  # a Yjs update that changes nothing
ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A Run marker as _append writes it, at the start of its line (never inside another event's
# JSON string, where its quotes would be escaped).
RUN_MARKER = re.compile(rb'^\[[-+.0-9eE]+, "m", null, "Run #(\d+) ', re.MULTILINE)
KINDS = ("o", "S", "r", "m", "y", "Y", "a")

Event = tuple[float, str, str | None, str]
Snapshot = Callable[[], Iterable[tuple[str, str, str]]]  # (kind, where, data) at a part's start
Author = tuple[str, str, str]  # a member as the server knows them: id, name, colour


class RecordingError(Exception):
    """A recording that cannot be read (none, or nothing in it decodes): a message for people."""


class Recordings:
    """Every room's recording: the directory, the live recorders, the caps on disk."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.data_dir / "recordings"
        self.settings = settings
        self._live: dict[str, RoomRecording] = {}
        self._documents: dict[str, weakref.WeakValueDictionary[str, Document]] = {}
        # Per room, per document: who each Yjs client id is, and who made the last update
        # written since the part began (None: the next update says who again).
        self._authors: dict[str, dict[str, dict[int, Author]]] = {}
        self._editor: dict[str, Author | None] = {}
        self._runs: dict[str, int] = {}  # rooms' Run counts, once known

    def directory(self, room_id: str) -> Path:
        if not ROOM_ID.fullmatch(room_id):
            raise RecordingError("no such room")
        return self.root / room_id

    def start(
        self,
        room_id: str,
        *,
        enabled: Callable[[], bool],
        snapshot: Snapshot,
        size: Callable[[], tuple[int, int]],
        on_dropped: Callable[[str], None],
    ) -> RoomRecording:
        """The recorder of a room now in memory (:meth:`RoomRecording.close` ends it)."""
        recording = RoomRecording(
            self, room_id, enabled=enabled, snapshot=snapshot, size=size, on_dropped=on_dropped
        )
        self._live[room_id] = recording
        return recording

    def ended(self, recording: RoomRecording) -> None:
        if self._live.get(recording.room_id) is recording:
            del self._live[recording.room_id]
            self._forget_authors(recording.room_id)

    def _forget_authors(self, room_id: str) -> None:
        """Forget who a room's Yjs clients are (every page load is a new client): its
        parts on disk say it, and the next part names the authors of the edits after it."""
        for name in self._authors.pop(room_id, {}):
            self._editor.pop(name, None)

    def live(self, room_id: str) -> RoomRecording | None:
        return self._live.get(room_id)

    # -- the editor's documents ------------------------------------------------------

    def document_loaded(self, document: Document) -> None:
        """A document came into memory: record its state, then every update to it."""
        name = document.name
        room_id = name.partition("/")[0]
        self._documents.setdefault(room_id, weakref.WeakValueDictionary())[name] = document
        loaded = weakref.ref(document)  # the Doc's callback must not keep the Document alive

        def changed(event: TransactionEvent) -> None:
            update: bytes = event.update
            recording = self._live.get(room_id)
            if recording is None or update == EMPTY_UPDATE:
                return
            document = loaded()
            channel = document.editing if document is not None else None
            if channel is not None and channel.author is not None:
                self._authored(recording, name, channel, update)
            recording.event("y", name, _b64(update))

        # The document's own subscription stays the one it stores and relays by;
        # this one ends with the Doc.
        document.doc.observe(changed)
        recording = self._live.get(room_id)
        if recording is not None:
            state = document.doc.get_update()
            if state != EMPTY_UPDATE:
                recording.event("Y", name, _b64(state))

    def _authored(
        self, recording: RoomRecording, name: str, channel: Channel, update: bytes
    ) -> None:
        """A client's update is about to be recorded: say who made it, if that changed.

        A client id seen first with this member is theirs; one already known keeps its
        author unless it is the connection's own (announced in its awareness): a
        reconnecting page re-sends text of others it had, which stays theirs.
        """
        assert channel.author is not None
        author = channel.author()
        known = self._authors.setdefault(recording.room_id, {}).setdefault(name, {})
        fresh = False
        for client in update_clients(update):
            if known.get(client) != author and (
                client not in known or client in channel.awareness_ids
            ):
                known[client] = author
                fresh = True
        if fresh or self._editor.get(name) != author:
            self._editor[name] = author
            recording.event("a", name, _author_data(author, known))

    def document_states(self, room_id: str) -> list[tuple[str, str, str]]:
        """The state of each of the room's documents in memory, as ``Y`` events, each
        followed by the ``a`` events of its authors known then."""
        documents = self._documents.get(room_id)
        if not documents:
            return []
        authors = self._authors.get(room_id, {})
        events = []
        for name, document in sorted(documents.items()):
            events.append(("Y", name, _b64(document.doc.get_update())))
            known = authors.get(name, {})
            for author in dict.fromkeys(known.values()):
                events.append(("a", name, _author_data(author, known)))
            self._editor[name] = None  # the part's next update says who made it
        return events

    # -- on disk -----------------------------------------------------------------------

    async def delete(self, room_id: str) -> None:
        """Delete a room's recording (the room was deleted)."""
        recording = self._live.get(room_id)
        if recording is not None:
            recording.close()
        self._runs.pop(room_id, None)
        self._forget_authors(room_id)
        with contextlib.suppress(RecordingError):
            directory = self.directory(room_id)
            await asyncio.to_thread(shutil.rmtree, directory, True)

    def enforce(self) -> None:
        """Drop parts older than the retention, then the oldest past the global cap."""
        now = time.time()
        parts: list[tuple[float, int, Path]] = []
        try:
            rooms = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        current = {recording.current for recording in self._live.values() if recording.current}
        for room in rooms:
            if not room.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(room.path):
                if not PART_NAME.fullmatch(entry.name):
                    continue
                try:
                    status = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                parts.append((status.st_mtime, status.st_size, Path(entry.path)))
        parts.sort()
        total = sum(size for _, size, _ in parts)
        for mtime, size, path in parts:
            if path in current:
                continue
            expired = now - mtime > self.settings.recording_retention
            if not expired and total <= self.settings.recordings_max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            recording = self._live.get(path.parent.name)
            if recording is not None:
                recording.dropped_part(expired=expired)

    async def read(self, room_id: str) -> Timeline:
        """Everything a room's recording holds, parsed (in a thread: parts are megabytes)."""
        directory = self.directory(room_id)
        recording = self._live.get(room_id)
        if recording is not None:
            recording.flush()  # what the buffer holds is part of it
        return await asyncio.to_thread(Timeline.read, room_id, directory)


class RoomRecording:
    """One room's recorder: appends events to its current part while recording is on."""

    def __init__(
        self,
        recordings: Recordings,
        room_id: str,
        *,
        enabled: Callable[[], bool],
        snapshot: Snapshot,
        size: Callable[[], tuple[int, int]],
        on_dropped: Callable[[str], None],
    ) -> None:
        self.recordings = recordings
        self.room_id = room_id
        self.directory = recordings.directory(room_id)
        self.current: Path | None = None
        self._enabled = enabled
        self._snapshot = snapshot
        self._size = size
        self._on_dropped = on_dropped
        self._file: Any = None  # the current part, opened for appending (binary)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._part_bytes = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._typing: dict[str, float] = {}  # member id: their last keystroke
        self._last_typist: str | None = None
        self._continues = False
        self._failed = False
        self._counting: asyncio.Future[int] | None = None  # the Run count, read from disk
        self.closed = False
        settings = recordings.settings
        self._part_limit = max(settings.recording_max_bytes // PARTS_PER_CAP, MIN_PART_BYTES)

    # -- what the room records -----------------------------------------------------

    def output(self, language: str, data: bytes) -> None:
        decoder = self._decoders.get(language)
        if decoder is None:
            decoder = self._decoders[language] = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(data)
        if text:
            self.event("o", language, text)

    def resize(self, cols: int, rows: int) -> None:
        self.event("r", None, f"{cols}x{rows}")

    def marker(self, label: str) -> None:
        self.event("m", None, label)

    async def next_run(self) -> int:
        """The next Run's number: the room's count goes on from its recording (or from
        this server's memory of it), whether or not this Run is recorded."""
        runs = self.recordings._runs
        if self.room_id not in runs:
            if self._counting is None:
                self._counting = asyncio.ensure_future(asyncio.to_thread(last_run, self.directory))
            found = await asyncio.shield(self._counting)
            runs.setdefault(self.room_id, found)
        runs[self.room_id] += 1
        return runs[self.room_id]

    def typing(self, member_id: str, name: str) -> None:
        """A member typed into the terminal: a marker when they start (never the keys)."""
        now = time.monotonic()
        last = self._typing.get(member_id)
        self._typing[member_id] = now
        if last is None or now - last > TYPING_PAUSE or self._last_typist != member_id:
            self.marker(f"{name} typing")
        self._last_typist = member_id

    def event(self, kind: str, where: str | None, data: str) -> None:
        if self.closed or self._failed:
            return
        if not self._enabled():
            if self._file is not None:
                self._append(time.time(), "m", None, "recording turned off")
                self._end_part()
            return
        if self._file is None and not self._begin_part():
            return
        self._append(time.time(), kind, where, data)
        if self._part_bytes >= self._part_limit:
            self._end_part()
            self._continues = True  # the next part follows this one without a gap
            self._drop_over_cap()
            self.recordings.enforce()

    # -- parts ---------------------------------------------------------------------------

    def _begin_part(self) -> bool:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            numbers = [
                int(match.group(1))
                for name in os.listdir(self.directory)
                if (match := PART_NAME.fullmatch(name))
            ]
            path = self.directory / f"part-{max(numbers, default=0) + 1:06d}.jsonl"
            # Only the server reads it: it holds everything the room's REPLs printed.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._file = os.fdopen(fd, "ab")
        except OSError as error:
            self._fail(error)
            return False
        self.current = path
        self._part_bytes = 0
        now = time.time()
        cols, rows = self._size()
        header = {"format": FORMAT, "version": VERSION, "room": self.room_id, "start": now,
                  "cols": cols, "rows": rows, "continues": self._continues}  # fmt: skip
        runs = self.recordings._runs.get(self.room_id)
        if runs is not None:
            header["runs"] = runs
        self._continues = False
        self._write_line(json.dumps(header))
        for kind, where, data in self._snapshot():
            self._append(now, kind, where, data)
        return True

    def _end_part(self) -> None:
        self.flush()
        file, self._file, self.current = self._file, None, None
        if file is None:
            return
        try:
            os.fsync(file.fileno())
        except OSError as error:
            log.warning("room %s: recording not synced: %s", self.room_id, error)
        finally:
            file.close()

    def _drop_over_cap(self) -> None:
        cap = self.recordings.settings.recording_max_bytes
        try:
            parts = sorted(p for p in self.directory.iterdir() if PART_NAME.fullmatch(p.name))
            sizes = [p.stat().st_size for p in parts]
        except OSError:
            return
        total = sum(sizes)
        for path, size in zip(parts[:-1], sizes, strict=False):
            if total <= cap:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            self.dropped_part(expired=False)

    def dropped_part(self, *, expired: bool) -> None:
        settings = self.recordings.settings
        if expired:
            why = f"older than {settings.recording_retention / 86400:g} days"
        else:
            cap = format_size(settings.recording_max_bytes)
            why = f"the room's recording keeps at most {cap}"
        self._on_dropped(f"the recording's oldest part was dropped ({why})")

    # -- writing -------------------------------------------------------------------------

    def _append(self, t: float, kind: str, where: str | None, data: str) -> None:
        self._write_line(json.dumps([round(t, 6), kind, where, data], ensure_ascii=False))

    def _write_line(self, line: str) -> None:
        encoded = line.encode("utf-8", "surrogatepass") + b"\n"
        self._buffer.append(encoded)
        self._buffered += len(encoded)
        self._part_bytes += len(encoded)
        if self._buffered >= FLUSH_BYTES:
            self.flush()
        elif self._flush_timer is None:
            with contextlib.suppress(RuntimeError):  # no loop: flushed at the part's end
                loop = asyncio.get_running_loop()
                self._flush_timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Write the buffered events to the part (the page cache; the fsync is at its end)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._buffer or self._file is None:
            return
        data, self._buffer, self._buffered = b"".join(self._buffer), [], 0
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as error:
            self._fail(error)

    def _fail(self, error: OSError) -> None:
        """A full or read-only disk: the recording stops for the room; the room goes on."""
        log.error("room %s: recording stopped: %s", self.room_id, error)
        self._failed = True
        self._buffer, self._buffered = [], 0
        with contextlib.suppress(OSError):
            if self._file is not None:
                self._file.close()
        self._file, self.current = None, None
        self._on_dropped(f"the recording stopped: the server cannot write it ({error.strerror})")

    def close(self) -> None:
        """The room left memory: end the part (a new one starts if it comes back)."""
        if self.closed:
            return
        self._end_part()
        self.closed = True
        self.recordings.ended(self)


@dataclass
class Part:
    number: int
    start: float
    cols: int
    rows: int
    # It follows the part before without a gap (that one ended at its size, nothing was
    # missed): its snapshots repeat what the events before it drew.
    continues: bool
    events: list[Event] = field(default_factory=list)


@dataclass
class Timeline:
    """A room's recording as read back: its parts, in order, and what could not be read."""

    room_id: str
    parts: list[Part]
    damaged: int  # lines (or whole parts) that did not decode and were skipped

    @classmethod
    def read(cls, room_id: str, directory: Path) -> Timeline:
        try:
            names = sorted(p.name for p in directory.iterdir() if PART_NAME.fullmatch(p.name))
        except FileNotFoundError:
            names = []
        except OSError as error:
            raise RecordingError(f"the recording cannot be read ({error.strerror})") from None
        parts: list[Part] = []
        damaged = 0
        for name in names:
            try:
                data = (directory / name).read_bytes()
            except OSError:
                damaged += 1
                continue
            part, bad = _parse_part(name, data)
            damaged += bad
            if part is not None:
                parts.append(part)
        if not parts:
            if damaged:
                raise RecordingError("the recording is damaged: none of its parts could be read")
            raise RecordingError("this room has no recording (yet)")
        return cls(room_id, parts, damaged)

    @property
    def start(self) -> float:
        return self.parts[0].start

    @property
    def end(self) -> float:
        last = self.parts[-1]
        return last.events[-1][0] if last.events else last.start

    @property
    def dropped(self) -> bool:
        """Whether earlier parts were dropped (by a cap or the retention)."""
        return self.parts[0].number > 1

    def events(self) -> Iterable[Event]:
        for part in self.parts:
            yield from part.events

    def _part_events(self) -> Iterable[tuple[Part, Event]]:
        for part in self.parts:
            for event in part.events:
                yield part, event

    @property
    def languages(self) -> list[str]:
        seen: dict[str, None] = {}
        for _, kind, where, _ in self.events():
            if kind in ("o", "S") and where:
                seen[where] = None
        return list(seen)

    def markers(self) -> list[dict[str, Any]]:
        return [
            {"t": round(t - self.start, 6), "label": data}
            for t, kind, _, data in self.events()
            if kind == "m"
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "room": self.room_id,
            "start": self.start,
            "duration": round(self.end - self.start, 6),
            "parts": len(self.parts),
            "dropped": self.dropped,
            "damaged": self.damaged,
            "languages": self.languages,
            "documents": sorted({w for _, k, w, _ in self.events() if k in ("y", "Y") and w}),
            "markers": self.markers(),
        }

    def cast(self, language: str) -> str:
        """The REPL's terminal as asciicast v2: output, resizes and markers on the room's clock.

        A part's screen snapshot is played where the cast starts and after a gap (the
        recording was off, the room left memory), after a terminal reset; a part that
        continues the one before has its screen drawn already.
        """
        first = self.parts[0]
        header = {
            "version": 2,
            "width": first.cols,
            "height": first.rows,
            "timestamp": int(first.start),
            "title": f"replroom room {self.room_id}: {language}",
            "env": {"TERM": "xterm-256color", "SHELL": language},
        }
        lines = [json.dumps(header)]
        drawn = False
        at = 0.0
        for part, (t, kind, where, data) in self._part_events():
            at = max(at, round(t - self.start, 6))  # a clock set back must not play backwards
            if kind == "S" and where == language:
                if drawn and part.continues:
                    continue
                screen = "\x1bc" + data if drawn else data
                drawn = True
                lines.append(json.dumps([at, "o", screen], ensure_ascii=False))
            elif kind == "o" and where == language:
                drawn = True
                lines.append(json.dumps([at, "o", data], ensure_ascii=False))
            elif kind == "r":
                lines.append(json.dumps([at, "r", data]))
            elif kind == "m":
                lines.append(json.dumps([at, "m", data], ensure_ascii=False))
        return "\n".join(lines) + "\n"

    def editor(self) -> dict[str, Any]:
        """The editor's history: each document's updates (base64 Yjs), who made them
        (``author`` events: the member from here on, and their Yjs client ids), the markers."""
        events: list[dict[str, Any]] = []
        seen: set[str] = set()
        for part, (t, kind, where, data) in self._part_events():
            if kind == "a" and where:
                events.append({"t": round(max(t - self.start, 0.0), 6), "doc": where,
                               "author": _author(data)})  # fmt: skip
                continue
            if kind not in ("y", "Y") or not where:
                continue
            if kind == "Y" and where in seen and part.continues:
                continue  # the document's state is already there, update by update
            seen.add(where)
            events.append({"t": round(max(t - self.start, 0.0), 6), "doc": where,
                           "update": data, "state": kind == "Y"})  # fmt: skip
        return {
            "format": "replroom-editor-timeline",
            "version": VERSION,
            **self.summary(),
            "events": events,
        }


def _parse_part(name: str, data: bytes) -> tuple[Part | None, int]:
    """A part and how many of its lines were damaged (a truncated last line is not
    counted: it is what a crash leaves)."""
    match = PART_NAME.fullmatch(name)
    assert match is not None
    lines = data.split(b"\n")
    lines.pop()  # "" after the last newline, or a line a crash cut short: skipped silently
    try:
        header = json.loads(lines[0]) if lines else None
        valid = (
            isinstance(header, dict)
            and header.get("format") == FORMAT
            and isinstance(header.get("start"), int | float)
            and isinstance(header.get("cols"), int)
            and isinstance(header.get("rows"), int)
        )
    except ValueError:
        valid = False
    if not valid:
        return None, 1 if data else 0
    assert isinstance(header, dict)
    part = Part(int(match.group(1)), float(header["start"]), header["cols"], header["rows"],
                continues=bool(header.get("continues")))  # fmt: skip
    bad = 0
    for line in lines[1:]:
        event = _event(line)
        if event is None:
            bad += 1
        else:
            part.events.append(event)
    return part, bad


def _event(line: bytes) -> Event | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(value, list) and len(value) == 4):
        return None
    t, kind, where, data = value
    if not (
        isinstance(t, int | float)
        and kind in KINDS
        and (where is None or isinstance(where, str))
        and isinstance(data, str)
    ):
        return None
    if kind in ("y", "Y"):
        try:
            base64.b64decode(data, validate=True)
        except ValueError:
            return None
    if kind == "a" and _author(data) is None:
        return None
    return float(t), kind, where, data


def _author(data: str) -> dict[str, Any] | None:
    """An ``a`` event's member, checked (what the replay page trusts it to hold)."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if not (
        isinstance(value, dict)
        and all(isinstance(value.get(key), str) for key in ("member", "name", "color"))
        and isinstance(value.get("clients"), list)
        and all(isinstance(c, int) and not isinstance(c, bool) for c in value["clients"])
    ):
        return None
    return {key: value[key] for key in ("member", "name", "color", "clients")}


def _author_data(author: Author, known: dict[int, Author]) -> str:
    member, name, color = author
    clients = sorted(client for client, whose in known.items() if whose == author)
    return json.dumps({"member": member, "name": name, "color": color, "clients": clients},
                      ensure_ascii=False)  # fmt: skip


def update_clients(update: bytes) -> list[int]:
    """The Yjs client ids whose insertions a (v1) update holds: its state vector's."""
    try:
        state = get_state(update)
        count, pos = read_var_uint(state, 0)
        clients = []
        for _ in range(count):
            client, pos = read_var_uint(state, pos)
            _, pos = read_var_uint(state, pos)
            clients.append(client)
    except (ValueError, BadMessage):
        return []  # malformed: applying it fails and closes the connection
    return clients


def last_run(directory: Path) -> int:
    """The number of the room's last recorded Run (0: none): from the newest part that
    has a Run marker, or whose header says how many Runs came before it."""
    try:
        names = sorted((p.name for p in directory.iterdir() if PART_NAME.fullmatch(p.name)),
                       reverse=True)  # fmt: skip
    except OSError:
        return 0
    for name in names:
        try:
            data = (directory / name).read_bytes()
        except OSError:
            continue
        numbers = [int(number) for number in RUN_MARKER.findall(data)]
        header, _, _ = data.partition(b"\n")
        try:
            before = json.loads(header).get("runs")
        except (ValueError, AttributeError):
            before = None
        if isinstance(before, int) and not isinstance(before, bool):
            numbers.append(before)
        if numbers:
            return max(numbers)
    return 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

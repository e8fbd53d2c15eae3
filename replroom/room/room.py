"""A room: its members, the terminal they share, and the supervisor of its sandbox.

A :class:`Room` exists in memory while it has members or a sandbox; its
durable state (links, language) is a :class:`~replroom.storage.RoomRecord`.
It composes :class:`~replroom.room.members.Members`,
:class:`~replroom.room.terminal.SharedTerminal`,
:class:`~replroom.room.supervisor.Supervisor` and the owners'
:class:`~replroom.room.controls.HostControls`, and does what needs all of
them: joining and leaving, keystrokes, switching language, Run. Each action
asks the controls first (a read-only member's keystrokes, Run or switch is
refused here, whatever their page shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Callable
from functools import partial
from typing import Literal, Protocol, cast

from replroom import plotting, protocol
from replroom.config import Limits
from replroom.languages import Language, UnknownLanguage, get_language
from replroom.protocol import (
    EditorInfo,
    ErrorCode,
    FileInfo,
    LanguageInfo,
    LimitsInfo,
    Links,
    MemberRole,
    NoticeLevel,
    RoomInfo,
)
from replroom.room.chat import Chat
from replroom.room.controls import HostControls, read_only_reason
from replroom.room.files import Documents, RoomFiles
from replroom.room.members import Member, Members
from replroom.room.plots import Plots
from replroom.room.recording import Recordings, RoomRecording
from replroom.room.supervisor import AtCapacity, SandboxHost, Supervisor
from replroom.room.tasks import Background
from replroom.room.terminal import Sender, SharedTerminal
from replroom.sandbox import Process, Sandbox, SandboxError
from replroom.sandbox.base import SANDBOX_HOME
from replroom.storage import RoomRecord, StorageError, Store, hash_token

log = logging.getLogger(__name__)

READY_TIMEOUT = 15.0  # seconds to wait for a new REPL's prompt before typing anyway
# What a member's terminal sends by itself, in answer to the REPL's queries (cursor
# position, device attributes) or on focus changes: every member's terminal answers,
# so it says nothing about who is typing.
TERMINAL_ANSWERS = re.compile(rb"(?:\x1b\[\d+;\d+R|\x1b\[[?>]?[\d;]*c|\x1b\[[IO])+")
BUSY = "the REPL is not reading its input (Ctrl-S stops it; restart it if it is stuck): dropped"


class ReplBusy(SandboxError):
    """The REPL did not take keystrokes within ``protocol.INPUT_TIMEOUT``; they were dropped."""


class RoomHost(SandboxHost, Protocol):
    """What a room needs from the manager of all rooms."""

    @property
    def store(self) -> Store: ...

    @property
    def editor(self) -> Documents | None:
        """The shared editor's documents (None until the app has started it)."""

    @property
    def recordings(self) -> Recordings:
        """Every room's session recording (replroom.room.recording)."""

    async def touch(self, room_id: str) -> None:
        """Note the room's use (its record is kept ``room_retention`` after the last)."""

    def members_changed(self) -> None:
        """A member joined or left some room."""

    async def retire(self, room: Room) -> None:
        """Free the room's sandbox and memory if it is still empty."""


class Room:
    def __init__(
        self, host: RoomHost, record: RoomRecord, chat: list[protocol.ChatEntry] | None = None
    ) -> None:
        self.host = host
        if record.language not in host.settings.languages:
            # The operator has since disabled the room's language.
            record.language = host.settings.default_language
        self.record = record
        self.id = record.id
        self.members = Members(record.id)
        self.terminal = SharedTerminal(
            host.settings.output_rate,
            lambda: record.language,
            self.members.outboxes,
            scrollback=host.settings.screen_scrollback,
        )
        # Sandbox failures in the background were told to the members (and logged).
        self.tasks = Background(record.id, told=(SandboxError, AtCapacity))
        self.supervisor = Supervisor(host, record, self.members, self.terminal, self.tasks)
        self.controls = HostControls(
            record, self.members, host.store, recording=host.settings.recording
        )
        self.chat = Chat(record, self.members, host.store, chat or [])
        self.plots = Plots(
            self.members, self.tasks, lambda: self.sandbox, host.settings.plot_max_bytes
        )
        self.terminal.on_prompt = {
            name: partial(self.plots.prompt_shown, name) for name in plotting.DRAWING
        }
        settings = host.settings
        self.files = RoomFiles(
            record.id, host.store, lambda: host.editor, settings.max_files, settings.max_files_bytes
        )
        # What Run wrote into the working directory, per language, and into which
        # sandbox: a file deleted or renamed since is removed there at the next Run.
        self._written: dict[str, set[str]] = {}
        self._written_to: Sandbox | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self.recording = self._start_recording()

    def _start_recording(self) -> RoomRecording:
        recording = self.host.recordings.start(
            self.id,
            enabled=lambda: self.controls.recording,
            snapshot=self._recording_snapshot,
            size=lambda: (self.terminal.cols, self.terminal.rows),
            on_dropped=lambda text: self.notice(text, "warning"),
        )
        self.terminal.on_output = recording.output
        self.terminal.on_note = recording.marker
        return recording

    def _recording_snapshot(self) -> list[tuple[str, str, str]]:
        """What a recording's part starts with: each REPL's screen, each document's state."""
        size = (self.terminal.cols, self.terminal.rows)
        events = []
        for name, pane in self.terminal.panes.items():
            frames = pane.screen.frames(size)
            screen = b"".join(frame for frame in frames if isinstance(frame, bytes))
            events.append(("S", name, screen.decode("utf-8", "replace")))
        return events + self.host.recordings.document_states(self.id)

    @property
    def language(self) -> str:
        return self.record.language

    @property
    def limits(self) -> Limits:
        return self.host.settings.limits

    @property
    def sandbox(self) -> Sandbox | None:
        return self.supervisor.sandbox

    def describe(self) -> RoomInfo:
        return {
            "id": self.id,
            "language": self.language,
            # Language.describe() gives exactly LanguageInfo's keys (a plain dict).
            "languages": [
                cast(LanguageInfo, get_language(name).describe())
                for name in self.host.settings.languages
            ],
            "members": self.members.views(),
            "sandbox": self.supervisor.sandboxes.state,
            "repl": self.supervisor.repl_state(self.language),
            "limits": _limits_info(self.limits),
            "cols": self.terminal.cols,
            "rows": self.terminal.rows,
            "controls": self.controls.controls(),
        }

    def notice(self, text: str, level: NoticeLevel = "info") -> None:
        self.members.notice(text, level)

    # -- members ---------------------------------------------------------------

    def new_member(
        self,
        join: protocol.Join,
        role: MemberRole,
        key_hash: str,
        send: Sender,
        close: Callable[[int, str], None],
    ) -> Member:
        """A member for this room, not yet in it: :meth:`join` adds them."""
        return Member(
            room_id=self.id,
            id=secrets.token_urlsafe(6),
            name=join.name,
            link_role=role,
            color=self.members.free_color(),
            cols=join.cols,
            rows=join.rows,
            token_hash=hash_token(join.token),
            key_hash=key_hash,
            record=self.record,
            outbox=self.terminal.make_outbox(send),
            close=close,
        )

    async def join(
        self, member: Member, editor: EditorInfo | None = None, links: Links | None = None
    ) -> None:
        """Add a member; their welcome carries ``editor`` (their ticket) and ``links`` (owners)."""
        if self._idle_timer:
            self._idle_timer.cancel()
            self._idle_timer = None
        await self.files.load()
        self.members.add(member)
        self.host.members_changed()
        removed = self.controls.removed() if member.role is MemberRole.OWNER else None
        welcome = protocol.welcome(
            self.describe(), member.view(), self.members.views(),
            editor=editor, links=links, removed=removed, chat=list(self.chat.history),
            plots=self.plots.infos(),
            files={name: self.files.listing(name) for name in self.host.settings.languages},
        )  # fmt: skip
        member.outbox.send_json(welcome)
        self.members.announce("joined", member)
        self.recording.marker(f"{member.name} joined")
        await self._fit_terminal()
        self.terminal.redraw([member.outbox])
        # Beside the REPL's start, not before it: a database write is not worth the wait.
        self.tasks.spawn(self.host.touch(self.id), "noting its use")
        await self.supervisor.ensure_repl(self.language)

    async def leave(self, member: Member) -> None:
        if not self.members.remove(member):
            return
        member.outbox.close()
        for on_leave in member.on_leave:
            on_leave()
        self.host.members_changed()
        self.members.announce("left", member)
        self.recording.marker(f"{member.name} left")
        await self._fit_terminal()
        self.terminal.resume()  # the one who was behind may be gone
        self.terminal.update_flow()
        if not self.members:
            await self.host.touch(self.id)
            self._retire_after(self.host.settings.idle_timeout)

    def _retire_after(self, delay: float) -> None:
        if self._idle_timer:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(
            delay, lambda: self.tasks.spawn(self.host.retire(self), "retiring the empty room")
        )

    def rename(self, member: Member, name: str) -> None:
        member.name = name
        self.members.announce("renamed", member)

    async def resize(self, member: Member, cols: int, rows: int) -> None:
        if (member.cols, member.rows) == (cols, rows):
            return
        member.cols, member.rows = cols, rows
        await self._fit_terminal()
        self.members.announce("changed", member)  # the list shows each member's size

    async def _fit_terminal(self) -> None:
        """Apply tmux's size rule (:meth:`Members.smallest_size`).

        The REPLs' ptys are resized before members hear of the new size, so
        that whatever a member types after seeing it runs at that size.
        """
        size = self.members.smallest_size()
        if size is None or size == (self.terminal.cols, self.terminal.rows):
            return
        self.terminal.cols, self.terminal.rows = size
        self.recording.resize(*size)
        await self.supervisor.resize(*size)
        self.members.broadcast(protocol.terminal_size(*size))

    def disconnect(self, token_hashes: set[str], code: int, reason: str) -> None:
        self.members.disconnect(token_hashes, code, reason)

    # -- what members do -------------------------------------------------------

    async def input(self, member: Member, data: bytes) -> None:
        """Keystrokes for the room's REPL; raises ReplBusy if it does not take them."""
        if not member.can_write:
            self.refuse_edit(member, "terminal")
            return
        repl = await self.supervisor.repl_for_input(self.language, data)
        if repl is None or repl.process is None:
            return
        self.terminal.typed(repl.pane, data)
        await _type(repl.process, data)
        # After the keystrokes are on their way: the REPL works on them meanwhile.
        if not TERMINAL_ANSWERS.fullmatch(data):
            self._typed_by(member)
            self.recording.typing(member.id, member.name)  # who, never what

    def refuse_edit(self, member: Member, where: Literal["terminal", "editor"]) -> None:
        """Keystrokes or an editor update of a member without write access were dropped:
        say why, once per place until their access changes (a flood of errors helps nobody)."""
        if where not in member.warned_read_only:
            member.warned_read_only.add(where)
            what = "your keystrokes" if where == "terminal" else "your edit"
            reason = read_only_reason(member)
            member.outbox.send_json(
                protocol.error(ErrorCode.READ_ONLY, f"{reason}: {what} went nowhere")
            )

    def _typed_by(self, member: Member) -> None:
        self.plots.by = (member.id, member.name)  # the plots that appear next are theirs
        self.members.typed(member)

    def _enabled_language(self, name: str) -> Language:
        if name not in self.host.settings.languages:
            raise UnknownLanguage(
                f"unknown language {name!r} (this server offers: "
                f"{', '.join(self.host.settings.languages)})"
            )
        return get_language(name)

    async def switch_language(self, member: Member, language_name: str) -> None:
        self.controls.check_language(member)
        language = self._enabled_language(language_name)
        if language.name == self.language:
            return
        try:
            await self.host.store.set_language(self.id, language.name)
        except StorageError as error:
            member.outbox.send_json(
                protocol.error(ErrorCode.STORAGE, f"the language was not changed: {error}")
            )
            return
        self.record.language = language.name
        self.members.broadcast(protocol.language_changed(language.name, member.name))
        self.recording.marker(f"{member.name} switched to {language.title}")
        await self.supervisor.ensure_repl(language.name)
        self.terminal.redraw()
        self.terminal.resume()
        self.supervisor.announce()

    async def run_code(
        self, member: Member, code: str, language_name: str | None, file_id: str | None = None
    ) -> None:
        """Run a file: ``code`` is the text of file ``file_id`` (default: the language's
        first) as the member sees it. Every file of the language is written into the
        sandbox's working directory, then the line that loads this one is typed into the
        live REPL (after one that makes it forget the room's modules it loaded before)."""
        self.controls.check_run(member)
        language = self._enabled_language(language_name or self.language)
        file = self.files.find(language.name, file_id)
        texts = await self.files.texts(language.name, override=(file["id"], code))
        self.files.check_size(texts)
        if language.name != self.language:
            await self.switch_language(member, language.name)
        repl = await self.supervisor.ensure_repl(language.name)
        sandbox = self.sandbox
        if repl.process is None or sandbox is None:
            raise SandboxError(f"{language.title} is not running")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(repl.pane.prompt_shown.wait(), READY_TIMEOUT)
        await self._write_files(sandbox, language.name, texts)
        if repl.process is None:  # it ended meanwhile
            raise SandboxError(f"{language.title} is not running")
        self._typed_by(member)
        self.members.broadcast(protocol.activity("run", language.name, member.id, member.name))
        number = await self.recording.next_run()  # counted on from the recording
        self.recording.marker(f"Run #{number} by {member.name} ({file['path']})")
        load = language.load_line(f"{SANDBOX_HOME}/{file['path']}")
        if len(texts) > 1 and language.refresh_format:
            load = language.refresh_format.format(load=load)
        # Ctrl-U first: whatever a member had half-typed must not prefix the line.
        await _type(repl.process, b"\x15" + load.encode() + b"\r")

    async def _write_files(
        self, sandbox: Sandbox, language: str, texts: list[tuple[FileInfo, str]]
    ) -> None:
        """Write a language's files below /home/room; remove those Run wrote there before
        that are no file of the room's any more (deleted or renamed since)."""
        if self._written_to is not sandbox:  # a new sandbox starts empty
            self._written, self._written_to = {}, sandbox
        paths = {file["path"] for file, _ in texts}
        await asyncio.gather(
            *(sandbox.put_file(f"{SANDBOX_HOME}/{file['path']}", text.encode())
              for file, text in texts)
        )  # fmt: skip
        current = {
            file["path"]
            for name in self.host.settings.languages
            for file in self.files.listing(name)
        }
        stale = sorted(self._written.get(language, set()) - current)
        self._written[language] = paths
        if stale:
            try:
                process = await sandbox.spawn(
                    ["rm", "-f", "--", *(f"{SANDBOX_HOME}/{path}" for path in stale)], tty=False
                )
                await process.wait()
            except SandboxError as error:
                # A leftover file does not keep the Run from running.
                log.warning("room %s: removing old files failed: %s", self.id, error)

    # -- files -----------------------------------------------------------------

    async def create_file(self, member: Member, message: protocol.FileCreate) -> None:
        self.controls.check_write(member)
        language = self._enabled_language(message.language)
        file = await self.files.create(language.name, message.path, message.content or "")
        self._files_changed(language.name, "created", file, member)

    async def rename_file(self, member: Member, message: protocol.FileRename) -> None:
        self.controls.check_write(member)
        language = self._enabled_language(message.language)
        file = await self.files.rename(language.name, message.file, message.path)
        self._files_changed(language.name, "renamed", file, member)

    async def delete_file(self, member: Member, message: protocol.FileDelete) -> None:
        self.controls.check_write(member)
        language = self._enabled_language(message.language)
        file = await self.files.delete(language.name, message.file)
        self._files_changed(language.name, "deleted", file, member)

    def _files_changed(
        self, language: str, event: protocol.FileEvent, file: FileInfo, member: Member
    ) -> None:
        listing = self.files.listing(language)
        self.members.broadcast(
            protocol.files_changed(
                language, listing, event, file, member_id=member.id, by=member.name
            )
        )

    async def restart_repl(self, member: Member | None = None) -> None:
        """Restart the room's current REPL (``member``: who asked, checked and named)."""
        if member is not None:
            self.controls.check_write(member)
            self.members.broadcast(
                protocol.activity("restart", self.language, member.id, member.name)
            )
        self.recording.marker(f"{member.name if member else 'the server'} restarted the REPL")
        self.recording.output(self.language, b"\x1bc")  # its screen starts blank again
        await self.supervisor.restart_repl(self.language)

    async def close(self) -> None:
        if self._idle_timer:
            self._idle_timer.cancel()
        self.members.close()
        self.recording.close()
        await self.supervisor.close()
        await self.tasks.close()


async def _type(process: Process, data: bytes) -> None:
    written = process.write_nowait(data)
    if written == len(data):
        return
    data = data[written:]
    try:
        async with asyncio.timeout(protocol.INPUT_TIMEOUT):
            await process.write(data)
    except TimeoutError:
        raise ReplBusy(BUSY) from None


def _limits_info(limits: Limits) -> LimitsInfo:
    return {"memory": limits.memory, "cpus": limits.cpus, "pids": limits.pids, "disk": limits.disk}

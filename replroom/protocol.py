"""The wire: the room and editor WebSockets' messages, limits, error codes and close codes.

Terminal bytes travel as binary frames (keystrokes from members, output to
them); everything else is a small JSON object with a ``type``. Every message a
client sends is validated here before the server looks at it; the messages the
server sends are typed here (TypedDicts: plain dicts at run time).

This module is the one source of the wire: ``web/src/protocol.ts`` and the
code tables of docs/protocol.md are generated from it (``scripts/generate.py``;
``scripts/test`` fails when they are not current). The protocol is described
for client authors in docs/protocol.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Annotated, Final, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# pydantic reads TypedDicts for their JSON Schema; before Python 3.12 it needs this one.
from typing_extensions import TypedDict

PROTOCOL_VERSION: Final = 1

KiB: Final = 1024
MiB: Final = 1024 * KiB

# -- limits -------------------------------------------------------------------

MAX_TEXT_MESSAGE: Final = 1152 * KiB  # a Run message carries the editor's code
MAX_INPUT_FRAME: Final = 64 * KiB  # keystrokes and pastes
# A member's input the REPL has not taken yet (it stopped reading): past this, `busy`.
MAX_PENDING_INPUT: Final = MAX_TEXT_MESSAGE + MAX_INPUT_FRAME
# Seconds a REPL may take to accept keystrokes before they are dropped (`busy`):
# one that stopped reading (Ctrl-S stops its output, and so its reading) must
# not hold up its members' other messages for ever.
INPUT_TIMEOUT: Final = 10.0
MAX_CODE: Final = 1 * MiB
MAX_NAME: Final = 40
MAX_TOKEN: Final = 200
# A member key: random, at least 128 bits (22 characters of base64url) and made by
# the page; the server keeps only its hash (docs/protocol.md, "Member keys").
MIN_MEMBER_KEY: Final = 22
MAX_MEMBER_KEY: Final = 200
MAX_REF: Final = 64  # a removed key's reference (a prefix of its hash)
MAX_CHAT: Final = 2000  # characters of one chat message
CHAT_HISTORY: Final = 500  # chat messages kept per room, and sent to newcomers
CHAT_RATE: Final = 5  # chat messages a member key may send …
CHAT_WINDOW: Final = 10.0  # … in this many seconds
MAX_LANGUAGE: Final = 40
MAX_FILE_PATH: Final = 128  # characters of an editor file's path, e.g. "lib/helper.py"
MAX_FILE_DEPTH: Final = 4  # parts of an editor file's path: at most three folders
MAX_FILE_ID: Final = 22
MIN_COLS: Final = 10
MAX_COLS: Final = 1000
MIN_ROWS: Final = 2
MAX_ROWS: Final = 500
MAX_EDITOR_MESSAGE: Final = 1 * MiB  # one y-protocol message (a paste, an upload)
MAX_EDITOR_DOC: Final = 2 * MiB  # one encoded editor document
MAX_EDITOR_BEHIND: Final = 8 * MiB  # output queued for one editor client
# Larger frames are refused (1009) by the WebSocket layer before the app sees them.
MAX_FRAME: Final = max(MAX_TEXT_MESSAGE, MAX_EDITOR_MESSAGE) + 1 * KiB
MAX_CLOSE_REASON: Final = 123  # bytes of UTF-8 (RFC 6455: a close frame's payload is at most 125)


def size_text(n: int) -> str:
    """A limit in words, exactly: ``1 MiB``, ``1152 KiB``, ``40 bytes``."""
    for unit, factor in (("MiB", MiB), ("KiB", KiB)):
        if n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


# -- states and roles, as the wire names them ---------------------------------


class MemberRole(StrEnum):
    OWNER = "owner"
    MEMBER = "member"
    SPECTATOR = "spectator"


class SandboxState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"


class ReplState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"


# -- error codes --------------------------------------------------------------


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` message: why a member's message was refused or failed."""

    BAD_MESSAGE = "bad_message"
    TOO_LARGE = "too_large"
    READ_ONLY = "read_only"
    NOT_ALLOWED = "not_allowed"
    RATE_LIMITED = "rate_limited"
    FAILED = "failed"
    STORAGE = "storage"
    BUSY = "busy"
    BAD_FILE = "bad_file"
    FILES_LIMIT = "files_limit"
    INTERNAL = "internal"


ERROR_CODES: Final[Mapping[ErrorCode, str]] = {
    ErrorCode.BAD_MESSAGE: (
        "malformed JSON (also: nesting too deep, a number too large, a lone surrogate), "
        "not an object, unknown or missing `type`, wrong or missing fields, extra fields, "
        f"a text message over {size_text(MAX_TEXT_MESSAGE)}, a second `join`"
    ),
    ErrorCode.TOO_LARGE: (
        f"an input (binary) frame over {size_text(MAX_INPUT_FRAME)}; it is dropped"
    ),
    ErrorCode.READ_ONLY: (
        "a member without write access (a spectator, a member made read-only, anyone but the "
        "owners in a locked room) tried to change the room: keystrokes, Run, restart, language, "
        "editor updates. Sent once for keystrokes and editor updates until write access changes"
    ),
    ErrorCode.NOT_ALLOWED: (
        "a host control sent by someone who is not an owner, an action on an owner by a "
        "co-owner, an unknown member, Run or a language switch the owners reserved for themselves, "
        "a spectator's chat message when the owners do not let spectators write"
    ),
    ErrorCode.RATE_LIMITED: (
        f"more than {CHAT_RATE} chat messages in {CHAT_WINDOW:g} s from one member: the message "
        "was not sent; or a request for write access within 10 s of the last one"
    ),
    ErrorCode.FAILED: "the action could not be done, e.g. an unknown language or no sandbox",
    ErrorCode.STORAGE: (
        "the server could not store the change, e.g. its disk is full; nothing was changed"
    ),
    ErrorCode.BUSY: (
        "the REPL is not taking input (it stopped reading, e.g. because Ctrl-S stopped its "
        f"output): keystrokes it did not take within {INPUT_TIMEOUT:g} s, or a message behind over "
        f"{size_text(MAX_PENDING_INPUT)} of waiting input, were dropped. A `restart` is never "
        "held up behind input: it is handled at once"
    ),
    ErrorCode.BAD_FILE: (
        "an editor file's path that is not allowed (empty, absolute, `.` or `..` parts, control "
        f"characters or `\\`, over {MAX_FILE_PATH} characters or {MAX_FILE_DEPTH} parts), a path "
        "another file has (or a folder of it), an unknown file, deleting a language's last file"
    ),
    ErrorCode.FILES_LIMIT: (
        "a new file, an upload or a Run would take a language's files past the room's limits "
        "(settings `max_files`, `max_files_bytes`): nothing was changed or run"
    ),
    ErrorCode.INTERNAL: (
        "the server failed unexpectedly (it is logged with the room id); the message says no "
        "more than that"
    ),
}


# -- close codes --------------------------------------------------------------


class CloseCode(IntEnum):
    """How a room or editor WebSocket ends; 4000-4999 are replroom's own (CLOSE_CODES)."""

    NORMAL = 1000
    BAD_FRAME = 1002
    UNSUPPORTED = 1003
    BAD_DATA = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    RESTARTING = 1012
    TOO_SLOW = 1013
    BAD_JOIN = 4000
    FORBIDDEN = 4003
    REMOVED = 4010
    NOT_FOUND = 4004
    AT_CAPACITY = 4029
    DOC_TOO_LARGE = 4413


class CloseAction(StrEnum):
    """What a client does after a close."""

    RECONNECT = "reconnect"  # with backoff
    LATER = "later"  # reconnect after a longer wait: the server asked for patience
    STOP = "stop"  # reconnecting cannot help: say why and stop


@dataclass(frozen=True)
class CloseUse:
    """When one socket (room or editor) is closed with a code, and what its client does."""

    when: str
    then: CloseAction
    advice: str = ""  # why, or what else to do, for client authors


@dataclass(frozen=True)
class Close:
    meaning: str  # a few words, for a client to show when the server gave no reason
    room: CloseUse | None = None
    editor: CloseUse | None = None


_A = CloseAction
_BUG = "a bug in the client"
CLOSE_CODES: Final[Mapping[CloseCode, Close]] = {
    CloseCode.NORMAL: Close(
        "closed",
        room=CloseUse("normal close (usually the client's own)", _A.RECONNECT),
        editor=CloseUse("normal close (usually the client's own)", _A.RECONNECT),
    ),
    CloseCode.BAD_FRAME: Close(
        "a frame broke the WebSocket protocol",
        room=CloseUse(
            "a frame that breaks RFC 6455 (a continuation without a start, a fragmented or long "
            "control frame, reserved bits or opcodes, an unmasked frame)",
            _A.RECONNECT,
            _BUG,
        ),
        editor=CloseUse("as for the room", _A.RECONNECT, _BUG),
    ),
    CloseCode.UNSUPPORTED: Close(
        "a text frame on the editor socket",
        editor=CloseUse("a text frame (y-websocket sends binary frames only)", _A.RECONNECT, _BUG),
    ),
    CloseCode.BAD_DATA: Close(
        "a malformed message",
        room=CloseUse("a text frame that is not UTF-8", _A.RECONNECT, _BUG),
        editor=CloseUse("a malformed y-protocol message", _A.RECONNECT, _BUG),
    ),
    CloseCode.POLICY: Close(
        "an unusable document name",
        editor=CloseUse("an unusable document name", _A.STOP, _BUG),
    ),
    CloseCode.TOO_BIG: Close(
        "a message was too large",
        room=CloseUse(
            f"a frame, or a fragmented message, over {size_text(MAX_FRAME)}",
            _A.RECONNECT,
            "the client should not send such frames",
        ),
        editor=CloseUse(
            f"a message over {size_text(MAX_EDITOR_MESSAGE)}",
            _A.STOP,
            "say so: on reconnect the same update would be sent again",
        ),
    ),
    CloseCode.INTERNAL: Close(
        "internal error",
        room=CloseUse(
            "the server failed unexpectedly (logged); an `error` `internal` comes first",
            _A.RECONNECT,
        ),
        editor=CloseUse("the server failed unexpectedly (logged with the room id)", _A.RECONNECT),
    ),
    CloseCode.RESTARTING: Close(
        "the server is restarting",
        room=CloseUse("the server is restarting", _A.RECONNECT),
        editor=CloseUse("the server is restarting", _A.RECONNECT),
    ),
    CloseCode.TOO_SLOW: Close(
        "too far behind",
        editor=CloseUse(
            f"the client fell more than {size_text(MAX_EDITOR_BEHIND)} behind",
            _A.RECONNECT,
            "it resyncs",
        ),
    ),
    CloseCode.BAD_JOIN: Close(
        "protocol error",
        room=CloseUse(
            "no valid `join` first, or an unsupported protocol version", _A.STOP, "show the reason"
        ),
    ),
    CloseCode.FORBIDDEN: Close(
        "invalid or revoked link",
        room=CloseUse(
            "invalid or revoked link (e.g. the links were rotated), or a foreign `Origin`",
            _A.STOP,
            "ask for a new link",
        ),
        editor=CloseUse(
            "the member's room connection ended, and the ticket with it",
            _A.STOP,
            "until the next `welcome` brings a new ticket",
        ),
    ),
    CloseCode.REMOVED: Close(
        "removed from the room",
        room=CloseUse(
            "an owner removed this member (their member key) from the room",
            _A.STOP,
            "say so: the key is refused until an owner lets it back",
        ),
    ),
    CloseCode.NOT_FOUND: Close(
        "room not found",
        room=CloseUse("room not found", _A.STOP, "say so"),
        editor=CloseUse(
            "the room was deleted, or the file (a `files` message says so)",
            _A.STOP,
            "show another file",
        ),
    ),
    CloseCode.AT_CAPACITY: Close(
        "server at capacity",
        room=CloseUse("server at capacity, or the room is full", _A.LATER),
    ),
    CloseCode.DOC_TOO_LARGE: Close(
        "the document is too large",
        editor=CloseUse(
            f"the document would exceed {size_text(MAX_EDITOR_DOC)}",
            _A.STOP,
            "say so: on reconnect the same content would be sent again",
        ),
    ),
}


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame; a longer reason would fail the close itself."""
    return text.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")


# -- client → server ----------------------------------------------------------


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Cols = Annotated[int, Field(ge=MIN_COLS, le=MAX_COLS)]
Rows = Annotated[int, Field(ge=MIN_ROWS, le=MAX_ROWS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
LanguageName = Annotated[str, Field(min_length=1, max_length=MAX_LANGUAGE)]


class Join(Message):
    """The first message on a room socket: who joins, with which link, at what size."""

    type: Literal["join"]
    v: int
    token: str = Field(min_length=1, max_length=MAX_TOKEN)
    name: Name
    cols: Cols = 80
    rows: Rows = 24
    # The browser's member key (docs/protocol.md, "Member keys"); without one the
    # server makes one for this connection only.
    key: str | None = Field(default=None, min_length=MIN_MEMBER_KEY, max_length=MAX_MEMBER_KEY)


class Resize(Message):
    """The member's terminal size changed."""

    type: Literal["resize"]
    cols: Cols
    rows: Rows


class SelectLanguage(Message):
    """Switch the room's language for everyone."""

    type: Literal["language"]
    language: LanguageName


FileId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$", min_length=1, max_length=MAX_FILE_ID)]
# Checked whole by the room (replroom/room/files.py): here only its length.
FilePath = Annotated[str, Field(min_length=1, max_length=MAX_FILE_PATH)]


class Run(Message):
    """Load code into the live REPL of a language (default: the room's).

    ``code`` is the text of the file ``file`` (default: the language's first)
    as the member sees it; the language's other files are written beside it.
    """

    type: Literal["run"]
    code: str = Field(max_length=MAX_CODE)
    language: LanguageName | None = None
    file: FileId | None = None


class FileCreate(Message):
    """Add a file to a language's files; ``content``: its text (an upload), else empty."""

    type: Literal["file_create"]
    language: LanguageName
    path: FilePath
    content: str | None = Field(default=None, max_length=MAX_CODE)


class FileRename(Message):
    """Give a file (by its ``file`` id) another path."""

    type: Literal["file_rename"]
    language: LanguageName
    file: FileId
    path: FilePath


class FileDelete(Message):
    """Delete a file (by its ``file`` id) and its document; a language keeps at least one."""

    type: Literal["file_delete"]
    language: LanguageName
    file: FileId


class Restart(Message):
    """Kill and restart the current language's REPL."""

    type: Literal["restart"]


class Rename(Message):
    """Change one's display name."""

    type: Literal["rename"]
    name: Name


class Controls(Message):
    """Owners: change the room's controls; the fields left out stay as they are."""

    type: Literal["controls"]
    locked: bool | None = None  # everyone but the owners is read-only
    run_locked: bool | None = None  # only owners may Run
    language_locked: bool | None = None  # only owners may switch the language
    spectator_chat: bool | None = None  # spectators may write in the chat
    recording: bool | None = None  # the room records its session (docs/operations.md)
    recording_spectators: bool | None = None  # spectators may replay and download it


MemberActionName = Literal["read_only", "write", "owner", "not_owner", "remove", "refuse"]


class MemberAction(Message):
    """Owners: act on one member (by their ``id``), for as long as their member key lasts.

    ``read_only`` / ``write``: take or give back write access (in a locked room,
    ``write`` grants it until the room is unlocked); ``owner`` / ``not_owner``:
    make or unmake a co-owner; ``remove``: disconnect them and refuse their key;
    ``refuse``: turn down their request for write access.
    """

    type: Literal["member"]
    member: str = Field(min_length=1, max_length=MAX_REF)
    action: MemberActionName


class Readmit(Message):
    """Owners: let a removed member key back in (by its ``ref`` from ``removed``)."""

    type: Literal["readmit"]
    ref: str = Field(min_length=1, max_length=MAX_REF)


class RequestWrite(Message):
    """A member without write access asks the owners for it."""

    type: Literal["request_write"]


class ChatSend(Message):
    """A chat message: plain text (never HTML), at most ``MAX_CHAT`` characters."""

    type: Literal["chat"]
    text: str = Field(min_length=1, max_length=MAX_CHAT)


ClientMessage = Annotated[
    Join
    | Resize
    | SelectLanguage
    | Run
    | Restart
    | Rename
    | Controls
    | MemberAction
    | Readmit
    | RequestWrite
    | ChatSend
    | FileCreate
    | FileRename
    | FileDelete,
    Field(discriminator="type"),
]
client_message_adapter: Final[TypeAdapter[ClientMessage]] = TypeAdapter(ClientMessage)


class BadMessage(ValueError):
    """A client message that is not valid; the text says what is wrong."""


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Validate one JSON control message from a client."""
    if len(text) > MAX_TEXT_MESSAGE:
        raise BadMessage(f"message too large ({len(text)} > {MAX_TEXT_MESSAGE} bytes)")
    try:
        return client_message_adapter.validate_json(text)
    except ValidationError as error:
        raise BadMessage(_explain(error)) from None


def _explain(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    kind = first["type"]
    where = ".".join(str(part) for part in first["loc"])
    if kind == "json_invalid":
        return "malformed JSON"
    if kind == "model_attributes_type" or (kind.endswith("_type") and not first["loc"]):
        return 'a message must be a JSON object with a "type"'
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"unknown or missing message type: {first.get('input', {})!r:.80}"
    return f"{where}: {first['msg']}"


# -- server → client ----------------------------------------------------------


class MemberInfo(TypedDict):
    """A member of a room, as the others see them.

    ``co_owner``: an owner by an owner's grant rather than by the owner's link;
    ``write``: may change the room now; ``requested``: asked for write access;
    ``cols``/``rows``: their terminal's size (the smallest sets the shared one).
    """

    id: str
    name: str
    role: MemberRole
    color: str
    co_owner: bool
    write: bool
    requested: bool
    cols: int
    rows: int


class RoomControls(TypedDict):
    """What the owners reserved for themselves (see ``Controls``)."""

    locked: bool
    run_locked: bool
    language_locked: bool
    spectator_chat: bool
    recording: bool  # the room's session is being recorded: every page shows it
    recording_spectators: bool


class ChatEntry(TypedDict):
    """One chat message: ``id`` counts up per room; ``at`` in seconds since the epoch."""

    id: int
    member: str
    name: str
    color: str
    text: str
    at: float


PlotMime = Literal["image/png", "image/svg+xml"]


class PlotInfo(TypedDict):
    """A plot a room's REPL drew; its bytes are at ``GET /api/rooms/{room}/plots/{id}``.

    ``member`` and ``by`` name who typed or ran last before it appeared (empty if nobody);
    ``at`` in seconds since the epoch.
    """

    id: str
    language: str
    mime: PlotMime
    size: int
    member: str
    by: str
    at: float


class RemovedKey(TypedDict):
    """A member key an owner removed: ``ref`` names it for ``readmit``; ``name`` as last seen."""

    ref: str
    name: str


class LanguageInfo(TypedDict):
    """What a web client needs to offer a language."""

    name: str
    title: str
    extension: str
    editor_mode: str
    filename: str


class LimitsInfo(TypedDict):
    """A room sandbox's limits: bytes, cores, processes and threads, bytes."""

    memory: int
    cpus: float
    pids: int
    disk: int


class RoomInfo(TypedDict):
    """A room: its language, members, state, limits and terminal size."""

    id: str
    language: str
    languages: list[LanguageInfo]
    members: list[MemberInfo]
    sandbox: SandboxState
    repl: ReplState
    limits: LimitsInfo
    cols: int
    rows: int
    controls: RoomControls


class EditorInfo(TypedDict):
    """Where this member's editor documents are synced: ``{path}/{language}/{file id}?ticket=…``."""

    path: str
    ticket: str


class FileInfo(TypedDict):
    """An editor file: ``id`` names its document (stays across renames), ``path`` its name."""

    id: str
    path: str


class Links(TypedDict):
    """The room's current invitation and spectator tokens (owners only)."""

    invite: str
    spectator: str


class Welcome(TypedDict):
    """The answer to a valid join."""

    type: Literal["welcome"]
    v: int
    room: RoomInfo
    you: MemberInfo
    members: list[MemberInfo]
    editor: NotRequired[EditorInfo]
    links: NotRequired[Links]
    removed: NotRequired[list[RemovedKey]]
    chat: NotRequired[list[ChatEntry]]
    plots: NotRequired[list[PlotInfo]]
    files: NotRequired[dict[str, list[FileInfo]]]


MemberEvent = Literal["joined", "left", "renamed", "changed", "removed", "requested"]


class MembersChanged(TypedDict):
    """The member list after a change, and what changed (``changed``: role, write access,
    size; ``requested``: the member asked for write access), and who did it (``by``)."""

    type: Literal["members"]
    members: list[MemberInfo]
    event: MemberEvent
    member: MemberInfo
    by: NotRequired[str]


class ControlsChanged(TypedDict):
    """An owner changed the room's controls."""

    type: Literal["controls"]
    controls: RoomControls
    by: str


class RemovedList(TypedDict):
    """The member keys removed from the room (owners only), after a change."""

    type: Literal["removed"]
    removed: list[RemovedKey]


class Activity(TypedDict):
    """A member ran the editor's code or restarted a REPL (``member`` is their id)."""

    type: Literal["activity"]
    what: Literal["run", "restart"]
    language: str
    member: str
    by: str


FileEvent = Literal["created", "renamed", "deleted"]


class FilesChanged(TypedDict):
    """A language's files after a change: what changed (``file``: its id, ``path``: its
    path after the change), and who did it (``member``: their id, ``by``: their name)."""

    type: Literal["files"]
    language: str
    files: list[FileInfo]
    event: FileEvent
    file: str
    path: str
    member: str
    by: str


class ChatPosted(TypedDict):
    """A member wrote in the chat."""

    type: Literal["chat"]
    message: ChatEntry


class PlotShown(TypedDict):
    """A REPL drew a plot (docs/protocol.md, Plots)."""

    type: Literal["plot"]
    plot: PlotInfo


class Typist(TypedDict):
    """Who typed into the terminal last (sent when it changes to another member)."""

    type: Literal["typist"]
    member: str
    name: str
    color: str


class TerminalReset(TypedDict):
    """The binary frames that follow replace the terminal's screen (a switch or a resync)."""

    type: Literal["terminal"]
    language: str
    reset: bool


class TerminalSize(TypedDict):
    """The shared terminal's size: the smallest member's (tmux's rule)."""

    type: Literal["size"]
    cols: int
    rows: int


class LanguageChanged(TypedDict):
    """A member switched the room's language."""

    type: Literal["language"]
    language: str
    by: str


class Status(TypedDict):
    """The room's state."""

    type: Literal["status"]
    sandbox: SandboxState
    repl: ReplState
    language: str


NoticeLevel = Literal["info", "warning", "error"]


class Notice(TypedDict):
    """Something to tell people, e.g. that a REPL ran out of memory."""

    type: Literal["notice"]
    level: NoticeLevel
    text: str


class ErrorMessage(TypedDict):
    """A message of this member was refused or failed; the connection stays open."""

    type: Literal["error"]
    code: ErrorCode
    message: str


ServerMessage = Annotated[
    Welcome
    | MembersChanged
    | TerminalReset
    | TerminalSize
    | LanguageChanged
    | ControlsChanged
    | RemovedList
    | Activity
    | ChatPosted
    | FilesChanged
    | PlotShown
    | Typist
    | Status
    | Notice
    | ErrorMessage,
    Field(discriminator="type"),
]
server_message_adapter: Final[TypeAdapter[ServerMessage]] = TypeAdapter(ServerMessage)


def member_view(
    member_id: str,
    name: str,
    role: MemberRole,
    color: str,
    *,
    co_owner: bool = False,
    write: bool | None = None,
    requested: bool = False,
    cols: int = 80,
    rows: int = 24,
) -> MemberInfo:
    return {
        "id": member_id, "name": name, "role": role, "color": color, "co_owner": co_owner,
        "write": role is not MemberRole.SPECTATOR if write is None else write,
        "requested": requested, "cols": cols, "rows": rows,
    }  # fmt: skip


def welcome(
    room: RoomInfo,
    you: MemberInfo,
    members: list[MemberInfo],
    *,
    editor: EditorInfo | None = None,
    links: Links | None = None,
    removed: list[RemovedKey] | None = None,
    chat: list[ChatEntry] | None = None,
    plots: list[PlotInfo] | None = None,
    files: dict[str, list[FileInfo]] | None = None,
) -> Welcome:
    message: Welcome = {
        "type": "welcome",
        "v": PROTOCOL_VERSION,
        "room": room,
        "you": you,
        "members": members,
    }
    if editor is not None:
        message["editor"] = editor
    if links is not None:
        message["links"] = links
    if removed is not None:
        message["removed"] = removed
    if chat is not None:
        message["chat"] = chat
    if plots is not None:
        message["plots"] = plots
    if files is not None:
        message["files"] = files
    return message


def members_changed(
    members: list[MemberInfo], event: MemberEvent, member: MemberInfo, by: str | None = None
) -> MembersChanged:
    message: MembersChanged = {
        "type": "members", "members": members, "event": event, "member": member,
    }  # fmt: skip
    if by is not None:
        message["by"] = by
    return message


def controls_changed(controls: RoomControls, by: str) -> ControlsChanged:
    return {"type": "controls", "controls": controls, "by": by}


def removed_list(removed: list[RemovedKey]) -> RemovedList:
    return {"type": "removed", "removed": removed}


def activity(what: Literal["run", "restart"], language: str, member_id: str, by: str) -> Activity:
    return {"type": "activity", "what": what, "language": language, "member": member_id, "by": by}


def files_changed(
    language: str, files: list[FileInfo], event: FileEvent, file: FileInfo, *, member_id: str,
    by: str,
) -> FilesChanged:  # fmt: skip
    return {
        "type": "files", "language": language, "files": files, "event": event,
        "file": file["id"], "path": file["path"], "member": member_id, "by": by,
    }  # fmt: skip


def chat_posted(entry: ChatEntry) -> ChatPosted:
    return {"type": "chat", "message": entry}


def plot_shown(plot: PlotInfo) -> PlotShown:
    return {"type": "plot", "plot": plot}


def typist(member_id: str, name: str, color: str) -> Typist:
    return {"type": "typist", "member": member_id, "name": name, "color": color}


def terminal_reset(language: str) -> TerminalReset:
    return {"type": "terminal", "language": language, "reset": True}


def terminal_size(cols: int, rows: int) -> TerminalSize:
    return {"type": "size", "cols": cols, "rows": rows}


def language_changed(language: str, by: str) -> LanguageChanged:
    return {"type": "language", "language": language, "by": by}


def status(sandbox: SandboxState, repl: ReplState, language: str) -> Status:
    return {"type": "status", "sandbox": sandbox, "repl": repl, "language": language}


def notice(text: str, level: NoticeLevel = "info") -> Notice:
    return {"type": "notice", "level": level, "text": text}


def error(code: ErrorCode, message: str) -> ErrorMessage:
    return {"type": "error", "code": code, "message": message}

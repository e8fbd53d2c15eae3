"""The room WebSocket protocol: message types, limits and validation at the boundary.

Terminal bytes travel as binary frames (keystrokes from members, output to
them); everything else is a small JSON object with a ``type``. Every message a
client sends is validated here before the server looks at it. The protocol is
described for client authors in docs/protocol.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1

MAX_TEXT_MESSAGE = 1152 * 1024  # a Run message carries the editor's code
MAX_INPUT_FRAME = 64 * 1024  # keystrokes and pastes
MAX_CODE = 1024 * 1024
MAX_NAME = 40
MIN_COLS, MAX_COLS = 10, 1000
MIN_ROWS, MAX_ROWS = 2, 500

# Close codes (4000-4999 are the application's own).
CLOSE_PROTOCOL = 4000  # wrong protocol version, or a message before join
CLOSE_FORBIDDEN = 4003  # no valid link, or the link was rotated
CLOSE_NOT_FOUND = 4004  # no such room
CLOSE_TOO_BIG = 1009  # a frame over the limits above (RFC 6455's own code)
CLOSE_INTERNAL = 1011  # an unexpected server failure (logged); reconnect with backoff
CLOSE_AT_CAPACITY = 4029  # the server runs as many sandboxes as it may
CLOSE_SHUTDOWN = 1012  # the server restarts: reconnect


MAX_CLOSE_REASON = 123  # bytes of UTF-8 (RFC 6455: a close frame's payload is at most 125)


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame; a longer reason would fail the close itself."""
    return text.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Cols = Annotated[int, Field(ge=MIN_COLS, le=MAX_COLS)]
Rows = Annotated[int, Field(ge=MIN_ROWS, le=MAX_ROWS)]


# -- client → server -------------------------------------------------------


class Join(Message):
    type: Literal["join"]
    v: int
    token: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=MAX_NAME)
    cols: Cols = 80
    rows: Rows = 24


class Resize(Message):
    type: Literal["resize"]
    cols: Cols
    rows: Rows


class SelectLanguage(Message):
    type: Literal["language"]
    language: str = Field(min_length=1, max_length=40)


class Run(Message):
    type: Literal["run"]
    code: str = Field(max_length=MAX_CODE)
    language: str | None = Field(None, min_length=1, max_length=40)


class Restart(Message):
    type: Literal["restart"]


class Rename(Message):
    type: Literal["rename"]
    name: str = Field(min_length=1, max_length=MAX_NAME)


ClientMessage = Annotated[
    Join | Resize | SelectLanguage | Run | Restart | Rename, Field(discriminator="type")
]
_client_message: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


class BadMessage(ValueError):
    """A client message that is not valid; the text says what is wrong."""


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Validate one JSON control message from a client."""
    if len(text) > MAX_TEXT_MESSAGE:
        raise BadMessage(f"message too large ({len(text)} > {MAX_TEXT_MESSAGE} bytes)")
    try:
        return _client_message.validate_json(text)
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


# -- server → client -------------------------------------------------------


def member_view(member_id: str, name: str, role: str, color: str) -> dict[str, Any]:
    return {"id": member_id, "name": name, "role": role, "color": color}


def welcome(room: dict[str, Any], you: dict[str, Any], members: list[dict[str, Any]]) -> dict:
    return {"type": "welcome", "v": PROTOCOL_VERSION, "room": room, "you": you, "members": members}


def members_changed(members: list[dict[str, Any]], event: str, member: dict[str, Any]) -> dict:
    return {"type": "members", "members": members, "event": event, "member": member}


def terminal_reset(language: str) -> dict[str, Any]:
    """The binary frames that follow replace the terminal's screen (a switch or a resync)."""
    return {"type": "terminal", "language": language, "reset": True}


def terminal_size(cols: int, rows: int) -> dict[str, Any]:
    """The shared terminal's size: the smallest member's (tmux's rule)."""
    return {"type": "size", "cols": cols, "rows": rows}


def language_changed(language: str, by: str) -> dict[str, Any]:
    return {"type": "language", "language": language, "by": by}


def status(sandbox: str, repl: str, language: str) -> dict[str, Any]:
    return {"type": "status", "sandbox": sandbox, "repl": repl, "language": language}


def notice(text: str, level: Literal["info", "warning", "error"] = "info") -> dict[str, Any]:
    return {"type": "notice", "level": level, "text": text}


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}

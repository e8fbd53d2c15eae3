"""The one source of the wire and of the settings: protocol.py's tables, config.py's fields,
and what is derived from them (the CLI's help; scripts/generate.py checks the generated files);
and the WebSocket extensions each socket agrees on."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import get_args

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from replroom import protocol
from replroom.cli import build_parser
from replroom.config import Limits, Settings, format_size, settings_help
from replroom.room.manager import EDITOR_PATH
from replroom.routes.common import ROOM_SOCKET_PATH, WebSocketProtocol

pytestmark = pytest.mark.fast


def test_every_error_and_close_code_is_in_its_table() -> None:
    assert set(protocol.ERROR_CODES) == set(protocol.ErrorCode)
    assert set(protocol.CLOSE_CODES) == set(protocol.CloseCode)
    for code, close in protocol.CLOSE_CODES.items():
        assert close.room or close.editor, f"{code!r} is used by neither socket"
        assert close.meaning


def test_index_html_joins_with_the_protocol_version() -> None:
    # Its inline script (the early join) cannot import the generated protocol.ts.
    index = (Path(__file__).parent.parent / "web/index.html").read_text()
    assert f'type: "join", v: {protocol.PROTOCOL_VERSION},' in index


def test_the_messages_the_server_builds_match_their_types() -> None:
    member = protocol.member_view("m1", "Ada", protocol.MemberRole.OWNER, "#e06c75")
    python: protocol.LanguageInfo = {
        "name": "python",
        "title": "Python 3",
        "extension": "py",
        "editor_mode": "python",
        "filename": "main.py",
    }
    limits = Limits()
    room: protocol.RoomInfo = {
        "id": "r1",
        "language": "python",
        "languages": [python],
        "members": [member],
        "sandbox": protocol.SandboxState.READY,
        "repl": protocol.ReplState.RUNNING,
        "limits": {
            "memory": limits.memory,
            "cpus": limits.cpus,
            "pids": limits.pids,
            "disk": limits.disk,
        },
        "cols": 80,
        "rows": 24,
        "controls": {
            "locked": False,
            "run_locked": False,
            "language_locked": False,
            "spectator_chat": False,
            "recording": True,
            "recording_spectators": False,
        },
    }
    messages = [
        protocol.welcome(room, member, [member], editor={"path": "/yjs/r1", "ticket": "t"}),
        protocol.members_changed([member], "joined", member),
        protocol.terminal_reset("python"),
        protocol.terminal_size(80, 24),
        protocol.language_changed("ruby", "Ada"),
        protocol.status(protocol.SandboxState.READY, protocol.ReplState.RUNNING, "python"),
        protocol.notice("hello", "warning"),
        protocol.error(protocol.ErrorCode.BUSY, "wait"),
        protocol.controls_changed(room["controls"], "Ada"),
        protocol.removed_list([{"ref": "0123abcd", "name": "Eve"}]),
        protocol.activity("run", "python", "m1", "Ada"),
        protocol.typist("m1", "Ada", "#e06c75"),
        protocol.chat_posted(
            {"id": 1, "member": "m1", "name": "Ada", "color": "#e06c75", "text": "hi", "at": 1.5}
        ),
        protocol.members_changed([member], "changed", member, "Ada"),
    ]
    for message in messages:
        assert protocol.server_message_adapter.validate_python(message) == message


def test_a_run_of_the_documented_size_is_accepted() -> None:
    code = "x" * protocol.MAX_CODE
    message = protocol.parse_client_message(f'{{"type": "run", "code": "{code}"}}')
    assert isinstance(message, protocol.Run)
    with pytest.raises(protocol.BadMessage, match="code"):
        protocol.parse_client_message(f'{{"type": "run", "code": "{code}x"}}')


def test_every_setting_is_described() -> None:
    described = list(settings_help())
    assert len(described) == len(Settings.model_fields) - 1 + len(Limits.model_fields)
    for setting in described:
        assert setting.meaning, f"{setting.name} has no description"
        assert setting.default, f"{setting.name} has no default text"


def test_the_cli_help_takes_its_defaults_from_the_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sandbox", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {format_size(Limits().memory)})" in text
    assert f"(default: {Limits().cpus:g})" in text
    assert f"(default: {Limits().pids})" in text
    backends = get_args(Settings.model_fields["backend"].annotation)
    assert "{" + ",".join(backends) + "}" in text


async def test_only_the_editor_socket_agrees_on_compression() -> None:
    """Browsers always offer permessage-deflate; the room socket declines it.

    uvicorn on loopback with the server's WebSocket protocol, in front of an
    app that only accepts: the extensions are agreed on before the app runs.
    """

    async def accept(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    app = Starlette(
        routes=[
            WebSocketRoute(ROOM_SOCKET_PATH + "/{room_id}", accept),
            WebSocketRoute(EDITOR_PATH + "/{room_id}/{language}", accept),
        ]
    )
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    config = uvicorn.Config(app, ws=WebSocketProtocol, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    agreed = {}
    try:
        for path in (f"{ROOM_SOCKET_PATH}/r", f"{EDITOR_PATH}/r/python"):
            url = f"ws://127.0.0.1:{port}{path}"
            async with websockets.connect(url, compression="deflate") as ws:
                assert ws.response is not None
                agreed[path] = ws.response.headers.get("Sec-WebSocket-Extensions")
    finally:
        server.should_exit = True
        await serving
    assert agreed[f"{ROOM_SOCKET_PATH}/r"] is None
    assert (agreed[f"{EDITOR_PATH}/r/python"] or "").startswith("permessage-deflate")

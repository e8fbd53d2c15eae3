"""Several files per room (issue 11 §5) end to end: a real server on loopback (bwrap), real
WebSocket clients for the room and the editor, Run in real sandboxes, and a real restart
of the server on the same data directory."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from pycrdt import create_update_message

from replroom import protocol
from replroom.room.files import check_path
from tests.client import RoomClient, Server, serving
from tests.test_editor import YClient
from tests.test_host_controls import BWRAP, join, new_key

pytestmark = pytest.mark.timeout(240)

LIMITS = {"REPLROOM_MAX_FILES": "3", "REPLROOM_MAX_FILES_BYTES": str(64 * 1024)}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with serving(tmp_path_factory, runtime_dir, {**BWRAP, **LIMITS}) as started:
        yield started


async def file_doc(
    server: Server, room: dict[str, Any], client: RoomClient, language: str, file_id: str,
    opened: list[Any],
) -> YClient:  # fmt: skip
    """The editor document of one file, as the member's page opens it."""
    ticket = (await client.wait_message("welcome"))["editor"]["ticket"]
    url = f"{server.ws_url}/yjs/{room['id']}/{language}/{file_id}?ticket={ticket}"
    made = await YClient.open(url)
    opened.append(made)
    return made


async def change(client: RoomClient, message: dict[str, Any]) -> dict[str, Any]:
    """Send a file change; the ``files`` message it brings (an error fails the test)."""
    before = len(client.messages)
    await client.send(message)

    def answered() -> dict[str, Any] | None:
        for reply in client.messages[before:]:
            if reply["type"] in ("files", "error"):
                return reply
        return None

    reply: dict[str, Any] = await client.wait_until(answered, f"an answer to {message}")
    assert reply["type"] == "files", reply
    return reply


async def refused(client: RoomClient, message: dict[str, Any], code: str) -> str:
    """Send a file change that must be refused with ``code``; the error's text."""
    before = len(client.messages)
    await client.send(message)
    error = await client.wait_message("error", after=before)
    assert error["code"] == code, error
    assert not [m for m in client.messages[before:] if m["type"] == "files"]
    return str(error["message"])


async def test_create_rename_delete_reach_every_member(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    alice = await join(server, room, opened, "alice", token="owner", key=new_key())
    bob = await join(server, room, opened, "bob", key=new_key())
    welcome = await bob.wait_message("welcome")
    assert welcome["files"]["python"] == [{"id": "main", "path": "main.py"}]
    assert welcome["files"]["node"] == [{"id": "main", "path": "main.js"}]

    created = await change(
        alice, {"type": "file_create", "language": "python", "path": "lib/helper.py",
                "content": "X = 1\n"},
    )  # fmt: skip
    assert (created["event"], created["path"], created["by"]) == (
        "created",
        "lib/helper.py",
        "alice",
    )
    helper = created["file"]
    told = await bob.wait_message("files", event="created")
    assert [f["path"] for f in told["files"]] == ["main.py", "lib/helper.py"]
    # The uploaded content is the document's, for everyone's editor.
    doc = await file_doc(server, room, bob, "python", helper, opened)
    await doc.wait_text("X = 1\n")

    renamed = await change(
        bob, {"type": "file_rename", "language": "python", "file": helper, "path": "helper.py"}
    )
    assert renamed["files"][1] == {"id": helper, "path": "helper.py"}
    await doc.insert(0, "# kept across the rename\n")  # the same document, still open
    again = await file_doc(server, room, alice, "python", helper, opened)
    await again.wait_text("# kept across the rename\nX = 1\n")

    deleted = await change(alice, {"type": "file_delete", "language": "python", "file": helper})
    assert deleted["files"] == [{"id": "main", "path": "main.py"}]
    assert await doc.wait_closed() == protocol.CloseCode.NOT_FOUND
    ticket = (await alice.wait_message("welcome"))["editor"]["ticket"]
    url = f"{server.ws_url}/yjs/{room['id']}/python/{helper}?ticket={ticket}"
    async with websockets.connect(url) as gone:
        with pytest.raises(websockets.ConnectionClosed):
            await gone.recv()
        assert gone.close_code == protocol.CloseCode.NOT_FOUND
    await refused(alice, {"type": "file_delete", "language": "python", "file": "main"}, "bad_file")
    await refused(alice, {"type": "file_delete", "language": "python", "file": helper}, "bad_file")


@pytest.mark.parametrize(
    "path",
    ["../x.py", "/etc/x.py", "a/../b.py", "./a.py", "a//b.py", "a\\b.py", "a/b/c/d/e.py",
     "bell\x07.py", "tab\t.py", " lead.py"],
)  # fmt: skip
async def test_bad_paths_are_refused(
    server: Server, room: dict[str, Any], opened: list[Any], path: str
) -> None:
    alice = await join(server, room, opened, "alice", key=new_key())
    await refused(alice, {"type": "file_create", "language": "python", "path": path}, "bad_file")


async def test_names_taken_and_unknown_files_are_refused(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    alice = await join(server, room, opened, "alice", key=new_key())
    create = {"type": "file_create", "language": "python"}
    await refused(alice, {**create, "path": "main.py"}, "bad_file")
    await refused(alice, {**create, "path": "main.py/inner.py"}, "bad_file")
    folder = (await change(alice, {**create, "path": "pkg/mod.py"}))["file"]
    await refused(alice, {**create, "path": "pkg"}, "bad_file")
    await refused(
        alice, {"type": "file_rename", "language": "python", "file": folder, "path": "main.py"},
        "bad_file",
    )  # fmt: skip
    await refused(
        alice, {"type": "file_rename", "language": "python", "file": "nosuch", "path": "a.py"},
        "bad_file",
    )  # fmt: skip
    before = len(alice.messages)
    await alice.send({**create, "language": "cobol", "path": "a.cob"})
    assert "unknown language" in (await alice.wait_message("error", after=before))["message"]
    before = len(alice.messages)
    await alice.send({**create, "path": "x" * (protocol.MAX_FILE_PATH + 1)})
    await alice.wait_message("error", after=before, code="bad_message")


async def test_members_without_write_access_are_refused(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    owner = await join(server, room, opened, "owner", token="owner", key=new_key())
    viewer = await join(server, room, opened, "viewer", token="spectator", key=new_key())
    member = await join(server, room, opened, "member", key=new_key())
    create = {"type": "file_create", "language": "python", "path": "a.py"}
    await refused(viewer, create, "read_only")
    await refused(
        viewer, {"type": "file_delete", "language": "python", "file": "main"}, "read_only"
    )
    await owner.send({"type": "controls", "locked": True})
    await member.wait_message("controls")
    await refused(member, create, "read_only")
    await refused(
        member, {"type": "file_rename", "language": "python", "file": "main", "path": "b.py"},
        "read_only",
    )  # fmt: skip
    await change(owner, create)  # the owners still may


async def test_limits_are_refused_with_their_numbers(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    alice = await join(server, room, opened, "alice", key=new_key())
    create = {"type": "file_create", "language": "ruby"}
    await change(alice, {**create, "path": "a.rb"})
    await change(alice, {**create, "path": "b.rb"})
    text = await refused(alice, {**create, "path": "c.rb"}, "files_limit")
    assert "3 files" in text
    await change(alice, {"type": "file_delete", "language": "ruby", "file": "main"})
    big = "x" * (64 * 1024 + 1)
    text = await refused(alice, {**create, "path": "c.rb", "content": big}, "files_limit")
    assert "64 KiB" in text
    # A Run whose files exceed it is refused too, and runs nothing.
    first = (await alice.wait_message("welcome"))["files"]["python"][0]["id"]
    text = await refused(alice, {"type": "run", "code": big, "language": "python", "file": first},
                         "files_limit")  # fmt: skip
    assert "64 KiB" in text


async def test_typing_past_the_files_limit_is_refused_as_it_happens(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    """The files of a language share max_files_bytes (64 KiB here) at every edit too."""
    alice = await join(server, room, opened, "alice", key=new_key())
    made = await change(alice, {"type": "file_create", "language": "lua", "path": "b.lua"})
    first = await file_doc(server, room, alice, "lua", "main", opened)
    await first.insert(0, "a" * 40_000)
    second = await file_doc(server, room, alice, "lua", made["file"], opened)
    await second.insert(0, "b" * 20_000)  # 60 000 together: still within
    watcher = await file_doc(server, room, alice, "lua", made["file"], opened)
    await watcher.wait_text("b" * 20_000)
    await second.insert(0, "c" * 10_000)  # 70 000: over
    assert await second.wait_closed() == protocol.CloseCode.DOC_TOO_LARGE
    # The server kept the files as they were: a new reader sees no "c".
    reader = await file_doc(server, room, alice, "lua", made["file"], opened)
    await reader.wait_text("b" * 20_000)
    # Shortening the other file makes room again.
    before = first.doc.get_state()
    del first.text[0:30_000]
    await first.ws.send(create_update_message(first.doc.get_update(before)))
    again = await file_doc(server, room, alice, "lua", made["file"], opened)
    await again.wait_text("b" * 20_000)
    await again.insert(0, "d" * 10_000)
    await watcher.wait_text("d" * 10_000 + "b" * 20_000)


async def test_files_survive_a_restart(
    tmp_path: Path, runtime_dir: Path, room_image: object
) -> None:
    server = Server(tmp_path / "data", runtime_dir, env=BWRAP)
    server.start()
    opened: list[Any] = []
    try:
        room = await server.create_room()
        alice = await join(server, room, opened, "alice", key=new_key())
        made = await change(alice, {"type": "file_create", "language": "python", "path": "util.py"})
        doc = await file_doc(server, room, alice, "python", made["file"], opened)
        await doc.insert(0, "VALUE = 42\n")
        renamed = await change(
            alice, {"type": "file_rename", "language": "python", "file": "main", "path": "app.py"}
        )
        for client in opened:
            await client.close()
        opened.clear()
        await server.stop_async()
        server.start()
        bob = await join(server, room, opened, "bob", key=new_key())
        files = (await bob.wait_message("welcome"))["files"]["python"]
        assert files == renamed["files"] == [
            {"id": "main", "path": "app.py"}, {"id": made["file"], "path": "util.py"},
        ]  # fmt: skip
        back = await file_doc(server, room, bob, "python", made["file"], opened)
        await back.wait_text("VALUE = 42\n")
    finally:
        for client in opened:
            await client.close()
        server.stop()


RUNS = {
    # language: (helper path, helper v1, helper v2, main code, what v1 prints, v2 prints)
    # A folder without __init__.py: a namespace package, the hard case to refresh.
    "python": ("pkg/helper.py", "def greet():\n    return 'one-' + 'py'\n",
               "def greet():\n    return 'two-' + 'py'\n",
               "from pkg import helper\nprint(helper.greet())\n", "one-py", "two-py"),
    "node": ("helper.js", "module.exports = () => 'one-' + 'js';\n",
             "module.exports = () => 'two-' + 'js';\n",
             "console.log(require('./helper')())\n", "one-js", "two-js"),
    "ruby": ("lib/helper.rb", "def greet = 'one-' + 'rb'\n", "def greet = 'two-' + 'rb'\n",
             "require_relative 'lib/helper'\nputs greet\n", "one-rb", "two-rb"),
    "bash": ("lib/helper.sh", "greet() { echo \"one-\"\"sh\"; }\n",
             "greet() { echo \"two-\"\"sh\"; }\n", "source lib/helper.sh\ngreet\n",
             "one-sh", "two-sh"),
    "lua": ("lib/helper.lua", "function greet() return 'one-' .. 'lua' end\n",
            "function greet() return 'two-' .. 'lua' end\n",
            "require('lib.helper')\nprint(greet())\n", "one-lua", "two-lua"),
    # PHP cannot declare a function twice in one process: a closure in a variable.
    "php": ("helper.php", "<?php\n$greet = fn() => 'one-' . 'php';\n",
            "$greet = fn() => 'two-' . 'php';\n",
            "<?php\ninclude 'helper.php';\necho $greet(), \"\\n\";\n", "one-php", "two-php"),
    "perl": ("lib/Helper.pm", "package Helper; sub greet { 'one-' . 'pl' } 1;\n",
             "package Helper; no warnings; sub greet { 'two-' . 'pl' } 1;\n",
             "use lib '/home/room/lib'; require Helper; print Helper::greet(), \"\\n\";\n",
             "one-pl", "two-pl"),
    "sqlite": ("helper.sql",
               "DROP VIEW IF EXISTS v; CREATE VIEW v AS SELECT 'one-' || 'sql' AS g;\n",
               "DROP VIEW IF EXISTS v; CREATE VIEW v AS SELECT 'two-' || 'sql' AS g;\n",
               ".read helper.sql\nSELECT g FROM v;\n", "one-sql", "two-sql"),
    "scheme": ("helper.scm", "(define (greet) (string-append \"one-\" \"scm\"))\n",
               "(define (greet) (string-append \"two-\" \"scm\"))\n",
               "(load \"helper.scm\")\n(display (greet))\n(newline)\n", "one-scm", "two-scm"),
    "commonlisp": ("helper.lisp", "(defun greet () (concatenate 'string \"one-\" \"cl\"))\n",
                   "(defun greet () (concatenate 'string \"two-\" \"cl\"))\n",
                   "(load \"helper.lisp\")\n(format t \"~a~%\" (greet))\n", "one-cl", "two-cl"),
    "elixir": ("helper.exs", "defmodule Helper do\n  def greet, do: \"one-\" <> \"ex\"\nend\n",
               "defmodule Helper do\n  def greet, do: \"two-\" <> \"ex\"\nend\n",
               "Code.eval_file(\"helper.exs\")\nIO.puts(Helper.greet())\n", "one-ex", "two-ex"),
    "r": ("helper.R", "greet <- function() paste0('one-', 'r')\n",
          "greet <- function() paste0('two-', 'r')\n",
          "source('helper.R')\ncat(greet(), '\\n', sep = '')\n", "one-r", "two-r"),
}  # fmt: skip


@pytest.mark.parametrize("language", list(RUNS))
async def test_run_imports_the_other_files_and_their_last_edit(
    server: Server, room: dict[str, Any], opened: list[Any], language: str
) -> None:
    path, first, second, main, says_first, says_second = RUNS[language]
    alice = await join(server, room, opened, "alice", key=new_key())
    created = await change(
        alice, {"type": "file_create", "language": language, "path": path, "content": first}
    )
    run = {"type": "run", "code": main, "language": language, "file": "main"}
    await alice.send(run)
    await alice.wait_output(says_first + "\r\n", timeout=90)
    # The helper edited in the editor since: the next Run has the new version.
    doc = await file_doc(server, room, alice, language, created["file"], opened)
    await doc.wait_text(first)
    await doc.insert(len(first), "\n" + second)  # the later definition wins in every language
    # Relayed to another client once the server has it (Run reads the server's copy).
    watcher = await file_doc(server, room, alice, language, created["file"], opened)
    await watcher.wait_text(first + "\n" + second)
    mark = len(alice.output)
    await alice.send(run)
    await alice.wait_output(says_second + "\r\n", after=mark)


async def test_run_removes_files_deleted_or_renamed_since(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    alice = await join(server, room, opened, "alice", key=new_key())
    made = await change(
        alice, {"type": "file_create", "language": "python", "path": "old.py", "content": "A = 1\n"}
    )
    probe = "import os\nprint('has', sorted(f for f in os.listdir('.') if f.endswith('.py')))\n"
    run = {"type": "run", "code": probe, "language": "python", "file": "main"}
    await alice.send(run)
    await alice.wait_output("has ['main.py', 'old.py']")
    await change(
        alice, {"type": "file_rename", "language": "python", "file": made["file"], "path": "new.py"}
    )
    mark = len(alice.output)
    await alice.send(run)
    await alice.wait_output("has ['main.py', 'new.py']", after=mark)
    await change(alice, {"type": "file_delete", "language": "python", "file": made["file"]})
    mark = len(alice.output)
    await alice.send(run)
    await alice.wait_output("has ['main.py']", after=mark)


async def test_the_files_download_as_one_zip(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    alice = await join(server, room, opened, "alice", key=new_key())
    await change(
        alice, {"type": "file_create", "language": "python", "path": "pkg/util.py",
                "content": "ANSWER = 42\n"},
    )  # fmt: skip
    main = await file_doc(server, room, alice, "python", "main", opened)
    await main.insert(0, "print('ünïcode')\n")
    watcher = await file_doc(server, room, alice, "python", "main", opened)
    await watcher.wait_text("print('ünïcode')\n")
    url = f"{server.url}/api/rooms/{room['id']}/files/python.zip"
    async with httpx.AsyncClient() as http:
        response = await http.get(url, headers={"Authorization": f"Bearer {room['invite_token']}"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            assert archive.namelist() == ["main.py", "pkg/util.py"]
            assert archive.read("main.py").decode() == "print('ünïcode')\n"
            assert archive.read("pkg/util.py") == b"ANSWER = 42\n"
        assert (await http.get(url)).status_code == 403
        wrong = {"Authorization": "Bearer nope"}
        assert (await http.get(url, headers=wrong)).status_code == 403
        other = url.replace("python.zip", "cobol.zip")
        auth = {"Authorization": f"Bearer {room['invite_token']}"}
        assert (await http.get(other, headers=auth)).status_code == 404


@pytest.mark.parametrize(
    "path", ["main.py", "lib/helper.py", "a/b/c/d.rb", ".env", "données.json", "x" * 128]
)
def test_paths_that_name_files(path: str) -> None:
    assert check_path(path) == path


def test_the_files_message_and_welcome_match_their_types() -> None:
    files: list[protocol.FileInfo] = [{"id": "main", "path": "main.py"}]
    changed = protocol.files_changed("python", files, "created", files[0], member_id="m", by="A")
    assert protocol.server_message_adapter.validate_python(changed) == changed
    parsed = protocol.parse_client_message(
        '{"type": "file_create", "language": "python", "path": "a.py", "content": "x"}'
    )
    assert isinstance(parsed, protocol.FileCreate)
    with pytest.raises(protocol.BadMessage):
        protocol.parse_client_message(
            '{"type": "file_delete", "language": "python", "file": "a/b"}'
        )


@pytest.mark.docker
async def test_run_with_files_on_docker_runc(
    tmp_path: Path, runtime_dir: Path, room_image: object
) -> None:
    """The same through the Engine: files written by exec into nested folders, removed files
    gone, a helper's edit seen by the next Run."""
    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")
    env = {"REPLROOM_BACKEND": "docker", "REPLROOM_DOCKER_RUNTIME": "runc"}
    server = Server(tmp_path / "data", runtime_dir, env=env)
    server.start()
    opened: list[Any] = []
    try:
        room = await server.create_room()
        alice = await join(server, room, opened, "alice", key=new_key())
        create = {"type": "file_create", "language": "python"}
        made = await change(alice, {**create, "path": "lib/util.py", "content": "V = 'one'\n"})
        await change(alice, {**create, "path": "gone.py"})
        code = "from lib import util\nimport os\nprint('got', util.V, os.path.exists('gone.py'))\n"
        run = {"type": "run", "code": code, "language": "python", "file": "main"}
        await alice.send(run)
        await alice.wait_output("got one True", timeout=90)
        doc = await file_doc(server, room, alice, "python", made["file"], opened)
        await doc.insert(0, "V = 'two'\n# ")
        watcher = await file_doc(server, room, alice, "python", made["file"], opened)
        await watcher.wait_text("V = 'two'\n# V = 'one'\n")
        listing = (await alice.wait_message("files", path="gone.py"))["files"]
        await change(
            alice, {"type": "file_delete", "language": "python", "file": listing[-1]["id"]}
        )
        mark = len(alice.output)
        await alice.send(run)
        await alice.wait_output("got two False", after=mark)
    finally:
        for client in opened:
            await client.close()
        await server.stop_async()

"""Session recordings (issue 10 §2): the store on its own, then end to end on a real server
(bwrap) with real room and editor clients; the terminal's asciicast is checked with Debian's
own `asciinema` (`asciinema cat` plays it through without a terminal)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pycrdt import Doc, Text

from replroom.config import Settings
from replroom.editor.document import TEXT_NAME
from replroom.room.recording import RecordingError, Recordings, RoomRecording, Timeline
from tests.client import RoomClient, Server, serving
from tests.test_editor import YClient
from tests.test_host_controls import BWRAP, join, new_key

pytestmark = pytest.mark.timeout(240)

ASCIINEMA = shutil.which("asciinema")
needs_asciinema = pytest.mark.skipif(ASCIINEMA is None, reason="scripts/setup installs asciinema")


def asciinema_cat(path: Path) -> str:
    """What `asciinema cat` prints of a cast (it refuses a file it cannot read).

    It reads keys from its controlling terminal, so it runs on a pty of its own
    (util-linux's setsid makes it the controlling one).
    """
    assert ASCIINEMA is not None
    master, slave = os.openpty()
    with subprocess.Popen(
        ["setsid", "--ctty", "--wait", ASCIINEMA, "cat", str(path)],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    ) as process:  # fmt: skip
        os.close(slave)
        output = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the pty's last user closed it
                break
            if not chunk:
                break
            output += chunk
        os.close(master)
        assert process.wait(60) == 0, output.decode("utf-8", "replace")
    return output.decode("utf-8", "replace")


# -- the store on its own ------------------------------------------------------------------


def recorder(recordings: Recordings, room_id: str, dropped: list[str]) -> RoomRecording:
    return recordings.start(
        room_id,
        enabled=lambda: True,
        snapshot=lambda: [("S", "python", ">>> ")],
        size=lambda: (100, 30),
        on_dropped=dropped.append,
    )


async def test_parts_over_the_cap_are_dropped_oldest_first(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, recording_max_bytes="1m")
    recordings = Recordings(settings)
    dropped: list[str] = []
    recording = recorder(recordings, "abc123", dropped)
    chunk = b"x" * 1000 + b"\r\n"
    for number in range(3000):  # about 3 MiB: three times the cap
        recording.output("python", chunk)
        if number % 500 == 0:
            recording.marker(f"mark {number}")
    recording.close()
    parts = sorted((tmp_path / "recordings" / "abc123").iterdir())
    assert sum(p.stat().st_size for p in parts) <= settings.recording_max_bytes
    assert parts[0].name != "part-000001.jsonl"
    assert dropped and "oldest part was dropped" in dropped[0] and "1 MiB" in dropped[0]
    timeline = await recordings.read("abc123")
    assert timeline.dropped and timeline.damaged == 0
    cast = timeline.cast("python").splitlines()
    header = json.loads(cast[0])
    assert (header["version"], header["width"], header["height"]) == (2, 100, 30)
    # The first part's screen snapshot starts the cast: the part stands on its own.
    assert json.loads(cast[1]) == [0.0, "o", ">>> "]
    # The later parts continue it: their snapshots are not played again.
    assert sum(1 for line in cast if '"o", ">>> "' in line or "\\u001bc" in line) == 1


async def test_a_gap_with_recording_off_is_bridged_by_the_screen(tmp_path: Path) -> None:
    recordings = Recordings(Settings(data_dir=tmp_path))
    on = [True]
    recording = recordings.start(
        "room1", enabled=lambda: on[0], snapshot=lambda: [("S", "python", "SCREEN")],
        size=lambda: (80, 24), on_dropped=lambda text: None,
    )  # fmt: skip
    recording.output("python", b"before ")
    on[0] = False
    recording.output("python", b"while off ")
    on[0] = True
    recording.output("python", b"after")
    recording.close()
    timeline = await recordings.read("room1")
    events = [json.loads(line)[1:] for line in timeline.cast("python").splitlines()[1:]]
    assert events == [
        ["o", "SCREEN"], ["o", "before "], ["m", "recording turned off"],
        ["o", "\x1bcSCREEN"], ["o", "after"],
    ]  # fmt: skip


async def test_damaged_and_truncated_parts_are_read_around(tmp_path: Path) -> None:
    recordings = Recordings(Settings(data_dir=tmp_path))
    recording = recorder(recordings, "room1", [])
    recording.output("python", "héllo\r\n".encode()[:2])  # a character cut between reads
    recording.output("python", "héllo\r\n".encode()[2:])
    recording.marker("Run #1 by ann (main.py)")
    recording.close()
    directory = tmp_path / "recordings" / "room1"
    part = directory / "part-000001.jsonl"
    with part.open("ab") as file:
        file.write(b'[1.0, "o", "python", "fine"]\n{not json}\n[1, "q", null, "x"]\n[2.0, "o", "py')
    (directory / "part-000002.jsonl").write_bytes(b"\x00garbage\n")
    timeline = Timeline.read("room1", directory)
    assert timeline.damaged == 3  # two bad lines and an unreadable part; the cut tail is not
    events = [json.loads(line) for line in timeline.cast("python").splitlines()[1:]]
    assert [e[0] for e in events] == sorted(e[0] for e in events)  # never back in time
    shown = "".join(e[2] for e in events if e[1] == "o")
    assert shown == ">>> héllo\r\nfine"
    assert ["m", "Run #1 by ann (main.py)"] in [e[1:] for e in events]
    part.write_bytes(b"")
    with pytest.raises(RecordingError, match="damaged"):
        Timeline.read("room1", directory)
    with pytest.raises(RecordingError, match="no recording"):
        Timeline.read("room2", directory.parent / "room2")
    with pytest.raises(RecordingError):
        recordings.directory("../etc")


async def test_retention_the_global_cap_and_deletion(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, recording_retention=3600, recordings_max_bytes="1m")
    recordings = Recordings(settings)
    root = tmp_path / "recordings"
    parts = {}
    for room_id, age in (("old", 7200), ("older", 5000), ("big", 60), ("new", 10)):
        directory = root / room_id
        directory.mkdir(parents=True)
        part = directory / "part-000001.jsonl"
        part.write_bytes(b"x" * (700 * 1024 if room_id == "big" else 1000))
        stamp = time.time() - age
        os.utime(part, (stamp, stamp))
        parts[room_id] = part
    live = recorder(recordings, "new", [])
    live.marker("still here")  # its open part is never deleted
    recordings.enforce()
    # Expired: old and older; then 700 KiB + the rest fit the 1 MiB cap.
    assert not parts["old"].exists() and not parts["older"].exists()
    assert parts["big"].exists() and parts["new"].exists()
    (root / "new" / "part-000003.jsonl").write_bytes(b"y" * (500 * 1024))
    recordings.enforce()  # over the cap: the oldest part (big's) goes first
    assert not parts["big"].exists() and parts["new"].exists()
    await recordings.delete("new")
    assert not (root / "new").exists() and live.closed
    live.marker("after the room was deleted")  # nothing is written any more
    assert not (root / "new").exists()


@needs_asciinema
async def test_asciinema_plays_a_recorded_cast(tmp_path: Path) -> None:
    recordings = Recordings(Settings(data_dir=tmp_path))
    recording = recorder(recordings, "room1", [])
    recording.output("python", b"\x1b[1;32mgreen\x1b[0m\r\n")
    recording.resize(60, 20)
    recording.marker("bob joined")
    recording.output("python", "π ≈ 3.14\r\n".encode())
    recording.close()
    path = tmp_path / "room1.cast"
    path.write_text((await recordings.read("room1")).cast("python"))
    shown = asciinema_cat(path)
    assert "green" in shown and "π ≈ 3.14" in shown


async def test_run_numbers_go_on_when_the_room_comes_back(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    recordings = Recordings(settings)
    first = recorder(recordings, "r1", [])
    assert [await first.next_run(), await first.next_run()] == [1, 2]
    first.marker("Run #2 by ann (main.py)")
    first.close()
    # Back in memory in the same server: the count is remembered, and in the part's header.
    again = recorder(recordings, "r1", [])
    again.marker("ann joined")
    assert await again.next_run() == 3
    again.close()
    part = sorted((tmp_path / "recordings" / "r1").iterdir())[-1]
    assert json.loads(part.read_text().splitlines()[0])["runs"] == 2
    # After a restart: from the recording on disk (a Run not recorded is not known).
    restarted = recorder(Recordings(settings), "r1", [])
    assert await restarted.next_run() == 3
    restarted.close()
    # A recording from before the header had "runs": its markers count.
    old = tmp_path / "recordings" / "r2"
    old.mkdir()
    header = {"format": "replroom-recording", "version": 1, "room": "r2", "start": 1.0,
              "cols": 80, "rows": 24}  # fmt: skip
    lines = [json.dumps(header), json.dumps([2.0, "m", None, "Run #7 by bob (a.py)"]),
             json.dumps([3.0, "o", "python", '[4.0, "m", null, "Run #99 by x"]'])]  # fmt: skip
    (old / "part-000001.jsonl").write_text("\n".join(lines) + "\n")
    assert await recorder(Recordings(settings), "r2", []).next_run() == 8


# -- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_dir: Path, room_image: object
) -> Iterator[Server]:
    with serving(tmp_path_factory, runtime_dir, BWRAP) as started:
        yield started


async def editor_doc(
    server: Server, room: dict[str, Any], client: RoomClient, opened: list[Any]
) -> YClient:
    ticket = (await client.wait_message("welcome"))["editor"]["ticket"]
    made = await YClient.open(f"{server.ws_url}/yjs/{room['id']}/python/main?ticket={ticket}")
    opened.append(made)
    return made


async def fetch(server: Server, room: dict[str, Any], path: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(
            f"{server.url}/api/rooms/{room['id']}/recording{path}",
            headers={"Authorization": f"Bearer {room[f'{token}_token']}"},
        )


def text_at(timeline: dict[str, Any], at: float) -> str:
    """The editor's main document as it was at ``at`` seconds, rebuilt from the updates."""
    doc: Doc[Any] = Doc()
    for event in timeline["events"]:
        if event["t"] <= at and event["doc"].endswith("/python/main") and "update" in event:
            doc.apply_update(base64.b64decode(event["update"]))
    return str(doc.get(TEXT_NAME, type=Text))


@needs_asciinema
async def test_a_session_is_recorded_and_downloaded(
    server: Server, room: dict[str, Any], opened: list[Any], tmp_path: Path
) -> None:
    ann = await join(server, room, opened, "ann", token="owner", key=new_key())
    bob = await join(server, room, opened, "bob", key=new_key())
    assert (await ann.wait_message("welcome"))["room"]["controls"]["recording"] is True
    await ann.wait_output(">>> ")
    doc = await editor_doc(server, room, ann, opened)
    await doc.insert(0, "x = 6 * 7\n")
    await bob.type("print('bob', 1 + 1)\r")
    await bob.wait_output("bob 2")
    await ann.send({"type": "run", "code": "x = 6 * 7\n", "language": "python"})
    await ann.type("print('the answer', x)\r")
    await ann.wait_output("the answer 42")
    await doc.insert(10, "print(x)\n")
    await bob.send({"type": "language", "language": "ruby"})
    await bob.wait_message("language", language="ruby")

    summary = (await fetch(server, room, "", "invite")).json()
    labels = [m["label"] for m in summary["markers"]]
    assert "ann joined" in labels and "bob joined" in labels
    assert "bob typing" in labels and "ann typing" in labels
    assert any(label.startswith("Run #1 by ann") for label in labels)
    assert "bob switched to Ruby" in labels
    assert summary["recording"] is True and "python" in summary["languages"]

    cast = await fetch(server, room, "/python.cast", "owner")
    assert cast.status_code == 200
    assert cast.headers["content-disposition"].endswith('.cast"')
    path = tmp_path / "python.cast"
    path.write_bytes(cast.content)
    shown = asciinema_cat(path)
    assert "the answer 42" in shown
    events = [json.loads(line) for line in cast.text.splitlines()[1:]]
    assert any(e[1] == "m" and e[2].startswith("Run #1") for e in events)

    timeline = (await fetch(server, room, "/editor.json", "invite")).json()
    run_at = next(m["t"] for m in timeline["markers"] if m["label"].startswith("Run #1"))
    assert text_at(timeline, run_at) == "x = 6 * 7\n"
    assert text_at(timeline, timeline["duration"] + 1) == "x = 6 * 7\nprint(x)\n"

    # A spectator reads it only when an owner allows it.
    assert (await fetch(server, room, "/python.cast", "spectator")).status_code == 403
    await ann.send({"type": "controls", "recording_spectators": True})
    await ann.wait_message("controls")
    assert (await fetch(server, room, "/python.cast", "spectator")).status_code == 200
    assert (await fetch(server, room, "/cobol.cast", "owner")).status_code == 404


async def test_the_owner_turns_recording_off_and_everyone_sees_it(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    ann = await join(server, room, opened, "ann", token="owner", key=new_key())
    bob = await join(server, room, opened, "bob", key=new_key())
    await ann.wait_output(">>> ")
    await bob.send({"type": "controls", "recording": False})
    assert (await bob.wait_message("error"))["code"] == "not_allowed"
    await ann.send({"type": "controls", "recording": False})
    told = await bob.wait_message("controls")
    assert told["controls"]["recording"] is False
    await ann.type("print('not' + ' recorded')\r")
    await ann.wait_output("not recorded")
    summary = (await fetch(server, room, "", "owner")).json()
    assert summary["recording"] is False
    assert "recording turned off" in [m["label"] for m in summary["markers"]]
    cast = await fetch(server, room, "/python.cast", "owner")
    assert "not recorded" not in cast.text.replace("'not' + ' recorded'", "")
    before = len(ann.messages)
    await ann.send({"type": "controls", "recording": True})
    await ann.wait_message("controls", after=before)
    await ann.type("print('recorded' * 2)\r")
    await ann.wait_output("recordedrecorded")
    cast = await fetch(server, room, "/python.cast", "owner")
    assert "recordedrecorded" in cast.text


async def test_no_recording_is_a_clear_404(server: Server, room: dict[str, Any]) -> None:
    response = await fetch(server, room, "/python.cast", "owner")
    assert response.status_code == 404
    assert response.json()["message"] == "this room has no recording (yet)"
    response = await fetch(server, room, "/python.cast", "invite")
    assert response.status_code == 404
    async with httpx.AsyncClient() as http:
        bad = await http.get(f"{server.url}/api/rooms/{room['id']}/recording?token=nope")
    assert bad.status_code == 403


async def test_who_wrote_what_is_the_member_the_server_knows(
    server: Server, room: dict[str, Any], opened: list[Any]
) -> None:
    ann = await join(server, room, opened, "ann", token="owner", key=new_key())
    bob = await join(server, room, opened, "bob", key=new_key())
    you = {
        name: (await client.wait_message("welcome"))["you"]
        for name, client in (("ann", ann), ("bob", bob))
    }
    ann_doc = await editor_doc(server, room, ann, opened)
    bob_doc = await editor_doc(server, room, bob, opened)
    # Bob's page claims to be Ann: the recording names the member of his ticket.
    await bob_doc.send_awareness({"user": {"name": "ann", "color": "#000000"}, "cursor": None})
    await ann_doc.insert(0, "first = 1\n")
    await bob_doc.wait_for(lambda: str(bob_doc.text) == "first = 1\n")
    await bob_doc.insert(10, "second = 2\n")
    await ann_doc.wait_for(lambda: str(ann_doc.text) == "first = 1\nsecond = 2\n")
    await ann_doc.insert(0, "# top\n")
    await bob_doc.wait_for(lambda: str(bob_doc.text).startswith("# top"))

    timeline = (await fetch(server, room, "/editor.json", "owner")).json()
    events = [e for e in timeline["events"] if e["doc"].endswith("/python/main")]
    authors = [e["author"] for e in events if "author" in e]
    by_client = {c: (a["member"], a["name"], a["color"]) for a in authors for c in a["clients"]}
    assert by_client[ann_doc.doc.client_id] == (you["ann"]["id"], "ann", you["ann"]["color"])
    assert by_client[bob_doc.doc.client_id] == (you["bob"]["id"], "bob", you["bob"]["color"])
    # Each update follows the author event of whoever made it: Ann, Bob, Ann again.
    editors = []
    current = None
    for event in events:
        if "author" in event:
            current = event["author"]["name"]
        elif not event["state"]:
            editors.append(current)
    assert [name for i, name in enumerate(editors) if i == 0 or editors[i - 1] != name] == [
        "ann",
        "bob",
        "ann",
    ]


async def rooms_in_memory(server: Server) -> float:
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{server.url}/metrics")).text
    match = re.search(r"^replroom_rooms_active (\S+)$", metrics, re.MULTILINE)
    assert match is not None, metrics[:500]
    return float(match.group(1))


async def test_run_numbers_go_on_after_a_reload_and_a_restart(
    tmp_path: Path, runtime_dir: Path, opened: list[Any], room_image: object
) -> None:
    # An empty room leaves memory at once: its next member loads it again.
    server = Server(tmp_path / "data", runtime_dir, env={**BWRAP, "REPLROOM_IDLE_TIMEOUT": "0"})
    server.start()
    try:
        room = await server.create_room()

        async def run_once(name: str) -> list[str]:
            """Join, Run, leave, wait until the room has left memory, read the Run markers
            (reading a recording does not load its room)."""
            member = await join(server, room, opened, name, token="owner", key=new_key())
            await member.wait_output(">>> ")
            await member.send({"type": "run", "code": "print('ran', 1 + 1)\n"})
            await member.wait_output("ran 2")  # typed after the marker was written
            await member.close()
            # A bounded poll: no event announces that a room left memory.
            deadline = time.monotonic() + 30
            while await rooms_in_memory(server):
                assert time.monotonic() < deadline, "the room never left memory"
                await asyncio.sleep(0.05)
            summary = (await fetch(server, room, "", "owner")).json()
            assert await rooms_in_memory(server) == 0
            return [m["label"] for m in summary["markers"] if m["label"].startswith("Run #")]

        assert await run_once("ann") == ["Run #1 by ann (main.py)"]
        assert (await run_once("bob"))[-1] == "Run #2 by bob (main.py)"
        await server.stop_async()
        server.start()
        assert (await run_once("cid"))[-1] == "Run #3 by cid (main.py)"
        assert (await fetch(server, room, "", "owner")).json()["parts"] >= 3
    finally:
        server.stop()

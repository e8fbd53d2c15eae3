"""Faults, end to end: a killed server, a reboot, a restarted Docker Engine, a full disk.

Every test runs a real ``replroom serve`` (tests/client.py) with real sandboxes
and real clients: members that reconnect the way the page does, and y-websocket
clients editing the shared document through the server's editor socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import httpx
import pytest
import websockets

from replroom.config import Settings
from replroom.image import current_image, import_to_docker
from replroom.protocol import CloseCode
from replroom.sandbox.cgroups import Cgroup, Hierarchy, leftover_names, remove_parent
from replroom.sandbox.docker import LABEL_INSTANCE
from tests.client import Closed, RoomClient, Server
from tests.test_editor import YClient

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parent.parent
WAIT = 120.0  # generous: two cores shared with other test runs
BACKEND_ENV = {
    "bwrap": {"REPLROOM_BACKEND": "bwrap"},
    "docker-runc": {"REPLROOM_BACKEND": "docker", "REPLROOM_DOCKER_RUNTIME": "runc"},
    "docker-runsc": {"REPLROOM_BACKEND": "docker", "REPLROOM_DOCKER_RUNTIME": "runsc"},
}
# Text a byte-for-byte comparison can trip on: multi-byte characters, tabs, CRLF.
EDITOR_TEXT = "def greet(n):\n\treturn 'héllo ✓ 🦀' * n\r\n# ünïcödé, \"quotes\", \\back\\\n"
RESTARTED = "the server was restarted"
FULL_DISK_LINE = "# typed on a full disk\n"
TRIES = 10  # writes to a full disk before one must be refused


def _requires_engine(backend: str) -> None:
    if backend != "bwrap" and not os.environ.get("DOCKER_HOST"):
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")


class Rejoining:
    """A member that reconnects as the page does: after any close but a refusal, with backoff.

    ``session(n)`` is the n-th connection that got a welcome.
    """

    def __init__(self, server: Server, room_id: str, token: str, name: str) -> None:
        self.server, self.room_id, self.token, self.name = server, room_id, token, name
        self.sessions: list[RoomClient] = []
        self._new_session = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        delay = 0.25
        while True:
            try:
                client = await RoomClient.connect(
                    self.server, self.room_id, self.token, name=self.name
                )
                await client.wait_message("welcome", timeout=WAIT)
            except (OSError, TimeoutError, AssertionError, Closed, websockets.InvalidHandshake,
                    websockets.ConnectionClosed):  # fmt: skip
                # Not up yet, or closed before the welcome: the page's backoff.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.25
            self.sessions.append(client)
            self._new_session.set()
            closed = await client.wait_closed(timeout=None)  # type: ignore[arg-type]
            if closed.code in (CloseCode.FORBIDDEN, CloseCode.NOT_FOUND):
                return

    async def session(self, number: int, timeout: float = WAIT) -> RoomClient:
        async with asyncio.timeout(timeout):
            while len(self.sessions) < number:
                self._new_session.clear()
                await self._new_session.wait()
        return self.sessions[number - 1]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.gather(*(s.close() for s in self.sessions), return_exceptions=True)


@pytest.fixture
async def members() -> AsyncIterator[list[Rejoining | RoomClient | YClient]]:
    made: list[Rejoining | RoomClient | YClient] = []
    yield made
    await asyncio.gather(*(m.close() for m in made), return_exceptions=True)


async def _editor(server: Server, session: RoomClient, room_id: str) -> YClient:
    ticket = (await session.wait_message("welcome"))["editor"]["ticket"]
    return await YClient.open(f"{server.ws_url}/yjs/{room_id}/python?ticket={ticket}")


async def _write_editor(
    server: Server, session: RoomClient, room_id: str, members: list[Any], text: str
) -> YClient:
    """Type ``text`` into the room's Python document, acknowledged by a second client."""
    writer = await _editor(server, session, room_id)
    watcher = await _editor(server, session, room_id)
    members += [writer, watcher]
    await writer.insert(0, text)
    # The server commits an update before it broadcasts it: the watcher having
    # it is the acknowledgement that it is stored.
    await watcher.wait_text(text)
    return writer


async def _read_editor(
    server: Server, session: RoomClient, room_id: str, members: list[Any]
) -> str:
    reader = await _editor(server, session, room_id)
    members.append(reader)
    return str(reader.text)


# -- what sandboxes exist -----------------------------------------------------


def _bwrap_sandboxes(server: Server) -> set[tuple[str, str]]:
    """(room, identity) of this server's bwrap sandboxes: cgroups, room directories, mounts.

    The identity tells a room's sandbox from a new one of the same name: a
    cgroup directory's inode (cgroupfs does not reuse them soon). Room
    directories and their mounts have none (ext4 reuses inodes at once, and
    mount ids are reused too): they are known by name only.
    """
    hierarchy = Hierarchy.detect()
    found = set()
    for name in leftover_names(hierarchy, server.instance):
        cgroup = Cgroup(hierarchy, server.instance, name)
        directory = next(d for d in (*cgroup.v1_dirs.values(), cgroup.v2_dir) if d and d.is_dir())
        found.add((name, f"cgroup {directory.stat().st_ino}"))
    assert server.runtime_dir is not None
    rooms_dir = server.runtime_dir / server.instance / "rooms"
    if rooms_dir.is_dir():
        found |= {(p.name, "directory") for p in rooms_dir.iterdir()}
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = Path(line.split()[4])
            if point.is_relative_to(rooms_dir):
                found.add((point.relative_to(rooms_dir).parts[0], "mount"))
    return found


def _served_rooms(server: Server) -> set[str]:
    """The rooms this server's bwrap sandboxes serve (a spare serves none), from room.json."""
    assert server.runtime_dir is not None
    rooms_dir = server.runtime_dir / server.instance / "rooms"
    served = set()
    for room_json in rooms_dir.glob("*/room.json"):
        with contextlib.suppress(OSError, ValueError):
            served.add(json.loads(room_json.read_text())["room"])
    return served


async def _containers(server: Server, docker_host: str | None = None) -> set[tuple[str, str]]:
    """(name, id) of the containers with this server's instance label (ids are unique)."""
    async with aiodocker.Docker(url=docker_host) as docker:
        found = await docker.containers.list(
            all=True, filters={"label": [f"{LABEL_INSTANCE}={server.instance}"]}
        )
        return {(c["Names"][0].lstrip("/"), c.id) for c in found}


async def _sandboxes(server: Server, backend: str) -> set[tuple[str, str]]:
    if backend == "bwrap":
        return _bwrap_sandboxes(server)
    return await _containers(server)


# -- 1. kill -9 -----------------------------------------------------------------


@pytest.mark.parametrize(
    "backend",
    [
        "bwrap",
        pytest.param("docker-runc", marks=pytest.mark.docker),
        pytest.param("docker-runsc", marks=[pytest.mark.docker, pytest.mark.runsc]),
    ],
)
async def test_kill_9_with_live_rooms_then_start_again(
    tmp_path: Path, runtime_dir: Path, room_image: object, members: list[Any], backend: str
) -> None:
    _requires_engine(backend)
    server = Server(tmp_path / "data", runtime_dir, env=BACKEND_ENV[backend])
    server.start()
    try:
        room = await server.create_room()
        abandoned = await server.create_room()  # its member does not come back
        alice = Rejoining(server, room["id"], room["owner_token"], "alice")
        members.append(alice)
        first = await alice.session(1)
        await first.wait_output(">>> ", timeout=WAIT)
        await first.type("x = 41; open('kept', 'w').write('old sandbox')\r")
        await first.wait_output(">>> ", after=await first.wait_output("x = 41; open"))
        lone = await RoomClient.connect(server, abandoned["id"], abandoned["owner_token"])
        members.append(lone)
        await lone.wait_output(">>> ", timeout=WAIT)
        await _write_editor(server, first, room["id"], members, EDITOR_TEXT)

        before = await _sandboxes(server, backend)
        if backend == "bwrap":
            assert {"r-" + room["id"], "r-" + abandoned["id"]} <= _served_rooms(server)
        else:  # two rooms' containers, and the pool's (whose names they keep when taken)
            assert len(before) >= 2
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(server.process.wait, 30)
        await first.wait_closed(timeout=WAIT)
        # The killed server removed nothing.
        assert before <= await _sandboxes(server, backend)

        await asyncio.to_thread(server.start)  # same port, same data dir
        second = await alice.session(2)
        notice = await second.wait_message("notice", timeout=WAIT)
        assert RESTARTED in notice["text"] and notice["level"] == "warning", notice
        prompt = await second.wait_output(">>> ", timeout=WAIT)
        await second.type("print(x)\r")  # a fresh REPL: x is gone
        await second.wait_output("NameError", after=prompt, timeout=WAIT)
        await second.type("import os; print(6 * 7, os.path.exists('kept'))\r")
        await second.wait_output("42 False\r\n", after=prompt, timeout=WAIT)  # a new sandbox
        text = await _read_editor(server, second, room["id"], members)
        assert text.encode() == EDITOR_TEXT.encode()

        # Every sandbox the killed server left is gone; the room runs in a new one.
        after = await _sandboxes(server, backend)
        assert not {s for s in before & after if s[1] not in ("directory", "mount")}, after
        if backend == "bwrap":
            assert "r-" + abandoned["id"] not in _served_rooms(server)
            assert "r-" + room["id"] in _served_rooms(server)
        else:  # the room's new container and at most the pool's (2 by default)
            assert 1 <= len(after) <= 3, after
        assert "removed" in server.log() and "left by an earlier run" in server.log()
    finally:
        await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
        members.clear()
        await server.stop_async()
    assert "Traceback" not in server.log(), server.log()[-3000:]
    assert not await _sandboxes(server, backend)


# -- 2. reboot ------------------------------------------------------------------


def _reboot(server: Server, runtime_top: Path) -> None:
    """What a reboot does to a server's host state: no processes, cgroups, mounts or /run."""
    hierarchy = Hierarchy.detect()
    for name in leftover_names(hierarchy, server.instance):
        cgroup = Cgroup(hierarchy, server.instance, name)
        cgroup.kill()
        cgroup.remove()
    remove_parent(hierarchy, server.instance)
    assert not leftover_names(hierarchy, server.instance)
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    for point in sorted((p for p in points if p.startswith(f"{runtime_top}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=True)
    subprocess.run(["rm", "-rf", str(runtime_top)], check=True)


async def test_reboot_loses_runtime_dir_and_cgroups_and_rooms_still_work(
    tmp_path: Path, room_image: object, members: list[Any]
) -> None:
    runtime_top = Path(f"/run/replroom-reboot-{uuid.uuid4().hex[:8]}")
    server = Server(tmp_path / "data", runtime_top / "replroom")
    try:
        server.start()
        room = await server.create_room()
        alice = await RoomClient.connect(server, room["id"], room["invite_token"], name="alice")
        members.append(alice)
        await alice.wait_output(">>> ", timeout=WAIT)
        await _write_editor(server, alice, room["id"], members, EDITOR_TEXT)
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)  # the power goes
        await asyncio.to_thread(server.process.wait, 30)
        await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
        members.clear()
        _reboot(server, runtime_top)

        await asyncio.to_thread(server.start)
        bob = await RoomClient.connect(server, room["id"], room["invite_token"], name="bob")
        members.append(bob)
        notice = await bob.wait_message("notice", timeout=WAIT)
        assert RESTARTED in notice["text"], notice
        prompt = await bob.wait_output(">>> ", timeout=WAIT)
        await bob.type("print(6 * 7)\r")
        await bob.wait_output("42\r\n", after=prompt, timeout=WAIT)
        assert (await _read_editor(server, bob, room["id"], members)) == EDITOR_TEXT
        # The owner's link and a new room work as well.
        new = await server.create_room()
        carol = await RoomClient.connect(server, new["id"], new["owner_token"], name="carol")
        members.append(carol)
        await carol.wait_output(">>> ", timeout=WAIT)
    finally:
        await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
        members.clear()
        await server.stop_async()
        subprocess.run(["rm", "-rf", str(runtime_top)], check=True)
    assert "Traceback" not in server.log(), server.log()[-3000:]


# -- 3. the Docker Engine restarts --------------------------------------------

ENGINE_DIR = "/var/tmp/replroom-dockerd-faults"


def _dockerd(command: str) -> str:
    result = subprocess.run(
        [str(REPO / "scripts" / "dockerd"), command],
        env={**os.environ, "REPLROOM_DOCKERD_DIR": ENGINE_DIR},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def restartable_engine(room_image: object) -> Iterator[str]:
    """A private Docker Engine of this module's own, which its tests may restart."""
    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")
    try:
        host = _dockerd("start").removeprefix("DOCKER_HOST=")
        image = current_image(Settings())
        assert image is not None
        asyncio.run(import_to_docker(image, host, progress=lambda _: None))
        yield host
    finally:
        _dockerd("stop")
        subprocess.run(["rm", "-rf", "--one-file-system", ENGINE_DIR], check=True)


@pytest.mark.docker
@pytest.mark.parametrize("runtime", ["runc", pytest.param("runsc", marks=pytest.mark.runsc)])
async def test_engine_restart_under_live_rooms(
    tmp_path: Path, runtime_dir: Path, restartable_engine: str, members: list[Any], runtime: str
) -> None:
    env = {
        "REPLROOM_BACKEND": "docker",
        "REPLROOM_DOCKER_RUNTIME": runtime,
        "DOCKER_HOST": restartable_engine,
    }
    server = Server(tmp_path / "data", runtime_dir, env=env)
    server.start()
    try:
        rooms = [await server.create_room() for _ in range(2)]
        joined = []
        for room in rooms:
            member = await RoomClient.connect(server, room["id"], room["invite_token"])
            members.append(member)
            joined.append(member)
            await member.wait_output(">>> ", timeout=WAIT)
        alice = joined[0]
        await alice.type("x = 5\r")
        mark = await alice.wait_output(">>> ", after=await alice.wait_output("x = 5\r\n"))
        seen = len(alice.messages)

        await asyncio.to_thread(_dockerd, "stop")  # with live-restore off, containers die
        await asyncio.to_thread(_dockerd, "start")
        back = time.monotonic()
        recovered = await asyncio.gather(
            *(m.wait_output(">>> ", after=mark if m is alice else len(m.output), timeout=WAIT)
              for m in joined)
        )  # fmt: skip
        print(f"\nDocker Engine ({runtime}) back → REPL prompt back: "
              f"{time.monotonic() - back:.2f} s for {len(joined)} rooms")  # fmt: skip
        notice = await alice.wait_message("notice", after=seen, timeout=WAIT)
        assert notice["level"] == "warning", notice
        await alice.type("print(x * 2)\r")  # a new REPL: x is gone
        await alice.wait_output("NameError", after=recovered[0], timeout=WAIT)
        await alice.type("print(6 * 7)\r")
        await alice.wait_output("42\r\n", after=recovered[0], timeout=WAIT)
    finally:
        await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
        members.clear()
        await server.stop_async()
    assert "Traceback" not in server.log(), server.log()[-3000:]
    # Nothing left on the Engine: not the dead containers, not the new ones.
    left = await _containers(server, restartable_engine)
    assert not left, (left, server.log()[-3000:])


# -- 4. the data disk fills up -------------------------------------------------


def _fill(directory: Path) -> Path:
    """Take every free block of the file system ``directory`` is on."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        stat = os.statvfs(directory)
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize)
        with contextlib.suppress(OSError):  # whatever fallocate left
            os.lseek(fd, 0, os.SEEK_END)
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (directory / "probe").write_bytes(b"x" * 4096)
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount_point)], check=True
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


async def _first(client: RoomClient, after: int, *patterns: dict[str, Any]) -> dict[str, Any]:
    """The first message from index ``after`` on that has all the fields of one pattern."""

    def check() -> dict[str, Any] | None:
        for message in client.messages[after:]:
            if any(all(message.get(k) == v for k, v in p.items()) for p in patterns):
                return message
        return None

    return await client._until(check, f"one of {patterns}", WAIT)  # type: ignore[no-any-return]


def _integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


async def test_full_data_disk(
    tmp_path: Path, runtime_dir: Path, room_image: object, small_disk: Path, members: list[Any]
) -> None:
    data = small_disk / "data"
    server = Server(data, runtime_dir, log_dir=tmp_path / "logs")
    server.start()
    try:
        room = await server.create_room()
        bystander_room = await server.create_room()
        alice = await RoomClient.connect(server, room["id"], room["owner_token"], name="alice")
        bystander = await RoomClient.connect(
            server, bystander_room["id"], bystander_room["owner_token"], name="bystander"
        )
        members += [alice, bystander]
        await alice.wait_output(">>> ", timeout=WAIT)
        await bystander.wait_output(">>> ", timeout=WAIT)
        editor = await _write_editor(server, alice, room["id"], members, EDITOR_TEXT)

        filler = _fill(small_disk)
        # The first write to each database fails. Later ones may not at once:
        # SQLite reuses the space a failed transaction took in its WAL file, so a
        # small write may still fit. So each write is repeated until it is refused,
        # which must happen within a few tries, and what was accepted is stored.
        async with httpx.AsyncClient(timeout=WAIT) as http:
            for _ in range(TRIES):  # a new room
                refused = await http.post(f"{server.url}/api/rooms")
                if refused.status_code != 201:
                    break
            assert refused.status_code == 507, refused.text
            assert refused.json()["error"] == "storage"
            assert "disk is full" in refused.json()["message"]
            invite = room["invite_token"]
            for _ in range(TRIES):  # link rotation
                rotated = await http.post(
                    f"{server.url}/api/rooms/{room['id']}/rotate",
                    headers={"Authorization": f"Bearer {room['owner_token']}"},
                )
                if rotated.status_code != 200:
                    break
                invite = rotated.json()["invite_token"]
            assert rotated.status_code == 507, rotated.text
            # Refused, so the links stay what they were.
            bob = await RoomClient.connect(server, room["id"], invite, name="bob")
            members.append(bob)
            await bob.wait_message("welcome", timeout=WAIT)
        language = "python"
        for target in ("ruby", "python") * (TRIES // 2):  # a language switch
            seen = len(alice.messages)
            await alice.send({"type": "language", "language": target})
            reply = await _first(alice, seen, {"type": "language"}, {"type": "error"})
            if reply["type"] == "error":
                break
            language = target
        assert reply["code"] == "storage", reply
        assert "disk is full" in reply["message"] and "not changed" in reply["message"]
        # An editor change: everyone in the room is told it is not saved.
        seen = len(alice.messages)
        await editor.insert(0, FULL_DISK_LINE)
        notice = await alice.wait_message("notice", after=seen, timeout=WAIT, level="error")
        assert "cannot save the editor" in notice["text"]
        # Other rooms keep working.
        mark = len(bystander.output)
        await bystander.type("print(20 + 22)\r")
        await bystander.wait_output("42\r\n", after=mark, timeout=WAIT)
        log = server.log()
        assert "cannot create a room: the database refused the write" in log
        assert "cannot rotate the links" in log and "cannot switch the language" in log
        assert "could not store an update" in log

        filler.unlink()
        # Space again: writes work without a restart.
        async with httpx.AsyncClient(timeout=WAIT) as http:
            assert (await http.post(f"{server.url}/api/rooms")).status_code == 201
    finally:
        await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
        members.clear()
        await server.stop_async()
    for name in ("replroom.sqlite3", "editor.sqlite3"):
        assert _integrity(data / name) == "ok"

    server.start()  # nothing earlier is lost
    try:
        again = await RoomClient.connect(server, room["id"], room["invite_token"], name="again")
        members.append(again)
        welcome = await again.wait_message("welcome", timeout=WAIT)
        assert welcome["room"]["language"] == language  # the last one members were shown
        # What was stored before is intact; the change made on the full disk was
        # kept in memory and stored once there was space again.
        text = await _read_editor(server, again, room["id"], members)
        assert text == FULL_DISK_LINE + EDITOR_TEXT
        other = await RoomClient.connect(
            server, bystander_room["id"], bystander_room["invite_token"], name="other"
        )
        members.append(other)
        await other.wait_output(">>> ", timeout=WAIT)
    finally:
        await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
        members.clear()
        await server.stop_async()
    assert "Traceback" not in server.log(), server.log()[-3000:]

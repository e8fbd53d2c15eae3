"""`replroom serve` as a process: start-up on a bare host, bad set-ups, and stopping by signal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.client import RoomClient, Server

pytestmark = pytest.mark.timeout(600)

LIVE_ROOMS = 300
JOIN_BATCH = 25


@pytest.fixture
async def clients() -> AsyncIterator[list[RoomClient]]:
    made: list[RoomClient] = []
    yield made
    await asyncio.gather(*(client.close() for client in made), return_exceptions=True)


def _leftover_sandboxes(server: Server, backend: str = "bwrap") -> str:
    env = {**os.environ, "REPLROOM_INSTANCE": server.instance, "REPLROOM_BACKEND": backend}
    if server.runtime_dir is not None:
        env["REPLROOM_RUNTIME_DIR"] = str(server.runtime_dir)
    result = subprocess.run(
        [sys.executable, "-m", "replroom.cli", "sandbox", "cleanup"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replroom.cli", "serve", "--port", "1", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120, check=False,
    )  # fmt: skip


async def test_serve_makes_a_missing_runtime_dir_and_its_parents(
    tmp_path: Path, room_image: object, clients: list[RoomClient]
) -> None:
    """As after a reboot: /run is empty, so the runtime dir and its parents are gone."""
    runtime_dir = Path(f"/run/replroom-boot-{uuid.uuid4().hex[:8]}") / "nested" / "replroom"
    server = Server(tmp_path / "data", runtime_dir)
    try:
        server.start()
        room = await server.create_room()
        member = await RoomClient.connect(server, room["id"], room["owner_token"])
        clients.append(member)
        await member.wait_output(">>> ")
        await member.type("print(6 * 7)\r")
        await member.wait_output("42\r\n")
        assert runtime_dir.stat().st_mode & 0o777 == 0o711
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(runtime_dir.parent.parent)], check=True)


@pytest.mark.parametrize(
    ("env", "args", "status", "message"),
    [
        ({"REPLROOM_RUNTIME_DIR": "/dev/null/replroom"}, [], 1,
         "replroom: cannot serve: cannot create /dev/null/replroom: Not a directory"),
        ({}, ["--data-dir", "/proc/version/replroom"], 1,
         "replroom: cannot serve: cannot create /proc/version/replroom: Not a directory"),
        ({"REPLROOM_IMAGE_DIR": "/nonexistent/images"}, [], 1,
         "replroom: cannot serve: room image not built: run `replroom image build`"
         " (looked in /nonexistent/images)"),
        ({"REPLROOM_DEFAULT_LANGUAGE": "cobol"}, [], 2,
         "replroom: error: default_language: unknown language 'cobol'"
         " (known: python, node, ruby, bash, lua, php, perl, sqlite, scheme, commonlisp,"),
        ({"REPLROOM_POOL_SIZE": "2", "REPLROOM_MEMORY_BUDGET": "512m"}, [], 2,
         "replroom: error: pool_size 2 leaves no room for rooms: the memory budget (512 MiB)"
         " holds 2 sandbox(es) of 256 MiB; lower pool_size or raise memory_budget"),
        ({"REPLROOM_BACKEND": "docker", "DOCKER_HOST": "unix:///nonexistent.sock"}, [], 1,
         "replroom: cannot serve: docker backend: Docker Engine not reachable at"
         " unix:///nonexistent.sock"),
    ],
)  # fmt: skip
def test_serve_refuses_a_host_it_cannot_serve_from_with_one_line(
    tmp_path: Path, room_image: object, env: dict[str, str], args: list[str], status: int,
    message: str,
) -> None:  # fmt: skip
    env = {"REPLROOM_INSTANCE": f"bad-{uuid.uuid4().hex[:8]}", **env}
    if "--data-dir" not in args:
        args = [*args, "--data-dir", str(tmp_path / "data")]
    result = _serve(env, *args)
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message), lines[0]
    assert "Traceback" not in result.stderr


def test_doctor_checks_what_serve_needs(tmp_path: Path, room_image: object) -> None:
    env = {
        **os.environ,
        "REPLROOM_INSTANCE": f"doc-{uuid.uuid4().hex[:8]}",
        "REPLROOM_RUNTIME_DIR": "/dev/null/replroom",
        "REPLROOM_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "replroom.cli", "doctor"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "start-up         NO: cannot create /dev/null/replroom: Not a directory" in result.stdout
    assert "configured backend: bwrap: NOT ready" in result.stdout


@pytest.mark.parametrize(
    ("backend", "live_rooms"),
    [("bwrap", LIVE_ROOMS), pytest.param("docker", 40, marks=pytest.mark.docker)],
)
async def test_sigterm_with_hundreds_of_live_rooms_tells_members_and_leaves_nothing(
    tmp_path: Path, runtime_dir: Path, room_image: object, clients: list[RoomClient],
    backend: str, live_rooms: int,
) -> None:  # fmt: skip
    if backend == "docker" and not os.environ.get("DOCKER_HOST"):
        pytest.skip("no Docker Engine: run scripts/dockerd start and export DOCKER_HOST")
    server = Server(
        tmp_path / "data", runtime_dir,
        env={"REPLROOM_MEMORY_BUDGET": "1000g", "REPLROOM_DEFAULT_LANGUAGE": "bash",
             "REPLROOM_BACKEND": backend},
    )  # fmt: skip
    server.start()
    try:
        for start in range(0, live_rooms, JOIN_BATCH):
            rooms = await asyncio.gather(
                *(server.create_room() for _ in range(start, min(live_rooms, start + JOIN_BATCH)))
            )
            batch = await asyncio.gather(
                *(RoomClient.connect(server, room["id"], room["owner_token"]) for room in rooms)
            )
            clients.extend(batch)
            await asyncio.gather(*(client.wait_output("$ ", timeout=120) for client in batch))
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        closes = await asyncio.gather(*(client.wait_closed(timeout=120) for client in clients))
        status = await asyncio.to_thread(server.process.wait, 120)
        print(f"\nSIGTERM with {live_rooms} live {backend} rooms: exited after "
              f"{time.monotonic() - started:.2f} s")  # fmt: skip
    finally:
        server.stop(signal.SIGKILL)
    # uvicorn ends by raising the signal it caught again, as a process should.
    assert status in (0, -signal.SIGTERM), server.log()[-3000:]
    assert "Traceback" not in server.log()
    assert {close.code for close in closes} == {1012}
    assert f"destroyed {live_rooms} sandbox(es)" in server.log()
    assert _leftover_sandboxes(server, backend) == "removed 0 leftover sandbox(es)"


def test_serve_raises_its_open_files_limit_to_the_hard_limit(
    tmp_path: Path, runtime_dir: Path, room_image: object
) -> None:
    # A host's usual soft limit (1024, here 256) would refuse members at ~140 busy rooms.
    server = Server(tmp_path / "data", runtime_dir, wrapper=["prlimit", "--nofile=256:4096"])
    server.start()
    try:
        assert server.process is not None
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        server.stop()

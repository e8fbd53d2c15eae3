"""Sandboxes made ahead of time, and handed to their room under its name, on every backend."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from replroom.config import Limits
from replroom.languages import get_language
from replroom.pool import SandboxPool, Started
from replroom.protocol import CloseCode
from replroom.sandbox import Sandbox, SandboxError
from tests.client import RoomClient, Server
from tests.sandboxes import TIMEOUT, BackendUnderTest, Screen, run

SMALL = Limits(memory="128m", cpus=0.5, pids=64, disk="16m")


def pool_name() -> str:
    return "pool-" + secrets.token_hex(8)


async def host_name(sandbox: Sandbox) -> str:
    """The name the host shows for the sandbox: a container's, or what room.json says."""
    from replroom.sandbox.bwrap import BwrapSandbox
    from replroom.sandbox.docker import DockerSandbox

    if isinstance(sandbox, DockerSandbox):
        info = await sandbox.container.show()
        return str(info["Name"]).removeprefix("/replroom-")
    assert isinstance(sandbox, BwrapSandbox)
    return str(json.loads((sandbox.dir / "room.json").read_text())["room"])


async def test_a_renamed_sandbox_serves_its_new_room(
    backend: BackendUnderTest, room_id: str
) -> None:
    made_as = pool_name()
    sandbox = await backend.create(made_as, SMALL)
    await sandbox.rename(room_id)
    assert sandbox.room_id == room_id
    assert await host_name(sandbox) == room_id
    status, output = await run(sandbox, ["sh", "-c", "echo still here"])
    assert (status.returncode, output) == (0, "still here\n")
    with pytest.raises(SandboxError, match=f"room {room_id} already has a sandbox"):
        await backend.backend.create(room_id, SMALL)

    await sandbox.destroy()
    with pytest.raises(SandboxError, match=f"room {room_id}"):
        await sandbox.spawn(["true"])
    assert await backend.leftovers(made_as) == []
    # Destroyed, it no longer holds the room.
    again = await backend.create(room_id, SMALL)
    assert await again.alive()


async def test_a_room_that_has_a_sandbox_cannot_take_another(
    backend: BackendUnderTest, room_id: str
) -> None:
    await backend.create(room_id, SMALL)
    made_as = pool_name()
    spare = await backend.create(made_as, SMALL)
    with pytest.raises(SandboxError, match=f"room {room_id} already has a sandbox"):
        await spare.rename(room_id)
    assert spare.room_id == made_as and await host_name(spare) == made_as
    with pytest.raises(SandboxError, match="invalid room id"):
        await spare.rename("../escape")
    assert await spare.alive()


def make_pool(backend: BackendUnderTest, size: int, **options: Any) -> SandboxPool:
    return SandboxPool(backend.backend, SMALL, get_language("python"), size=size, **options)


async def spares_made(pool: SandboxPool, count: int) -> list[Sandbox]:
    """The pool's spares, once it has made ``count`` (at their prompt)."""
    async with asyncio.timeout(TIMEOUT):
        await pool.idle()
    assert pool.ready == count
    return pool.spares


async def cpu_weight(sandbox: Sandbox) -> int:
    """The sandbox's CPU weight as its host sets it (cgroup v1 shares / Docker's CpuShares)."""
    from replroom.sandbox.bwrap import BwrapSandbox
    from replroom.sandbox.docker import DockerSandbox

    if isinstance(sandbox, DockerSandbox):
        info = await sandbox.container.show()
        return int(info["HostConfig"]["CpuShares"] or 1024)
    assert isinstance(sandbox, BwrapSandbox)
    cgroup = sandbox.cgroup
    if "cpu" in cgroup.v1_dirs:
        return int((cgroup.v1_dirs["cpu"] / "cpu.shares").read_text())
    assert cgroup.v2_dir is not None
    return int((cgroup.v2_dir / "cpu.weight").read_text())


async def taken(pool: SandboxPool, room_id: str) -> Started:
    started = await pool.take(room_id, may_create=lambda: True)
    assert started is not None
    return started


async def test_the_pool_hands_out_a_sandbox_with_its_repl_at_the_prompt(
    backend: BackendUnderTest, room_id: str
) -> None:
    pool = make_pool(backend, 1)
    pool.refill()
    started: Started | None = None
    try:
        await spares_made(pool, 1)
        started = await taken(pool, room_id)
        sandbox = started.sandbox
        assert sandbox.room_id == room_id and await host_name(sandbox) == room_id
        repl = started.repls["python"]
        # What it printed while pooled comes first: the prompt, already there.
        assert (await repl.read()).endswith(b">>> ")
        await repl.resize(100, 30)
        screen = Screen(repl)
        await repl.write(b"import os; os.get_terminal_size()\r")
        await screen.wait_for(b"os.terminal_size(columns=100, lines=30)")
        await screen.close()
    finally:
        if started is not None:
            await started.sandbox.destroy()
        await pool.close()


async def test_a_spare_waits_at_the_least_cpu_weight_until_it_is_taken(
    backend: BackendUnderTest, room_id: str
) -> None:
    pool = make_pool(backend, 1)
    pool.refill()
    started: Started | None = None
    try:
        [spare] = await spares_made(pool, 1)
        usual = 1024 if backend.is_docker or "cpu" in spare.cgroup.v1_dirs else 100
        if backend.name == "docker-runsc":  # runsc cannot change it later: usual from the start
            assert await cpu_weight(spare) == usual
        else:
            assert await cpu_weight(spare) < usual
        started = await taken(pool, room_id)
        await pool.idle()
        assert await cpu_weight(started.sandbox) == usual
    finally:
        if started is not None:
            await started.sandbox.destroy()
        await pool.close()


async def test_a_spare_killed_while_pooled_is_replaced_not_handed_out(
    backend: BackendUnderTest, room_id: str
) -> None:
    pool = make_pool(backend, 1)
    pool.refill()
    started: Started | None = None
    try:
        await spares_made(pool, 1)
        doomed = pool._ready[0]
        assert doomed.watcher is not None
        await doomed.process.signal(9)  # as if killed from outside
        await asyncio.wait_for(asyncio.shield(doomed.watcher), TIMEOUT)  # it notices
        [replacement] = await spares_made(pool, 1)
        assert replacement is not doomed.sandbox
        assert not await doomed.sandbox.alive()
        started = await taken(pool, room_id)
        assert started.sandbox is replacement
        screen = Screen(started.repls["python"])
        await started.repls["python"].write(b"6*7\r")
        await screen.wait_for(b"42")
        await screen.close()
    finally:
        if started is not None:
            await started.sandbox.destroy()
        await pool.close()


async def test_without_a_spare_the_pool_makes_one_or_says_there_is_no_place(
    backend: BackendUnderTest, room_id: str
) -> None:
    pool = make_pool(backend, 0)
    assert await pool.take(room_id, may_create=lambda: False) is None
    started = await taken(pool, room_id)
    try:
        assert started.repls == {} and await started.sandbox.alive()
    finally:
        await started.sandbox.destroy()
        await pool.close()


async def test_closing_the_pool_destroys_its_spares(backend: BackendUnderTest) -> None:
    pool = make_pool(backend, 2, parallel=2)
    pool.refill()
    spares = await spares_made(pool, 2)
    await pool.close()
    for spare in spares:
        assert not await spare.alive()
        assert await backend.leftovers(spare.room_id) == []


# -- through a server ---------------------------------------------------------------


async def spares_of(server: Server, count: int) -> dict[str, Any]:
    """The server's capacity, once its pool holds ``count`` spares."""
    async with httpx.AsyncClient() as http, asyncio.timeout(TIMEOUT):
        while True:
            capacity: dict[str, Any] = (await http.get(f"{server.url}/api/capacity")).json()
            if capacity["spares"] == count:
                return capacity
            await asyncio.sleep(0.02)  # made in the server: nothing to await from here


def served_by_spares(server: Server) -> dict[str, str]:
    """Room served -> the bwrap sandbox (made as a spare, ``pool-…``) that serves it."""
    assert server.runtime_dir is not None
    served = {}
    for room_json in (server.runtime_dir / server.instance / "rooms").glob("pool-*/room.json"):
        served[json.loads(room_json.read_text())["room"]] = room_json.parent.name
    return served


async def test_a_room_starts_on_a_spare_at_its_members_size(
    tmp_path: Path, runtime_dir: Path, room_image: object
) -> None:
    server = Server(tmp_path / "data", runtime_dir)  # the shipped pool: 2 spares on bwrap
    server.start()
    clients: list[RoomClient] = []
    try:
        await spares_of(server, 2)
        room = await server.create_room()
        member = await RoomClient.connect(
            server, room["id"], room["invite_token"], cols=100, rows=30
        )
        clients.append(member)
        prompt = await member.wait_output(">>> ")
        assert "r-" + room["id"] in served_by_spares(server)
        await member.type("import os; os.get_terminal_size()\r")
        await member.wait_output("os.terminal_size(columns=100, lines=30)", after=prompt)
        # The pool makes another spare in place of the one taken.
        assert (await spares_of(server, 2))["sandboxes"] == 1
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        server.stop()
    assert "Traceback" not in server.log()


async def test_spares_count_toward_capacity_and_serve_one_room_once(
    tmp_path: Path, runtime_dir: Path, room_image: object
) -> None:
    # Three places: two spares while no room runs, never more than three sandboxes.
    env = {"REPLROOM_MEMORY_BUDGET": "768m", "REPLROOM_IDLE_TIMEOUT": "0"}
    server = Server(tmp_path / "data", runtime_dir, env=env)
    server.start()
    clients: list[RoomClient] = []
    try:
        await spares_of(server, 2)
        rooms = [await server.create_room() for _ in range(4)]
        for room in rooms[:3]:
            member = await RoomClient.connect(server, room["id"], room["invite_token"])
            clients.append(member)
            await member.wait_output(">>> ")
        first = clients[0]
        await first.type("secret = 'only in the first room'\r")
        await first.wait_output(">>> ", after=await first.wait_output("secret = "))
        capacity = await spares_of(server, 0)
        assert capacity["sandboxes"] == capacity["max_sandboxes"] == 3
        # A fourth room finds no place, and no spare is made for it.
        refused = await RoomClient.connect(server, rooms[3]["id"], rooms[3]["invite_token"])
        assert (await refused.wait_closed()).code == CloseCode.AT_CAPACITY

        # The first room empties: its sandbox goes, its place makes a spare again,
        # which the fourth room gets: a new sandbox, nothing of the first room in it.
        old_sandbox = served_by_spares(server).get("r-" + rooms[0]["id"])
        await first.close()
        await spares_of(server, 1)
        fourth = await RoomClient.connect(server, rooms[3]["id"], rooms[3]["invite_token"])
        clients.append(fourth)
        prompt = await fourth.wait_output(">>> ")
        await fourth.type("secret\r")
        await fourth.wait_output("NameError", after=prompt)
        assert served_by_spares(server).get("r-" + rooms[3]["id"]) not in (None, old_sandbox)
        assert len(list((runtime_dir / server.instance / "rooms").iterdir())) <= 3
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        server.stop()
    assert "Traceback" not in server.log()

"""Sandboxes made ahead of time, and handed to their room under its name, on every backend."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest

from replroom.config import Limits
from replroom.languages import get_language
from replroom.pool import SandboxPool, Started
from replroom.sandbox import Sandbox, SandboxError
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

"""Sandboxes made ahead of time, and handed to their room under its name, on every backend."""

from __future__ import annotations

import json
import secrets

import pytest

from replroom.config import Limits
from replroom.pool import SandboxPool
from replroom.sandbox import Sandbox, SandboxError
from tests.sandboxes import BackendUnderTest, run

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


async def test_the_pool_hands_out_a_ready_sandbox_under_the_rooms_name(
    backend: BackendUnderTest, room_id: str
) -> None:
    pool = SandboxPool(backend.backend, SMALL, size=1)
    pool.start()
    taken: Sandbox | None = None
    try:
        assert pool._filling is not None
        await pool._filling  # the spare is made
        [spare] = pool._ready
        taken = await pool.take(room_id)
        assert taken is spare
        assert taken.room_id == room_id and await host_name(taken) == room_id
        status, output = await run(taken, ["sh", "-c", "echo ready"])
        assert (status.returncode, output) == (0, "ready\n")
    finally:
        if taken is not None:
            await taken.destroy()
        await pool.close()

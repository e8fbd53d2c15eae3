"""Test helpers: run commands in sandboxes and look for what a sandbox left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from replroom.config import Limits, Settings
from replroom.sandbox import Backend, ExitStatus, Process, Sandbox

TIMEOUT = 60.0


def design_note_cpus(backend: str) -> float:
    """The design note's CPU share (5 % to 20 % of a CPU) a backend's REPLs start in.

    gVisor's own kernel runs inside the container's CPU quota: at 5 % it
    starves (``ruby -e`` took 68 s here, 7 s at 20 %), so runsc gets 20 %.
    """
    return 0.2 if backend.endswith("runsc") else 0.05


@dataclass
class BackendUnderTest:
    """A backend plus the sandboxes a test made with it, destroyed at the end."""

    name: str
    backend: Backend
    settings: Settings
    made: list[Sandbox] = field(default_factory=list)

    @property
    def is_docker(self) -> bool:
        return self.name.startswith("docker")

    async def create(self, room_id: str, limits: Limits | None = None) -> Sandbox:
        sandbox = await self.backend.create(room_id, limits or Limits())
        self.made.append(sandbox)
        return sandbox

    async def destroy_all(self) -> None:
        for sandbox in self.made:
            await sandbox.destroy()

    async def leftovers(self, room_id: str) -> list[str]:
        """Everything of ``room_id`` that still exists on the host or in the engine."""
        if self.is_docker:
            docker = self.backend.docker  # type: ignore[attr-defined]
            containers = await docker.containers.list(
                all=True, filters={"label": [f"replroom.room={room_id}"]}
            )
            return [f"container {c.id[:12]}" for c in containers]
        return bwrap_leftovers(self.backend, room_id)


def bwrap_leftovers(backend: Backend, room_id: str) -> list[str]:
    from replroom.sandbox.bwrap import BwrapBackend

    assert isinstance(backend, BwrapBackend)
    found = []
    from replroom.sandbox.cgroups import Cgroup

    if Cgroup(backend.hierarchy, backend.instance, room_id).exists():
        found.append("cgroup")
    room_dir = backend.rooms_dir / room_id
    with open("/proc/self/mountinfo") as mountinfo:
        if any(str(room_dir) in line for line in mountinfo):
            found.append("mount")
    if room_dir.exists():
        found.append(f"directory {room_dir}")
    return found


def processes_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                continue
    return pids


async def read_all(process: Process) -> bytes:
    chunks = []
    while chunk := await process.read():
        chunks.append(chunk)
    return b"".join(chunks)


async def run(
    sandbox: Sandbox,
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    timeout: float = TIMEOUT,
) -> tuple[ExitStatus, str]:
    """Run to completion on pipes; return how it ended and its output (stdout+stderr)."""

    async def go() -> tuple[ExitStatus, str]:
        process = await sandbox.spawn(argv, tty=False)
        if stdin is not None:
            await process.write(stdin)
        await process.close_stdin()
        output = await read_all(process)
        return await process.wait(), output.decode(errors="replace")

    return await asyncio.wait_for(go(), timeout)


async def python(sandbox: Sandbox, code: str, timeout: float = TIMEOUT) -> tuple[ExitStatus, str]:
    return await run(sandbox, ["python3", "-c", code], timeout=timeout)


class Screen:
    """Collects a pty process's output and waits for text to appear in it."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.data = b""
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while chunk := await self.process.read():
            self.data += chunk
            # Answer irb's cursor-position query like a real terminal would.
            if b"\x1b[6n" in chunk:
                await self.process.write(b"\x1b[1;1R")
            self._changed.set()
        self._changed.set()

    @property
    def ended(self) -> bool:
        return self._task.done()

    async def wait_until(self, check: Callable[[bytes], bool], what: str,
                         timeout: float = TIMEOUT) -> None:  # fmt: skip
        """Wait until ``check`` holds for the output so far."""

        async def scan() -> None:
            while not check(self.data):
                if self.ended:
                    raise AssertionError(f"{what} never happened; output: {self.data!r}")
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; got {self.data!r}") from None

    async def wait_for(self, needle: bytes, *, after: int = 0, timeout: float = TIMEOUT) -> int:
        """Wait until ``needle`` appears past offset ``after``; return the end offset."""
        await self.wait_until(lambda data: data.find(needle, after) >= 0, repr(needle), timeout)
        return self.data.find(needle, after) + len(needle)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._task


def host_disk_free(path: str = "/") -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize

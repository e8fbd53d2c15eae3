"""Density benchmark: host memory per live room, and the server's own share.

    .venv/bin/python bench/density.py [--backends bwrap,docker-runc,docker-runsc]
                                      [--rooms 100] [--runs 3] [--settle 5]

Per backend and run: a fresh `replroom serve` on 127.0.0.1, one warm-up room
(it brings the image's files into the page cache and the server's lazy
allocations in), then ``--rooms`` rooms, each with one member (a WebSocket
client) at a Python prompt. Host memory is MemAvailable from /proc/meminfo,
read when the sandbox count is steady, before and after the rooms (nothing
is dropped from the caches). Page cache, the room image's shared and
reclaimable files included, counts as available, so it is not in the
figure; tmpfs pages, page tables and kernel objects are.

Pooled sandboxes (the server's warm pool, if it keeps one) are in both
readings: the pool is full before the rooms and refilled after them, so the
difference is the rooms' alone. The clients run in this process; its own
growth is subtracted and printed. Docker backends need DOCKER_HOST.

Also printed per room: the deltas of the host's counters, the kernel memory and
shmem charged to the sandboxes' cgroups, and the anonymous PSS of
every process that serves the rooms (the server's descendants, and on Docker
the containers' shims, their processes, dockerd and containerd), by name.
MemAvailable moves with whatever else the host runs meanwhile, so an
"accounted" figure is printed beside it: that anonymous PSS plus the kernel
memory and shmem charged to the sandboxes' cgroups, plus the page tables and
kernel stacks of the serving processes outside them (server, Engine, shims).
Figures are printed next to the targets of issue 9, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replroom.config import Settings
from replroom.sandbox.cgroups import Hierarchy, leftover_names
from tests.client import RoomClient, Server

PROMPT = b">>> "
KERNEL_STACK = 16 * 1024  # x86-64 and arm64
MiB = 1024 * 1024
GiB = 1024 * MiB
TARGETS = {"bwrap": 250, "docker-runc": 150, "docker-runsc": 50}  # rooms per GiB
KERNEL_FIELDS = ("AnonPages", "Shmem", "PageTables", "KernelStack", "SUnreclaim", "Percpu")
ENGINE_NAMES = ("dockerd", "containerd")


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    fields = {}
    for row in Path("/proc/meminfo").read_text().splitlines():
        key, value = row.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields


def rss_of(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) * 1024
    return 0


def anon_pss_of(pid: int) -> int:
    """The process's share of anonymous pages (file pages are page cache, shmem is Shmem)."""
    total = 0
    try:
        for row in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if row.startswith("Pss_Anon:"):
                total += int(row.split()[1]) * 1024
    except OSError:  # ended meanwhile
        pass
    return total


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, name, command line) of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        found[int(entry.name)] = (parent, name, cmdline)
    return found


def descendants(roots: Iterable[int], table: dict[int, tuple[int, str, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def page_tables_and_stacks(pid: int) -> int:
    """Bytes of page tables and kernel stacks (one per thread) of a process."""
    fields = {}
    with contextlib.suppress(OSError):  # ended meanwhile
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = row.partition(":")
            fields[key] = value.split()
    page_tables = int(fields.get("VmPTE", ["0"])[0]) * 1024
    return page_tables + int(fields.get("Threads", ["0"])[0]) * KERNEL_STACK


def cgroup_charges(directory: Path) -> tuple[int, int]:
    """Kernel memory and shmem charged to a memory cgroup (v1 or v2), in bytes."""
    stat = {}
    for row in (directory / "memory.stat").read_text().splitlines():
        key, value = row.split()
        stat[key] = int(value)
    kmem = directory / "memory.kmem.usage_in_bytes"
    kernel = int(kmem.read_text()) if kmem.exists() else stat.get("kernel", 0)
    return kernel, stat.get("shmem", 0)


def load() -> str:
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Backend:
    name: str
    env: dict[str, str]

    @property
    def docker(self) -> bool:
        return self.name.startswith("docker")


class Host:
    """Readings of the host for one server: its sandboxes, memory and processes."""

    def __init__(self, backend: Backend, server: Server) -> None:
        self.backend = backend
        self.server = server
        self.hierarchy = Hierarchy.detect()

    async def sandboxes(self) -> list[str]:
        """Ids of the server's sandboxes: cgroups for bwrap, containers for Docker."""
        if not self.backend.docker:
            return sorted(leftover_names(self.hierarchy, self.server.instance))
        import aiodocker  # noqa: PLC0415 - only Docker runs need it

        async with aiodocker.Docker() as docker:
            containers = await docker.containers.list(
                filters={"label": [f"replroom.instance={self.server.instance}"]}
            )
            return sorted(c.id for c in containers)

    async def steady(self, expected: int | None = None, quiet: float = 2.0) -> int:
        """Wait until the sandbox count stays the same for ``quiet`` s (and is ``expected``)."""
        count, since = -1, time.monotonic()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = len(await self.sandboxes())
            if now != count:
                count, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet and expected in (None, count):
                return count
            await asyncio.sleep(0.2)
        return count

    def memory_cgroups(self, sandboxes: list[str]) -> list[Path]:
        """The sandboxes' memory cgroups (a container's is found by its id)."""
        root = self.hierarchy.controller_dir("memory")
        if root is None:
            return []
        if not self.backend.docker:
            return [root / self.server.instance / name for name in sandboxes]
        # Where the Engine puts them depends on its cgroup parent and on the
        # cgroup it runs in itself: look a few levels down.
        wanted, found = set(sandboxes), []
        for directory, children, _ in os.walk(root):
            found += [Path(directory, name) for name in children if name in wanted]
            if Path(directory).relative_to(root).parts[3:]:
                children.clear()
        return found

    async def serving(self) -> tuple[list[int], set[int]]:
        """The processes outside the sandboxes that serve the rooms, and all their descendants.

        Outside: the server and, on Docker, the Engine and the containers' shims.
        """
        assert self.server.process is not None
        table = processes()
        roots = [self.server.process.pid]
        if self.backend.docker:
            ids = await self.sandboxes()
            for pid, (_, name, cmdline) in table.items():
                if name in ENGINE_NAMES or (
                    name.startswith("containerd-shim") and any(i in cmdline for i in ids)
                ):
                    roots.append(pid)
        return roots, descendants(roots, table)

    async def reading(self) -> Reading:
        """Memory now, the median of three readings a second apart."""
        samples = []
        for _ in range(3):
            samples.append(meminfo())
            await asyncio.sleep(1)
        fields = {key: int(statistics.median(s[key] for s in samples)) for key in samples[0]}
        table = processes()
        pss: Counter[str] = Counter()
        outside, serving = await self.serving()
        for pid in serving:
            if pid in table:
                pss[process_kind(pid, table[pid][1], self.server)] += anon_pss_of(pid)
        sandboxes = await self.sandboxes()
        charged: Counter[str] = Counter()
        # The sandboxes' cgroups hold their processes' page tables and stacks; these not.
        charged["outside"] = sum(page_tables_and_stacks(pid) for pid in outside)
        for directory in self.memory_cgroups(sandboxes):
            with contextlib.suppress(OSError):  # gone meanwhile
                kernel, shmem = cgroup_charges(directory)
                charged["kernel"] += kernel
                charged["shmem"] += shmem
        return Reading(
            fields=fields,
            server_rss=self.server.rss(),
            own_rss=rss_of(os.getpid()),
            pss=pss,
            charged=charged,
            sandboxes=len(sandboxes),
        )


def process_kind(pid: int, name: str, server: Server) -> str:
    assert server.process is not None
    return "server" if pid == server.process.pid else name


@dataclass
class Reading:
    fields: dict[str, int]
    server_rss: int
    own_rss: int
    pss: Counter[str]
    # "kernel" and "shmem": charged to the sandboxes' memory cgroups;
    # "outside": page tables and stacks of the processes outside them.
    charged: Counter[str]
    sandboxes: int


@dataclass
class Result:
    per_room: float  # bytes of host memory per room (MemAvailable)
    server_per_room: float  # bytes of server RSS per room
    before: Reading
    after: Reading

    @property
    def added(self) -> int:
        return self.after.sandboxes - self.before.sandboxes

    def kernel_delta(self, key: str) -> float:
        return (self.after.fields[key] - self.before.fields[key]) / self.added

    def pss_deltas(self) -> dict[str, float]:
        kinds = set(self.before.pss) | set(self.after.pss)
        return {k: (self.after.pss[k] - self.before.pss[k]) / self.added for k in kinds}

    def charged_delta(self, key: str) -> float:
        return (self.after.charged[key] - self.before.charged[key]) / self.added

    @property
    def accounted(self) -> float:
        """Bytes per room in the serving processes' anonymous pages and the sandboxes' cgroups.

        The cgroups hold the kernel memory (page tables, stacks, slab) and
        shmem of the sandboxes' processes. Unlike MemAvailable, this is blind
        to what other programs on the host do meanwhile; it misses what the
        kernel charges to no sandbox (processes outside them, mounts).
        """
        pss = sum(self.pss_deltas().values())
        charged = sum(self.charged_delta(key) for key in ("kernel", "shmem", "outside"))
        return pss + charged


async def open_rooms(server: Server, count: int, batch: int = 10) -> list[RoomClient]:
    clients: list[RoomClient] = []
    for start in range(0, count, batch):
        rooms = [await server.create_room() for _ in range(min(batch, count - start))]
        opened = await asyncio.gather(
            *(RoomClient.connect(server, r["id"], r["invite_token"]) for r in rooms)
        )
        await asyncio.gather(*(c.wait_output(PROMPT, timeout=120) for c in opened))
        clients += opened
    return clients


async def run(backend: Backend, rooms: int, settle: float) -> Result:
    with tempfile.TemporaryDirectory() as data:
        runtime = Path(f"/run/replroom-bench-density-{os.getpid()}")
        runtime.mkdir(mode=0o711, exist_ok=True)
        env = {
            "REPLROOM_MEMORY_BUDGET": "1000g",
            "REPLROOM_IDLE_TIMEOUT": "3600",
            # The shipped interval, not the tests' faster one: each check asks
            # the Engine about the container, and its garbage is in dockerd's RSS.
            "REPLROOM_HEALTH_INTERVAL": str(Settings.model_fields["health_interval"].default),
            **backend.env,
        }
        server = Server(Path(data), runtime, env=env)
        server.start()
        host = Host(backend, server)
        clients: list[RoomClient] = []
        try:
            clients += await open_rooms(server, 1)  # warm-up, stays open
            pooled = await host.steady() - 1
            await asyncio.sleep(settle)
            before = await host.reading()
            clients += await open_rooms(server, rooms)
            await host.steady(expected=before.sandboxes + rooms)
            await asyncio.sleep(settle)
            after = await host.reading()
            print(f"   sandboxes: {before.sandboxes} before (1 warm-up room, {pooled} pooled),"
                  f" {after.sandboxes} after; {load()}")  # fmt: skip
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
            server.stop()
            shutil.rmtree(runtime, ignore_errors=True)
    own_growth = after.own_rss - before.own_rss
    host_used = before.fields["MemAvailable"] - after.fields["MemAvailable"] - own_growth
    added = after.sandboxes - before.sandboxes
    return Result(
        per_room=host_used / added,
        server_per_room=(after.server_rss - before.server_rss) / added,
        before=before,
        after=after,
    )


def describe_run(result: Result) -> None:
    own = (result.after.own_rss - result.before.own_rss) / result.added / 1024
    kernel = ", ".join(f"{key} {result.kernel_delta(key) / 1024:.0f}" for key in KERNEL_FIELDS)
    print(f"   host {result.per_room / MiB:.2f} MiB/room by MemAvailable"
          f" (the clients' own growth, {own:.0f} KiB/room, subtracted),"
          f" {result.accounted / MiB:.2f} accounted for;"
          f" server RSS {result.server_per_room / 1024:.0f} KiB/room")  # fmt: skip
    print(f"   the host's counters, KiB/room: {kernel}")
    print(f"   charged to the sandboxes' cgroups, KiB/room:"
          f" kernel {result.charged_delta('kernel') / 1024:.0f},"
          f" shmem {result.charged_delta('shmem') / 1024:.0f};"
          f" page tables and stacks outside them"
          f" {result.charged_delta('outside') / 1024:.0f}")  # fmt: skip
    deltas = sorted(result.pss_deltas().items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{kind} {size / 1024:.0f}" for kind, size in deltas)
    print(f"   anonymous PSS by process, KiB/room: {shown}")


def summary(name: str, results: list[Result]) -> None:
    def span(values: list[float], digits: int) -> str:
        return f"{min(values):.{digits}f}-{max(values):.{digits}f}"

    for label, per_room in (
        ("MemAvailable", [r.per_room for r in results]),
        ("accounted", [r.accounted for r in results]),
    ):
        print(f"{f'{name}: host memory per room ({label})':<52} "
              f"{span([b / MiB for b in per_room], 2)} MiB = "
              f"{span([GiB / b for b in per_room], 0)} rooms/GiB"
              f"   (target >= {TARGETS[name]})")  # fmt: skip
    server = [r.server_per_room / 1024 for r in results]
    print(f"{f'{name}: server RSS per room':<52} {span(server, 0)} KiB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="bwrap,docker-runc,docker-runsc")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before a reading")
    args = parser.parse_args()
    print(load())
    for name in args.backends.split(","):
        print(f"\n== {name} ({args.rooms} rooms, one member each at a Python prompt) ==")
        if name == "bwrap":
            backend = Backend(name, {"REPLROOM_BACKEND": "bwrap"})
        elif not os.environ.get("DOCKER_HOST"):
            print("skipped: DOCKER_HOST not set (scripts/dockerd start)")
            continue
        else:
            runtime = name.removeprefix("docker-")
            backend = Backend(name, {"REPLROOM_BACKEND": "docker",
                                     "REPLROOM_DOCKER_RUNTIME": runtime})  # fmt: skip
        results = []
        for number in range(1, args.runs + 1):
            print(f"-- run {number}")
            result = await run(backend, args.rooms, args.settle)
            describe_run(result)
            results.append(result)
        summary(name, results)


if __name__ == "__main__":
    asyncio.run(main())

"""A thousand members: many rooms of a few members, each typing a keystroke a second.

    .venv/bin/python bench/members.py [--rooms 200] [--members 5] [--seconds 30]
        [--flood 5] [--big-rooms 1000] [--workers 4] [--compression deflate|none]
        [--py-spy /tmp/pyspy/bin/py-spy --profile-dir DIR]

a) ``--rooms`` rooms x ``--members`` members on a real `replroom serve` (bwrap),
   every member typing one keystroke a second, spread evenly over the second:
   echo latency (keystroke sent -> its echo seen by the typist), server CPU and
   RSS, members disconnected.
b) the same rooms again, with a flood (``while True: print("y"*80)``) in
   ``--flood`` of them: the other rooms' echo p99 next to its quiet value.
c) ``--big-rooms`` rooms x ``--members`` on a fresh server (0 skips it).

The members run in ``--workers`` processes of their own (uvloop), so that the
client does not dominate; each room's members share a process. Figures are
printed next to their targets, never asserted.

Beside the latencies: the server's CPU (utime + stime) per keystroke, the
REPLs' (the instance's cpuacct cgroup), and how long the server's event loop
waited for a CPU while runnable (schedstat). A loop that waits hundreds of
ms/s is starved by the machine, not slow: on a shared machine read the
latencies with that line, and the CPU per keystroke as the server's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import uvloop
import websockets
from figures import percentile
from websockets.asyncio.client import ClientConnection

from replroom.protocol import PROTOCOL_VERSION
from tests.client import Server

PROMPT = re.compile(rb">>> ")
# What each member of a room types: letters that neither the Python prompt nor
# the escape sequences readline sends contain, so each echo is its typist's.
KEYS = b"abcdefgijknopqstuvwxz"
CLEAR_EVERY = 10  # a member's every 10th keystroke is preceded by Ctrl-U: short lines
FLOOD = b"\x15while True: print('y' * 80)\r\r"  # a compound statement ends with a blank line
STOPPED = re.compile(rb"KeyboardInterrupt\r\n(\r\n)?>>> ")
ECHO_TARGET_MS = 50.0
SHUTDOWN_WAIT = 600
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the members (in worker processes) -------------------------------------------------


@dataclass
class Typist:
    """One member's connection: sends its key on schedule, times the echoes of it."""

    room: int
    key: int | None  # the byte it types; None: it only watches
    ws: ClientConnection
    sent: deque[float] = field(default_factory=deque)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (sent at, ms)
    unexpected: int = 0  # echoes of its key with no keystroke pending
    received: int = 0
    closed: str | None = None  # why the connection ended, if it did before we closed it
    watching: re.Pattern[bytes] | None = None  # what to wait for in the output
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    tail: bytes = b""

    async def receive(self) -> None:
        try:
            async for frame in self.ws:
                if not isinstance(frame, bytes):
                    continue
                now = time.monotonic()
                self.received += len(frame)
                if self.key is not None:
                    echoes = frame.count(self.key)
                    for _ in range(echoes):
                        if self.sent:
                            sent = self.sent.popleft()
                            self.samples.append((sent, (now - sent) * 1000))
                        else:
                            self.unexpected += 1
                if self.watching is not None:
                    self.tail = (self.tail + frame)[-256:]
                    if self.watching.search(self.tail):
                        self.watching, self.tail = None, b""
                        self.seen.set()
        except websockets.ConnectionClosed:
            pass
        if self.closed is None:
            self.closed = f"{self.ws.close_code} {self.ws.close_reason or ''}".strip()

    def wait_for(self, pattern: re.Pattern[bytes]) -> asyncio.Event:
        self.seen.clear()
        self.watching, self.tail = pattern, b""
        return self.seen

    async def type(self, data: bytes, *, timed: bool) -> None:
        if timed:
            self.sent.append(time.monotonic())
        await self.ws.send(data)


@dataclass
class RoomPlan:
    index: int  # over all rooms of the run
    id: str
    token: str


class Worker:
    """The members of some rooms, in one process."""

    def __init__(self, url: str, members: int, compression: str | None) -> None:
        self.url = url
        self.members = members
        self.compression = compression
        self.rooms: dict[int, list[Typist]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def join(self, plans: list[RoomPlan], concurrency: int) -> dict[str, Any]:
        """Every member joins; returns each room's time to a prompt seen by all its members."""
        limit = asyncio.Semaphore(concurrency)
        ready: list[float] = []
        errors: list[str] = []

        async def join_room(plan: RoomPlan) -> None:
            async with limit:
                started = time.monotonic()
                try:
                    typists = await asyncio.gather(
                        *(self._connect(plan, m) for m in range(self.members))
                    )
                    self.rooms[plan.index] = list(typists)
                    await asyncio.wait_for(asyncio.gather(*(t.seen.wait() for t in typists)), 120)
                    ready.append((time.monotonic() - started) * 1000)
                except Exception as error:
                    errors.append(f"room {plan.index}: {error!r}"[:300])

        await asyncio.gather(*(join_room(plan) for plan in plans))
        return {"ready": ready, "errors": errors}

    async def _connect(self, plan: RoomPlan, member: int) -> Typist:
        ws = await websockets.connect(
            f"{self.url}/ws/rooms/{plan.id}", max_size=None, open_timeout=120,
            compression=self.compression, ping_interval=None,
        )  # fmt: skip
        key = KEYS[member] if member < len(KEYS) else None
        typist = Typist(plan.index, key, ws)
        typist.wait_for(PROMPT)
        self.tasks.append(asyncio.create_task(typist.receive()))
        join = {"type": "join", "v": PROTOCOL_VERSION, "token": plan.token,
                "name": f"m{member}", "cols": 80, "rows": 24}  # fmt: skip
        await ws.send(json.dumps(join))
        return typist

    async def phase(
        self, start_at: float, seconds: float, total_members: int, first_member: int,
        flood: list[int],
    ) -> dict[str, Any]:  # fmt: skip
        """Type on schedule from ``start_at`` for ``seconds``; flood the ``flood`` rooms."""
        for typists in self.rooms.values():
            for typist in typists:
                typist.samples, typist.unexpected, typist.received = [], 0, 0
                typist.sent.clear()
        closed_before = {id(t) for ts in self.rooms.values() for t in ts if t.closed}
        flooding = set(flood)

        async def keystrokes(typist: Typist, offset: float) -> None:
            if typist.key is None or typist.room in flooding:
                return
            key = bytes([typist.key])
            for n in range(int(seconds)):
                at = start_at + offset + n
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if typist.closed:
                    return
                clear = n % CLEAR_EVERY == CLEAR_EVERY - 1
                try:
                    await typist.type(b"\x15" + key if clear else key, timed=True)
                except websockets.ConnectionClosed:
                    return

        async def flood_room(room: int) -> float | None:
            """Start a flood at once, stop it with Ctrl-C at the end; Ctrl-C -> prompt in ms."""
            typist = self.rooms[room][0]
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            await typist.type(FLOOD, timed=False)
            await asyncio.sleep(max(0.0, start_at + seconds - time.monotonic()))
            stopped = typist.wait_for(STOPPED)
            started = time.monotonic()
            await typist.type(b"\x03", timed=False)
            try:
                await asyncio.wait_for(stopped.wait(), 30)
            except TimeoutError:
                return None
            return (time.monotonic() - started) * 1000

        typists = [t for room in sorted(self.rooms) for t in self.rooms[room]]
        jobs = [
            keystrokes(t, ((first_member + i) % total_members) / total_members)
            for i, t in enumerate(typists)
        ]
        stops = asyncio.gather(*(flood_room(room) for room in flood if room in self.rooms))
        await asyncio.gather(*jobs)
        stop_times = await stops
        await asyncio.sleep(0.5)  # the last echoes
        samples: dict[int, list[tuple[float, float]]] = {}
        for room, typists_of_room in self.rooms.items():
            samples[room] = [s for t in typists_of_room for s in t.samples]
        return {
            "samples": samples,
            "lost": sum(len(t.sent) for t in typists),
            "unexpected": sum(t.unexpected for t in typists if t.room not in flooding),
            "disconnected": [t.closed for t in typists if t.closed and id(t) not in closed_before],
            "stop_ms": list(stop_times),
            "received": sum(t.received for t in typists),
        }

    async def close(self) -> None:
        for typists in self.rooms.values():
            for typist in typists:
                typist.closed = typist.closed or "closed by the bench"
        await asyncio.gather(
            *(t.ws.close() for ts in self.rooms.values() for t in ts), return_exceptions=True
        )
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def worker_main(conn: Connection, url: str, members: int, compression: str | None) -> None:
    async def serve() -> None:
        worker = Worker(url, members, compression)
        while True:
            command, arguments = await asyncio.to_thread(conn.recv)
            if command == "stop":
                await worker.close()
                conn.send(None)
                return
            result = await getattr(worker, command)(*arguments)
            conn.send(result)

    uvloop.run(serve())


# -- the bench (main process) -------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_delay(pid: int) -> float:
    """Seconds the process's main thread (the event loop) has waited for a CPU while runnable."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def sandboxes_cpu_seconds(instance: str) -> float:
    """CPU time of all the sandboxes of a server: its instance's cgroup (v1 cpuacct)."""
    usage = Path(f"/sys/fs/cgroup/cpuacct/{instance}/cpuacct.usage")
    return int(usage.read_text()) / 1e9 if usage.exists() else 0.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load() -> str:
    """The load averages, as `uptime` says them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Pool:
    """The worker processes and the commands they run together."""

    def __init__(self, count: int, url: str, members: int, compression: str | None) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main, args=(theirs, url, members, compression), daemon=True
            )
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    async def each(self, command: str, arguments: list[tuple[Any, ...]]) -> list[Any]:
        for pipe, args in zip(self.pipes, arguments, strict=True):
            pipe.send((command, args))
        return await asyncio.gather(*(asyncio.to_thread(pipe.recv) for pipe in self.pipes))

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes if p.pid is not None)

    def run_delay(self) -> float:
        return sum(run_delay(p.pid) for p in self.processes if p.pid is not None)

    async def stop(self) -> None:
        with contextlib.suppress(EOFError, OSError):  # a worker that died already
            await self.each("stop", [()] * len(self.pipes))
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


@dataclass
class Window:
    """What the server and the machine did during a phase."""

    seconds: float
    server_cpu: float  # percent of one core
    clients_cpu: float
    sandboxes_cpu: float
    server_waited: float  # ms per second the server's loop was runnable but had no CPU
    clients_waited: float  # the same, summed over the client processes
    machine_cpu: float  # percent of all cores
    rss_peak: float
    fds: int


async def measure_window(
    server: Server, pool: Pool, run: asyncio.Future[Any]
) -> tuple[Any, Window]:
    assert server.process is not None
    server_pid = server.process.pid
    started = time.monotonic()
    server_cpu, clients_cpu = cpu_seconds(server_pid), pool.cpu_seconds()
    sandboxes_cpu = sandboxes_cpu_seconds(server.instance)
    server_delay, clients_delay = run_delay(server_pid), pool.run_delay()
    busy, total = machine_busy()
    rss_peak, fds = rss_mib(server_pid), open_fds(server_pid)
    while not run.done():
        await asyncio.wait({run}, timeout=1)
        rss_peak, fds = max(rss_peak, rss_mib(server_pid)), max(fds, open_fds(server_pid))
    elapsed = time.monotonic() - started
    busy_after, total_after = machine_busy()
    window = Window(
        seconds=elapsed,
        server_cpu=(cpu_seconds(server_pid) - server_cpu) / elapsed * 100,
        clients_cpu=(pool.cpu_seconds() - clients_cpu) / elapsed * 100,
        sandboxes_cpu=(sandboxes_cpu_seconds(server.instance) - sandboxes_cpu) / elapsed * 100,
        server_waited=(run_delay(server_pid) - server_delay) / elapsed * 1000,
        clients_waited=(pool.run_delay() - clients_delay) / elapsed * 1000,
        machine_cpu=(busy_after - busy) / max(1, total_after - total) * 100,
        rss_peak=rss_peak,
        fds=fds,
    )
    return run.result(), window


def figure(label: str, samples: list[float]) -> str:
    if not samples:
        return f"{label:<46} no samples"
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    mark = "ok" if p99 <= ECHO_TARGET_MS else "MISSED"
    return (
        f"{label:<46} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   max {max(samples):7.1f} ms"
        f"   (n={len(samples)})   target p99 <= {ECHO_TARGET_MS:.0f} ms: {mark}"
    )


@dataclass
class PhaseResult:
    samples: dict[int, list[tuple[float, float]]]  # room -> (sent at, echo ms)
    start_at: float
    window: Window
    lost: int
    unexpected: int
    disconnected: list[str]
    stop_ms: list[float | None]
    received: int  # terminal output bytes, all members

    def of_rooms(self, rooms: set[int] | None = None) -> list[float]:
        return [ms for r, ss in self.samples.items() if rooms is None or r in rooms for _, ms in ss]

    def slow(self, rooms: set[int] | None = None) -> str:
        """How the echoes over the target spread: over rooms, and over the seconds."""
        slow = [(room, sent) for room, samples in self.samples.items()
                if rooms is None or room in rooms
                for sent, ms in samples if ms > ECHO_TARGET_MS]  # fmt: skip
        seconds = {int(sent - self.start_at) for _, sent in slow}
        total = len(self.samples) if rooms is None else len(rooms)
        which = f" ({', '.join(map(str, sorted(seconds)))})" if 0 < len(seconds) <= 8 else ""
        return (f"{len(slow)} echoes, in {len({room for room, _ in slow})} of {total} rooms,"
                f" in {len(seconds)} of {int(self.window.seconds)} seconds{which}")  # fmt: skip


class Run:
    """One server with its rooms, and the workers whose members fill them."""

    def __init__(self, args: argparse.Namespace, rooms: int) -> None:
        self.args = args
        self.room_count = rooms
        self.data = Path(tempfile.mkdtemp(prefix="replroom-members-"))
        self.runtime = Path(f"/run/replroom-bench-members-{os.getpid()}-{rooms}")
        self.runtime.mkdir(mode=0o711, exist_ok=True)
        env = {
            "REPLROOM_BACKEND": "bwrap",
            "REPLROOM_MEMORY_BUDGET": "100000g",  # capacity: the machine is the limit
            "REPLROOM_HEALTH_INTERVAL": "2",  # the shipped default (tests use 0.5)
            "REPLROOM_IDLE_TIMEOUT": "600",
        }
        self.server = Server(self.data, self.runtime, env=env)
        self.pool: Pool | None = None
        self.plans: list[RoomPlan] = []
        self.profiles: list[subprocess.Popen[bytes]] = []

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    async def start(self) -> None:
        available_before = mem_available_mib()
        started = time.monotonic()
        await asyncio.to_thread(self.server.start)
        print(f"{'server started':<46} {time.monotonic() - started:7.2f} s")
        limit = asyncio.Semaphore(8)

        async def create(http: httpx.AsyncClient, index: int) -> RoomPlan:
            async with limit:
                response = await http.post(f"{self.server.url}/api/rooms")
                response.raise_for_status()
                room = response.json()
                return RoomPlan(index, room["id"], room["invite_token"])

        started = time.monotonic()
        async with httpx.AsyncClient(timeout=60) as http:
            self.plans = list(
                await asyncio.gather(*(create(http, i) for i in range(self.room_count)))
            )
        print(f"{f'{self.room_count} rooms created (POST /api/rooms)':<46} "
              f"{time.monotonic() - started:7.2f} s")  # fmt: skip
        compression = None if self.args.compression == "none" else "deflate"
        self.pool = Pool(self.args.workers, self.server.ws_url, self.args.members, compression)
        share = [self.plans[w :: self.args.workers] for w in range(self.args.workers)]
        started = time.monotonic()
        cpu_before = cpu_seconds(self.pid)
        joined = await self.pool.each("join", [(plans, 16) for plans in share])
        elapsed = time.monotonic() - started
        ready = [t for result in joined for t in result["ready"]]
        errors = [e for result in joined for e in result["errors"]]
        members = self.room_count * self.args.members
        server_cpu = (cpu_seconds(self.pid) - cpu_before) / elapsed * 100
        print(f"{f'{members} members joined, every room at its prompt':<46} {elapsed:7.2f} s"
              f"   ({len(ready) / elapsed:.0f} rooms/s,"
              f" server CPU {server_cpu:.0f} % of a core)")  # fmt: skip
        if ready:
            p50, p99 = percentile(ready, 50), percentile(ready, 99)
            print(f"{'  a room: first connect -> prompt for all':<46} "
                  f"p50 {p50:7.0f} ms   p99 {p99:7.0f} ms")  # fmt: skip
        print(f"{'  server RSS / fds / host memory used':<46} {rss_mib(self.pid):7.0f} MiB   "
              f"{open_fds(self.pid)} fds   "
              f"{available_before - mem_available_mib():.0f} MiB")  # fmt: skip
        for error in errors[:5]:
            print(f"  join error: {error}")
        if errors:
            print(f"  join errors: {len(errors)} room(s)")
        await self._idle(5.0)

    async def _idle(self, seconds: float) -> None:
        """The server's CPU while every member is connected and nobody types."""
        before, repls = cpu_seconds(self.pid), sandboxes_cpu_seconds(self.server.instance)
        await asyncio.sleep(seconds)
        server = (cpu_seconds(self.pid) - before) / seconds * 100
        repls = (sandboxes_cpu_seconds(self.server.instance) - repls) / seconds * 100
        print(f"{'  idle CPU: server / REPLs':<46} {server:5.1f} % / {repls:.1f} % of a core")

    async def phase(self, name: str, seconds: float, flood: list[int]) -> PhaseResult:
        assert self.pool is not None
        start_at = time.monotonic() + 1.0
        total = self.room_count * self.args.members
        firsts, first = [], 0
        for worker in range(self.args.workers):
            firsts.append(first)
            first += len(self.plans[worker :: self.args.workers]) * self.args.members
        arguments = [(start_at, seconds, total, f, flood) for f in firsts]
        self._profile(name, seconds)
        run = asyncio.ensure_future(self.pool.each("phase", arguments))
        results, window = await measure_window(self.server, self.pool, run)
        return PhaseResult(
            samples={r: s for result in results for r, s in result["samples"].items()},
            start_at=start_at,
            window=window,
            lost=sum(r["lost"] for r in results),
            unexpected=sum(r["unexpected"] for r in results),
            disconnected=[d for r in results for d in r["disconnected"]],
            stop_ms=[s for r in results for s in r["stop_ms"]],
            received=sum(r["received"] for r in results),
        )

    def _profile(self, name: str, seconds: float) -> None:
        """py-spy on the server for the phase (--py-spy), as collapsed stacks."""
        if not self.args.py_spy:
            return
        directory = Path(self.args.profile_dir)
        directory.mkdir(parents=True, exist_ok=True)
        output = directory / f"{self.room_count}-rooms-{name}-{os.getpid()}.txt"
        command = [self.args.py_spy, "record", "--pid", str(self.pid), "--format", "raw",
                   "--duration", str(int(seconds)), "--rate", "200", "--nonblocking",
                   "--output", str(output)]  # fmt: skip
        self.profiles.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        print(f"  profiling the server: {output}")

    async def stop(self) -> None:
        for profile in self.profiles:
            await asyncio.to_thread(profile.wait)
        if self.pool is not None:
            await self.pool.stop()
        process = self.server.process
        if process is not None and process.poll() is None:
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                # Longer than Server.stop's 30 s: a thousand sandboxes take their time.
                await asyncio.to_thread(process.wait, SHUTDOWN_WAIT)
                elapsed = f"{time.monotonic() - started:7.2f} s"
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
                elapsed = f"over {SHUTDOWN_WAIT} s: killed"
            print(f"{'server stopped (SIGTERM -> exit)':<46} {elapsed}")
        problems = [
            line
            for line in self.server.log().splitlines()
            if '"level": "error"' in line or "Traceback" in line
        ]
        print(f"{'  errors in the server log':<46} {len(problems)}")
        for line in problems[:3]:
            print(f"    {line[:300]}")
        print(f"{'  sandboxes it left behind':<46} {self._clean_up_leftovers()}")
        shutil.rmtree(self.runtime, ignore_errors=True)
        shutil.rmtree(self.data, ignore_errors=True)

    def _clean_up_leftovers(self) -> str:
        """`replroom sandbox cleanup` for the server's instance: nothing, if it stopped well."""
        env = {**os.environ, "REPLROOM_INSTANCE": self.server.instance,
               "REPLROOM_RUNTIME_DIR": str(self.runtime)}  # fmt: skip
        cleanup = subprocess.run(
            [sys.executable, "-m", "replroom.cli", "sandbox", "cleanup", "--backend", "bwrap"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        return (cleanup.stdout or cleanup.stderr).strip()


def report_phase(label: str, result: PhaseResult, rooms: set[int] | None = None) -> list[float]:
    samples = result.of_rooms(rooms)
    print(figure(label, samples))
    print(f"{f'  over {ECHO_TARGET_MS:.0f} ms':<46} {result.slow(rooms)}")
    window = result.window
    keystrokes = len(result.of_rooms()) + result.lost
    per_keystroke = window.server_cpu / 100 * window.seconds / max(1, keystrokes) * 1e6
    print(
        f"{'  server CPU / RSS peak / fds':<46} {window.server_cpu:5.0f} % of a core"
        f" ({per_keystroke:.0f} us a keystroke)   {window.rss_peak:5.0f} MiB   {window.fds} fds"
    )
    print(
        f"{'  CPU: REPLs / clients / machine busy':<46} {window.sandboxes_cpu:5.0f} %"
        f" / {window.clients_cpu:.0f} % of a core / {window.machine_cpu:.0f} % of"
        f" {os.cpu_count()} cores"
    )
    print(f"{'  waiting for a CPU: server / clients':<46} {window.server_waited:5.0f} ms/s"
          f" / {window.clients_waited:.0f} ms/s (a busy machine)")  # fmt: skip
    rate = result.received / window.seconds / 1e3
    print(f"{'  terminal output received, all members':<46} {rate:7.0f} kB/s")
    disconnected = len(result.disconnected)
    print(f"{'  members disconnected':<46} {disconnected:5d}   (target: 0)"
          f"{'' if not disconnected else ' ' + repr(result.disconnected[:3])}")  # fmt: skip
    if result.lost or result.unexpected:
        print(
            f"{'  keystrokes without echo / stray echoes':<46} {result.lost} / {result.unexpected}"
        )
    return samples


async def members_and_flood(args: argparse.Namespace) -> None:
    rooms, members = args.rooms, args.members
    print(f"\n== a) {rooms} rooms x {members} members, a keystroke a second each"
          f" ({args.seconds:g} s; load {load()}) ==")  # fmt: skip
    run = Run(args, rooms)
    try:
        await run.start()
        quiet = await run.phase("quiet", args.seconds, [])
        report_phase(f"echo, {rooms * members} members", quiet)
        if args.flood:
            flood = list(range(args.flood))
            calm = set(range(rooms)) - set(flood)
            print(f"\n== b) the same, with `while True: print('y' * 80)` in {len(flood)} rooms ==")
            flooded = await run.phase("flood", args.seconds, flood)
            during = report_phase(f"echo in the {len(calm)} other rooms", flooded, calm)
            before = percentile(quiet.of_rooms(calm), 99)
            after = percentile(during, 99) if during else float("nan")
            ratio = after / before
            mark = "ok" if ratio <= 2 else "MISSED"
            print(f"{'  p99 flood / quiet, the same rooms':<46} {after:.2f} / {before:.2f} ms"
                  f" = {ratio:.2f}x   (target <= 2x: {mark})")  # fmt: skip
            stops = [s for s in flooded.stop_ms if s is not None]
            never = len(flood) - len(stops)
            span = f"{min(stops):.0f}-{max(stops):.0f} ms" if stops else "-"
            print(f"{'  Ctrl-C -> prompt in the flooded rooms':<46} {span}"
                  f"{f'   ({never} never within 30 s)' if never else ''}")  # fmt: skip
            after_flood = await run.phase("after", min(args.seconds, 10), [])
            report_phase("echo after the floods, all rooms", after_flood)
    finally:
        await run.stop()


async def many_rooms(args: argparse.Namespace) -> None:
    rooms, members = args.big_rooms, args.members
    print(f"\n== c) {rooms} rooms x {members} members ({args.seconds:g} s; load {load()}) ==")
    run = Run(args, rooms)
    try:
        await run.start()
        result = await run.phase("quiet", args.seconds, [])
        report_phase(f"echo, {rooms * members} members", result)
    finally:
        await run.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=200, help="rooms of a) and b)")
    parser.add_argument("--members", type=int, default=5, help="members per room")
    parser.add_argument("--seconds", type=float, default=30, help="typing time per phase")
    parser.add_argument("--flood", type=int, default=5, help="flooded rooms in b); 0 skips b)")
    parser.add_argument("--big-rooms", type=int, default=1000, help="rooms of c); 0 skips c)")
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--compression", choices=("deflate", "none"), default="deflate",
                        help="offer permessage-deflate as browsers do, or not")  # fmt: skip
    parser.add_argument("--py-spy", help="py-spy executable: profile the server per phase")
    parser.add_argument("--profile-dir", default="/tmp/replroom-members-profiles")
    args = parser.parse_args()
    if args.rooms:
        await members_and_flood(args)
    if args.big_rooms:
        await many_rooms(args)


if __name__ == "__main__":
    asyncio.run(main())

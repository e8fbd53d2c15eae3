"""Rooms benchmark: room ready, keystroke echo, the design note's workload, output floods.

    .venv/bin/python bench/rooms.py [--backends bwrap,docker-runc] [--runs 20]

Starts a real `replroom serve` on 127.0.0.1 per backend and drives it with
WebSocket clients, as browsers would. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import seed
from figures import line

from tests.client import RoomClient, Server

PROMPT = b">>> "


async def room_ready(server: Server, http: httpx.AsyncClient, spares: int) -> float:
    """POST a room, join it, see the prompt; first waits until the pool holds ``spares``.

    One HTTP client throughout, as a browser keeps its connection.
    """
    await server.pool_filled(http, spares)
    started = time.perf_counter()
    response = await http.post(f"{server.url}/api/rooms")
    room = response.raise_for_status().json()
    client = await RoomClient.connect(server, room["id"], room["invite_token"])
    await client.wait_output(PROMPT)
    elapsed = (time.perf_counter() - started) * 1000
    await client.close()
    return elapsed


async def rooms_ready(name: str, env: dict[str, str], runs: int) -> None:
    """Room ready with the shipped pool (warm) and with none (cold)."""
    pools = {"warm pool": (None, "p50 <= 20 ms, p95 <= 40 ms"), "cold, no pool": ("0", "")}
    if name == "bwrap":
        pools["cold, no pool"] = ("0", "p50 <= 60 ms")
    for label, (size, target) in pools.items():
        with tempfile.TemporaryDirectory() as data:
            runtime = Path(f"/run/replroom-bench-ready-{os.getpid()}")
            runtime.mkdir(mode=0o711, exist_ok=True)
            extra = {"REPLROOM_IDLE_TIMEOUT": "0"} | ({"REPLROOM_POOL_SIZE": size} if size else {})
            server = Server(Path(data), runtime, env={**env, **extra})
            server.start()
            try:
                async with httpx.AsyncClient() as http:
                    spares = (await http.get(f"{server.url}/api/capacity")).json()["pool_size"]
                    await room_ready(server, http, spares)  # warm-up
                    ready = [await room_ready(server, http, spares) for _ in range(runs)]
                note = f"   (target {target})" if target else ""
                print(line(f"room ready, {label}: POST -> WS -> prompt", ready) + note)
            finally:
                server.stop()
                shutil.rmtree(runtime, ignore_errors=True)


async def echo_round_trips(server: Server, members: int, keystrokes: int) -> list[float]:
    room = await server.create_room()
    clients = [
        await RoomClient.connect(server, room["id"], room["invite_token"], name=f"m{i}")
        for i in range(members)
    ]
    typist = clients[0]
    await typist.wait_output(PROMPT)
    samples = []
    for i in range(keystrokes):
        at = len(typist.output)
        started = time.perf_counter()
        await typist.type(b"a")
        await typist.wait_output(b"a", after=at)
        samples.append((time.perf_counter() - started) * 1000)
        if i % 50 == 49:
            await typist.type(b"\x15")  # Ctrl-U: keep the line short
    for client in clients:
        await client.close()
    return samples


async def evaluations(
    server: Server, users: int, each: int, think: tuple[float, float] | None
) -> list[float]:
    """The design note's workload: users x evaluations of a short expression.

    Every user has a room and a prompt before the first evaluation: start-up
    is measured by room_ready, this measures evaluation round trips. With
    ``think`` (seconds), each user pauses a random time in that range before
    each evaluation, as people do; without, all evaluate in lockstep.
    """
    everyone_ready = asyncio.Barrier(users)

    async def user(index: int) -> list[float]:
        room = await server.create_room()
        client = await RoomClient.connect(server, room["id"], room["invite_token"])
        at = await client.wait_output(PROMPT)
        await everyone_ready.wait()
        times = []
        for n in range(each):
            if think:
                await asyncio.sleep(random.uniform(*think))
            started = time.perf_counter()
            await client.type(f"{index}+{n}\r".encode())
            at = await client.wait_output(f"{index + n}\r\n>>> ", after=at)
            times.append((time.perf_counter() - started) * 1000)
        await client.close()
        return times

    results = await asyncio.gather(*(user(i) for i in range(users)))
    return [t for times in results for t in times]


async def read_everything(server_url: str, room_id: str, token: str) -> None:
    """A member in a process of its own that reads the flood as fast as it can."""
    server = Server(Path("."), Path("."), port=int(server_url.rsplit(":", 1)[1]))
    client = await RoomClient.connect(server, room_id, token, name="bob")
    await client.wait_closed(timeout=3600)


async def flood(server: Server) -> None:
    """`yes`-like output for 5 s, three members (one stalled, one in another process)."""
    room = await server.create_room()
    token = room["invite_token"]
    alice = await RoomClient.connect(server, room["id"], token, name="alice")
    bob = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--read-everything", server.url, room["id"], token
    )
    stalled = await RoomClient.connect(server, room["id"], token, name="stalled", read=False)
    other_room = await server.create_room()
    other = await RoomClient.connect(server, other_room["id"], other_room["invite_token"])
    await alice.wait_output(PROMPT)
    await other.wait_output(PROMPT)
    await alice.until_members(3)
    rss_before = server.rss()
    await alice.type(b"import os\r")
    await alice.type(b"while True: os.write(1, b'y\\n' * 4096)\r\r")
    flood_started = time.perf_counter()
    echo = []
    rss_peak = rss_before
    while time.perf_counter() - flood_started < 5:
        at = len(other.output)
        started = time.perf_counter()
        await other.type(b"a")
        await other.wait_output(b"a", after=at)
        echo.append((time.perf_counter() - started) * 1000)
        rss_peak = max(rss_peak, server.rss())
        if len(echo) % 50 == 0:
            await other.type(b"\x15")
    received = len(alice.output)
    at = len(alice.output)
    started = time.perf_counter()
    await alice.type(b"\x03")
    await alice.wait_output(b"KeyboardInterrupt", after=at)
    silenced = (time.perf_counter() - started) * 1000
    print(f"{'flood: output seen by a member in 5 s':<44} {received / 1e6:.1f} MB")
    print(f"{'flood: server RSS growth (peak)':<44} {(rss_peak - rss_before) / 1e6:.1f} MB")
    print(f"{'flood: Ctrl-C to KeyboardInterrupt shown':<44} {silenced:.0f} ms")
    print(line("flood: echo in another room", echo, high=99))
    for client in (alice, stalled, other):
        await client.close()
    bob.terminate()
    await bob.wait()


async def shutdown(env: dict[str, str], live_rooms: int) -> None:
    """SIGTERM to a server with ``live_rooms`` rooms, each with a member at a Python prompt."""
    with tempfile.TemporaryDirectory() as data:
        runtime = Path(f"/run/replroom-bench-stop-{os.getpid()}")
        runtime.mkdir(mode=0o711, exist_ok=True)
        server = Server(Path(data), runtime, env={"REPLROOM_MEMORY_BUDGET": "1000g", **env})
        server.start()
        clients: list[RoomClient] = []
        try:
            for start in range(0, live_rooms, 25):
                rooms = [await server.create_room() for _ in range(min(25, live_rooms - start))]
                batch = await asyncio.gather(
                    *(RoomClient.connect(server, r["id"], r["invite_token"]) for r in rooms)
                )
                await asyncio.gather(*(c.wait_output(PROMPT, timeout=120) for c in batch))
                clients += batch
            assert server.process is not None
            started = time.perf_counter()
            server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.process.wait, 120)
            elapsed = time.perf_counter() - started
            print(f"{f'SIGTERM -> exit, {live_rooms} live rooms':<44} {elapsed:7.2f} s"
                  "   (target <= 10 s)")  # fmt: skip
        finally:
            server.stop()
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
            shutil.rmtree(runtime, ignore_errors=True)


async def bench(name: str, env: dict[str, str], runs: int) -> None:
    print(f"\n== {name} ==   (load average {os.getloadavg()[0]:.2f})")
    await rooms_ready(name, env, runs)
    with tempfile.TemporaryDirectory() as data:
        runtime = Path(f"/run/replroom-bench-{os.getpid()}")
        runtime.mkdir(mode=0o711, exist_ok=True)
        server = Server(Path(data), runtime, env={"REPLROOM_IDLE_TIMEOUT": "1", **env})
        server.start()
        try:
            for members in (1, 10):
                samples = await echo_round_trips(server, members, 200)
                print(line(f"keystroke echo, {members} member(s)", samples, high=99))
            samples = await evaluations(server, 20, 5, think=(0.1, 0.5))
            print(line("20 users x 5 evaluations (think 0.1-0.5 s)", samples))
            samples = await evaluations(server, 20, 5, think=None)
            print(line("20 users x 5 evaluations (lockstep)", samples))
            await flood(server)
        finally:
            server.stop()
            shutil.rmtree(runtime, ignore_errors=True)
    await shutdown(env, 300 if name == "bwrap" else 100)
    # The design note's own workload: 20 members in one Ruby room (bench/seed.py).
    await seed.bench(name, env, runs=3, client_processes=1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="bwrap,docker-runc")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--read-everything", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_everything:
        await read_everything(*args.read_everything)
        return
    for name in args.backends.split(","):
        if name == "bwrap":
            await bench(name, {"REPLROOM_BACKEND": "bwrap"}, args.runs)
        elif not os.environ.get("DOCKER_HOST"):
            print(f"\n== {name} ==\nskipped: DOCKER_HOST not set (scripts/dockerd start)")
        else:
            runtime = name.removeprefix("docker-")
            env = {"REPLROOM_BACKEND": "docker", "REPLROOM_DOCKER_RUNTIME": runtime}
            await bench(name, env, args.runs)


if __name__ == "__main__":
    asyncio.run(main())

"""The design note's own workload: 20 members in one room, each typing `1+n` into Ruby's irb.

    .venv/bin/python bench/seed.py [--backends bwrap,docker-runc] [--runs 3]

One room (Ruby), its owner watching and 20 members arriving 1 s apart; each
member types `1+n` five times, thinking 1 s after each result (the design
note's artillery schedule). Each `1+n` is one binary WebSocket frame ending in
CR, timed from its send to the frame that completes `=> n+1` (n is unique per
evaluation). The burst variant: all 20 members at the prompt, then all at once
each types its 5 evaluations back to back (the next as soon as the previous
result shows), so that up to 20 evaluations wait in irb's input at a time.

Clients run in processes of their own (``--client-processes``), not in the
server's nor in this one, and answer the terminal's cursor query (ESC[6n) as
xterm.js does. Each workload is measured with permessage-deflate offered by
the clients (as browsers always do) and without. Figures are printed, never
asserted. ``bench/rooms.py`` may call :func:`seed_figures` with a server of
its own started with :data:`SERVER_ENV` (Ruby by default), or :func:`bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import line
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from replroom.protocol import PROTOCOL_VERSION
from tests.client import Server

MEMBERS = 20
EVALUATIONS = 5
PROMPT = b":0> "  # the end of irb's prompt, irb(main):001:0>
# irb shows a result as `=> n`, coloured (SGR sequences around n), then CR LF.
RESULT = re.compile(rb"=> (?:\x1b\[[0-9;]*m)*(\d+)(?:\x1b\[[0-9;]*m)*\r")
CURSOR_QUERY = b"\x1b[6n"
CURSOR_ANSWER = b"\x1b[1;1R"
SERVER_ENV = {"REPLROOM_DEFAULT_LANGUAGE": "ruby", "REPLROOM_IDLE_TIMEOUT": "1"}


@dataclass
class Workload:
    """What the client processes do; they get it as JSON on their command line."""

    ws_url: str
    room_id: str
    owner_token: str
    invite_token: str
    members: list[int]  # which of the members this process runs (global indices)
    with_owner: bool
    burst: bool  # all members join first, then evaluate back to back (no think time)
    compression: bool
    evaluations: int = EVALUATIONS
    arrival: float = 1.0  # seconds between members' arrivals
    think: float = 1.0  # seconds after a result before the next evaluation


# -- the client side (in processes of their own) --------------------------------------------


class Member(asyncio.Protocol):
    """One member's WebSocket, as lean as a client can be (websockets' sans-I/O protocol).

    Each member of the room is a browser on a computer of its own; here 21
    share one process, and each frame of output reaches all of them at once.
    So frames are handled as they arrive, with no task or queue per
    connection, and timestamped first: a member's timing includes as little
    as possible of the others' work.
    """

    def __init__(self, workload: Workload) -> None:
        url = f"{workload.ws_url}/ws/rooms/{workload.room_id}"
        offer = enable_client_permessage_deflate(None) if workload.compression else None
        self.conn = ClientProtocol(parse_uri(url), extensions=offer, max_size=None)
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.deflate = False  # the server agreed on permessage-deflate
        self.awaited: dict[int, asyncio.Future[float]] = {}  # by result
        self.prompt = asyncio.Event()
        self._tail = b""  # the end of the output so far: a result may span two frames

    @classmethod
    async def join(cls, workload: Workload, token: str, name: str) -> Member:
        address = urlsplit(workload.ws_url)
        loop = asyncio.get_running_loop()
        _, member = await loop.create_connection(
            lambda: cls(workload), address.hostname, address.port
        )
        await asyncio.wait_for(member.opened, 60)
        join = {"type": "join", "v": PROTOCOL_VERSION, "token": token, "name": name}
        member.conn.send_text(json.dumps(join).encode())
        member._flush()
        return member

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.conn.send_request(self.conn.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        arrived = time.perf_counter()
        self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, Response):
                self.deflate = "Sec-WebSocket-Extensions" in event.headers
                if self.conn.handshake_exc is not None:
                    self.opened.set_exception(self.conn.handshake_exc)
                else:
                    self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                self._output(bytes(event.data), arrived)
        self._flush()  # pongs, answers to ESC[6n, the closing handshake

    def _output(self, frame: bytes, arrived: float) -> None:
        if CURSOR_QUERY in frame:
            self.conn.send_binary(CURSOR_ANSWER)
        window = self._tail + frame
        self._tail = window[-64:]
        if PROMPT in window:
            self.prompt.set()
        for match in RESULT.finditer(window):
            result = self.awaited.pop(int(match[1]), None)
            if result is not None:
                result.set_result(arrived)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.opened, *self.awaited.values()):
            if not future.done():
                future.set_exception(ConnectionError("the connection was lost"))
        self.closed.set_result(None)

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.conn.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    async def evaluate(self, n: int) -> float:
        """Type `1+n` and wait for `=> n+1`: the milliseconds between the two."""
        result = asyncio.get_running_loop().create_future()
        self.awaited[n + 1] = result
        sent = time.perf_counter()
        self.conn.send_binary(f"1+{n}\r".encode())
        self._flush()
        return (await asyncio.wait_for(result, 60) - sent) * 1000

    async def close(self) -> None:
        self.conn.send_close()
        self._flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed, 10)


def unique_n(member: int, evaluation: int) -> int:
    # Five digits for every result, so that no result is a prefix of another.
    return 10000 + 100 * member + evaluation


async def run_clients(workload: Workload) -> dict[str, object]:
    """This process's part of the workload: report "ready", wait for "go", then run it.

    Returns the milliseconds per evaluation and whether the server agreed on deflate.
    """
    loop = asyncio.get_running_loop()
    owner = None
    if workload.with_owner:
        owner = await Member.join(workload, workload.owner_token, "owner")
        await asyncio.wait_for(owner.prompt.wait(), 60)
    members: dict[int, Member] = {}
    if workload.burst:  # everyone at the prompt before the start
        for index in workload.members:
            members[index] = await Member.join(workload, workload.invite_token, f"m{index}")
        await asyncio.gather(*(asyncio.wait_for(m.prompt.wait(), 60) for m in members.values()))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    started = time.perf_counter()

    async def member_session(index: int) -> list[float]:
        if not workload.burst:
            await asyncio.sleep(started + index * workload.arrival - time.perf_counter())
            members[index] = await Member.join(workload, workload.invite_token, f"m{index}")
            await asyncio.wait_for(members[index].prompt.wait(), 60)
        times = []
        for evaluation in range(workload.evaluations):
            if evaluation and not workload.burst:
                await asyncio.sleep(workload.think)
            times.append(await members[index].evaluate(unique_n(index, evaluation)))
        return times

    results = await asyncio.gather(*(member_session(i) for i in workload.members))
    connections = [*members.values(), *([owner] if owner else [])]
    await asyncio.gather(*(member.close() for member in connections))
    samples = [t for times in results for t in times]
    return {"samples": samples, "deflate": all(member.deflate for member in connections)}


# -- the measuring side -------------------------------------------------------------------


@dataclass
class Run:
    samples: list[float]  # milliseconds from each `1+n` sent to its result shown
    # The server's CPU time from the start to the last result, per evaluation, in
    # milliseconds: with the 1 s schedule it includes the members' joins and ~25 s
    # of the server's background work; the burst's is mostly the evaluations'.
    server_cpu: float
    deflate: bool  # the server agreed on permessage-deflate

    def figure(self, label: str, targets: str) -> str:
        return (
            f"{line(label, self.samples, high=99, width=40)}   {targets}"
            f"   server CPU {self.server_cpu:.2f} ms/evaluation"
            f"{', deflate agreed' if self.deflate else ''}"
        )


def server_cpu(server: Server) -> float:
    """Seconds of CPU the server's process has used (the sandboxes' processes not included)."""
    assert server.process is not None
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def seed_workload(
    server: Server,
    *,
    burst: bool,
    compression: bool,
    client_processes: int = 1,
    evaluations: int = EVALUATIONS,
) -> Run:
    """One run of the workload in a new room of ``server``.

    The server's default language must be Ruby (:data:`SERVER_ENV`).
    """
    room = await server.create_room()
    workloads = [
        Workload(
            ws_url=server.ws_url,
            room_id=room["id"],
            owner_token=room["owner_token"],
            invite_token=room["invite_token"],
            members=list(range(MEMBERS))[part::client_processes],
            with_owner=part == 0,
            burst=burst,
            compression=compression,
            evaluations=evaluations,
        )
        for part in range(client_processes)
    ]
    clients = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--clients",
            json.dumps(asdict(workload)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for workload in workloads
    ]
    try:
        for client in clients:
            assert client.stdout is not None
            if await client.stdout.readline() != b"ready\n":
                raise RuntimeError("a client process failed before the start (see above)")
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(b"go\n")
            await client.stdin.drain()
        cpu_before = server_cpu(server)
        outputs = await asyncio.gather(*(client.communicate() for client in clients))
    finally:
        for client in clients:
            if client.returncode is None:
                client.kill()
                await client.wait()
    cpu = server_cpu(server) - cpu_before
    if any(client.returncode for client in clients):
        raise RuntimeError("a client process failed (see above)")
    parts = [json.loads(stdout) for stdout, _ in outputs]
    samples = [t for part in parts for t in part["samples"]]
    return Run(samples, cpu * 1000 / len(samples), all(part["deflate"] for part in parts))


async def seed_figures(server: Server, runs: int, client_processes: int = 1) -> None:
    """Print the workload's and the burst's figures, ``runs`` times each.

    The clients offer permessage-deflate (as browsers do) or not; the figure
    says whether the server agreed.
    """
    for compression in (False, True):
        offer = "deflate offered" if compression else "no deflate"
        for run in range(runs):
            result = await seed_workload(
                server, burst=False, compression=compression, client_processes=client_processes
            )
            label = f"seed 20x5, {offer}, run {run + 1}"
            print(result.figure(label, "(target p50 <= 1.4 ms, p99 <= 6 ms)"), flush=True)
        for run in range(runs):
            result = await seed_workload(
                server, burst=True, compression=compression, client_processes=client_processes
            )
            label = f"seed burst, {offer}, run {run + 1}"
            print(result.figure(label, "(target p50 <= 7 ms)"), flush=True)


async def bench(name: str, env: dict[str, str], runs: int, client_processes: int) -> None:
    print(f"\n== {name} ==", flush=True)
    with tempfile.TemporaryDirectory() as data:
        runtime = Path(f"/run/replroom-bench-seed-{os.getpid()}")
        runtime.mkdir(mode=0o711, exist_ok=True)
        server = Server(Path(data), runtime, env={**SERVER_ENV, **env})
        server.start()
        try:
            await seed_figures(server, runs, client_processes)
        finally:
            server.stop()
            shutil.rmtree(runtime, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="bwrap,docker-runc")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--clients", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        print(json.dumps(await run_clients(Workload(**json.loads(args.clients)))), flush=True)
        return
    for name in args.backends.split(","):
        if name == "bwrap":
            await bench(name, {"REPLROOM_BACKEND": "bwrap"}, args.runs, args.client_processes)
        elif not os.environ.get("DOCKER_HOST"):
            print(f"\n== {name} ==\nskipped: DOCKER_HOST not set (scripts/dockerd start)")
        else:
            runtime = name.removeprefix("docker-")
            env = {"REPLROOM_BACKEND": "docker", "REPLROOM_DOCKER_RUNTIME": runtime}
            await bench(name, env, args.runs, args.client_processes)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())

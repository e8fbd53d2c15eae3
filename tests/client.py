"""A headless room client (the protocol of docs/protocol.md) and a real server process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from replroom.protocol import PROTOCOL_VERSION

TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """`replroom serve` in a child process on 127.0.0.1, stopped by its PID.

    A ``data_dir`` or ``runtime_dir`` of None leaves that setting at the
    shipped default (then ``log_dir`` says where the server's log goes).
    """

    data_dir: Path | None
    runtime_dir: Path | None
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    log_dir: Path | None = None
    wrapper: list[str] = field(default_factory=list)  # e.g. prlimit …, which execs the server

    @property
    def instance(self) -> str:
        return f"test-{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "REPLROOM_HEALTH_INTERVAL": "0.5", "REPLROOM_INSTANCE": self.instance}
        args = ["serve", "--port", str(self.port)]
        if self.runtime_dir is not None:
            env["REPLROOM_RUNTIME_DIR"] = str(self.runtime_dir)
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        env.update(self.env)
        log_dir = self.log_dir or self.data_dir
        assert log_dir is not None, "a server on the default data dir needs a log_dir"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"server-{self.port}.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "replroom.cli", *args], env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)  # the port is not open yet; nothing to wait on
        raise RuntimeError(f"server did not start: {self.log()}")

    async def stop_async(self, sig: int = signal.SIGTERM) -> None:
        """stop() without blocking the caller's event loop (its clients keep receiving)."""
        await asyncio.to_thread(self.stop, sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def rss(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    async def pool_filled(self, http: httpx.AsyncClient, spares: int | None = None) -> None:
        """Wait until the pool holds ``spares`` spares (by default all it keeps), as it does
        when a person comes to an idle server (the benchmarks measure from there)."""
        while True:  # the pool refills inside the server: nothing to await from here
            capacity = (await http.get(f"{self.url}/api/capacity")).json()
            if capacity["spares"] >= (capacity["pool_size"] if spares is None else spares):
                return
            await asyncio.sleep(0.01)

    async def create_room(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{self.url}/api/rooms")
            response.raise_for_status()
            return response.json()  # type: ignore[no-any-return]


@contextlib.contextmanager
def serving(
    tmp_path_factory: pytest.TempPathFactory,
    runtime_dir: Path,
    env: dict[str, str] | None = None,
    name: str = "data",
) -> Iterator[Server]:
    """A started server with a data directory of its own (``name``), stopped afterwards."""
    started = Server(tmp_path_factory.mktemp(name), runtime_dir, env=env or {})
    started.start()
    try:
        yield started
    finally:
        started.stop()


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code}: {reason}")
        self.code, self.reason = code, reason


class RoomClient:
    """One member's connection: collects the screen and the control messages."""

    def __init__(self, ws: ClientConnection, *, read: bool = True) -> None:
        self.ws = ws
        self.output = bytearray()  # everything shown since the last terminal reset
        self.messages: list[dict[str, Any]] = []
        self.resets = 0
        self._changed = asyncio.Event()
        self.closed: Closed | None = None
        self._task = asyncio.create_task(self._receive()) if read else None

    @classmethod
    async def connect(
        cls,
        server: Server,
        room_id: str,
        token: str,
        *,
        name: str = "tester",
        cols: int = 80,
        rows: int = 24,
        origin: str | None = None,
        read: bool = True,
        join: bool = True,
        key: str | None = None,
    ) -> RoomClient:
        headers = {"Origin": origin} if origin else None
        ws = await websockets.connect(
            f"{server.ws_url}/ws/rooms/{room_id}", additional_headers=headers,
            max_size=None, open_timeout=30,
        )  # fmt: skip
        client = cls(ws, read=read)
        if join:
            message = {"type": "join", "v": PROTOCOL_VERSION, "token": token, "name": name,
                       "cols": cols, "rows": rows}  # fmt: skip
            if key is not None:
                message["key"] = key  # the browser's member key (docs/protocol.md)
            await client.send(message)
        return client

    async def _receive(self) -> None:
        try:
            async for frame in self.ws:
                if isinstance(frame, bytes):
                    self.output += frame
                    # Answer terminal queries as xterm.js would (irb asks for the cursor).
                    if b"\x1b[6n" in frame:
                        await self.ws.send(b"\x1b[1;1R")
                else:
                    message = json.loads(frame)
                    self.messages.append(message)
                    if message.get("type") == "terminal" and message.get("reset"):
                        self.output = bytearray()
                        self.resets += 1
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        self.closed = Closed(self.ws.close_code, self.ws.close_reason or "")
        self._changed.set()

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def type(self, data: bytes | str) -> None:
        await self.ws.send(data.encode() if isinstance(data, str) else data)

    async def _until(self, check: Any, what: str, timeout: float) -> Any:
        async def loop() -> Any:
            while True:
                result = check()
                if result is not None and result is not False:
                    return result
                if self.closed:
                    raise self.closed
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}; output={self.output[-2000:]!r}"
                f" messages={self.messages[-10:]}"
            ) from None

    async def wait_until(self, check: Any, what: str, timeout: float = TIMEOUT) -> Any:
        """Wait until ``check()`` returns something true (that is returned) as messages come."""
        return await self._until(check, what, timeout)

    async def wait_output(self, needle: bytes | str, *, after: int = 0,
                          timeout: float = TIMEOUT) -> int:  # fmt: skip
        """Wait for ``needle`` in the screen output past ``after``; return its end offset."""
        raw = needle.encode() if isinstance(needle, str) else needle

        def check() -> int | None:
            index = self.output.find(raw, after)
            return index + len(raw) if index >= 0 else None

        return await self._until(check, repr(raw), timeout)  # type: ignore[no-any-return]

    async def wait_message(
        self, type_: str, timeout: float = TIMEOUT, *, after: int = 0, **fields: Any
    ) -> dict:
        """The first message of ``type_`` with these fields, from index ``after`` on."""

        def check() -> dict[str, Any] | None:
            for message in self.messages[after:]:
                if message.get("type") == type_ and all(
                    message.get(k) == v for k, v in fields.items()
                ):
                    return message
            return None

        return await self._until(check, f"{type_} {fields}", timeout)  # type: ignore[no-any-return]

    async def until_members(self, count: int, timeout: float = TIMEOUT) -> None:
        def check() -> bool:
            latest = [m for m in self.messages if m.get("type") in ("members", "welcome")]
            return bool(latest) and len(latest[-1]["members"]) == count

        await self._until(check, f"{count} members", timeout)

    async def wait_closed(self, timeout: float = TIMEOUT) -> Closed:
        return await self._until(lambda: self.closed, "close", timeout)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.ws.close()
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)

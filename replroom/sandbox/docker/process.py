"""A process in a room's container: one attached ``docker exec``, and how its end is told.

Its life is :class:`ExecState`: the exec runs with its output open; then
the Engine says it ended (``exec_die``, or the container's ``die``) and its
output is closed, in either order. Output is read one message at a time, so
a process nobody reads from blocks. Exit codes come from the Engine (128 + N
means killed by signal N); see :func:`judge` for out-of-memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal as signals
from collections.abc import Sequence
from typing import Any, Protocol

import aiodocker
import aiohttp
from aiodocker.execs import Exec
from aiodocker.stream import Message, Stream

from replroom.sandbox.base import ExitStatus, Process, SandboxError, killed_by
from replroom.sandbox.docker.config import Runtime
from replroom.sandbox.docker.events import ContainerWatch

# After a process ended, how long the stream may stay silent before it is
# taken as ended too (the Engine closes it at once, except after a runsc
# sandbox died).
END_GRACE = 0.5
# How long an unexplained SIGKILL waits for the Engine's oom event (it comes
# a few ms before the exec's exit in practice; the order is not guaranteed).
OOM_EVENT_GRACE = 0.5
# wait() asks the Engine directly this often, in case an event was lost.
POLL_INTERVAL = 5.0
HELPER_TIMEOUT = 60.0


class ExecState(enum.Enum):
    RUNNING = "running"  # the command runs; its output is open
    EXITED = "exited"  # the Engine said it ended; its last output may still come
    OUTPUT_CLOSED = "output closed"  # its output ended; the Engine has not said it ended
    OVER = "over"  # it ended and its output is closed


_NEXT: dict[ExecState, frozenset[ExecState]] = {
    ExecState.RUNNING: frozenset({ExecState.EXITED, ExecState.OUTPUT_CLOSED}),
    ExecState.EXITED: frozenset({ExecState.OVER}),
    ExecState.OUTPUT_CLOSED: frozenset({ExecState.OVER}),
    ExecState.OVER: frozenset(),
}


class ExecHost(Protocol):
    """What a process needs from its sandbox (``DockerSandbox``)."""

    room_id: str
    watch: ContainerWatch[DockerProcess]

    @property
    def runtime(self) -> Runtime: ...

    @property
    def going(self) -> bool:
        """Destroyed (or being destroyed), or its container died."""

    async def alive(self) -> bool: ...

    async def oom_killed(self) -> bool:
        """Whether the kernel killed the whole container for memory."""

    async def _run(self, argv: Sequence[str]) -> tuple[int, bytes]: ...

    def error(self, error: aiodocker.DockerError, doing: str) -> SandboxError: ...


def half_close(stream: Stream) -> None:
    """End the exec's stdin but keep reading its output.

    aiodocker's Stream.close() would drop the whole connection, and with it
    the output and any input the Engine has not read yet.
    """
    response = stream._resp
    transport = response.connection.transport if response and response.connection else None
    if transport is not None and transport.can_write_eof() and not transport.is_closing():
        transport.write_eof()


class DockerProcess(Process):
    def __init__(self, host: ExecHost, exec_: Exec, *, tty: bool) -> None:
        self.host = host
        self.exec = exec_
        self.tty = tty
        self.pid: int | None = None  # in the container's pid namespace
        self.state = ExecState.RUNNING
        self._exit_seen = asyncio.Event()  # set by _move() only, on the exit
        self._exit_code: int | None = None  # the Engine's, when it may be believed
        self._status: ExitStatus | None = None  # wait()'s answer, once worked out
        self._stream: Stream = exec_.start()
        self._reader: asyncio.Future[Message | None] | None = None
        self._pending = b""
        self._sent: set[int] = set()
        self._ooms_before = host.watch.ooms

    # ----------------------------------------------------------------- state

    @property
    def has_exited(self) -> bool:
        return self.state in (ExecState.EXITED, ExecState.OVER)

    @property
    def output_open(self) -> bool:
        return self.state in (ExecState.RUNNING, ExecState.EXITED)

    def _move(self, to: ExecState) -> None:
        """The one way the state changes; a change the life above does not allow is a bug."""
        if to not in _NEXT[self.state]:
            raise RuntimeError(
                f"a process in room {self.host.room_id} cannot go from "
                f"{self.state.value!r} to {to.value!r}"
            )
        self.state = to
        if self.has_exited:
            self._exit_seen.set()

    def exited(self, exit_code: int | None) -> None:
        """The exec is over (said by the event stream, a poll, or the container's death).

        Only the first report counts, and not its exit code if the container
        was already going: runsc's exec then reports whatever it makes of a
        vanished sandbox (127 and the like), not the process's fate.
        """
        if self.has_exited:
            return
        if not self.host.going:
            self._exit_code = exit_code
        self._move(ExecState.EXITED if self.output_open else ExecState.OVER)

    def expect_kill(self) -> None:
        """Its sandbox is being destroyed: a SIGKILL is ours, not the OOM killer's."""
        self._sent.add(signals.SIGKILL)

    async def close_output(self) -> None:
        """Stop reading: later reads return ``b""``. Idempotent."""
        if not self.output_open:
            return
        self._move(ExecState.OVER if self.has_exited else ExecState.OUTPUT_CLOSED)
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
            await self._stream.close()

    # ---------------------------------------------------------------- output

    async def start(self) -> None:
        """Attach, and read the launcher's first line: the command's pid.

        On pipes the line comes on stdout, and stderr may overtake it (the
        Engine copies the two separately): what comes first on stderr is kept
        for the first read().
        """
        line, early = b"", b""
        try:
            async with asyncio.timeout(HELPER_TIMEOUT):
                while b"\n" not in line:
                    message = await self._next_message()
                    if message is None:
                        break
                    if self.tty or message.stream == 1:
                        line += message.data
                    else:
                        early += message.data
        except TimeoutError:
            raise SandboxError("the process did not start") from None
        except aiodocker.DockerError as error:
            raise self.host.error(error, "cannot start a process") from None
        first, _, rest = line.partition(b"\n")
        try:
            self.pid = int(first.strip())
        except ValueError:
            output = (early + line).decode(errors="replace").strip()
            raise SandboxError(f"cannot start a process in the sandbox: {output!r}") from None
        self._pending = early + rest

    async def read(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        while (message := await self._next_message()) is not None:
            if message.data:
                return bytes(message.data)
        return b""

    async def _next_message(self) -> Message | None:
        """The next message from the Engine, at most one ahead of the caller."""
        while self.output_open:
            if self._reader is None:
                self._reader = asyncio.ensure_future(self._stream.read_out())
            reader = self._reader
            if self.has_exited:
                # Its last output is on its way; but the stream may never end
                # (runsc after its sandbox died).
                done, _ = await asyncio.wait({reader}, timeout=END_GRACE)
                if not done:
                    break
            else:
                exit_seen = asyncio.ensure_future(self._exit_seen.wait())
                either: set[asyncio.Future[Any]] = {reader, exit_seen}
                try:
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    exit_seen.cancel()
                if not reader.done():
                    continue
            if self._reader is not reader:  # the output was closed while we waited
                break
            self._reader = None
            try:
                message: Message | None = reader.result()
            except (aiohttp.ClientError, OSError, RuntimeError):
                message = None
            if message is None:
                break
            return message
        await self.close_output()
        return None

    # ----------------------------------------------------------------- input

    async def write(self, data: bytes) -> None:
        if self.state is not ExecState.RUNNING:
            return
        # Fails only when the process or its connection is gone, which read()
        # and wait() report.
        with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
            await self._stream.write_in(data)

    async def close_stdin(self) -> None:
        if self.tty:
            await self.write(b"\x04")
        elif self.output_open:
            half_close(self._stream)

    async def resize(self, cols: int, rows: int) -> None:
        if not self.tty or self.has_exited:
            return
        try:
            await self.exec.resize(h=rows, w=cols)
        except aiodocker.DockerError as error:
            # Ended between the check and the call.
            if error.status not in (404, 409, 500):
                raise self.host.error(error, "cannot resize the terminal") from None

    async def signal(self, signum: int) -> None:
        if self.has_exited or self.pid is None:
            return
        self._sent.add(signum)
        # The pid could only have been reused in the milliseconds between the
        # process's end and the Engine's exec_die event.
        with contextlib.suppress(SandboxError):
            await self.host._run(["/bin/sh", "-c", 'kill -"$1" "$2"', "kill", str(signum),
                                  str(self.pid)])  # fmt: skip

    # ------------------------------------------------------------------ exit

    async def poll(self) -> None:
        """Ask the Engine whether the exec is still running."""
        try:
            info = await self.exec.inspect()
        except aiodocker.DockerError as error:
            if error.status == 404:  # the Engine forgets the execs of a stopped container
                self.exited(None)
                return
            raise
        if not info.get("Running"):
            self.exited(info.get("ExitCode"))
        elif not await self.host.alive():
            self.exited(None)

    async def wait(self) -> ExitStatus:
        while not self.has_exited:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._exit_seen.wait()
            if not self.has_exited:
                with contextlib.suppress(
                    aiodocker.DockerError, aiohttp.ClientError, OSError, SandboxError
                ):
                    await self.poll()
        if self._status is None:
            ours = signals.SIGKILL in self._sent
            self._status = await judge(self.host, self._exit_code, ours, self._ooms_before)
            self.host.watch.processes.pop(self.exec.id, None)
        return self._status


async def judge(host: ExecHost, code: int | None, kill_sent: bool, ooms_before: int) -> ExitStatus:
    """Why an exec ended, from its exit code (None: unknown, its container went).

    A SIGKILL we did not send, with an OOM kill in the container during the
    process's life (``ooms_before`` then), is out of memory (see
    :meth:`ExitStatus.classify`). When the whole container went, its
    ``OOMKilled`` state decides: a runsc sandbox is OOM-killed whole,
    whatever its execs report.
    """
    watch = host.watch
    if code is not None and code >= 128 and not watch.dead:
        # A runsc exec reports 128 and more when its whole sandbox died,
        # which the Engine may announce a moment later: look before judging.
        await _await_container_death(host, OOM_EVENT_GRACE)
    if watch.dead or code is None:
        if await host.oom_killed():
            return ExitStatus.out_of_memory()
        if code is None:
            return ExitStatus.classify(-signals.SIGKILL)
    if killed_by(code) != signals.SIGKILL or kill_sent:
        return ExitStatus.classify(code)
    if watch.ooms == ooms_before:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OOM_EVENT_GRACE):
                await watch.next_oom()
    return ExitStatus.classify(code, oom_kills=watch.ooms - ooms_before)


async def _await_container_death(host: ExecHost, grace: float) -> None:
    if host.runtime != "runsc":
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline:
        if host.watch.dead:
            return
        if not await host.alive():
            host.watch.died()
            return
        await asyncio.sleep(0.05)

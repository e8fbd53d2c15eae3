"""A process in a room's pod: one exec session over WebSocket, and how its end is told.

The session speaks the channel protocol (``v4.channel.k8s.io``, or
``v5.channel.k8s.io`` where the server offers it): every binary message
starts with its channel's byte, ``0`` stdin, ``1`` stdout, ``2`` stderr,
``3`` the status (a ``Status`` object once the process ended, its exit code
in ``details.causes``), ``4`` the terminal's size (``{"Width", "Height"}``);
v5 adds ``255``, which ends one stream (stdin's end on pipes). The server
closes the WebSocket after the status.

Kubernetes has no exec options for a working directory, an environment or an
initial terminal size, and no API to signal an exec: every command starts
under :data:`LAUNCH`, which sets them, prints its pid and the memory cgroup's
OOM-kill count, then becomes the command (and that under the filtering
launcher of ``sandbox/launch.py``, which installs the rooms' seccomp policy
first: ``config.exec_command``). A signal is a ``kill`` run by a
second exec (the container's processes share one pid namespace). An
unexplained SIGKILL is out of memory when that count grew during the
process's life; the whole pod's death is judged from its container's state
and its events (see :func:`judge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal as signals
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import aiohttp

from replroom.sandbox.base import ExitStatus, Process, SandboxError, killed_by

STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
HELPER_TIMEOUT = 60.0
# Frames read ahead of the caller: few, so that a process nobody reads from
# blocks (the WebSocket's own buffer stops the kubelet's copy).
READ_AHEAD = 4

# The memory cgroup's OOM-kill count as seen in the container (cgroup v2,
# else v1), or "-"; the shell's builtins only, no process forked.
OOM_KILLS = (
    "n=-; for f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do"
    ' if [ -r "$f" ]; then while read -r k v; do if [ "$k" = oom_kill ]; then n=$v; fi;'
    ' done < "$f"; break; fi; done'
)
# argv: columns and rows (or two ""), then the command. Sizes the pty before
# the command can ask, reports "<pid> <OOM kills>", becomes the command.
LAUNCH = (
    'if [ -n "$1" ]; then stty cols "$1" rows "$2" 2>/dev/null; fi; shift 2; '
    + OOM_KILLS
    + '; echo "$$ $n"; exec "$@"'
)
# The room's usage: "<memory bytes> <cpu nanoseconds> <tasks>", from the
# container's cgroup (v2, else v1); tasks from /proc, which shows only the
# pod's processes (this shell among them) on every runtime.
STATS = """
g=/sys/fs/cgroup
if [ -r $g/memory.current ]; then
    read -r m < $g/memory.current
    while read -r k v; do if [ "$k" = usage_usec ]; then c=${v}000; fi; done < $g/cpu.stat
else
    read -r m < $g/memory/memory.usage_in_bytes
    for f in $g/cpuacct/cpuacct.usage $g/cpu,cpuacct/cpuacct.usage; do
        if [ -r "$f" ]; then read -r c < "$f"; break; fi
    done
fi
set -- /proc/[0-9]*/task/[0-9]*
echo "$m ${c:-0} $#"
"""


def command_line(
    argv: Sequence[str], env: Mapping[str, str], cwd: str, size: tuple[str, str]
) -> list[str]:
    """The exec's command: ``argv`` in ``cwd`` with exactly ``env``, under :data:`LAUNCH`."""
    variables = [f"{key}={value}" for key, value in env.items()]
    return ["env", "-i", "-C", cwd, *variables, "/bin/sh", "-c", LAUNCH, "replroom", *size, *argv]


def exit_code(status: Mapping[str, Any]) -> int | None:
    """The exit code a status frame carries: 0 on Success, None if it is not an exit."""
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            with contextlib.suppress(TypeError, ValueError):
                return int(cause.get("message"))
    return None


class PodState(Protocol):
    """What the pod watch says about a process's pod (``watch.PodWatch``)."""

    dead: bool

    async def next_change(self) -> None: ...


class ExecHost(Protocol):
    """What a process needs from its sandbox (``KubernetesSandbox``)."""

    room_id: str

    @property
    def pod(self) -> PodState: ...

    async def oom_killed(self) -> bool:
        """Whether the pod's container was killed for memory (its state, the pod's events)."""

    async def oom_kills(self) -> int | None:
        """The container's memory cgroup OOM-kill count, if it can be read."""

    async def kill(self, pid: int, signum: int) -> None: ...

    def forget(self, process: KubernetesProcess) -> None: ...


class KubernetesProcess(Process):
    def __init__(self, host: ExecHost, ws: aiohttp.ClientWebSocketResponse, *, tty: bool) -> None:
        self.host = host
        self.ws = ws
        self.tty = tty
        self.pid: int | None = None  # in the pod's pid namespace
        self.can_end_stdin = ws.protocol == PROTOCOLS[0]
        self._oom_kills_before: int | None = None
        self._output: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(READ_AHEAD)
        self._pending = b""
        self._output_closed = False
        self._received_all = False
        self._exit_seen = asyncio.Event()
        self._exit_code: int | None = None  # the status frame's
        self._failure = ""  # a status frame that is not an exit (the exec failed)
        self._status: ExitStatus | None = None
        self._sent: set[int] = set()
        self._pump = asyncio.ensure_future(self._receive())

    @property
    def has_exited(self) -> bool:
        return self._exit_seen.is_set()

    def exited(self) -> None:
        """Its pod went (said by the watch): no status will come."""
        self._exit_seen.set()

    def expect_kill(self) -> None:
        """Its pod is being destroyed: a SIGKILL is ours, not the OOM killer's."""
        self._sent.add(signals.SIGKILL)

    # ---------------------------------------------------------------- frames

    async def _receive(self) -> None:
        """Frames into the output queue (blocking when it is full) and the status."""
        try:
            async for message in self.ws:
                if message.type is not aiohttp.WSMsgType.BINARY or not message.data:
                    continue
                channel, payload = message.data[0], bytes(message.data[1:])
                if channel in (STDOUT, STDERR) and payload:
                    await self._output.put((channel, payload))
                elif channel == STATUS and payload:
                    self._status_frame(payload)
        except (aiohttp.ClientError, OSError, RuntimeError):
            pass  # the connection is lost: the output ends, and wait() says how
        finally:
            self._exit_seen.set()
            self._received_all = True
            # A reader waiting on the empty queue is woken; a full one is
            # drained first, then _next() sees _received_all.
            with contextlib.suppress(asyncio.QueueFull):
                self._output.put_nowait(None)

    def _status_frame(self, payload: bytes) -> None:
        try:
            status = json.loads(payload)
        except ValueError:
            status = {}
        if not isinstance(status, dict):
            status = {}
        self._exit_code = exit_code(status)
        if self._exit_code is None:
            self._failure = str(status.get("message") or payload[:200].decode(errors="replace"))
        self._exit_seen.set()

    # ---------------------------------------------------------------- output

    async def start(self) -> None:
        """Read the launcher's first line: the command's pid and the OOM-kill count.

        On pipes the line comes on stdout, and stderr (a channel of its own)
        may come first: it is kept for the first read(), with what follows
        the line.
        """
        line, early = b"", b""
        try:
            async with asyncio.timeout(HELPER_TIMEOUT):
                while b"\n" not in line:
                    frame = await self._next()
                    if frame is None:
                        break
                    channel, chunk = frame
                    if channel == STDOUT:
                        line += chunk
                    else:
                        early += chunk
        except TimeoutError:
            raise SandboxError("the process did not start") from None
        first, _, rest = line.partition(b"\n")
        try:
            pid, oom_kills = first.split()
            self.pid = int(pid)
        except ValueError:
            output = (early + line).decode(errors="replace") + " " + self._failure
            raise SandboxError(
                f"cannot start a process in the sandbox: {output.strip()!r}"
            ) from None
        with contextlib.suppress(ValueError):
            self._oom_kills_before = int(oom_kills)
        self._pending = early + rest

    async def _next(self) -> tuple[int, bytes] | None:
        if self._output_closed or (self._received_all and self._output.empty()):
            self._output_closed = True
            return None
        frame = await self._output.get()
        if frame is None:
            self._output_closed = True
        return frame

    async def read(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        frame = await self._next()
        return b"" if frame is None else frame[1]

    async def close_output(self) -> None:
        """Stop reading: later reads return ``b""``; the connection is closed. Idempotent."""
        self._output_closed = True
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        await self.ws.close()

    # ----------------------------------------------------------------- input

    async def _send(self, channel: int, data: bytes) -> None:
        if self.has_exited or self.ws.closed:
            return
        # Fails only when the connection is gone, which read() and wait() report.
        with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
            await self.ws.send_bytes(bytes([channel]) + data)

    async def write(self, data: bytes) -> None:
        await self._send(STDIN, data)

    async def close_stdin(self) -> None:
        if self.tty:
            await self.write(b"\x04")
        elif self.can_end_stdin:
            await self._send(CLOSE, bytes([STDIN]))
        # On v4 a pipe's input cannot end: the server has no such frame.

    async def resize(self, cols: int, rows: int) -> None:
        if self.tty:
            await self._send(RESIZE, json.dumps({"Width": cols, "Height": rows}).encode())

    async def signal(self, signum: int) -> None:
        if self.has_exited or self.pid is None:
            return
        self._sent.add(signum)
        # The pid could only have been reused in the moment between the
        # process's end and its status frame.
        with contextlib.suppress(SandboxError):
            await self.host.kill(self.pid, signum)

    # ------------------------------------------------------------------ exit

    async def exit_code(self) -> int | None:
        """The status frame's exit code, once the session ended (None: none came)."""
        await self._exit_seen.wait()
        return self._exit_code

    async def wait(self) -> ExitStatus:
        while not self.has_exited:
            if self.host.pod.dead:
                self.exited()
                break
            changed = asyncio.ensure_future(self.host.pod.next_change())
            exit_seen = asyncio.ensure_future(self._exit_seen.wait())
            try:
                await asyncio.wait({changed, exit_seen}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                exit_seen.cancel()
        if self._status is None:
            code = self._exit_code
            if code is None and not self.host.pod.dead and self.pid is not None:
                # The stream was lost, not the process: it must not run on unseen.
                self._sent.add(signals.SIGKILL)
                with contextlib.suppress(SandboxError):
                    await self.host.kill(self.pid, signals.SIGKILL)
            ours = signals.SIGKILL in self._sent
            self._status = await judge(self.host, code, ours, self._oom_kills_before)
            self.host.forget(self)
        return self._status


async def judge(
    host: ExecHost, code: int | None, kill_sent: bool, oom_kills_before: int | None
) -> ExitStatus:
    """Why an exec ended, from its exit code (None: unknown, the pod or the stream went).

    When the pod went, its container's state and events decide (a runtime
    such as gVisor is killed whole at its limit). A SIGKILL we did not send
    is out of memory when the container's OOM-kill count grew since the
    process started (see :meth:`ExitStatus.classify`).
    """
    if code is None:
        if await host.oom_killed():
            return ExitStatus.out_of_memory()
        return ExitStatus.classify(-signals.SIGKILL)
    if killed_by(code) != signals.SIGKILL or kill_sent:
        return ExitStatus.classify(code)
    if host.pod.dead and await host.oom_killed():
        return ExitStatus.out_of_memory()
    now = await host.oom_kills()
    grew = 0 if now is None or oom_kills_before is None else now - oom_kills_before
    return ExitStatus.classify(code, oom_kills=grew)

"""The one interface every sandbox backend implements.

A :class:`Backend` makes :class:`Sandbox` es, one per room; a sandbox runs
:class:`Process` es on a pseudo-terminal (or on pipes). JupyterHub's Spawner
is the model: the server only ever talks to these three classes.

Inside every sandbox, whatever the backend:

- the root filesystem is the room image, read-only;
- ``/home/room`` (the working directory) and ``/tmp`` are writable and share
  one size limit, ``Limits.disk``;
- processes run as the unprivileged user ``room`` (uid 1000) with no
  capabilities and no network.
"""

from __future__ import annotations

import enum
import posixpath
import signal as signals
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from replroom.config import Limits, format_size

SANDBOX_USER = "room"
SANDBOX_UID = 1000
SANDBOX_HOME = "/home/room"

DEFAULT_ENV: Mapping[str, str] = {
    "HOME": SANDBOX_HOME,
    "USER": SANDBOX_USER,
    "LOGNAME": SANDBOX_USER,
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "xterm-256color",
}


class SandboxError(Exception):
    """A sandbox could not be made or used; the message is meant for people."""


class ExitReason(enum.Enum):
    EXITED = "exited"  # the process ended by itself, with an exit code
    OUT_OF_MEMORY = "out of memory"  # the kernel killed it at the memory limit
    KILLED = "killed"  # a signal ended it (Ctrl-C, a kill, the sandbox destroyed)


@dataclass(frozen=True)
class ExitStatus:
    reason: ExitReason
    code: int | None = None  # set when EXITED
    signal: int | None = None  # set when KILLED or OUT_OF_MEMORY

    @property
    def returncode(self) -> int:
        """The shell's convention: the exit code, or 128 + the signal number."""
        if self.reason is ExitReason.EXITED:
            return self.code or 0
        return 128 + (self.signal or signals.SIGKILL)

    def describe(self, limits: Limits | None = None) -> str:
        if self.reason is ExitReason.OUT_OF_MEMORY:
            if limits is None:
                return "out of memory"
            return f"out of memory (limit {format_size(limits.memory)})"
        if self.reason is ExitReason.KILLED:
            try:
                name = signals.Signals(self.signal or 0).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exited with code {self.code}"

    @classmethod
    def from_returncode(cls, returncode: int, *, oom: bool = False) -> ExitStatus:
        """Build from a returncode in asyncio's convention (negative: killed by that signal)."""
        if oom:
            return cls(ExitReason.OUT_OF_MEMORY, signal=signals.SIGKILL)
        if returncode < 0:
            return cls(ExitReason.KILLED, signal=-returncode)
        return cls(ExitReason.EXITED, code=returncode)


@dataclass(frozen=True)
class SandboxStats:
    memory_bytes: int  # charged to the sandbox's memory limit, page cache included
    cpu_seconds: float  # CPU time used by all its processes so far
    pids: int  # processes and threads alive now


class Process(ABC):
    """One process running in a sandbox, on a pty (``tty=True``) or on pipes."""

    @abstractmethod
    async def read(self) -> bytes:
        """The next chunk of output; ``b""`` once the output has ended.

        Nothing is read ahead: a caller that stops calling ``read`` stops the
        process at its next blocking write, which is the flow control a shared
        terminal needs. With pipes, stderr is merged into stdout.
        """

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Send input (keystrokes, for a pty)."""

    @abstractmethod
    async def close_stdin(self) -> None:
        """Signal end of input (pipes); on a pty this sends the EOF character."""

    @abstractmethod
    async def resize(self, cols: int, rows: int) -> None:
        """Set the terminal's size; the process gets SIGWINCH. No-op on pipes."""

    @abstractmethod
    async def signal(self, signum: int) -> None:
        """Send a signal to the process (no-op if it has ended)."""

    @abstractmethod
    async def wait(self) -> ExitStatus:
        """Wait for the process to end and say why it ended."""


class Sandbox(ABC):
    """One room's isolated, resource-limited environment."""

    def __init__(self, room_id: str, limits: Limits) -> None:
        self.room_id = room_id
        self.limits = limits

    @abstractmethod
    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = SANDBOX_HOME,
        tty: bool = True,
        cols: int = 80,
        rows: int = 24,
    ) -> Process:
        """Start ``argv`` in the sandbox; ``env`` is added to :data:`DEFAULT_ENV`."""

    @abstractmethod
    async def put_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file owned by the sandbox user, under /home/room or /tmp."""

    @abstractmethod
    async def stats(self) -> SandboxStats: ...

    @abstractmethod
    async def alive(self) -> bool:
        """False once the sandbox is gone (destroyed, or killed from outside)."""

    @abstractmethod
    async def destroy(self) -> None:
        """Kill every process and remove every resource. Idempotent."""


class Backend(ABC):
    """Makes sandboxes of one kind. One instance per server."""

    name: str

    @abstractmethod
    async def prepare(self) -> None:
        """Make the host ready for sandboxes and check it, before the first one is made.

        Idempotent and cheap enough to run at every start; it must not assume
        an earlier run (``/run`` is empty after a reboot). Raises
        :class:`SandboxError` saying what to do when sandboxes cannot be made.
        """

    @abstractmethod
    async def create(self, room_id: str, limits: Limits) -> Sandbox:
        """Make a sandbox for ``room_id``, labelled with it, ready to spawn in."""

    @abstractmethod
    async def cleanup_orphans(self) -> int:
        """Remove what a crashed server left behind; return how many sandboxes."""

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing
        """Release the backend's own resources (sandboxes stay until destroyed)."""


def check_sandbox_path(path: str) -> str:
    """Resolve ``path`` (relative to /home/room) to a normal path under /home/room or /tmp."""
    normal = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
    if any(normal.startswith(root + "/") for root in (SANDBOX_HOME, "/tmp")):
        return normal
    raise SandboxError(f"files can only be written under {SANDBOX_HOME} or /tmp, not {path!r}")

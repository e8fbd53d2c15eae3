"""The one interface every sandbox backend implements, and the rules they share.

The server only ever talks to three classes (JupyterHub's Spawner is the
model: this docstring and the methods' are the contract a backend signs):

- a :class:`Backend` makes sandboxes of one kind; one instance per server.
  Its life: :meth:`~Backend.prepare` (make the host ready, say what is
  missing) → :meth:`~Backend.cleanup_orphans` (what a crashed server left) →
  :meth:`~Backend.create` as rooms need sandboxes → :meth:`~Backend.close`.
- a :class:`Sandbox` is one room's isolated, resource-limited environment.
  Its life: made by ``create(room_id, limits)``, ready at once →
  :meth:`~Sandbox.spawn`, :meth:`~Sandbox.put_file`, :meth:`~Sandbox.take_files`,
  :meth:`~Sandbox.stats`,
  :meth:`~Sandbox.alive` any number of times → :meth:`~Sandbox.destroy`
  (idempotent; afterwards only ``alive()`` and ``destroy()`` may be called).
  A sandbox made ahead of time (``pool.py``) is made under a pool name in the
  background and handed to its room with :meth:`~Sandbox.rename` and
  :meth:`~Sandbox.foreground`.
- a :class:`Process` runs in a sandbox on a pseudo-terminal (or on pipes),
  from :meth:`~Sandbox.spawn` until :meth:`~Process.wait` says why it ended.

Inside every sandbox, whatever the backend:

- the root filesystem is the room image, read-only;
- ``/home/room`` (the working directory) and ``/tmp`` are writable and share
  one size limit, ``Limits.disk``;
- processes run as the unprivileged user ``room`` (uid 1000) with no
  capabilities and no network.

The rules every backend applies the same way live here too: a room id's
shape (:func:`check_room_id`), where files may be written
(:func:`check_sandbox_path`), and how a process's end is told
(:meth:`ExitStatus.classify`: 128 + N means signal N; a SIGKILL while the
room's memory limit was hit is "out of memory").

Errors are :class:`SandboxError` with a message meant for people; a message
about one room names the room by its current ``room_id``.
"""

from __future__ import annotations

import enum
import posixpath
import re
import signal as signals
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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

# A room id names a container (Docker: [a-zA-Z0-9][a-zA-Z0-9_.-]*), a
# directory and a cgroup (no dots: cgroup v1 directories hold files such as
# cgroup.procs), and must fit in a host name's 63 characters.
ROOM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


class SandboxError(Exception):
    """A sandbox could not be made or used; the message is meant for people."""


def check_room_id(room_id: str) -> str:
    """``room_id`` if every backend can name a sandbox after it, else SandboxError."""
    if not ROOM_ID.fullmatch(room_id):
        raise SandboxError(
            f"invalid room id {room_id!r}: 1 to 63 letters, digits, '_' or '-',"
            " starting with a letter or a digit"
        )
    return room_id


def check_sandbox_path(path: str) -> str:
    """Resolve ``path`` (relative to /home/room) to a normal path under /home/room or /tmp."""
    normal = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
    if any(normal.startswith(root + "/") for root in (SANDBOX_HOME, "/tmp")):
        return normal
    raise SandboxError(f"files can only be written under {SANDBOX_HOME} or /tmp, not {path!r}")


# The names :meth:`Sandbox.take_files` takes: one line of plain characters each,
# so that an exec's listing of them cannot be misread.
TAKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class TakenFile:
    """A file :meth:`Sandbox.take_files` removed: its bytes, or None when it was too large."""

    name: str
    size: int
    data: bytes | None


def parse_taken(output: bytes, max_bytes: int) -> list[TakenFile]:
    """The files in the output of ``scripts.TAKE_FILES``: per file a line ``size name``,
    then ``size`` bytes when ``size <= max_bytes``."""
    taken, at = [], 0
    while at < len(output):
        end = output.find(b"\n", at)
        header = output[at:end].decode("ascii", "replace").split(" ") if end >= 0 else []
        if len(header) != 2 or not header[0].isdigit() or not TAKEN_NAME.fullmatch(header[1]):
            raise SandboxError(
                f"unreadable list of files from the sandbox: {output[at : at + 80]!r}"
            )
        size, at = int(header[0]), end + 1
        data = None
        if size <= max_bytes:
            data, at = output[at : at + size], at + size
            if len(data) != size:
                raise SandboxError(f"{header[1]} from the sandbox is shorter than it said")
        taken.append(TakenFile(header[1], size, data))
    return taken


class ExitReason(enum.Enum):
    EXITED = "exited"  # the process ended by itself, with an exit code
    OUT_OF_MEMORY = "out of memory"  # the kernel killed it at the memory limit
    KILLED = "killed"  # a signal ended it (Ctrl-C, a kill, the sandbox destroyed)


def killed_by(code: int) -> int | None:
    """The signal that ended a process, from its exit code; None if it exited by itself.

    bwrap and Docker report a death by signal N as 128 + N, as a shell does;
    asyncio reports a child of ours killed by N as -N.
    """
    if code < 0:
        return -code
    if 128 < code < 128 + signals.NSIG:
        return code - 128
    return None


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
    def classify(cls, code: int, *, oom_kills: int = 0) -> ExitStatus:
        """Why a process ended, from its exit code (see :func:`killed_by`).

        ``oom_kills`` is how many processes the kernel killed in the room for
        memory during this process's life. One that died of SIGKILL meanwhile
        is taken as killed for memory itself: rooms are small, and the OOM
        killer picks the largest process. A backend that sent SIGKILL itself
        passes 0.
        """
        signal = killed_by(code)
        if signal is None:
            return cls(ExitReason.EXITED, code=code)
        if signal == signals.SIGKILL and oom_kills > 0:
            return cls.out_of_memory()
        return cls(ExitReason.KILLED, signal=signal)

    @classmethod
    def out_of_memory(cls) -> ExitStatus:
        return cls(ExitReason.OUT_OF_MEMORY, signal=signals.SIGKILL)


@dataclass(frozen=True)
class SandboxStats:
    memory_bytes: int  # charged to the sandbox's memory limit, page cache included
    cpu_seconds: float  # CPU time used by all its processes so far
    pids: int  # processes and threads alive now


class SandboxImage(Protocol):
    """The room image a backend runs (``replroom.image.RoomImage``, passed in by the caller)."""

    @property
    def id(self) -> str: ...  # the recipe's hash

    @property
    def rootfs(self) -> Path: ...  # where it is unpacked on this host, if it is

    @property
    def docker_tag(self) -> str: ...  # its name in a Docker Engine


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
        """Send input (keystrokes, for a pty); dropped once the process has ended."""

    def write_nowait(self, data: bytes) -> int:
        """Send as much of ``data`` as the process takes without waiting: how many bytes.

        The room writes keystrokes here first and awaits :meth:`write` (with a
        timeout) only for the rest: a timer per keystroke was a tenth of the
        server's time with thousands of members typing. 0 by default.
        """
        return 0

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
        """Wait for the process to end and say why it ended (the same answer every time).

        It may return before :meth:`read` has returned the last output.
        """


class Sandbox(ABC):
    """One room's isolated, resource-limited environment.

    ``room_id`` is the room it serves, and every message about the sandbox
    names it. It is the id the sandbox was made with, until :meth:`rename`
    hands the sandbox to another room.
    """

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
    async def take_files(self, directory: str, max_bytes: int, count: int) -> list[TakenFile]:
        """Take (read and remove) up to ``count`` files from ``directory`` in the sandbox.

        ``directory`` is under /home/room or /tmp (:func:`check_sandbox_path`); a
        missing one holds nothing. The regular files whose names match
        :data:`TAKEN_NAME` are taken in name order; a file's size is looked at
        before it is read, and one larger than ``max_bytes`` is removed unread
        (``data`` None). Hidden files (being written) and directories stay;
        other entries are removed. Fewer than ``count`` files taken: none is left.
        """

    @abstractmethod
    async def stats(self) -> SandboxStats: ...

    @abstractmethod
    async def alive(self) -> bool:
        """False once the sandbox is gone (destroyed, or killed from outside)."""

    @abstractmethod
    async def rename(self, room_id: str) -> None:
        """Serve ``room_id`` from now on, under its name (a pooled sandbox's hand-off).

        What carries the room's name afterwards: ``self.room_id`` (so every
        message names the room), the backend's count of which room has a
        sandbox (``create(room_id)`` is refused until this one is
        destroyed), and what the host shows as far as it can: docker renames
        the container ``replroom-<room_id>`` (its labels, fixed for a
        container's life, keep the id it was made with); bwrap writes the
        room into its directory's ``room.json`` (its directory, cgroup and
        uid keep their name: a cgroup v2 directory cannot be renamed).

        Raises :class:`SandboxError`, changing nothing, when the room already
        has a sandbox or the backend cannot do it now.
        """

    @abstractmethod
    async def foreground(self) -> None:
        """Give a sandbox made with ``background=True`` the usual CPU weight (idempotent).

        Raises :class:`SandboxError` when the backend cannot do it now.
        """

    @abstractmethod
    async def destroy(self) -> None:
        """Kill every process and remove every resource. Idempotent.

        From the call on, the sandbox no longer counts as its room's: the
        room may get a new one. Raises :class:`SandboxError` when the backend
        cannot do it now; ``destroy()`` may then be called again.
        """


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
    async def create(self, room_id: str, limits: Limits, *, background: bool = False) -> Sandbox:
        """Make a sandbox for ``room_id`` (see :func:`check_room_id`), ready to spawn in.

        Refused while the room has a sandbox that was not destroyed.
        ``background``: made ahead of time (a pool's refill), its processes
        get the least CPU weight until :meth:`Sandbox.foreground`, so that
        making it never slows the live rooms.
        """

    @abstractmethod
    async def cleanup_orphans(self) -> int:
        """Remove what a crashed server left behind; return how many sandboxes."""

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing
        """Release the backend's own resources (sandboxes stay until destroyed)."""

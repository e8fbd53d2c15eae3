"""The embedded default backend: bubblewrap namespaces, cgroups and seccomp, no daemon.

A bwrap sandbox is not a process but a set of resources owned by one room:

- a host uid of its own (``uid_base + slot``), so that rooms cannot touch
  each other's processes or files even if a namespace fails;
- a tmpfs of ``Limits.disk`` bytes holding ``home/``, ``tmp/`` and ``shm/``,
  bound at /home/room, /tmp and /dev/shm;
- a cgroup with the memory, CPU and process limits.

Every process spawned in the sandbox is one ``bwrap`` invocation into fresh
user, pid, net, ipc, uts and cgroup namespaces over the read-only room image,
joined to the room's cgroup before it starts. Processes of one room share
files and limits but not a pid namespace, which nothing in a room needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import termios
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from replroom.config import Limits, Settings
from replroom.sandbox.base import (
    DEFAULT_ENV,
    SANDBOX_HOME,
    SANDBOX_UID,
    TAKEN_NAME,
    Backend,
    ExitStatus,
    Process,
    Sandbox,
    SandboxError,
    SandboxImage,
    SandboxStats,
    TakenFile,
    check_room_id,
    check_sandbox_path,
    killed_by,
)
from replroom.sandbox.cgroups import (
    Cgroup,
    CgroupError,
    Hierarchy,
    leftover_names,
    make_parent,
    remove_parent,
)
from replroom.sandbox.host import make_directory, mounted_under
from replroom.sandbox.seccomp import compiled_filter
from replroom.sandbox.uids import UidLease, UidLeases

UID_LEASES = Path("/run/replroom-uids")
NOT_BUILT = "room image not built: run `replroom image build`"
READ_SIZE = 65536
MS_NOSUID, MS_NODEV = 0x2, 0x4
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(target: Path, size: int, uid: int) -> None:
    options = f"size={size},nr_inodes=16384,mode=0700,uid={uid},gid={uid}".encode()
    if _libc.mount(b"tmpfs", bytes(target), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        code = ctypes.get_errno()
        raise SandboxError(f"cannot mount the room's tmpfs at {target}: {os.strerror(code)}")


def _unmount(target: Path) -> None:
    if _libc.umount2(bytes(target), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # not mounted: nothing to do
            raise SandboxError(f"cannot unmount {target}: {os.strerror(code)}")


def _make_traversable(path: Path) -> None:
    """Make ``path`` and its missing parents, mode 0711: room uids pass through, never list."""
    try:
        make_directory(path, 0o711, parents_mode=0o711)
    except OSError as error:
        raise SandboxError(f"cannot create {error.filename or path}: {error.strerror}") from None


class BwrapBackend(Backend):
    name = "bwrap"

    def __init__(
        self,
        rootfs: Path,
        runtime_dir: Path,
        *,
        instance: str = "replroom",
        uids: UidLeases | None = None,
        bwrap: str | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.instance = instance
        self.rooms_dir = runtime_dir / instance / "rooms"
        self.uids = uids or UidLeases(UID_LEASES, 2_000_000, 65536)
        self.bwrap = bwrap or shutil.which("bwrap") or "bwrap"
        self.hierarchy = Hierarchy.detect()
        # A sandbox's resources (directory, cgroup, uid) keep the name it was
        # made with; rename() changes only the room it counts for.
        self._leases: dict[str, UidLease] = {}  # by sandbox name
        self._rooms: dict[str, str] = {}  # room id -> sandbox name, while not destroyed

    @classmethod
    def from_settings(cls, settings: Settings, image: SandboxImage) -> BwrapBackend:
        """The backend ``settings`` describe, running ``image``, which must be built here."""
        if not image.rootfs.is_dir():
            raise SandboxError(NOT_BUILT)
        return cls(
            image.rootfs,
            settings.runtime_dir,
            instance=settings.instance,
            uids=UidLeases(UID_LEASES, settings.uid_base, settings.uid_count),
        )

    @staticmethod
    def problems() -> list[str]:
        """Why this host cannot run bwrap sandboxes, with what to do about it."""
        found = []
        if shutil.which("bwrap") is None:
            found.append("bubblewrap is not installed: apt-get install bubblewrap")
        if shutil.which("setpriv") is None or shutil.which("setsid") is None:
            found.append("setpriv/setsid missing: apt-get install util-linux")
        if os.geteuid() != 0:
            found.append("the bwrap backend needs root (cgroups, tmpfs mounts, per-room uids)")
        found.extend(Hierarchy.detect().problems())
        try:
            compiled_filter()
        except (ImportError, OSError) as error:
            found.append(f"seccomp unavailable ({error}): apt-get install libseccomp2")
        max_userns = Path("/proc/sys/user/max_user_namespaces")
        if max_userns.exists() and max_userns.read_text().strip() == "0":
            found.append("user namespaces are disabled: sysctl user.max_user_namespaces=15000")
        return found

    async def prepare(self) -> None:
        problems = self.problems()
        if problems:
            raise SandboxError("; ".join(problems))
        if not (self.rootfs / "usr").is_dir():
            raise SandboxError(f"room image not found at {self.rootfs}")
        for directory in (self.rootfs, *self.rootfs.parents):
            if not directory.stat().st_mode & 0o001:
                raise SandboxError(
                    f"room uids cannot reach the image at {self.rootfs}: {directory} is not "
                    "searchable by others (chmod o+x it, or move image_dir)"
                )
        _make_traversable(self.rooms_dir)
        self.uids.prepare()
        try:
            make_parent(self.hierarchy, self.instance)
        except CgroupError as error:
            raise SandboxError(str(error)) from None

    async def create(
        self, room_id: str, limits: Limits, *, background: bool = False
    ) -> BwrapSandbox:
        self._check_free(check_room_id(room_id))
        if not (self.rootfs / "usr").is_dir():
            raise SandboxError(f"room image not found at {self.rootfs}")
        lease = self._leases[room_id] = self.uids.acquire()
        self._rooms[room_id] = room_id
        sandbox = BwrapSandbox(self, room_id, limits, lease.uid)
        try:
            sandbox.set_up(background=background)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox

    def _check_free(self, room_id: str) -> None:
        # A name in _leases: a pooled sandbox handed to another room still has it.
        if room_id in self._rooms or room_id in self._leases:
            raise SandboxError(f"room {room_id} already has a sandbox")

    def move(self, name: str, old_room: str, new_room: str) -> None:
        """Count the sandbox called ``name`` as ``new_room``'s from now on."""
        self._check_free(new_room)
        self._rooms[new_room] = name
        if self._rooms.get(old_room) == name:
            del self._rooms[old_room]

    def release(self, name: str, room_id: str) -> None:
        """The sandbox called ``name``, serving ``room_id``, is gone: its uid is free again."""
        if self._rooms.get(room_id) == name:
            del self._rooms[room_id]
        lease = self._leases.pop(name, None)
        if lease is not None:
            lease.release()

    async def cleanup_orphans(self) -> int:
        names = leftover_names(self.hierarchy, self.instance) - self._leases.keys()
        if self.rooms_dir.is_dir():
            names |= {p.name for p in self.rooms_dir.iterdir()} - self._leases.keys()
        for name in names:
            await asyncio.to_thread(self._remove_room_resources, name)
        return len(names)

    async def close(self) -> None:
        if not self._leases:  # rooms still alive keep their cgroups' parent
            remove_parent(self.hierarchy, self.instance)

    def _kill_room(self, name: str) -> None:
        cgroup = Cgroup(self.hierarchy, self.instance, name)
        if cgroup.exists():
            cgroup.kill()

    def _remove_room_resources(self, name: str) -> None:
        self._kill_room(name)
        Cgroup(self.hierarchy, self.instance, name).remove()
        room_dir = self.rooms_dir / name
        for point in mounted_under(room_dir):
            _unmount(point)
        shutil.rmtree(room_dir, ignore_errors=True)


class BwrapSandbox(Sandbox):
    """A room's directory, tmpfs, cgroup and uid, all called ``name``: the id it was made with.

    :meth:`rename` changes the room it serves, ``room_id``, and records it in
    the directory's ``room.json``; the resources keep their name (a cgroup
    v2 directory cannot be renamed).
    """

    def __init__(self, backend: BwrapBackend, room_id: str, limits: Limits, uid: int) -> None:
        super().__init__(room_id, limits)
        self.backend = backend
        self.name = room_id
        self.uid = uid
        self.dir = backend.rooms_dir / room_id
        self.writable = self.dir / "rw"
        self.cgroup = Cgroup(backend.hierarchy, backend.instance, room_id)
        self._destroyed = False
        self._processes: set[BwrapProcess] = set()

    def set_up(self, *, background: bool) -> None:
        # Made again here, not only at start-up: the runtime dir may have been
        # removed under a running server (a tmpfs cleaner, a careless operator).
        _make_traversable(self.backend.rooms_dir)
        self.dir.mkdir(mode=0o711)
        self._write_room_json()
        self.writable.mkdir(mode=0o700)
        _mount_tmpfs(self.writable, self.limits.disk, self.uid)
        for name, mode in (("home", 0o700), ("tmp", 0o1777), ("shm", 0o1777)):
            path = self.writable / name
            path.mkdir()
            os.chown(path, self.uid, self.uid)
            path.chmod(mode)
        self.cgroup.create(self.limits, background=background)

    def _write_room_json(self) -> None:
        # For people looking at the host: which room these resources serve.
        (self.dir / "room.json").write_text(json.dumps({"room": self.room_id, "uid": self.uid}))

    async def rename(self, room_id: str) -> None:
        check_room_id(room_id)
        if room_id == self.room_id:
            return
        if self._destroyed:
            raise SandboxError(f"sandbox of room {self.room_id} is destroyed")
        self.backend.move(self.name, self.room_id, room_id)
        self.room_id = room_id
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._write_room_json)

    async def foreground(self) -> None:
        if self._destroyed:
            raise SandboxError(f"sandbox of room {self.room_id} is destroyed")
        try:
            self.cgroup.set_background(False)
        except OSError as error:
            raise SandboxError(f"sandbox of room {self.room_id} is gone ({error})") from None

    def _bwrap_argv(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str, tty: bool, seccomp_fd: int
    ) -> list[str]:
        args = [
            self.backend.bwrap,
            "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--disable-userns",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "room",
            "--die-with-parent",
            "--ro-bind", str(self.backend.rootfs), "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--bind", str(self.writable / "home"), SANDBOX_HOME,
            "--bind", str(self.writable / "tmp"), "/tmp",
            "--bind", str(self.writable / "shm"), "/dev/shm",
            "--remount-ro", "/dev",
            "--chdir", cwd,
            "--seccomp", str(seccomp_fd),
            "--clearenv",
        ]  # fmt: skip
        if tty:
            # Our launcher holds no controlling terminal, so the command can
            # take the pty as its own: Ctrl-C then reaches it and not bwrap.
            argv = ["setsid", "--ctty", *argv]
        else:
            # Without a terminal of its own it must not reach anyone's (TIOCSTI).
            args.append("--new-session")
        for key, value in env.items():
            args += ["--setenv", key, value]
        return [*args, "--", *argv]

    def _launcher(self, bwrap_argv: list[str], joined_fd: int) -> list[str]:
        """Join the cgroup as root, drop to the room's uid and scheduling class, then start bwrap.

        The process must be in the cgroup before it can fork, so it moves
        itself (``echo 0``) before exec, and says so on the server's
        ``joined_fd`` (through /proc, so that the pipe is never inherited by
        the sandbox): until then, destroying the room could miss it.
        """
        joins = " && ".join(f"echo 0 > {shlex.quote(str(p))}" for p in self.cgroup.procs_files)
        drop = [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all",
        ]  # fmt: skip
        script = f'{joins} && printf . > /proc/$PPID/fd/{joined_fd} && exec "$@"'
        # SCHED_BATCH, which every process of the room inherits: a REPL woken by
        # keystrokes the server writes does not preempt the server on its CPU, so
        # the server finishes relaying to every member first (the other CPU, if
        # idle, runs the REPL at once). Still the quota caps the room's CPU time.
        batch = ["chrt", "--batch", "0"]
        return ["/bin/sh", "-c", script, "sh", *batch, *drop, *bwrap_argv]

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = SANDBOX_HOME,
        tty: bool = True,
        cols: int = 80,
        rows: int = 24,
    ) -> BwrapProcess:
        if self._destroyed:
            raise SandboxError(f"sandbox of room {self.room_id} is destroyed")
        if not argv:
            raise SandboxError("nothing to run")
        if not self.cgroup.exists():
            raise SandboxError(f"sandbox of room {self.room_id} is gone (its cgroup was removed)")
        joined_read, joined_write = os.pipe()
        try:
            process = await self._start(
                argv, {**DEFAULT_ENV, **(env or {})}, cwd=cwd, tty=tty, size=(cols, rows),
                joined_fd=joined_write,
            )  # fmt: skip
            self._processes.add(process)
            joined = await _joined(joined_read, process)
        finally:
            os.close(joined_read)
            os.close(joined_write)
        if not joined:
            status = await process.wait()
            raise SandboxError(
                f"cannot start a process in room {self.room_id}: {status.describe()}"
            )
        return process

    async def _start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: str,
        tty: bool,
        size: tuple[int, int],
        joined_fd: int,
    ) -> BwrapProcess:
        """Start the launcher on a new pty or on pipes; bwrap reads the filter from a pipe."""
        seccomp_read, seccomp_write = os.pipe()
        fds_to_close = [seccomp_read]
        try:
            try:
                # The filter is < 64 KiB, so it fits in the pipe without a reader.
                os.write(seccomp_write, compiled_filter())
            finally:
                os.close(seccomp_write)
            command = self._launcher(self._bwrap_argv(argv, env, cwd, tty, seccomp_read), joined_fd)
            path = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            oom_before = self.cgroup.oom_kills()
            if not tty:
                proc = await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, pass_fds=(seccomp_read,), env=path,
                )  # fmt: skip
                return PipeProcess(self, proc, oom_before)
            master, slave = os.openpty()
            fds_to_close.append(slave)
            _set_size(master, *size)
            os.set_blocking(master, False)
            try:
                # Deliberately blocking, and briefly: see Child.
                child = Child(subprocess.Popen(  # noqa: ASYNC220
                    command, stdin=slave, stdout=slave, stderr=slave, pass_fds=(seccomp_read,),
                    env=path, start_new_session=True,
                ))  # fmt: skip
            except BaseException:
                os.close(master)
                raise
            return PtyProcess(self, child, oom_before, master)
        finally:
            for fd in fds_to_close:
                os.close(fd)

    async def put_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        if self._destroyed:
            raise SandboxError(f"sandbox of room {self.room_id} is destroyed")
        target = check_sandbox_path(path)
        if len(data) > self.limits.disk:
            raise SandboxError("file is larger than the room's disk limit")
        await asyncio.to_thread(self._write_file, target, data, mode)

    def _write_file(self, target: str, data: bytes, mode: int) -> None:
        if target.startswith(SANDBOX_HOME + "/"):
            root, relative = self.writable / "home", target.removeprefix(SANDBOX_HOME + "/")
        else:
            root, relative = self.writable / "tmp", target.removeprefix("/tmp/")
        try:
            _write_below(root, relative, data, mode, self.uid)
        except OSError as error:
            raise SandboxError(f"cannot write {target}: {error.strerror}") from None

    async def take_files(self, directory: str, max_bytes: int, count: int) -> list[TakenFile]:
        if self._destroyed:
            raise SandboxError(f"sandbox of room {self.room_id} is destroyed")
        target = check_sandbox_path(directory)
        if target.startswith(SANDBOX_HOME + "/"):
            root, relative = self.writable / "home", target.removeprefix(SANDBOX_HOME + "/")
        else:
            root, relative = self.writable / "tmp", target.removeprefix("/tmp/")
        try:
            return await asyncio.to_thread(_take_below, root, relative, max_bytes, count)
        except OSError as error:
            raise SandboxError(f"cannot take files from {target}: {error.strerror}") from None

    async def stats(self) -> SandboxStats:
        if self._destroyed:
            return SandboxStats(0, 0.0, 0)
        return SandboxStats(
            memory_bytes=self.cgroup.memory_bytes(),
            cpu_seconds=self.cgroup.cpu_seconds(),
            pids=self.cgroup.pids_current(),
        )

    async def alive(self) -> bool:
        return not self._destroyed and self.cgroup.exists() and self.writable.is_mount()

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        try:
            await asyncio.to_thread(self.backend._kill_room, self.name)
            # Reap our own children first, or their zombies keep the cgroup busy.
            for process in list(self._processes):
                await process.wait()
                process.close()
            await asyncio.to_thread(self.backend._remove_room_resources, self.name)
        finally:
            self.backend.release(self.name, self.room_id)


def _write_below(root: Path, relative: str, data: bytes, mode: int, uid: int) -> None:
    """Write ``root/relative`` as ``uid``, making its directories, following no symlink.

    The room owns this tree and may have planted symlinks: it is walked one
    component at a time without following any, so the write cannot escape
    to the host.
    """
    parts = relative.split("/")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    directory = os.open(root, flags)
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=directory)
                os.chown(part, uid, uid, dir_fd=directory, follow_symlinks=False)
            child = os.open(part, flags, dir_fd=directory)
            os.close(directory)
            directory = child
        write_flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(parts[-1], write_flags, mode, dir_fd=directory)
        try:
            os.fchown(fd, uid, uid)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    finally:
        os.close(directory)


def _take_below(root: Path, relative: str, max_bytes: int, count: int) -> list[TakenFile]:
    """Sandbox.take_files on the host: the room's tree walked without following symlinks."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    directory = os.open(root, flags)
    try:
        for part in relative.split("/"):
            try:
                child = os.open(part, flags, dir_fd=directory)
            except OSError as error:
                # Missing, or not a directory: a file or a symlink the room planted.
                if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return []
                raise
            os.close(directory)
            directory = child
        taken: list[TakenFile] = []
        for name in sorted(os.listdir(directory)):
            if len(taken) == count:
                break
            if not name.startswith("."):
                found = _take_one(directory, name, max_bytes)
                if found is not None:
                    taken.append(found)
        return taken
    finally:
        os.close(directory)


def _take_one(directory: int, name: str, max_bytes: int) -> TakenFile | None:
    """One entry of take_files' directory: taken, left (a directory) or removed (None)."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory
        )
    except OSError:  # a symlink, a socket, or gone meanwhile
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=directory)
        return None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            return None
        data = None
        if stat.S_ISREG(info.st_mode) and TAKEN_NAME.fullmatch(name) and info.st_size <= max_bytes:
            # No more than its size when looked at, whatever the room writes meanwhile.
            data = b""
            while len(data) < info.st_size and (chunk := os.read(fd, info.st_size - len(data))):
                data += chunk
        os.unlink(name, dir_fd=directory)
        if not stat.S_ISREG(info.st_mode) or not TAKEN_NAME.fullmatch(name):
            return None
        return TakenFile(name, info.st_size if data is None else len(data), data)
    finally:
        os.close(fd)


async def _joined(fd: int, process: BwrapProcess) -> bool:
    """Wait for the launcher's word on ``fd``, or for it to end without a word."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _resolve, readable)
    ended = asyncio.ensure_future(process.proc.wait())
    either: set[asyncio.Future[Any]] = {readable, ended}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)
        ended.cancel()
    return readable.done()


def _resolve(future: asyncio.Future[None]) -> None:
    # The loop may run a ready callback after its waiter was cancelled.
    if not future.done():
        future.set_result(None)


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Child:
    """A child process of ours started without blocking the event loop, waited for by pidfd.

    ``subprocess.Popen`` starts it with vfork: about 1 ms, where the event
    loop's own subprocess support (uvloop's fork) copies the server's page
    tables first and holds the loop for 6 to 15 ms. Nothing else reaps it: the
    loop's child watcher knows only the processes it started itself.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        if self.popen.poll() is None:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()
            pidfd = os.pidfd_open(self.pid)
            loop.add_reader(pidfd, _resolve, exited)
            try:
                if self.popen.poll() is None:
                    await exited
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        return self.popen.wait()


class BwrapProcess(Process):
    def __init__(
        self, sandbox: BwrapSandbox, proc: Child | asyncio.subprocess.Process, oom_before: int
    ) -> None:
        self.sandbox = sandbox
        self.proc = proc
        self._oom_before = oom_before
        self._status: ExitStatus | None = None

    async def wait(self) -> ExitStatus:
        if self._status is None:
            returncode = await self.proc.wait()
            self._status = self._classify(returncode)
            self.sandbox._processes.discard(self)
        return self._status

    def _classify(self, returncode: int) -> ExitStatus:
        if killed_by(returncode) != signal.SIGKILL:
            return ExitStatus.classify(returncode)
        ooms = self.sandbox.cgroup.oom_kills() - self._oom_before
        return ExitStatus.classify(returncode, oom_kills=ooms)

    def close(self) -> None:
        """Release what the process holds on our side (its pty)."""

    def _sandboxed_pid(self) -> int | None:
        """Host pid of the command itself: bwrap → its pid-1 reaper → the command."""
        pid = self.proc.pid
        for _ in range(2):
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                return None
            if not children:
                return None
            pid = int(children[0])
        return pid

    async def signal(self, signum: int) -> None:
        # Right after spawn bwrap may not have forked the command yet; it does
        # within milliseconds, so look again briefly rather than drop the signal.
        for _ in range(1000):
            if self.proc.returncode is not None:
                return
            pid = self._sandboxed_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
                return
            await asyncio.sleep(0.001)


class PtyProcess(BwrapProcess):
    def __init__(
        self,
        sandbox: BwrapSandbox,
        proc: Child,
        oom_before: int,
        master: int,
    ) -> None:
        super().__init__(sandbox, proc, oom_before)
        self.master: int | None = master
        self._readable = True  # worth a read: at first, and after the loop said so
        self._registered = False  # the master is watched by the event loop
        self._waiter: asyncio.Future[None] | None = None

    async def read(self) -> bytes:
        """What the pty holds now, up to READ_SIZE: in a flood, one chunk, not dozens.

        The master stays registered with the event loop between reads, so
        that a read costs no epoll changes and no failed read; it is taken
        off only when it is readable with nobody reading (flow control holds
        the output back), which would otherwise wake the loop again and again.
        """
        while self.master is not None:
            if self._readable:
                try:
                    return self._read_available()
                except BlockingIOError:
                    self._readable = False
                except OSError as error:
                    if error.errno == errno.EIO:  # every holder of the pty's other end is gone
                        self.close()
                        return b""
                    raise
                continue
            self._waiter = asyncio.get_running_loop().create_future()
            if not self._registered:
                asyncio.get_running_loop().add_reader(self.master, self._on_readable)
                self._registered = True
            try:
                await self._waiter
            finally:
                self._waiter = None
        return b""

    def _read_available(self) -> bytes:
        assert self.master is not None
        data = os.read(self.master, READ_SIZE)
        while data and len(data) < READ_SIZE:
            try:
                more = os.read(self.master, READ_SIZE - len(data))
            except OSError:  # nothing more now (EAGAIN), or the end: the next read says
                self._readable = False
                break
            if not more:
                break
            data += more
        return data

    def _on_readable(self) -> None:
        self._readable = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        elif self.master is not None:
            asyncio.get_running_loop().remove_reader(self.master)
            self._registered = False

    def write_nowait(self, data: bytes | memoryview) -> int:
        if self.master is None:
            return len(data)  # dropped: the process has ended
        try:
            return os.write(self.master, data)
        except BlockingIOError:
            return 0
        except OSError as error:
            if error.errno == errno.EIO:  # every holder of the pty's other end is gone
                return len(data)
            raise

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            written = self.write_nowait(view)
            view = view[written:]
            if view and not written and self.master is not None:  # full: wait for room
                writable = loop.create_future()
                fd = self.master
                loop.add_writer(fd, _resolve, writable)
                try:
                    await writable
                finally:
                    loop.remove_writer(fd)

    async def close_stdin(self) -> None:
        await self.write(b"\x04")

    async def resize(self, cols: int, rows: int) -> None:
        if self.master is not None:
            _set_size(self.master, cols, rows)

    def close(self) -> None:
        if self.master is not None:
            if self._registered:
                asyncio.get_running_loop().remove_reader(self.master)
                self._registered = False
            os.close(self.master)
            self.master = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class PipeProcess(BwrapProcess):
    def __init__(
        self, sandbox: BwrapSandbox, proc: asyncio.subprocess.Process, oom_before: int
    ) -> None:
        super().__init__(sandbox, proc, oom_before)
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin, self.stdout = proc.stdin, proc.stdout

    async def read(self) -> bytes:
        return await self.stdout.read(READ_SIZE)

    async def write(self, data: bytes) -> None:
        if self.stdin.is_closing():
            return
        self.stdin.write(data)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await self.stdin.drain()

    async def close_stdin(self) -> None:
        self.stdin.close()

    async def resize(self, cols: int, rows: int) -> None:
        return None

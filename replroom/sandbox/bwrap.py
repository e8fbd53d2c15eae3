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
import re
import shlex
import shutil
import signal
import struct
import termios
from collections.abc import Mapping, Sequence
from pathlib import Path

from replroom.config import Limits, Settings
from replroom.sandbox.base import (
    DEFAULT_ENV,
    SANDBOX_HOME,
    SANDBOX_UID,
    Backend,
    ExitStatus,
    Process,
    Sandbox,
    SandboxError,
    SandboxStats,
    check_sandbox_path,
)
from replroom.sandbox.cgroups import (
    Cgroup,
    CgroupError,
    Hierarchy,
    leftover_names,
    make_parent,
    remove_parent,
)
from replroom.sandbox.seccomp import compiled_filter
from replroom.sandbox.uids import UidLease, UidLeases

UID_LEASES = Path("/run/replroom-uids")
ROOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
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
    """Make ``path`` and its missing parents, mode 0711: room uids pass through, never list.

    ``/run`` is emptied at every boot, so nothing here may assume an earlier run.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o711)
            directory.chmod(0o711)
        except FileExistsError:
            continue  # made by another server between our look and our mkdir
        except OSError as error:
            raise SandboxError(f"cannot create {directory}: {error.strerror}") from None


def _mounted_under(root: Path) -> list[Path]:
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [Path(line.split()[4]) for line in mountinfo]
    return sorted((p for p in points if str(p).startswith(prefix)), reverse=True)


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
        self._leases: dict[str, UidLease] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> BwrapBackend:
        from replroom.image import current_image  # noqa: PLC0415 - the image module is heavy

        image = current_image(settings)
        if image is None:
            raise SandboxError("room image not built: run `replroom image build`")
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

    async def create(self, room_id: str, limits: Limits) -> BwrapSandbox:
        if not ROOM_ID.match(room_id):
            raise SandboxError(f"invalid room id {room_id!r}")
        if room_id in self._leases:
            raise SandboxError(f"room {room_id} already has a sandbox")
        if not (self.rootfs / "usr").is_dir():
            raise SandboxError(f"room image not found at {self.rootfs}")
        lease = self._leases[room_id] = self.uids.acquire()
        sandbox = BwrapSandbox(self, room_id, limits, lease.uid)
        try:
            sandbox.set_up()
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox

    def release(self, room_id: str) -> None:
        lease = self._leases.pop(room_id, None)
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
        for point in _mounted_under(room_dir):
            _unmount(point)
        shutil.rmtree(room_dir, ignore_errors=True)


class BwrapSandbox(Sandbox):
    def __init__(self, backend: BwrapBackend, room_id: str, limits: Limits, uid: int) -> None:
        super().__init__(room_id, limits)
        self.backend = backend
        self.uid = uid
        self.dir = backend.rooms_dir / room_id
        self.writable = self.dir / "rw"
        self.cgroup = Cgroup(backend.hierarchy, backend.instance, room_id)
        self._destroyed = False
        self._processes: set[BwrapProcess] = set()

    def set_up(self) -> None:
        # Made again here, not only at start-up: the runtime dir may have been
        # removed under a running server (a tmpfs cleaner, a careless operator).
        _make_traversable(self.backend.rooms_dir)
        self.dir.mkdir(mode=0o711)
        (self.dir / "room.json").write_text(json.dumps({"room": self.room_id, "uid": self.uid}))
        self.writable.mkdir(mode=0o700)
        _mount_tmpfs(self.writable, self.limits.disk, self.uid)
        for name, mode in (("home", 0o700), ("tmp", 0o1777), ("shm", 0o1777)):
            path = self.writable / name
            path.mkdir()
            os.chown(path, self.uid, self.uid)
            path.chmod(mode)
        self.cgroup.create(self.limits)

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
        """Join the cgroup as root, drop to the room's uid, then start bwrap.

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
        return ["/bin/sh", "-c", script, "sh", *drop, *bwrap_argv]

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
        full_env = {**DEFAULT_ENV, **(env or {})}
        seccomp_read, seccomp_write = os.pipe()
        joined_read, joined_write = os.pipe()
        fds_to_close = [seccomp_read]
        try:
            filter_bytes = compiled_filter()
            # The filter is < 64 KiB, so it fits in the pipe without a reader.
            os.write(seccomp_write, filter_bytes)
            os.close(seccomp_write)
            bwrap_argv = self._bwrap_argv(argv, full_env, cwd, tty, seccomp_read)
            command = self._launcher(bwrap_argv, joined_write)
            oom_before = self.cgroup.oom_kills()
            if tty:
                master, slave = os.openpty()
                fds_to_close.append(slave)
                _set_size(master, cols, rows)
                os.set_blocking(master, False)
                proc = await asyncio.create_subprocess_exec(
                    *command, stdin=slave, stdout=slave, stderr=slave,
                    pass_fds=(seccomp_read,), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                    start_new_session=True,
                )  # fmt: skip
                process: BwrapProcess = PtyProcess(self, proc, oom_before, master)
            else:
                proc = await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, pass_fds=(seccomp_read,),
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                )  # fmt: skip
                process = PipeProcess(self, proc, oom_before)
        finally:
            for fd in fds_to_close:
                os.close(fd)
        self._processes.add(process)
        try:
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

    async def put_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        if self._destroyed:
            raise SandboxError(f"sandbox of room {self.room_id} is destroyed")
        target = check_sandbox_path(path)
        if len(data) > self.limits.disk:
            raise SandboxError("file is larger than the room's disk limit")
        await asyncio.to_thread(self._write_file, target, data, mode)

    def _write_file(self, target: str, data: bytes, mode: int) -> None:
        # The room owns this tree and may have planted symlinks: walk it one
        # component at a time without following any, so the write cannot
        # escape to the host.
        if target.startswith(SANDBOX_HOME + "/"):
            root, relative = self.writable / "home", target.removeprefix(SANDBOX_HOME + "/")
        else:
            root, relative = self.writable / "tmp", target.removeprefix("/tmp/")
        parts = relative.split("/")
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        directory = os.open(root, flags)
        try:
            for part in parts[:-1]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=directory)
                    os.chown(part, self.uid, self.uid, dir_fd=directory, follow_symlinks=False)
                try:
                    child = os.open(part, flags, dir_fd=directory)
                except OSError as error:
                    raise SandboxError(f"cannot write {target}: {error.strerror}") from None
                os.close(directory)
                directory = child
            write_flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(parts[-1], write_flags, mode, dir_fd=directory)
            except OSError as error:
                raise SandboxError(f"cannot write {target}: {error.strerror}") from None
            try:
                os.fchown(fd, self.uid, self.uid)
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            except OSError as error:
                raise SandboxError(f"cannot write {target}: {error.strerror}") from None
            finally:
                os.close(fd)
        finally:
            os.close(directory)

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
            await asyncio.to_thread(self.backend._kill_room, self.room_id)
            # Reap our own children first, or their zombies keep the cgroup busy.
            for process in list(self._processes):
                await process.wait()
                process.close()
            await asyncio.to_thread(self.backend._remove_room_resources, self.room_id)
        finally:
            self.backend.release(self.room_id)


async def _joined(fd: int, process: BwrapProcess) -> bool:
    """Wait for the launcher's word on ``fd``, or for it to end without a word."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
    ended = asyncio.ensure_future(process.proc.wait())
    try:
        await asyncio.wait({readable, ended}, return_when=asyncio.FIRST_COMPLETED)
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


class BwrapProcess(Process):
    def __init__(
        self, sandbox: BwrapSandbox, proc: asyncio.subprocess.Process, oom_before: int
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
        # bwrap reports a child killed by signal N as exit code 128 + N.
        if returncode > 128 and returncode - 128 < signal.NSIG:
            returncode = -(returncode - 128)
        # Any OOM kill in the room since this process started, with this
        # process dying of SIGKILL, is taken as its own: rooms are small and
        # the kernel's OOM killer picks the largest process.
        oom = returncode == -signal.SIGKILL and self.sandbox.cgroup.oom_kills() > self._oom_before
        return ExitStatus.from_returncode(returncode, oom=oom)

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
        proc: asyncio.subprocess.Process,
        oom_before: int,
        master: int,
    ) -> None:
        super().__init__(sandbox, proc, oom_before)
        self.master: int | None = master

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        while self.master is not None:
            try:
                return os.read(self.master, READ_SIZE)
            except BlockingIOError:
                pass
            except OSError as error:
                if error.errno == errno.EIO:  # every holder of the pty's other end is gone
                    self.close()
                    return b""
                raise
            readable = loop.create_future()
            fd = self.master
            loop.add_reader(fd, _resolve, readable)
            try:
                await readable
            finally:
                loop.remove_reader(fd)
        return b""

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view and self.master is not None:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                writable = loop.create_future()
                fd = self.master
                loop.add_writer(fd, _resolve, writable)
                try:
                    await writable
                finally:
                    loop.remove_writer(fd)
            except OSError as error:
                if error.errno == errno.EIO:
                    return
                raise

    async def close_stdin(self) -> None:
        await self.write(b"\x04")

    async def resize(self, cols: int, rows: int) -> None:
        if self.master is not None:
            _set_size(self.master, cols, rows)

    def close(self) -> None:
        if self.master is not None:
            os.close(self.master)
            self.master = None


class PipeProcess(BwrapProcess):
    async def read(self) -> bytes:
        assert self.proc.stdout is not None
        return await self.proc.stdout.read(READ_SIZE)

    async def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        if self.proc.stdin.is_closing():
            return
        self.proc.stdin.write(data)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    async def resize(self, cols: int, rows: int) -> None:
        return None

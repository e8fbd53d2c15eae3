"""The docker backend: one hardened container per room on a Docker Engine.

Every room is one container of the room image, talking to the Engine through
its API (aiodocker; the ``docker`` CLI is never used):

- no network, a read-only root, all capabilities dropped, no-new-privileges,
  the rooms' seccomp policy (``sandbox/seccomp.py``) as the container's
  profile, memory = memory+swap (no swap), CPU and process limits;
- tmpfs at /home/room and /tmp (and a small /dev/shm). Docker cannot bind one
  tmpfs at several places, so ``Limits.disk`` is split: /tmp gets a quarter,
  /dev/shm an eighth and /home/room the rest;
- PID 1 is Docker's init (tini) running ``sleep infinity`` as uid 65534, not
  as the room user: the room's processes can then neither kill it (which would
  end the container and lose the room's files) nor be left as zombies (on
  runsc, as root without capabilities: it first removes gVisor's devices);
- runtime ``runc``, or ``runsc`` (gVisor) for a second kernel between the room
  and the host.

A process is a ``docker exec`` (attached, on a pty or on pipes). Docker has no
API to signal an exec, so every command starts under a one-line ``sh``
launcher that prints its own pid and then ``exec``s the command: the pid is
the command's, and :meth:`DockerProcess.signal` runs ``kill`` in the
container through a second exec. That works the same with runc and runsc and
with remote engines, which a host pid (exec inspect) would not.

runsc applies the container's seccomp profile to its first process only, so
there every exec (commands and the backend's own helpers) starts under a
Python launcher instead: it installs the rooms' policy, compiled to BPF by
the server, and only then does what the ``sh`` launcher does.

The backend follows the Engine's event stream (filtered to its containers):
``oom`` events count OOM kills per container, ``exec_die`` ends a process,
``die`` ends every process of a container. The events matter beyond speed:
with runsc, when the sandbox itself dies (on OOM, it is killed whole), the
Engine never closes the attached exec streams. See docs/docker.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal as signals
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiodocker
import aiohttp
from aiodocker.execs import Exec
from aiodocker.stream import Message, Stream

from replroom.config import Limits, MiB, Settings
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
from replroom.sandbox.seccomp import compiled_filter, docker_security_opt

if TYPE_CHECKING:
    from aiodocker.containers import DockerContainer

log = logging.getLogger(__name__)

Runtime = Literal["runc", "runsc"]

LABEL_MANAGED = "replroom.managed"
LABEL_ROOM = "replroom.room"
LABEL_INSTANCE = "replroom.instance"
NAME_PREFIX = "replroom-"
# Container names allow [a-zA-Z0-9][a-zA-Z0-9_.-]; room ids must fit in one.
ROOM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
BUILD_HINT = "run `replroom image build --docker`"

USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
# PID 1's user: not the room's (see the module's docstring), not root (but
# see RUNSC_INIT).
INIT_USER = "65534:65534"
INIT = ["sleep", "infinity"]
PAGE = 4096

# runsc counts its own threads (the Sentry's and, on the ptrace platform, about
# a dozen per sandboxed process) against the host's pids limit: a runsc
# container started with the room's pids limit dies at once. The host limit
# is scaled instead; it still bounds what a fork bomb can take from the host.
RUNSC_PIDS_BASE = 128
RUNSC_PIDS_PER_TASK = 16

# Docker holds back tty input that matches a prefix of the detach sequence
# (default Ctrl-P Ctrl-Q: readline's "previous line" would stall until the
# next key). A sequence nobody types; only its first key is ever held.
DETACH_KEYS = "ctrl-^,ctrl-],ctrl-^,ctrl-],ctrl-^,ctrl-]"

# The launcher: size the pty before the command can ask for it (exec has no
# initial size on this API version), report the pid, become the command.
_LAUNCH = (
    'if [ -n "$1" ]; then stty cols "$1" rows "$2" 2>/dev/null; fi; shift 2; echo $$; exec "$@"'
)

# gVisor's own /dev (its devtmpfs, whatever the container's mounts say) has
# FUSE and TUN; runsc ignores MaskedPaths. On runsc PID 1 starts as root (no
# capabilities: the room cannot kill it either) and removes them before it
# becomes the sleep (/dev is root's, 0755: the room cannot put them back, and
# the policy refuses device nodes elsewhere). _LAUNCH_FILTERED waits for that.
GVISOR_DEVICES = ("/dev/fuse", "/dev/net")
RUNSC_INIT = ["/bin/sh", "-c", 'rm -rf -- "$@" && exec sleep infinity', "init", *GVISOR_DEVICES]
RUNSC_INIT_USER = "0:0"

# The launcher of every exec on runsc, where the container's seccomp profile
# reaches the first process only. argv: the BPF program in hex (compiled by
# the server: nothing in the room can change it), "pid" to report the pid as
# _LAUNCH does (or ""), columns and rows (or two ""), the command. The filter
# goes on before anything else, then the launcher waits until PID 1 removed
# GVISOR_DEVICES: if either fails, the command does not run and no pid is
# reported. Room processes cannot reach the launcher before the filter:
# gVisor's ptrace (Yama scope 1) and /proc/<pid>/mem refuse non-descendants.
# Python ignores SIGPIPE and SIGXFSZ, which an exec would pass on.
_LAUNCH_FILTERED = r"""
import os, sys
bpf, report, cols, rows, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
try:
    import ctypes
    class Program(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    code, word = bytes.fromhex(bpf), ctypes.c_ulong
    program, libc = Program(len(code) // 8, code), ctypes.CDLL(None, use_errno=True)
    # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER.
    if libc.prctl(38, word(1), word(0), word(0), word(0)) or libc.prctl(
        22, word(2), ctypes.byref(program), word(0), word(0)
    ):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
except Exception as error:
    message = f"replroom: cannot install the seccomp filter ({error}); {argv[0]} not run\n"
    os.write(2, message.encode())
    os._exit(126)
deadline = None
while any(os.path.lexists(path) for path in GVISOR_DEVICES):
    import time
    deadline = deadline or time.monotonic() + 10
    if time.monotonic() > deadline:
        os.write(2, f"replroom: gVisor's devices are still there; {argv[0]} not run\n".encode())
        os._exit(126)
    time.sleep(0.01)
if cols:
    import termios
    try:
        termios.tcsetwinsize(0, (int(rows), int(cols)))
    except termios.error:  # not a terminal: ignored, as by stty in _LAUNCH
        pass
if report:
    os.write(1, b"%d\n" % os.getpid())
import signal
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
try:
    os.execvp(argv[0], argv)
except OSError as error:
    os.write(2, f"{argv[0]}: {error.strerror}\n".encode())
    os._exit(127 if isinstance(error, FileNotFoundError) else 126)
""".replace("GVISOR_DEVICES", repr(GVISOR_DEVICES))
PYTHON = "/usr/bin/python3"

# Writes stdin to $1 with mode $2, as the room user. The directory is created,
# then resolved: it must still be inside the writable area after symlinks,
# and the file itself must not be a symlink or a directory. The file is
# renamed into place so that readers never see half of it.
_PUT_FILE = """
set -e
path=$1
mkdir -p -- "${path%/*}"
dir=$(realpath -e -- "${path%/*}")
case "$dir/" in
    /home/room/*|/tmp/*) ;;
    *) echo "$path is outside the writable area (through a symlink)" >&2; exit 3 ;;
esac
target="$dir/${path##*/}"
if [ -L "$target" ] || [ -d "$target" ]; then
    echo "$path is a symlink or a directory" >&2; exit 3
fi
tmp=$(mktemp "$dir/.replroom-put.XXXXXX")
cat >"$tmp" && chmod "$2" "$tmp" && mv -f -- "$tmp" "$target" || { rm -f -- "$tmp"; exit 1; }
"""

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
_EVENTS = ("oom", "die", "destroy", "exec_die")


class _HasDockerTag(Protocol):
    @property
    def docker_tag(self) -> str: ...


def resolve_docker_host(docker_host: str | None) -> str:
    """The Engine's address: the setting, else DOCKER_HOST, else the local socket."""
    if docker_host:
        return docker_host
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    for path in ("/var/run/docker.sock", "/run/docker.sock"):
        if os.path.exists(path):
            return f"unix://{path}"
    return "unix:///var/run/docker.sock"


def connect(docker_host: str | None) -> aiodocker.Docker:
    """An Engine client with no cap on concurrent connections.

    Every attached process holds one connection for its whole life, and
    aiohttp's default pool stops at 100. Only unix sockets get the unlimited
    pool; other addresses are left to aiodocker (TLS and all).
    """
    host = resolve_docker_host(docker_host)
    if host.startswith("unix://"):
        connector = aiohttp.UnixConnector(host.removeprefix("unix://"), limit=0)
        return aiodocker.Docker(url="unix://localhost", connector=connector)
    try:
        return aiodocker.Docker(url=host)
    except ValueError as error:
        raise SandboxError(f"not a Docker Engine address: {host!r} ({error})") from None


async def disconnect(client: aiodocker.Docker) -> None:
    await client.close()
    # aiodocker leaves a connector it was given open.
    if not client.connector.closed:
        await client.connector.close()


def _unreachable(host: str, error: BaseException) -> SandboxError:
    reason = error.message if isinstance(error, aiodocker.DockerError) else str(error)
    return SandboxError(f"Docker Engine not reachable at {host}: {reason}")


def _is_unreachable(error: BaseException) -> bool:
    return (isinstance(error, aiodocker.DockerError) and error.status == 900) or isinstance(
        error, aiohttp.ClientConnectionError | ConnectionError
    )


def _split_disk(disk: int) -> tuple[int, int, int]:
    """Sizes of /home/room, /tmp and /dev/shm, adding up to at most ``disk``."""

    def pages(n: int) -> int:
        return max(PAGE, n // PAGE * PAGE)

    tmp, shm = pages(disk // 4), pages(disk // 8)
    return pages(disk - tmp - shm), tmp, shm


def _host_pids_limit(runtime: Runtime, pids: int) -> int:
    if runtime == "runsc":
        return RUNSC_PIDS_BASE + RUNSC_PIDS_PER_TASK * pids
    return pids


def container_config(
    image: str, room_id: str, limits: Limits, runtime: Runtime, instance: str = "replroom"
) -> dict[str, Any]:
    """The Engine's create request for a room's container."""
    home, tmp, shm = _split_disk(limits.disk)
    # noexec would be the Docker default; rooms run their own scripts.
    tmpfs = "rw,exec,nosuid,nodev"
    init, init_user = (RUNSC_INIT, RUNSC_INIT_USER) if runtime == "runsc" else (INIT, INIT_USER)
    return {
        "Image": image,
        "Entrypoint": init,
        "Cmd": [],
        "User": init_user,
        "WorkingDir": "/",
        "Hostname": "room",
        "Env": [f"{key}={value}" for key, value in DEFAULT_ENV.items()],
        "NetworkDisabled": True,
        "Labels": {LABEL_MANAGED: "1", LABEL_ROOM: room_id, LABEL_INSTANCE: instance},
        "HostConfig": {
            "Runtime": runtime,
            "Init": True,
            "NetworkMode": "none",
            "ReadonlyRootfs": True,
            "CapDrop": ["ALL"],
            # runc applies the profile to every exec'd REPL too; runsc (with
            # --oci-seccomp) to the first process only: there every exec
            # starts under _LAUNCH_FILTERED, see docs/security.md.
            "SecurityOpt": ["no-new-privileges", docker_security_opt()],
            "IpcMode": "private",
            "Memory": limits.memory,
            "MemorySwap": limits.memory,
            "NanoCpus": round(limits.cpus * 1e9),
            "PidsLimit": _host_pids_limit(runtime, limits.pids),
            "Tmpfs": {
                SANDBOX_HOME: f"{tmpfs},size={home},uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700",
                "/tmp": f"{tmpfs},size={tmp},mode=1777",
            },
            "ShmSize": shm,
            # PID 1 prints nothing; no log file to create per room.
            "LogConfig": {"Type": "none", "Config": {}},
            "RestartPolicy": {"Name": "no"},
        },
    }


class _Watch:
    """What the event stream has said about one container."""

    def __init__(self) -> None:
        self.ooms = 0
        self.dead = False
        self.processes: dict[str, DockerProcess] = {}
        self._oom_event = asyncio.Event()

    def oom(self) -> None:
        self.ooms += 1
        self._oom_event.set()
        self._oom_event = asyncio.Event()

    async def next_oom(self) -> None:
        await self._oom_event.wait()

    def died(self) -> None:
        self.dead = True
        for process in list(self.processes.values()):
            process._ended(None)


class DockerBackend(Backend):
    name = "docker"

    def __init__(
        self,
        image: str | None,
        *,
        runtime: Runtime = "runc",
        docker_host: str | None = None,
        instance: str = "replroom",
    ) -> None:
        self.image = image
        self.runtime: Runtime = runtime
        self.instance = instance
        self.docker_host = resolve_docker_host(docker_host)
        self._docker: aiodocker.Docker | None = None
        self._watches: dict[str, _Watch] = {}  # by container id
        self._rooms: dict[str, str] = {}  # room id -> container id, while not destroyed
        self._events_task: asyncio.Task[None] | None = None
        self._events_ready: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Containers (ids, or names when a create's outcome is unknown) that could
        # not be removed as the Engine went away: removed once it answers again.
        self._unremoved: set[str] = set()
        self._creating: set[str] = set()  # names

    @classmethod
    def from_settings(cls, settings: Settings) -> DockerBackend:
        from replroom.image import DOCKER_REPOSITORY, recipe_id  # noqa: PLC0415 - heavy module

        # The tag follows from the recipe alone: the Engine must hold the
        # image, this host's disk need not (a server in a container has no
        # rootfs, see deploy/compose.yaml); prepare() checks the Engine.
        return cls(
            f"{DOCKER_REPOSITORY}:{recipe_id()}",
            runtime=settings.docker_runtime,
            docker_host=settings.docker_host,
            instance=settings.instance,
        )

    @property
    def docker(self) -> aiodocker.Docker:
        """The Engine client (made on first use: it needs a running event loop)."""
        if self._docker is None:
            self._docker = connect(self.docker_host)
        return self._docker

    # ------------------------------------------------------------ life cycle

    async def prepare(self) -> None:
        """The Engine answers, has our runtime, and holds the room image (when one is set)."""
        try:
            info = await self.docker.system.info()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
            raise _unreachable(self.docker_host, error) from None
        runtimes = sorted(info.get("Runtimes") or {})
        if self.runtime not in runtimes:
            raise SandboxError(
                f"the Docker Engine at {self.docker_host} has no runtime {self.runtime!r}"
                f" (it has {', '.join(runtimes) or 'none'}); see docs/docker.md"
            )
        if self.image is None:
            return
        try:
            await self.docker.images.inspect(self.image)
        except aiodocker.DockerError as error:
            if error.status == 404:
                raise SandboxError(
                    f"image {self.image} is not in the Docker Engine at {self.docker_host}: "
                    f"{BUILD_HINT}"
                ) from None
            raise SandboxError(f"cannot inspect image {self.image}: {error.message}") from None

    async def create(self, room_id: str, limits: Limits) -> DockerSandbox:
        if not ROOM_ID.match(room_id):
            raise SandboxError(f"invalid room id {room_id!r}")
        if self.image is None:
            raise SandboxError(f"room image not built: {BUILD_HINT}")
        if room_id in self._rooms:
            raise SandboxError(f"room {room_id} already has a sandbox")
        await self._follow_events()
        config = container_config(self.image, room_id, limits, self.runtime, self.instance)
        name = NAME_PREFIX + room_id
        self._creating.add(name)
        try:
            container = await self._create_container(config, name)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
            if not isinstance(error, aiodocker.DockerError) or _is_unreachable(error):
                # The Engine may have made it before the connection went.
                self._unremoved.add(name)
                raise _unreachable(self.docker_host, error) from None
            raise self._error(error, f"cannot create the sandbox of room {room_id}") from None
        finally:
            self._creating.discard(name)
        self._unremoved.discard(name)
        watch = self._watches.setdefault(container.id, _Watch())
        self._rooms[room_id] = container.id
        try:
            await container.start()
        except BaseException as error:
            self._forget(room_id, container.id)
            await self._remove(container.id)
            if isinstance(error, aiodocker.DockerError):
                raise self._error(error, f"cannot start the sandbox of room {room_id}") from None
            raise
        return DockerSandbox(self, room_id, limits, container, watch)

    async def _create_container(self, config: dict[str, Any], name: str) -> DockerContainer:
        try:
            return await self.docker.containers.create(config, name=name)
        except aiodocker.DockerError as error:
            if error.status != 409:
                raise
        # The name is taken: a container of the same room that a crashed
        # server left behind. It is an orphan: replace it.
        log.warning("replacing leftover container %s", name)
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.containers.container(name).delete(force=True, v=True)
        return await self.docker.containers.create(config, name=name)

    def _error(self, error: aiodocker.DockerError, doing: str) -> SandboxError:
        """A SandboxError that says what to do about an Engine error."""
        message = error.message
        if _is_unreachable(error):
            return _unreachable(self.docker_host, error)
        if error.status == 404 and "image" in message.lower():
            return SandboxError(f"{doing}: image {self.image} not found: {BUILD_HINT}")
        if "unknown runtime" in message.lower():
            return SandboxError(
                f"{doing}: the Docker Engine at {self.docker_host} has no runtime"
                f" {self.runtime!r}; register it (scripts/dockerd does, see docs/docker.md)"
            )
        return SandboxError(f"{doing}: {message}")

    async def _remove(self, ref: str) -> None:
        """Remove a container nobody uses, by id or name; if the Engine cannot now, later.

        A name is looked up first and the container removed by id, never one that
        a sandbox uses or that a create of that name is making now.
        """
        try:
            container_id = (await self.docker.containers.container(ref).show())["Id"]
            if ref in self._creating or container_id in self._watches:
                self._unremoved.discard(ref)  # in use after all
                return
            await self.docker.containers.container(container_id).delete(force=True, v=True)
        except aiodocker.DockerError as error:
            if error.status != 404:  # 409 too: an Engine shutting down may abandon a removal
                self._unremoved.add(ref)
                return
        except (aiohttp.ClientError, OSError):
            self._unremoved.add(ref)
            return
        self._unremoved.discard(ref)

    def _forget(self, room_id: str, container_id: str) -> None:
        self._watches.pop(container_id, None)
        if self._rooms.get(room_id) == container_id:
            del self._rooms[room_id]

    async def cleanup_orphans(self) -> int:
        try:
            # Only this instance's: another server may share the Engine.
            labels = [f"{LABEL_MANAGED}=1", f"{LABEL_INSTANCE}={self.instance}"]
            containers = await self.docker.containers.list(all=True, filters={"label": labels})
        except aiodocker.DockerError as error:
            raise self._error(error, "cannot list leftover sandboxes") from None
        orphans = [c for c in containers if c.id not in self._watches]

        async def remove(container: DockerContainer) -> bool:
            try:
                await container.delete(force=True, v=True)
            except aiodocker.DockerError as error:
                if error.status == 404:
                    return False
                # 409: removal already in progress (another cleanup).
                if error.status != 409:
                    log.warning("cannot remove container %s: %s", container.id[:12], error)
                return False
            return True

        removed = await asyncio.gather(*(remove(c) for c in orphans))
        return sum(removed)

    async def close(self) -> None:
        for ref in list(self._unremoved):
            await self._remove(ref)
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events_task
            self._events_task = None
        if self._docker is not None:
            await disconnect(self._docker)
            self._docker = None

    # ---------------------------------------------------------------- events

    async def _follow_events(self) -> None:
        """Make sure the event stream is being followed before anything starts."""
        docker = self.docker  # an unusable address fails here, not in the task
        if self._events_task is None or self._events_task.done():
            self._events_ready = asyncio.get_running_loop().create_future()
            self._events_task = asyncio.create_task(self._events(docker, self._events_ready))
        assert self._events_ready is not None
        try:
            await asyncio.shield(self._events_ready)
        except aiodocker.DockerError as error:
            raise self._error(error, "cannot follow the Engine's events") from None
        except (aiohttp.ClientError, OSError) as error:
            raise _unreachable(self.docker_host, error) from None

    async def _events(self, docker: aiodocker.Docker, ready: asyncio.Future[None]) -> None:
        filters = {"type": ["container"], "label": [f"{LABEL_MANAGED}=1"], "event": _EVENTS}
        since: str | None = None
        backoff = 0.1
        try:
            while True:
                params = {"filters": json.dumps(filters)}
                if since is not None:
                    # Replays what happened while disconnected.
                    params["since"] = since
                try:
                    async with docker._query(
                        "events", params=params, timeout=aiohttp.ClientTimeout(connect=10)
                    ) as response:
                        if ready.done():
                            resync = asyncio.create_task(self._resync())
                            self._background.add(resync)
                            resync.add_done_callback(self._background.discard)
                        else:
                            ready.set_result(None)
                        backoff = 0.1
                        async for line in response.content:
                            if not line.strip():
                                continue
                            try:
                                event = json.loads(line)
                                nanos = int(event.get("timeNano", 0))
                                self._dispatch(event)
                            except (ValueError, TypeError, AttributeError):
                                log.warning("ignoring an unreadable Docker event: %r", line[:200])
                                continue
                            since = f"{nanos // 10**9}.{nanos % 10**9:09d}"
                except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
                    if not ready.done():
                        # Nothing depends on us yet: report to the caller and stop.
                        ready.set_exception(error)
                        return
                    log.warning("Docker event stream lost (%s); reconnecting", error)
                except Exception:
                    # A bad event must not stop the stream that every process relies on.
                    log.exception("Docker event stream failed; reconnecting")
                await asyncio.sleep(backoff)
                # Short: while the stream is down, OOM kills are not counted.
                backoff = min(backoff * 2, 1.0)
        finally:
            if not ready.done():
                ready.set_exception(SandboxError("the Docker event stream ended"))

    def _dispatch(self, event: Mapping[str, Any]) -> None:
        actor = event.get("Actor") or {}
        watch = self._watches.get(actor.get("ID") or event.get("id", ""))
        if watch is None:
            return
        action = event.get("Action", "")
        if action == "oom":
            watch.oom()
        elif action == "exec_die":
            attributes = actor.get("Attributes") or {}
            process = watch.processes.get(attributes.get("execID", ""))
            if process is not None:
                with contextlib.suppress(ValueError):
                    process._ended(int(attributes.get("exitCode", "")))
        elif action in ("die", "destroy"):
            watch.died()

    async def _resync(self) -> None:
        """After a gap in the event stream: ask about every process still running.

        The Engine answers again, so containers it could not remove before go now.
        """
        for ref in list(self._unremoved):
            await self._remove(ref)
        for watch in list(self._watches.values()):
            for process in list(watch.processes.values()):
                with contextlib.suppress(Exception):
                    await process._poll()


class DockerSandbox(Sandbox):
    def __init__(
        self,
        backend: DockerBackend,
        room_id: str,
        limits: Limits,
        container: DockerContainer,
        watch: _Watch,
    ) -> None:
        super().__init__(room_id, limits)
        self.backend = backend
        self.container = container
        self.id: str = container.id
        self._watch = watch
        self._destroyed = False

    def _check_usable(self) -> None:
        if self._destroyed:
            raise SandboxError(f"the sandbox of room {self.room_id} was destroyed")

    async def _exec(
        self,
        argv: Sequence[str],
        *,
        tty: bool,
        env: Mapping[str, str] | None = None,
        cwd: str = SANDBOX_HOME,
    ) -> Exec:
        self._check_usable()
        try:
            return await self.container.exec(
                list(argv),
                stdin=True,
                stdout=True,
                stderr=True,
                tty=tty,
                user=USER,
                environment={**DEFAULT_ENV, **(env or {})},
                workdir=cwd,
                detach_keys=DETACH_KEYS if tty else None,
            )
        except aiodocker.DockerError as error:
            if error.status in (404, 409):
                raise SandboxError(
                    f"the sandbox of room {self.room_id} is not running"
                    f" ({error.message}); it has to be made again"
                ) from None
            raise self.backend._error(error, "cannot start a process") from None

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = SANDBOX_HOME,
        tty: bool = True,
        cols: int = 80,
        rows: int = 24,
    ) -> DockerProcess:
        if not argv:
            raise SandboxError("nothing to run: empty argv")
        size = (str(cols), str(rows)) if tty else ("", "")
        launcher = self._launcher(argv, report_pid=True, size=size)
        exec_ = await self._exec(launcher, tty=tty, env=env, cwd=cwd)
        process = DockerProcess(self, exec_, tty=tty)
        # Registered before it starts, so that its exec_die cannot be missed.
        self._watch.processes[exec_.id] = process
        try:
            await process._start()
        except BaseException:
            self._watch.processes.pop(exec_.id, None)
            await process._close_stream()
            raise
        return process

    def _launcher(
        self, argv: Sequence[str], *, report_pid: bool, size: tuple[str, str] = ("", "")
    ) -> list[str]:
        """The exec's command line for ``argv``: on runsc under the rooms' seccomp policy;
        ``report_pid`` and ``size`` (columns, rows, or "" not to resize) as for _LAUNCH."""
        if self.backend.runtime == "runsc":
            bpf, report = compiled_filter().hex(), "pid" if report_pid else ""
            return [PYTHON, "-I", "-S", "-c", _LAUNCH_FILTERED, bpf, report, *size, *argv]
        # runc puts every exec under the container's profile itself.
        if not report_pid:
            return list(argv)
        return ["/bin/sh", "-c", _LAUNCH, "replroom", *size, *argv]

    async def _run(
        self, argv: Sequence[str], stdin: bytes | None = None, limit: int = 65536
    ) -> tuple[int, bytes]:
        """Run a helper command on pipes to its end: (exit code, first bytes of output)."""
        exec_ = await self._exec(self._launcher(argv, report_pid=False), tty=False)
        output = bytearray()
        try:
            async with asyncio.timeout(HELPER_TIMEOUT):
                async with exec_.start() as stream:
                    if stdin is not None:
                        await stream.write_in(stdin)
                    _half_close(stream)
                    while (message := await stream.read_out()) is not None:
                        if len(output) < limit:
                            output += message.data
                info = await exec_.inspect()
        except TimeoutError:
            raise SandboxError(f"{argv[0]} in the sandbox did not finish") from None
        except aiodocker.DockerError as error:
            raise self.backend._error(error, f"cannot run {argv[0]}") from None
        except (aiohttp.ClientError, OSError) as error:
            raise SandboxError(f"lost the connection to {argv[0]}: {error}") from None
        return int(info.get("ExitCode") or 0), bytes(output)

    async def put_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        # The archive API cannot do it: it writes under the container's
        # read-only root, not into the tmpfs mounted over it. An exec writing
        # stdin to the file, as the room user, needs nothing from the Engine.
        target = check_sandbox_path(path)
        code, output = await self._run(
            ["/bin/sh", "-c", _PUT_FILE, "put_file", target, f"{mode & 0o7777:o}"], stdin=data
        )
        if code != 0:
            reason = output.decode(errors="replace").strip() or f"exit code {code}"
            raise SandboxError(f"cannot write {path}: {reason}")

    async def stats(self) -> SandboxStats:
        self._check_usable()
        try:
            raw = await self.backend.docker._query_json(
                f"containers/{self.id}/stats", params={"stream": "false", "one-shot": "true"}
            )
        except aiodocker.DockerError as error:
            raise self.backend._error(error, "cannot read the sandbox's usage") from None
        memory = int((raw.get("memory_stats") or {}).get("usage") or 0)
        cpu = (raw.get("cpu_stats") or {}).get("cpu_usage") or {}
        pids = int((raw.get("pids_stats") or {}).get("current") or 0)
        if self.backend.runtime == "runsc":
            # The host counts gVisor's own threads; ask the sandbox's kernel.
            pids = await self._count_tasks()
        return SandboxStats(
            memory_bytes=memory,
            cpu_seconds=int(cpu.get("total_usage") or 0) / 1e9,
            pids=pids,
        )

    async def _count_tasks(self) -> int:
        # A shell glob needs no second process; the shell itself is not counted.
        code, output = await self._run(["/bin/sh", "-c", "echo /proc/[0-9]*/task/[0-9]*"])
        if code != 0:
            raise SandboxError(f"cannot count the sandbox's processes: exit code {code}")
        return max(0, len(output.split()) - 1)

    async def alive(self) -> bool:
        """Raises SandboxError when the Engine cannot say (it is down or restarting)."""
        if self._destroyed or self._watch.dead:
            return False
        try:
            info = await self.container.show()
        except aiodocker.DockerError as error:
            if error.status == 404:
                return False
            raise self.backend._error(error, "cannot inspect the sandbox") from None
        except (aiohttp.ClientError, OSError) as error:
            raise _unreachable(self.backend.docker_host, error) from None
        return bool(info["State"]["Running"])

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        for process in list(self._watch.processes.values()):
            process._sent.add(signals.SIGKILL)
        try:
            await self.container.delete(force=True, v=True)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
            # 404: already gone. Anything else, 409 included (a removal under way,
            # which an Engine shutting down may abandon), is tried again later.
            if not isinstance(error, aiodocker.DockerError) or error.status != 404:
                self._destroyed = False
                if not isinstance(error, aiodocker.DockerError) or _is_unreachable(error):
                    # The Engine is away: the room may start a new sandbox meanwhile,
                    # which takes this one's name over (and removes it, if it can).
                    if self.backend._rooms.get(self.room_id) == self.id:
                        del self.backend._rooms[self.room_id]
                    raise _unreachable(self.backend.docker_host, error) from None
                raise self.backend._error(error, f"cannot remove room {self.room_id}") from None
        processes = list(self._watch.processes.values())
        self._watch.died()
        # Nobody may read these to their end now: close their connections.
        for process in processes:
            await process._close_stream()
        self.backend._forget(self.room_id, self.id)


def _half_close(stream: Stream) -> None:
    """End the exec's stdin but keep reading its output.

    aiodocker's Stream.close() would drop the whole connection, and with it
    the output and any input the Engine has not read yet.
    """
    response = stream._resp
    transport = response.connection.transport if response and response.connection else None
    if transport is not None and transport.can_write_eof() and not transport.is_closing():
        transport.write_eof()


class DockerProcess(Process):
    def __init__(self, sandbox: DockerSandbox, exec_: Exec, *, tty: bool) -> None:
        self.sandbox = sandbox
        self.exec = exec_
        self.tty = tty
        self.pid: int | None = None  # in the container's pid namespace
        self._stream: Stream = exec_.start()
        self._reader: asyncio.Future[Message | None] | None = None
        self._pending = b""
        self._eof = False
        self._exit_code: int | None = None
        self._done = asyncio.Event()
        self._status: ExitStatus | None = None
        self._sent: set[int] = set()
        self._ooms_before = sandbox._watch.ooms

    async def _start(self) -> None:
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
            raise self.sandbox.backend._error(error, "cannot start a process") from None
        first, _, rest = line.partition(b"\n")
        try:
            self.pid = int(first.strip())
        except ValueError:
            output = (early + line).decode(errors="replace").strip()
            raise SandboxError(f"cannot start a process in the sandbox: {output!r}") from None
        self._pending = early + rest

    # ---------------------------------------------------------------- output

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
        while not self._eof:
            if self._reader is None:
                self._reader = asyncio.ensure_future(self._stream.read_out())
            reader = self._reader
            if self._done.is_set():
                # The process is over and its last output is on its way; but
                # the stream may never end (runsc after its sandbox died).
                done, _ = await asyncio.wait({reader}, timeout=END_GRACE)
                if not done:
                    break
            else:
                ended = asyncio.ensure_future(self._done.wait())
                try:
                    await asyncio.wait({reader, ended}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    ended.cancel()
                if not reader.done():
                    continue
            if self._reader is not reader:  # the stream was closed while we waited
                break
            self._reader = None
            try:
                message: Message | None = reader.result()
            except (aiohttp.ClientError, OSError, RuntimeError):
                message = None
            if message is None:
                break
            return message
        await self._close_stream()
        return None

    async def _close_stream(self) -> None:
        self._eof = True
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
            await self._stream.close()

    # ----------------------------------------------------------------- input

    async def write(self, data: bytes) -> None:
        if self._eof or self._done.is_set():
            return
        # Fails only when the process or its connection is gone, which read()
        # and wait() report.
        with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
            await self._stream.write_in(data)

    async def close_stdin(self) -> None:
        if self.tty:
            await self.write(b"\x04")
        elif not self._eof:
            _half_close(self._stream)

    async def resize(self, cols: int, rows: int) -> None:
        if not self.tty or self._done.is_set():
            return
        try:
            await self.exec.resize(h=rows, w=cols)
        except aiodocker.DockerError as error:
            # Ended between the check and the call.
            if error.status not in (404, 409, 500):
                raise self.sandbox.backend._error(error, "cannot resize the terminal") from None

    async def signal(self, signum: int) -> None:
        if self._done.is_set() or self.pid is None:
            return
        self._sent.add(signum)
        # The pid could only have been reused in the milliseconds between the
        # process's end and the Engine's exec_die event.
        with contextlib.suppress(SandboxError):
            await self.sandbox._run(["/bin/sh", "-c", 'kill -"$1" "$2"', "kill", str(signum),
                                     str(self.pid)])  # fmt: skip

    # ------------------------------------------------------------------ exit

    def _ended(self, exit_code: int | None) -> None:
        """Called from the event stream (or a poll): the exec is over.

        Only the first report counts, and not its exit code if the container
        was already going: runsc's exec then reports whatever it makes of a
        vanished sandbox (127 and the like), not the process's fate.
        """
        if self._done.is_set():
            return
        if not (self.sandbox._destroyed or self.sandbox._watch.dead):
            self._exit_code = exit_code
        self._done.set()

    async def _poll(self) -> None:
        """Ask the Engine whether the exec is still running."""
        try:
            info = await self.exec.inspect()
        except aiodocker.DockerError as error:
            if error.status == 404:  # the Engine forgets the execs of a stopped container
                self._ended(None)
                return
            raise
        if not info.get("Running"):
            self._ended(info.get("ExitCode"))
        elif not await self.sandbox.alive():
            self._ended(None)

    async def wait(self) -> ExitStatus:
        if self._status is not None:
            return self._status
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._done.wait()
            if not self._done.is_set():
                with contextlib.suppress(
                    aiodocker.DockerError, aiohttp.ClientError, OSError, SandboxError
                ):
                    await self._poll()
        if self._status is None:
            self._status = await self._classify()
            self.sandbox._watch.processes.pop(self.exec.id, None)
        return self._status

    async def _classify(self) -> ExitStatus:
        watch = self.sandbox._watch
        code = self._exit_code
        if code is not None and code >= 128 and not watch.dead:
            # A runsc exec reports 128 and more when its whole sandbox died,
            # which the Engine may announce a moment later: look before judging.
            await self._await_container_death(OOM_EVENT_GRACE)
        if watch.dead or code is None:
            # The whole container went: destroyed, or killed by the kernel
            # (a runsc sandbox is OOM-killed whole, whatever its exec reports).
            if await self._container_oom_killed():
                return ExitStatus.from_returncode(-signals.SIGKILL, oom=True)
            if code is None:
                return ExitStatus.from_returncode(-signals.SIGKILL)
        # Docker reports a death by signal N as 128 + N, like a shell.
        returncode = -(code - 128) if 128 < code < 128 + signals.NSIG else code
        if returncode == -signals.SIGKILL and signals.SIGKILL not in self._sent:
            # Any OOM kill in the room during this process's life, with this
            # process dying of SIGKILL, is taken as its own: the kernel's OOM
            # killer picks the largest process.
            if watch.ooms == self._ooms_before:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(OOM_EVENT_GRACE):
                        await watch.next_oom()
            return ExitStatus.from_returncode(returncode, oom=watch.ooms > self._ooms_before)
        return ExitStatus.from_returncode(returncode)

    async def _await_container_death(self, grace: float) -> None:
        if self.sandbox.backend.runtime != "runsc":
            return
        deadline = asyncio.get_running_loop().time() + grace
        while asyncio.get_running_loop().time() < deadline:
            if self.sandbox._watch.dead:
                return
            if not await self.sandbox.alive():
                self.sandbox._watch.died()
                return
            await asyncio.sleep(0.05)

    async def _container_oom_killed(self) -> bool:
        try:
            info = await self.sandbox.container.show()
        except aiodocker.DockerError:
            return False
        return bool(info["State"].get("OOMKilled"))


async def diagnose(
    docker_host: str | None, runtime: Runtime, image: _HasDockerTag | str | None = None
) -> str | None:
    """None if sandboxes of this runtime can be made, else the reason, for people.

    With an image (a tag or an object with ``docker_tag``), also starts one
    throwaway container and runs ``true`` in it, which is the only test that
    catches a runtime that is registered but broken on this host.
    """
    host = resolve_docker_host(docker_host)
    tag = image if isinstance(image, str) or image is None else image.docker_tag
    backend = DockerBackend(tag, runtime=runtime, docker_host=host)
    try:
        try:
            await backend.prepare()
        except SandboxError as error:
            return str(error)
        if tag is None:
            return None
        room_id = "doctor-" + secrets.token_hex(6)
        try:
            sandbox = await backend.create(room_id, Limits(memory=128 * MiB, pids=64))
        except SandboxError as error:
            return str(error)
        try:
            code, output = await sandbox._run(["true"])
            if code != 0:
                return f"a test container ran `true` with exit code {code}: {output!r}"
        except SandboxError as error:
            return f"a test container could not run a command: {error}"
        finally:
            with contextlib.suppress(SandboxError):
                await sandbox.destroy()
        return None
    finally:
        await backend.close()

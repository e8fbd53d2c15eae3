"""The docker backend and its sandboxes: one container per room on a Docker Engine.

The backend keeps what it knows about its containers: a
:class:`~replroom.sandbox.docker.events.ContainerWatch` per container (fed
by the event stream), which room each serves, and the containers it could
not remove while the Engine was away (removed once it answers again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiodocker
import aiohttp
from aiodocker.execs import Exec

from replroom.config import Limits, Settings
from replroom.sandbox.base import (
    SANDBOX_HOME,
    Backend,
    Sandbox,
    SandboxError,
    SandboxImage,
    SandboxStats,
    TakenFile,
    check_room_id,
    check_sandbox_path,
    parse_taken,
)
from replroom.sandbox.docker.config import (
    BUILD_HINT,
    DEFAULT_CPU_SHARES,
    Runtime,
    container_config,
    container_name,
    exec_options,
)
from replroom.sandbox.docker.engine import (
    connect,
    disconnect,
    explain,
    is_answer,
    resolve_docker_host,
    unreachable,
)
from replroom.sandbox.docker.events import ContainerWatch, EventStream
from replroom.sandbox.docker.launch import launcher
from replroom.sandbox.docker.process import HELPER_TIMEOUT, DockerProcess, half_close
from replroom.sandbox.scripts import put_file_argv, take_files_argv
from replroom.sandbox.spec import LABEL_INSTANCE, LABEL_MANAGED, RoomSpec, room_spec

if TYPE_CHECKING:
    from aiodocker.containers import DockerContainer

log = logging.getLogger(__name__)

# Docker holds back tty input that matches a prefix of the detach sequence
# (default Ctrl-P Ctrl-Q: readline's "previous line" would stall until the
# next key). A sequence nobody types; only its first key is ever held.
DETACH_KEYS = "ctrl-^,ctrl-],ctrl-^,ctrl-],ctrl-^,ctrl-]"

Watch = ContainerWatch[DockerProcess]


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
        self._watches: dict[str, Watch] = {}  # by container id
        self._rooms: dict[str, str] = {}  # room id -> container id, while not destroyed
        self._events = EventStream(self._watches, self._resync)
        # Containers (ids, or names when a create's outcome is unknown) that could
        # not be removed as the Engine went away: removed once it answers again.
        self._unremoved: set[str] = set()
        self._creating: set[str] = set()  # names
        self._removals: set[asyncio.Task[None]] = set()  # of creates given up half-way

    @classmethod
    def from_settings(cls, settings: Settings, image: SandboxImage) -> DockerBackend:
        """The backend ``settings`` describe, running ``image``.

        Only its tag matters: the Engine must hold the image, this host's
        disk need not (a server in a container has no rootfs, see
        deploy/compose.yaml); prepare() checks the Engine.
        """
        return cls(
            image.docker_tag,
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

    def error(self, error: aiodocker.DockerError, doing: str) -> SandboxError:
        """A SandboxError that says what to do about an Engine error."""
        return explain(error, doing, host=self.docker_host, image=self.image, runtime=self.runtime)

    # ------------------------------------------------------------ life cycle

    async def prepare(self) -> None:
        """The Engine answers, has our runtime, and holds the room image (when one is set)."""
        try:
            info = await self.docker.system.info()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
            raise unreachable(self.docker_host, error) from None
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

    async def create(
        self, room_id: str, limits: Limits, *, background: bool = False
    ) -> DockerSandbox:
        check_room_id(room_id)
        if self.image is None:
            raise SandboxError(f"room image not built: {BUILD_HINT}")
        self._check_free(room_id)
        await self._follow_events()
        # runsc cannot change a running sandbox's resources (it has no
        # `update`), so its sandboxes get the usual weight from the start.
        background = background and self.runtime != "runsc"
        spec = room_spec(
            room_id, limits, image=self.image, instance=self.instance, background=background
        )
        config = container_config(spec, self.runtime)
        name = container_name(room_id)
        self._creating.add(name)
        making = asyncio.ensure_future(self._create_container(config, name))
        try:
            container = await asyncio.shield(making)
        except asyncio.CancelledError:
            # The Engine goes on making it whether we wait for its answer or not
            # (a pool closing as the server stops gives up its spare's create).
            self._remove_when_made(making, name)
            raise
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
            if not is_answer(error):
                # The Engine may have made it before the connection went.
                self._unremoved.add(name)
                raise unreachable(self.docker_host, error) from None
            assert isinstance(error, aiodocker.DockerError)
            raise self.error(error, f"cannot create the sandbox of room {room_id}") from None
        finally:
            self._creating.discard(name)
        self._unremoved.discard(name)
        watch = self._watches.setdefault(container.id, Watch())
        self._rooms[room_id] = container.id
        try:
            await container.start()
        except BaseException as error:
            self._forget(room_id, container.id)
            await self._remove(container.id)
            if isinstance(error, aiodocker.DockerError):
                raise self.error(error, f"cannot start the sandbox of room {room_id}") from None
            raise
        return DockerSandbox(self, spec, limits, container, watch)

    def _remove_when_made(self, making: asyncio.Future[DockerContainer], name: str) -> None:
        """Remove the container a given-up create makes, once the Engine has answered."""
        self._unremoved.add(name)

        async def remove() -> None:
            with contextlib.suppress(Exception):
                await making
            await self._remove(name)

        removal = asyncio.create_task(remove())
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

    async def _create_container(self, config: dict[str, Any], name: str) -> DockerContainer:
        try:
            return await self.docker.containers.create(config, name=name)
        except aiodocker.DockerError as error:
            if error.status != 409:
                raise
        await self._take_name(name)
        return await self.docker.containers.create(config, name=name)

    async def _take_name(self, name: str) -> None:
        """Remove the container that holds ``name``, which none of our live sandboxes has.

        A crashed server left it behind, or it is one of ours that could not
        be removed while the Engine was away: an orphan either way.
        """
        log.warning("replacing leftover container %s", name)
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.containers.container(name).delete(force=True, v=True)

    # ------------------------------------------------------ the room registry

    def _check_free(self, room_id: str) -> None:
        if room_id in self._rooms or container_name(room_id) in self._creating:
            raise SandboxError(f"room {room_id} already has a sandbox")

    def _claim(self, room_id: str, container_id: str) -> None:
        """Count ``container_id`` as ``room_id``'s sandbox from now on (a rename's first step)."""
        self._check_free(room_id)
        self._rooms[room_id] = container_id

    def _release(self, room_id: str, container_id: str) -> None:
        """``container_id`` no longer serves ``room_id``."""
        if self._rooms.get(room_id) == container_id:
            del self._rooms[room_id]

    def _forget(self, room_id: str, container_id: str) -> None:
        self._watches.pop(container_id, None)
        self._release(room_id, container_id)

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

    async def cleanup_orphans(self) -> int:
        try:
            # Only this instance's: another server may share the Engine.
            labels = [f"{LABEL_MANAGED}=1", f"{LABEL_INSTANCE}={self.instance}"]
            containers = await self.docker.containers.list(all=True, filters={"label": labels})
        except aiodocker.DockerError as error:
            raise self.error(error, "cannot list leftover sandboxes") from None
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
        await asyncio.gather(*self._removals, return_exceptions=True)
        for ref in list(self._unremoved):
            await self._remove(ref)
        await self._events.close()
        if self._docker is not None:
            await disconnect(self._docker)
            self._docker = None

    # ---------------------------------------------------------------- events

    async def _follow_events(self) -> None:
        """Make sure the event stream is being followed before anything starts."""
        try:
            await self._events.follow(self.docker)  # an unusable address fails here
        except aiodocker.DockerError as error:
            raise self.error(error, "cannot follow the Engine's events") from None
        except (aiohttp.ClientError, OSError) as error:
            raise unreachable(self.docker_host, error) from None

    async def _resync(self) -> None:
        """After a gap in the event stream: ask about every process still running.

        The Engine answers again, so containers it could not remove before go now.
        """
        for ref in list(self._unremoved):
            await self._remove(ref)
        for watch in list(self._watches.values()):
            for process in list(watch.processes.values()):
                with contextlib.suppress(Exception):
                    await process.poll()


class DockerSandbox(Sandbox):
    """A room's container, named ``replroom-<room id>``.

    :meth:`rename` renames the container after the new room; its labels,
    fixed for a container's life, keep the id it was made with.
    """

    def __init__(
        self,
        backend: DockerBackend,
        spec: RoomSpec,
        limits: Limits,
        container: DockerContainer,
        watch: Watch,
    ) -> None:
        super().__init__(spec.room_id, limits)
        self.backend = backend
        self.spec = spec  # as made: room_id changes with rename(), the spec does not
        self.container = container
        self.id: str = container.id
        self.watch = watch
        self.background = spec.background
        self._destroyed = False

    @property
    def runtime(self) -> Runtime:
        return self.backend.runtime

    @property
    def going(self) -> bool:
        return self._destroyed or self.watch.dead

    def error(self, error: aiodocker.DockerError, doing: str) -> SandboxError:
        return self.backend.error(error, doing)

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
                **exec_options(self.spec, env, cwd),
                detach_keys=DETACH_KEYS if tty else None,
            )
        except aiodocker.DockerError as error:
            if error.status in (404, 409):
                raise SandboxError(
                    f"the sandbox of room {self.room_id} is not running"
                    f" ({error.message}); it has to be made again"
                ) from None
            raise self.error(error, "cannot start a process") from None

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
        command = launcher(self.runtime, argv, report_pid=True, size=size)
        exec_ = await self._exec(command, tty=tty, env=env, cwd=cwd)
        process = DockerProcess(self, exec_, tty=tty)
        # Registered before it starts, so that its exec_die cannot be missed.
        self.watch.processes[exec_.id] = process
        try:
            await process.start()
        except BaseException:
            self.watch.processes.pop(exec_.id, None)
            await process.close_output()
            raise
        return process

    async def _run(
        self, argv: Sequence[str], stdin: bytes | None = None, limit: int = 65536
    ) -> tuple[int, bytes]:
        """Run a helper command on pipes to its end: (exit code, first bytes of output)."""
        exec_ = await self._exec(launcher(self.runtime, argv, report_pid=False), tty=False)
        output = bytearray()
        try:
            async with asyncio.timeout(HELPER_TIMEOUT):
                async with exec_.start() as stream:
                    if stdin is not None:
                        await stream.write_in(stdin)
                    half_close(stream)
                    while (message := await stream.read_out()) is not None:
                        if len(output) < limit:
                            output += message.data
                info = await exec_.inspect()
        except TimeoutError:
            raise SandboxError(f"{argv[0]} in the sandbox did not finish") from None
        except aiodocker.DockerError as error:
            raise self.error(error, f"cannot run {argv[0]}") from None
        except (aiohttp.ClientError, OSError) as error:
            raise SandboxError(f"lost the connection to {argv[0]}: {error}") from None
        return int(info.get("ExitCode") or 0), bytes(output)

    async def put_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        # The archive API cannot do it: it writes under the container's
        # read-only root, not into the tmpfs mounted over it. An exec writing
        # stdin to the file, as the room user, needs nothing from the Engine.
        target = check_sandbox_path(path)
        code, output = await self._run(put_file_argv(target, mode, len(data)), stdin=data)
        if code != 0:
            reason = output.decode(errors="replace").strip() or f"exit code {code}"
            raise SandboxError(f"cannot write {path}: {reason}")

    async def take_files(self, directory: str, max_bytes: int, count: int) -> list[TakenFile]:
        argv = take_files_argv(check_sandbox_path(directory), max_bytes, count)
        code, output = await self._run(argv, limit=count * (max_bytes + 256) + 4096)
        if code != 0:
            raise SandboxError(f"cannot take files from {directory}: exit code {code}")
        return parse_taken(output, max_bytes)

    async def stats(self) -> SandboxStats:
        self._check_usable()
        try:
            raw = await self.backend.docker._query_json(
                f"containers/{self.id}/stats", params={"stream": "false", "one-shot": "true"}
            )
        except aiodocker.DockerError as error:
            raise self.error(error, "cannot read the sandbox's usage") from None
        memory = int((raw.get("memory_stats") or {}).get("usage") or 0)
        cpu = (raw.get("cpu_stats") or {}).get("cpu_usage") or {}
        pids = int((raw.get("pids_stats") or {}).get("current") or 0)
        if self.runtime == "runsc":
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
        if self.going:
            return False
        try:
            info = await self.container.show()
        except aiodocker.DockerError as error:
            if error.status == 404:
                return False
            raise self.error(error, "cannot inspect the sandbox") from None
        except (aiohttp.ClientError, OSError) as error:
            raise unreachable(self.backend.docker_host, error) from None
        return bool(info["State"]["Running"])

    async def oom_killed(self) -> bool:
        try:
            info = await self.container.show()
        except aiodocker.DockerError:
            return False
        return bool(info["State"].get("OOMKilled"))

    async def rename(self, room_id: str) -> None:
        check_room_id(room_id)
        if room_id == self.room_id:
            return
        self._check_usable()
        self.backend._claim(room_id, self.id)
        try:
            await self._rename_container(room_id)
        except BaseException:
            self.backend._release(room_id, self.id)
            raise
        self.backend._release(self.room_id, self.id)
        self.room_id = room_id

    async def foreground(self) -> None:
        if not self.background:
            return
        self._check_usable()
        try:
            await self.backend.docker._query_json(
                f"containers/{self.id}/update",
                method="POST",
                data={"CpuShares": DEFAULT_CPU_SHARES},
            )
        except aiodocker.DockerError as error:
            doing = f"cannot change the CPU weight of room {self.room_id}"
            raise self.error(error, doing) from None
        except (aiohttp.ClientError, OSError) as error:
            raise unreachable(self.backend.docker_host, error) from None
        self.background = False

    async def _rename_container(self, room_id: str) -> None:
        name = container_name(room_id)
        for attempt in range(2):
            try:
                await self.container.rename(name)
                return
            except aiodocker.DockerError as error:
                if error.status == 409 and attempt == 0:
                    await self.backend._take_name(name)
                    continue
                if error.status == 404:
                    raise SandboxError(
                        f"the sandbox of room {self.room_id} is gone; it has to be made again"
                    ) from None
                doing = f"cannot hand the sandbox of room {self.room_id} to room {room_id}"
                raise self.error(error, doing) from None
            except (aiohttp.ClientError, OSError) as error:
                raise unreachable(self.backend.docker_host, error) from None

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        for process in list(self.watch.processes.values()):
            process.expect_kill()
        try:
            await self.container.delete(force=True, v=True)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
            # 404: already gone. Anything else, 409 included (a removal under way,
            # which an Engine shutting down may abandon), is tried again later.
            if not isinstance(error, aiodocker.DockerError) or error.status != 404:
                self._destroyed = False
                # The room may start a new sandbox meanwhile, which takes this
                # one's name over (and removes it, if it can).
                self.backend._release(self.room_id, self.id)
                if not is_answer(error):
                    raise unreachable(self.backend.docker_host, error) from None
                assert isinstance(error, aiodocker.DockerError)
                raise self.error(error, f"cannot remove room {self.room_id}") from None
        processes = list(self.watch.processes.values())
        self.watch.died()
        # Nobody may read these to their end now: close their connections.
        for process in processes:
            await process.close_output()
        self.backend._forget(self.room_id, self.id)

"""The kubernetes backend and its sandboxes: one pod per room in a namespace of a cluster.

The backend keeps what it knows of its pods in one :class:`PodReflector`
(a :class:`PodWatch` per pod) and which room each pod serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
from replroom.sandbox.kubernetes.client import (
    ApiError,
    KubeClient,
    load_configuration,
    pod_path,
)
from replroom.sandbox.kubernetes.config import (
    ANNOTATION_ROOM,
    CONTAINER,
    PodPlacement,
    exec_command,
    pod_manifest,
    pod_name,
    room_label,
)
from replroom.sandbox.kubernetes.exec import (
    HELPER_TIMEOUT,
    OOM_KILLS,
    PROTOCOLS,
    STATS,
    KubernetesProcess,
)
from replroom.sandbox.kubernetes.watch import PodReflector, PodWatch, container_state
from replroom.sandbox.scripts import put_file_argv, take_files_argv
from replroom.sandbox.spec import LABEL_INSTANCE, LABEL_MANAGED, LABEL_ROOM, RoomSpec, room_spec

log = logging.getLogger(__name__)

# A pod may wait this long for a node and its image before it counts as failed.
START_TIMEOUT = 120.0
# How long destroy() waits for the watch to say the pod is gone.
DELETE_TIMEOUT = 30.0
RBAC_HINT = "the server's service account needs the Role in deploy/kubernetes (docs/kubernetes.md)"
# What the server does in the rooms' namespace: (verb, resource, subresource).
PERMISSIONS = (
    ("create", "pods", ""),
    ("delete", "pods", ""),
    ("get", "pods", ""),
    ("list", "pods", ""),
    ("watch", "pods", ""),
    ("patch", "pods", ""),
    ("create", "pods", "exec"),
    ("list", "events", ""),
)


def explain(error: ApiError, doing: str, namespace: str) -> SandboxError:
    """A SandboxError that says what to do about an API server's answer."""
    if error.status == 0:
        return SandboxError(error.message)
    if error.status in (401, 403):
        return SandboxError(
            f"{doing}: not allowed in namespace {namespace}: {error.message}; {RBAC_HINT}"
        )
    if error.status == 404 and "namespace" in error.message.lower():
        return SandboxError(f"{doing}: namespace {namespace} not found (docs/kubernetes.md)")
    return SandboxError(f"{doing}: {error.message}")


class KubernetesBackend(Backend):
    name = "kubernetes"

    def __init__(
        self,
        placement: PodPlacement,
        *,
        image: str,
        instance: str = "replroom",
        kubeconfig: Path | None = None,
    ) -> None:
        self.placement = placement
        self.image = image
        self.instance = instance
        self.kubeconfig = kubeconfig
        self.summary = ""  # what prepare() found, for `replroom doctor`
        self._client: KubeClient | None = None
        self._reflector: PodReflector | None = None
        self._rooms: dict[str, str] = {}  # room id -> pod name, while not destroyed
        self._creating: set[str] = set()  # pod names
        self._removals: set[asyncio.Task[None]] = set()  # of creates given up half-way

    @classmethod
    def from_settings(cls, settings: Settings, image: SandboxImage) -> KubernetesBackend:
        """The backend ``settings`` describe; without ``kubernetes_image``, the nodes
        must hold the room image under its local tag (``image.docker_tag``)."""
        placement = PodPlacement(
            namespace=settings.kubernetes_namespace,
            runtime_class=settings.kubernetes_runtime_class,
            seccomp=settings.kubernetes_seccomp_profile,
        )
        return cls(
            placement,
            image=settings.kubernetes_image or image.docker_tag,
            instance=settings.instance,
            kubeconfig=settings.kubernetes_config,
        )

    @property
    def namespace(self) -> str:
        return self.placement.namespace

    @property
    def selector(self) -> str:
        # Only this instance's: another server may share the namespace.
        return f"{LABEL_MANAGED}=1,{LABEL_INSTANCE}={self.instance}"

    async def client(self) -> KubeClient:
        if self._client is None:
            try:
                configuration = await load_configuration(self.kubeconfig)
            except ApiError as error:
                raise SandboxError(error.message) from None
            self._client = KubeClient(configuration)
        return self._client

    async def reflector(self) -> PodReflector:
        """The pod watch, followed from now on (made and listed on first use)."""
        if self._reflector is None:
            self._reflector = PodReflector(await self.client(), self.namespace, self.selector)
        try:
            await self._reflector.follow()
        except ApiError as error:
            raise explain(error, "cannot watch the room pods", self.namespace) from None
        return self._reflector

    def error(self, error: ApiError, doing: str) -> SandboxError:
        return explain(error, doing, self.namespace)

    async def request(self, method: str, path: str, doing: str, **kwargs: Any) -> dict[str, Any]:
        client = await self.client()
        try:
            return await client.request(method, path, **kwargs)
        except ApiError as error:
            raise self.error(error, doing) from None

    # ------------------------------------------------------------ life cycle

    async def prepare(self) -> None:
        """The cluster answers, lets the server do what it must in the namespace, has the
        runtime class; the pod watch starts."""
        client = await self.client()
        version = await self.request("GET", "/version", "cannot reach the cluster")
        missing = [
            f"{verb} {resource}{'/' + sub if sub else ''}"
            for verb, resource, sub in PERMISSIONS
            if not await self._allowed(verb, resource, sub)
        ]
        if missing:
            raise SandboxError(
                f"not allowed in namespace {self.namespace}: {', '.join(missing)}; {RBAC_HINT}"
            )
        runtime = await self._runtime_class()
        await self.reflector()
        self.summary = (
            f"cluster {client.server} (Kubernetes {version.get('gitVersion', '?')}), "
            f"namespace {self.namespace}, permissions ok, {runtime}, image {self.image}, "
            f"seccomp {self.placement.seccomp} and the rooms' policy on every exec"
        )

    async def _allowed(self, verb: str, resource: str, subresource: str) -> bool:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": self.namespace,
                    "verb": verb,
                    "resource": resource,
                    "subresource": subresource,
                }
            },
        }
        answer = await self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            "cannot check the server's permissions",
            body=review,
        )
        return bool((answer.get("status") or {}).get("allowed"))

    async def _runtime_class(self) -> str:
        name = self.placement.runtime_class
        if name is None:
            return "the default runtime"
        client = await self.client()
        try:
            found = await client.request("GET", f"/apis/node.k8s.io/v1/runtimeclasses/{name}")
        except ApiError as error:
            if error.status == 404:
                raise SandboxError(
                    f"the cluster has no RuntimeClass {name!r} (deploy/kubernetes has one for "
                    "gVisor; see docs/kubernetes.md)"
                ) from None
            if error.status == 403:  # cluster-scoped: the Role cannot grant it; pods will tell
                return f"runtime class {name} (not visible to the server's account)"
            raise self.error(error, f"cannot read RuntimeClass {name}") from None
        return f"runtime class {name} (handler {found.get('handler', '?')})"

    async def create(
        self, room_id: str, limits: Limits, *, background: bool = False
    ) -> KubernetesSandbox:
        # ``background`` is asked for and not applied (config.not_in_pod says why).
        check_room_id(room_id)
        self._check_free(room_id)
        reflector = await self.reflector()
        spec = room_spec(
            room_id, limits, image=self.image, instance=self.instance, background=background
        )
        manifest = pod_manifest(spec, self.placement)
        name = manifest["metadata"]["name"]
        watch = reflector.watches[name] = PodWatch(name)
        self._creating.add(name)
        making = asyncio.ensure_future(self._create_pod(manifest, name))
        try:
            try:
                created = await asyncio.shield(making)
            except asyncio.CancelledError:
                # The API server goes on making it whether we wait for its answer or
                # not (a pool closing as the server stops gives up its spare's create).
                self._delete_when_made(making, name)
                raise
            watch.uid = str(created["metadata"]["uid"])
            if (watch.pod.get("metadata") or {}).get("uid") != watch.uid:
                # Not if the watch has it already: it may be newer than this answer.
                watch.update(created)
            self._rooms[room_id] = name
        except BaseException:
            reflector.watches.pop(name, None)
            raise
        finally:
            self._creating.discard(name)
        sandbox = KubernetesSandbox(self, spec, limits, watch)
        try:
            await self._await_running(watch, room_id)
        except BaseException:
            with contextlib.suppress(SandboxError):
                await sandbox.destroy()
            raise
        return sandbox

    def _delete_when_made(self, making: asyncio.Future[dict[str, Any]], name: str) -> None:
        """Delete the pod a given-up create makes, once the API server has answered."""

        async def delete() -> None:
            try:
                await making
            except Exception:  # not made; or made and unknown: the next start's cleanup
                return
            try:
                await self._delete_and_wait(name)
            except SandboxError as error:
                log.warning("cannot remove pod %s: %s", name, error)

        removal = asyncio.create_task(delete())
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

    async def _create_pod(self, manifest: dict[str, Any], name: str) -> dict[str, Any]:
        client = await self.client()
        doing = f"cannot create pod {name}"
        for attempt in range(2):
            try:
                return await client.request("POST", pod_path(self.namespace), body=manifest)
            except ApiError as error:
                if error.status == 409 and attempt == 0:
                    # A crashed server's leftover holds the name (none of ours does).
                    log.warning("replacing leftover pod %s", name)
                    await self._delete_and_wait(name)
                    continue
                raise self.error(error, doing) from None
        raise SandboxError(f"{doing}: the name stays taken")

    async def _delete_and_wait(self, name: str) -> None:
        """Delete a pod none of our sandboxes uses, and wait until the server lets it go."""
        client = await self.client()
        try:
            await client.request(
                "DELETE", pod_path(self.namespace, name), query=[("gracePeriodSeconds", "0")]
            )
        except ApiError as error:
            if error.status != 404:
                raise self.error(error, f"cannot remove the leftover pod {name}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DELETE_TIMEOUT
        while loop.time() < deadline:
            try:
                await client.request("GET", pod_path(self.namespace, name))
            except ApiError as error:
                if error.status == 404:
                    return
                raise self.error(error, f"cannot look at pod {name}") from None
            await asyncio.sleep(0.1)  # a leftover has no watch of ours to wait on
        raise SandboxError(f"the leftover pod {name} is still being deleted")

    async def _await_running(self, watch: PodWatch, room_id: str) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while not watch.running():
                    if (failure := watch.failure()) is not None:
                        raise SandboxError(f"the pod of room {room_id} did not start: {failure}")
                    await watch.next_change()
        except TimeoutError:
            why = watch.unschedulable() or f"still {watch.phase or 'not scheduled'}"
            raise SandboxError(
                f"the pod of room {room_id} did not start in {START_TIMEOUT:.0f} s: {why}"
            ) from None

    # ------------------------------------------------------ the room registry

    def _check_free(self, room_id: str) -> None:
        if room_id in self._rooms or pod_name(room_id) in self._creating:
            raise SandboxError(f"room {room_id} already has a sandbox")

    def _claim(self, room_id: str, name: str) -> None:
        self._check_free(room_id)
        self._rooms[room_id] = name

    def _release(self, room_id: str, name: str) -> None:
        if self._rooms.get(room_id) == name:
            del self._rooms[room_id]

    def _forget(self, room_id: str, name: str) -> None:
        if self._reflector is not None:
            self._reflector.watches.pop(name, None)
        self._release(room_id, name)

    async def cleanup_orphans(self) -> int:
        items = (
            await self.request(
                "GET",
                pod_path(self.namespace),
                "cannot list leftover sandboxes",
                query=[("labelSelector", self.selector)],
            )
        ).get("items") or []
        ours = self._reflector.watches if self._reflector is not None else {}
        names = [pod["metadata"]["name"] for pod in items if pod["metadata"]["name"] not in ours]
        client = await self.client()

        async def remove(name: str) -> bool:
            try:
                await client.request(
                    "DELETE", pod_path(self.namespace, name), query=[("gracePeriodSeconds", "0")]
                )
            except ApiError as error:
                if error.status != 404:
                    log.warning("cannot remove pod %s: %s", name, error)
                return False
            return True

        return sum(await asyncio.gather(*(remove(name) for name in names)))

    async def close(self) -> None:
        await asyncio.gather(*self._removals, return_exceptions=True)
        if self._reflector is not None:
            await self._reflector.close()
        if self._client is not None:
            await self._client.close()
            self._client = None


class KubernetesSandbox(Sandbox):
    """A room's pod, named after the room it was made for.

    Pods cannot be renamed: :meth:`rename` keeps the pod's name and records
    the new room in its ``replroom.room`` label and annotation.
    """

    def __init__(
        self, backend: KubernetesBackend, spec: RoomSpec, limits: Limits, watch: PodWatch
    ) -> None:
        super().__init__(spec.room_id, limits)
        self.backend = backend
        self.spec = spec  # as made: room_id changes with rename(), the spec does not
        self.watch = watch
        self.name = watch.name
        self._destroyed = False

    @property
    def pod(self) -> PodWatch:
        return self.watch

    def _check_usable(self) -> None:
        if self._destroyed:
            raise SandboxError(f"the sandbox of room {self.room_id} was destroyed")
        if self.watch.dead:
            raise SandboxError(
                f"the sandbox of room {self.room_id} is not running"
                f" ({self.watch.failure()}); it has to be made again"
            )

    async def _exec(self, command: Sequence[str], *, tty: bool) -> KubernetesProcess:
        self._check_usable()
        query = [("command", part) for part in command]
        query += [("container", CONTAINER), ("stdin", "true"), ("stdout", "true")]
        query += [("stderr", "false" if tty else "true"), ("tty", "true" if tty else "false")]
        client = await self.backend.client()
        path = pod_path(self.backend.namespace, self.name, "exec")
        try:
            ws = await client.websocket(path, query, PROTOCOLS)
        except ApiError as error:
            if error.status in (400, 404) or self.watch.dead:
                raise SandboxError(
                    f"the sandbox of room {self.room_id} is not running ({error.message});"
                    " it has to be made again"
                ) from None
            raise self.backend.error(error, "cannot start a process") from None
        process = KubernetesProcess(self, ws, tty=tty)
        self.watch.processes[id(process)] = process
        return process

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = SANDBOX_HOME,
        tty: bool = True,
        cols: int = 80,
        rows: int = 24,
    ) -> KubernetesProcess:
        if not argv:
            raise SandboxError("nothing to run: empty argv")
        size = (str(cols), str(rows)) if tty else ("", "")
        command = exec_command(self.spec, argv, env, cwd, size)
        process = await self._exec(command, tty=tty)
        try:
            await process.start()
        except BaseException:
            self.forget(process)
            await process.close_output()
            raise
        return process

    def forget(self, process: KubernetesProcess) -> None:
        self.watch.processes.pop(id(process), None)

    async def _run(self, argv: Sequence[str], stdin: bytes = b"") -> tuple[int, bytes]:
        """Run a helper command on pipes to its end: (exit code, its output)."""
        process = await self.spawn(argv, tty=False)
        output = bytearray()
        try:
            async with asyncio.timeout(HELPER_TIMEOUT):
                if stdin:
                    await process.write(stdin)
                await process.close_stdin()
                while chunk := await process.read():
                    output += chunk
                code = await process.exit_code()
        except TimeoutError:
            raise SandboxError(f"{argv[0]} in the sandbox did not finish") from None
        finally:
            self.forget(process)
            await process.close_output()
        if code is None:
            raise SandboxError(f"{argv[0]} in the sandbox ended without a status")
        return code, bytes(output)

    async def put_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        target = check_sandbox_path(path)
        code, output = await self._run(put_file_argv(target, mode, len(data)), stdin=data)
        if code != 0:
            reason = output.decode(errors="replace").strip() or f"exit code {code}"
            raise SandboxError(f"cannot write {path}: {reason}")

    async def take_files(self, directory: str, max_bytes: int, count: int) -> list[TakenFile]:
        argv = take_files_argv(check_sandbox_path(directory), max_bytes, count)
        code, output = await self._run(argv)
        if code != 0:
            raise SandboxError(f"cannot take files from {directory}: exit code {code}")
        return parse_taken(output, max_bytes)

    async def stats(self) -> SandboxStats:
        code, output = await self._run(["/bin/sh", "-c", STATS])
        try:
            memory, cpu, tasks = (int(field) for field in output.split())
        except ValueError:
            raise SandboxError(f"cannot read the sandbox's usage: {output[:200]!r}") from None
        if code != 0:
            raise SandboxError(f"cannot read the sandbox's usage: exit code {code}")
        # The shell that counted is not the room's.
        return SandboxStats(memory_bytes=memory, cpu_seconds=cpu / 1e9, pids=max(0, tasks - 1))

    async def alive(self) -> bool:
        return not self._destroyed and not self.watch.dead

    async def oom_kills(self) -> int | None:
        with contextlib.suppress(SandboxError):
            code, output = await self._run(["/bin/sh", "-c", OOM_KILLS + '; echo "$n"'])
            if code == 0 and output.strip().isdigit():
                return int(output)
        return None

    async def oom_killed(self) -> bool:
        """Whether the container was killed for memory: its state, else the pod's events."""
        statuses = (self.watch.pod.get("status") or {}).get("containerStatuses") or []
        for status in statuses:
            for state in (status.get("state") or {}, status.get("lastState") or {}):
                if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                    return True
        if "terminated" not in container_state(self.watch.pod) and not self.watch.deleted:
            return False
        selector = f"involvedObject.kind=Pod,involvedObject.name={self.name}"
        path = f"/api/v1/namespaces/{self.backend.namespace}/events"
        client = await self.backend.client()
        try:
            events = await client.request("GET", path, query=[("fieldSelector", selector)])
        except ApiError:
            return False
        uid = self.watch.uid
        return any(
            "oom" in str(event.get("reason", "")).lower()
            and (event.get("involvedObject") or {}).get("uid") in (uid, None)
            for event in events.get("items") or []
        )

    async def kill(self, pid: int, signum: int) -> None:
        await self._run(["/bin/sh", "-c", 'kill -"$1" "$2"', "kill", str(signum), str(pid)])

    async def rename(self, room_id: str) -> None:
        check_room_id(room_id)
        if room_id == self.room_id:
            return
        self._check_usable()
        self.backend._claim(room_id, self.name)
        patch = {
            "metadata": {
                "labels": {LABEL_ROOM: room_label(room_id)},
                "annotations": {ANNOTATION_ROOM: room_id},
            }
        }
        try:
            await self.backend.request(
                "PATCH",
                pod_path(self.backend.namespace, self.name),
                f"cannot hand the sandbox of room {self.room_id} to room {room_id}",
                body=patch,
                content_type="application/merge-patch+json",
            )
        except BaseException:
            self.backend._release(room_id, self.name)
            raise
        self.backend._release(self.room_id, self.name)
        self.room_id = room_id

    async def foreground(self) -> None:
        """Nothing to do: a pod's CPU weight follows its request, which equals its limit
        from the start (Kubernetes cannot lower it for a pod made ahead of time)."""

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        for process in list(self.watch.processes.values()):
            if isinstance(process, KubernetesProcess):
                process.expect_kill()
        client = await self.backend.client()
        path = pod_path(self.backend.namespace, self.name)
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        options["gracePeriodSeconds"] = 0
        if self.watch.uid is not None:  # never a namesake made since
            options["preconditions"] = {"uid": self.watch.uid}
        try:
            await client.request("DELETE", path, body=options)
        except ApiError as error:
            if error.status not in (404, 409):  # 409: another pod holds the name now
                self._destroyed = False
                # The room may get a new sandbox meanwhile (it takes the name over).
                self.backend._release(self.room_id, self.name)
                raise self.backend.error(error, f"cannot remove room {self.room_id}") from None
        if not self.watch.deleted:
            try:
                async with asyncio.timeout(DELETE_TIMEOUT):
                    while not self.watch.deleted:
                        await self.watch.next_change()
            except TimeoutError:
                log.warning("pod %s: deleted, but the watch has not seen it go", self.name)
        processes = list(self.watch.processes.values())
        self.watch.gone()
        for process in processes:
            if isinstance(process, KubernetesProcess):
                await process.close_output()
        self.backend._forget(self.room_id, self.name)

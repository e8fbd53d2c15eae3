"""The kubernetes backend against a FAKE API server and a fake kubelet (no real cluster).

tests/kube_fake.py is an in-process fake of the part of the Kubernetes API
the backend uses; tests/kube_exec_server.py runs the pods as real replroom
sandboxes and speaks the exec channel protocol. What these tests can and
cannot show is in docs/kubernetes-testing.md: they check our reading of the
API and the protocol, not a kubelet, a scheduler or a runtime class.

Three groups:

- the API alone (no kubelet; pods turn Running at once or as a test says):
  create, the manifest, errors 403/404/409/410/422, watch, relist, delete,
  pods that fail or are deleted from outside, cleanup, rename;
- the exec protocol, with pods as bwrap sandboxes;
- the room contract suite (tests/test_sandbox.py, imported below), with pods
  as docker sandboxes: it needs a Docker Engine (``DOCKER_HOST``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from replroom.config import Limits, Settings
from replroom.image import RoomImage
from replroom.sandbox import ExitReason, SandboxError, make_backend
from replroom.sandbox.kubernetes import KubernetesBackend, KubernetesSandbox, pod_name
from replroom.sandbox.kubernetes.exec import PROTOCOLS
from replroom.sandbox.launch import deflated, filtered
from replroom.sandbox.seccomp import syscall_number
from tests.kube_exec_server import FakeKubelet
from tests.kube_fake import FakeKubernetes
from tests.sandboxes import BackendUnderTest, Screen, read_all, run

# The room contract suite, collected here a second time: against the fake API and kubelet.
from tests.test_sandbox import (  # noqa: F401
    test_cleanup_orphans_removes_what_a_crashed_server_left,
    test_ctrl_c_interrupts_a_busy_repl,
    test_destroy_is_idempotent_and_leaves_nothing,
    test_each_language_runtime_is_in_the_image,
    test_environment_and_identity,
    test_every_repl_reaches_its_prompt_under_the_design_note_profile,
    test_pty_repl_prompt_input_and_resize,
    test_put_file_does_not_follow_a_planted_symlink,
    test_put_file_refuses_paths_outside_the_writable_area,
    test_put_file_then_read_it,
    test_python_under_the_design_note_profile,
    test_runs_a_command_and_reports_its_exit_code,
    test_signal_kills_a_process,
    test_stats_report_memory_cpu_and_processes,
    test_stdin_reaches_the_process,
)

NAMESPACE = "replroom-rooms"


def kube_settings(settings: Settings, kubeconfig: Path, **more: object) -> Settings:
    update = {"backend": "kubernetes", "kubernetes_config": kubeconfig, **more}
    return settings.model_copy(update=update)


async def wait_until(check, what: str, watch_of: KubernetesSandbox) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``check()`` to hold, woken by the sandbox's pod watch."""
    async with asyncio.timeout(30):
        while not check():
            await watch_of.watch.next_change()


# ------------------------------------------------------------- the API alone


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubernetes]:
    server = FakeKubernetes()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def kube(
    fake: FakeKubernetes, settings: Settings, room_image: RoomImage, tmp_path: Path
) -> AsyncIterator[KubernetesBackend]:
    chosen = kube_settings(settings, fake.kubeconfig(tmp_path), kubernetes_runtime_class="gvisor")
    backend = make_backend(chosen, room_image)
    assert isinstance(backend, KubernetesBackend)
    await backend.prepare()
    yield backend
    await backend.close()


async def test_prepare_reports_the_cluster_permissions_and_runtime_class(
    kube: KubernetesBackend, fake: FakeKubernetes, tmp_path: Path
) -> None:
    assert "v1.33.0-fake" in kube.summary and "runtime class gvisor (handler runsc)" in kube.summary

    fake.denied.add(("create", "pods", "exec"))
    denied = KubernetesBackend(
        kube.placement,
        image=kube.image,
        instance=kube.instance,
        kubeconfig=fake.kubeconfig(tmp_path),
    )
    with pytest.raises(
        SandboxError, match="not allowed in namespace replroom-rooms: create pods/exec"
    ):
        await denied.prepare()
    await denied.close()
    fake.denied.clear()

    del fake.runtime_classes["gvisor"]
    missing = KubernetesBackend(
        kube.placement,
        image=kube.image,
        instance=kube.instance,
        kubeconfig=fake.kubeconfig(tmp_path),
    )
    with pytest.raises(SandboxError, match="no RuntimeClass 'gvisor'"):
        await missing.prepare()
    await missing.close()


async def test_an_unreachable_cluster_is_said_so(settings: Settings, room_image: RoomImage,
                                                 tmp_path: Path) -> None:  # fmt: skip
    server = FakeKubernetes()
    await server.start()
    kubeconfig = server.kubeconfig(tmp_path)
    await server.close()
    backend = make_backend(kube_settings(settings, kubeconfig), room_image)
    with pytest.raises(SandboxError, match="not reachable"):
        await backend.prepare()
    await backend.close()


async def test_the_pod_is_hardened_and_limited_as_specified(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    sandbox = await kube.create(room_id, Limits(memory="128m", cpus=0.25, disk="16m"))
    pod = fake.pod(pod_name(room_id))
    labels = pod["metadata"]["labels"]
    assert labels["replroom.managed"] == "1" and labels["replroom.room"] == room_id
    assert labels["replroom.instance"] == kube.instance
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False and spec["hostname"] == "room"
    assert spec["runtimeClassName"] == "gvisor"
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["runAsUser"] == security["runAsGroup"] == 1000 and security["runAsNonRoot"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": []}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container["resources"]
    assert resources["limits"] == resources["requests"] == {"memory": str(128 << 20), "cpu": "250m"}
    volumes = {v["name"]: v["emptyDir"] for v in spec["volumes"] if "emptyDir" in v}
    assert {volume["medium"] for volume in volumes.values()} == {"Memory"}
    assert sum(int(volume["sizeLimit"]) for volume in volumes.values()) == 16 << 20
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert set(mounts) == {"/home/room", "/tmp", "/dev/shm", "/dev/fuse", "/dev/net"}
    # gVisor's FUSE and TUN devices, covered read-only by a volume with no device.
    assert mounts["/dev/fuse"]["readOnly"] and mounts["/dev/net"]["readOnly"]
    (no_devices,) = [v for v in spec["volumes"] if v["name"] == mounts["/dev/net"]["name"]]
    assert set(no_devices) == {"name", "downwardAPI"}
    await sandbox.destroy()


async def test_pod_names_and_labels_hold_any_room_id(
    kube: KubernetesBackend, fake: FakeKubernetes
) -> None:
    room_id = "Room_With-Capitals_" + "x" * 40 + "-"
    sandbox = await kube.create(room_id, Limits())
    pod = fake.pod(sandbox.name)
    assert pod["metadata"]["annotations"]["replroom.room"] == room_id
    await sandbox.destroy()


async def test_create_refused_says_why(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    fake.inject("POST", r"/pods$", 403)
    with pytest.raises(SandboxError, match=r"not allowed in namespace replroom-rooms.*Role"):
        await kube.create(room_id, Limits())
    fake.inject("POST", r"/pods$", 422)
    with pytest.raises(SandboxError, match="injected 422"):
        await kube.create(room_id, Limits())
    # Nothing is left registered: the room can have its sandbox now.
    sandbox = await kube.create(room_id, Limits())
    await sandbox.destroy()


async def test_an_unknown_namespace_is_named(
    fake: FakeKubernetes, kube: KubernetesBackend, room_id: str
) -> None:
    fake.namespaces.discard(NAMESPACE)
    with pytest.raises(SandboxError, match="namespace replroom-rooms not found"):
        await kube.create(room_id, Limits())


async def test_a_leftover_pod_holding_the_name_is_replaced(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    first = await kube.create(room_id, Limits())
    leftover_uid = fake.pod(first.name)["metadata"]["uid"]
    # A restarted server: a new backend that never saw the pod.
    again = KubernetesBackend(
        kube.placement, image=kube.image, instance=kube.instance, kubeconfig=kube.kubeconfig
    )
    second = await again.create(room_id, Limits())
    assert fake.pod(second.name)["metadata"]["uid"] != leftover_uid
    await wait_until(lambda: first.watch.dead, "the old pod gone", first)
    await second.destroy()
    await again.close()


async def test_a_pod_that_cannot_start_fails_the_create_and_is_removed(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    fake.hold_pending = True
    name = pod_name(room_id)
    waiting = {"reason": "ImagePullBackOff", "message": "no such image"}
    fake.on_create = lambda created: fake.set_state(created, "Pending", {"waiting": waiting})
    with pytest.raises(SandboxError, match="did not start: ImagePullBackOff: no such image"):
        await kube.create(room_id, Limits())
    assert (NAMESPACE, name) not in fake.pods


async def test_a_create_given_up_while_the_pod_is_being_made_leaves_no_pod(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    # As when the server stops while its pool is making a spare: the API server
    # has made the pod, its answer is on the way, and the caller gives up.
    create = asyncio.create_task(kube.create(room_id, Limits()))
    fake.on_create = lambda created: create.cancel()
    with pytest.raises(asyncio.CancelledError):
        await create
    name = pod_name(room_id)
    assert fake.requests.count(("POST", f"/api/v1/namespaces/{NAMESPACE}/pods")) == 1
    await kube.close()  # waits for the removal under way
    assert (NAMESPACE, name) not in fake.pods


async def test_destroy_deletes_at_once_and_waits_for_the_watch(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    sandbox = await kube.create(room_id, Limits())
    await sandbox.destroy()
    assert sandbox.watch.deleted and not await sandbox.alive()
    assert (NAMESPACE, sandbox.name) not in fake.pods
    await sandbox.destroy()  # idempotent
    assert [m for m, path in fake.requests if path.endswith(sandbox.name)].count("DELETE") == 1


async def test_a_pod_deleted_from_outside_is_dead_and_the_room_gets_another(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    sandbox = await kube.create(room_id, Limits())
    fake.delete(sandbox.name)
    await wait_until(lambda: sandbox.watch.dead, "the pod gone", sandbox)
    assert not await sandbox.alive()
    with pytest.raises(SandboxError, match="not running"):
        await sandbox.spawn(["true"])
    await sandbox.destroy()  # 404: already gone
    replacement = await kube.create(room_id, Limits())
    assert await replacement.alive()
    await replacement.destroy()


@pytest.mark.parametrize("how", ["container state", "pod event"])
async def test_a_pod_killed_for_memory_is_out_of_memory(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str, how: str
) -> None:
    sandbox = await kube.create(room_id, Limits())
    if how == "container state":
        fake.fail(sandbox.name, "OOMKilled")
    else:
        fake.add_event(sandbox.name, "OOMKilling", "Memory cgroup out of memory")
        fake.fail(sandbox.name, "Error")
    await wait_until(lambda: sandbox.watch.dead, "the pod failed", sandbox)
    assert not await sandbox.alive()
    assert await sandbox.oom_killed()
    await sandbox.destroy()


async def test_a_failed_pod_that_was_not_oom_killed_is_not_out_of_memory(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    sandbox = await kube.create(room_id, Limits())
    fake.fail(sandbox.name, "Error", exit_code=1)
    await wait_until(lambda: sandbox.watch.dead, "the pod failed", sandbox)
    assert not await sandbox.oom_killed()
    await sandbox.destroy()


async def test_the_watch_lists_again_after_410_and_sees_what_it_missed(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    sandbox = await kube.create(room_id, Limits())
    reflector = await kube.reflector()
    relists = reflector.relists
    # The watch ends, the pod goes and the history is compacted before the
    # backend can watch again: its version is now too old (410).
    fake.end_watches()
    fake.delete(sandbox.name)
    fake.compact()
    await wait_until(lambda: sandbox.watch.dead, "the pod seen gone after a relist", sandbox)
    assert reflector.relists == relists + 1
    await sandbox.destroy()


async def test_the_watch_comes_back_after_errors(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    sandbox = await kube.create(room_id, Limits())
    opened = len(fake.watches_opened)
    fake.inject("GET", r"/pods$", 500, times=2)
    fake.end_watches()
    fake.fail(sandbox.name, "OOMKilled")  # replayed from the version the watch had
    await wait_until(lambda: sandbox.watch.dead, "the failure seen after the errors", sandbox)
    assert len(fake.watches_opened) == opened + 1
    await sandbox.destroy()


async def test_cleanup_removes_only_this_instances_unused_pods(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    kept = await kube.create(room_id, Limits())
    restarted = KubernetesBackend(
        kube.placement, image=kube.image, instance=kube.instance, kubeconfig=kube.kubeconfig
    )
    left = await restarted.create(room_id + "-left", Limits())
    other = KubernetesBackend(
        kube.placement, image=kube.image, instance="other", kubeconfig=kube.kubeconfig
    )
    foreign = await other.create(room_id + "-other", Limits())
    await restarted.close()
    assert await kube.cleanup_orphans() == 1  # `left`: this instance's, not in use here
    assert (NAMESPACE, left.name) not in fake.pods
    assert (NAMESPACE, kept.name) in fake.pods and (NAMESPACE, foreign.name) in fake.pods
    await kept.destroy()
    await foreign.destroy()
    await other.close()


async def test_rename_records_the_new_room_on_the_pod(
    kube: KubernetesBackend, fake: FakeKubernetes, room_id: str
) -> None:
    spare = await kube.create("pool-" + room_id, Limits(), background=True)
    taken = await kube.create(room_id + "-taken", Limits())
    with pytest.raises(SandboxError, match="already has a sandbox"):
        await spare.rename(room_id + "-taken")
    await spare.rename(room_id)
    await spare.foreground()
    metadata = fake.pod(spare.name)["metadata"]
    assert (
        metadata["labels"]["replroom.room"] == metadata["annotations"]["replroom.room"] == room_id
    )
    assert spare.name == pod_name("pool-" + room_id)
    with pytest.raises(SandboxError, match="already has a sandbox"):
        await kube.create(room_id, Limits())
    await spare.destroy()
    await taken.destroy()


# ------------------------------------------------- the exec protocol (bwrap pods)


@pytest.fixture(params=PROTOCOLS)
async def bwrap_kube(
    request: pytest.FixtureRequest, settings: Settings, room_image: RoomImage, tmp_path: Path
) -> AsyncIterator[tuple[KubernetesBackend, str]]:
    kubelet = FakeKubelet(make_backend(settings, room_image))
    server = FakeKubernetes(kubelet=kubelet, exec_protocols=(request.param,))
    await server.start()
    backend = make_backend(kube_settings(settings, server.kubeconfig(tmp_path)), room_image)
    assert isinstance(backend, KubernetesBackend)
    yield backend, request.param
    await backend.close()
    await server.close()
    await kubelet.backend.close()


async def test_exec_exit_codes_output_and_files(
    bwrap_kube: tuple[KubernetesBackend, str], room_id: str
) -> None:
    backend, _ = bwrap_kube
    sandbox = await backend.create(room_id, Limits())
    status, output = await run(sandbox, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert status.reason is ExitReason.EXITED and status.code == 7
    assert "out" in output and "err" in output
    status, _ = await run(sandbox, ["true"])
    assert status.code == 0
    # put_file needs no end of input, which v4 cannot send.
    await sandbox.put_file("dir/data.bin", bytes(range(256)) * 1000)
    status, output = await run(sandbox, ["sh", "-c", "wc -c < dir/data.bin"])
    assert output.strip() == "256000"
    await sandbox.destroy()


async def test_exec_stdin_ends_only_on_v5(
    bwrap_kube: tuple[KubernetesBackend, str], room_id: str
) -> None:
    backend, protocol = bwrap_kube
    sandbox = await backend.create(room_id, Limits())
    script = 'read -r line; echo "got $line"; cat >/dev/null; echo "input ended"'
    process = await sandbox.spawn(["sh", "-c", script], tty=False)
    assert process.can_end_stdin == (protocol == "v5.channel.k8s.io")
    await process.write(b"shout\n")
    assert await process.read() == b"got shout\n"
    await process.close_stdin()
    if process.can_end_stdin:
        assert await read_all(process) == b"input ended\n"
        assert (await process.wait()).code == 0
    await sandbox.destroy()
    # On v4 the input stays open: the process runs until its pod goes.
    assert (await process.wait()).reason is not ExitReason.EXITED or process.can_end_stdin


async def test_exec_on_a_tty_sizes_and_resizes_the_terminal(
    bwrap_kube: tuple[KubernetesBackend, str], room_id: str
) -> None:
    backend, _ = bwrap_kube
    sandbox = await backend.create(room_id, Limits())
    process = await sandbox.spawn(["sh", "-c", "stty size; read x; stty size"], cols=100, rows=30)
    output = b""
    while b"30 100" not in output:
        output += await process.read()
    await process.resize(132, 43)
    await process.write(b"\r")
    output = await read_all(process)
    assert b"43 132" in output
    assert (await process.wait()).code == 0
    await sandbox.destroy()


# ------------------------------- the seccomp launcher (bwrap pods, gVisor class)


@pytest.fixture
async def gvisor_pods(
    settings: Settings, room_image: RoomImage, tmp_path: Path
) -> AsyncIterator[tuple[KubernetesBackend, FakeKubernetes]]:
    """Pods of the RuntimeClass gvisor (handler runsc, as the fake API says),
    run by the fake kubelet as bwrap sandboxes."""
    kubelet = FakeKubelet(make_backend(settings, room_image))
    server = FakeKubernetes(kubelet=kubelet)
    await server.start()
    chosen = kube_settings(settings, server.kubeconfig(tmp_path), kubernetes_runtime_class="gvisor")
    backend = make_backend(chosen, room_image)
    assert isinstance(backend, KubernetesBackend)
    await backend.prepare()
    assert "runtime class gvisor (handler runsc)" in backend.summary
    yield backend, server
    await backend.close()
    await server.close()
    await kubelet.backend.close()


SECCOMP_FILTERS = "grep Seccomp_filters: /proc/self/status"


def filters(output: str | bytes) -> int:
    text = output.decode() if isinstance(output, bytes) else output
    return int(text.split("Seccomp_filters:")[1].split()[0])


async def test_every_exec_on_a_gvisor_pod_installs_the_policy_itself(
    gvisor_pods: tuple[KubernetesBackend, FakeKubernetes], room_id: str
) -> None:
    """gVisor gives a pod's execs no seccomp profile: each exec's launcher installs
    the rooms' policy. The fake kubelet's bwrap sandbox already filters every
    process with that policy, so the launcher's own filter shows as one more
    filter on the process than the kubelet's process has, in a REPL on a
    terminal, a command on pipes and the backend's helpers."""
    backend, server = gvisor_pods
    sandbox = await backend.create(room_id, Limits())
    assert server.pod(sandbox.name)["spec"]["runtimeClassName"] == "gvisor"
    assert server.kubelet is not None and sandbox.watch.uid is not None
    pod = server.kubelet.sandboxes[sandbox.watch.uid]
    _status, output = await run(pod, ["sh", "-c", SECCOMP_FILTERS])
    runtime_filters = filters(output)  # what the "runtime" gave the kubelet's own exec

    uring, unshare = syscall_number("io_uring_setup"), syscall_number("unshare")
    assert uring is not None and unshare is not None
    repl = await sandbox.spawn(["python3", "-q"])
    screen = Screen(repl)
    try:
        await screen.wait_for(b">>> ")
        # io_uring_setup(8, NULL) is EFAULT unfiltered; CLONE_NEWUSER is 0x10000000.
        await repl.write(
            b"import ctypes, errno; libc = ctypes.CDLL(None, use_errno=True); "
            b"call = lambda nr, *a: 'ok' if libc.syscall(nr, *[ctypes.c_ulong(x) for x in a]) "
            b">= 0 else errno.errorcode[ctypes.get_errno()]; "
            b"print('uring', call(%d, 8, 0), 'unshare', call(%d, 0x10000000), 'filters', "
            b"[l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp_f')][0])\r"
            % (uring, unshare)
        )
        expected = f"uring EPERM unshare EPERM filters {runtime_filters + 1}"
        # The next prompt before the end of input (readline would drop it unread).
        await screen.wait_for(b">>> ", after=await screen.wait_for(expected.encode()))
    finally:
        # Not a signal: every bwrap process has a pid namespace of its own.
        await repl.close_stdin()
        assert (await repl.wait()).code == 0
        await screen.close()
    _status, output = await run(sandbox, ["sh", "-c", SECCOMP_FILTERS])
    assert filters(output) == runtime_filters + 1, output
    code, helper = await sandbox._run(["sh", "-c", SECCOMP_FILTERS])
    assert code == 0 and filters(helper) == runtime_filters + 1, helper
    await sandbox.destroy()


async def test_an_exec_whose_filter_cannot_be_installed_runs_nothing(
    gvisor_pods: tuple[KubernetesBackend, FakeKubernetes], room_id: str
) -> None:
    """The launcher fails closed through the exec path too: a program the kernel
    refuses (no return at its end) and the command does not run."""
    backend, _server = gvisor_pods
    sandbox = await backend.create(room_id, Limits())
    broken = filtered(deflated(b"\0" * 8), ["touch", "/tmp/ran"])
    process = await sandbox._exec(broken, tty=False)
    output = await read_all(process)
    assert await process.exit_code() == 126, output
    assert b"cannot install the seccomp filter (" in output and b"touch not run" in output
    await process.close_output()
    _status, listing = await run(sandbox, ["ls", "/tmp"])
    assert "ran" not in listing.split(), listing
    await sandbox.destroy()


# ---------------------------------------- the contract suite (docker pods)


class FakeClusterUnderTest(BackendUnderTest):
    def __init__(
        self, backend: KubernetesBackend, settings: Settings, fake: FakeKubernetes
    ) -> None:
        super().__init__("kubernetes-fake", backend, settings)
        self.fake = fake

    async def leftovers(self, room_id: str) -> list[str]:
        pods = [
            f"pod {name}"
            for (_, name), pod in self.fake.pods.items()
            if pod["metadata"]["annotations"].get("replroom.room") == room_id
        ]
        assert self.fake.kubelet is not None
        await asyncio.sleep(0)  # the kubelet stops a deleted pod's sandbox in a task
        for task in list(self.fake._kubelet_tasks):
            await task
        running = {pod["metadata"]["uid"] for pod in self.fake.pods.values()}
        stray = [uid for uid in self.fake.kubelet.sandboxes if uid not in running]
        return pods + [f"kubelet sandbox {uid}" for uid in stray]


@pytest.fixture(scope="module")
async def backend(
    settings: Settings, room_image: RoomImage, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BackendUnderTest]:
    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("the fake kubelet runs pods as docker sandboxes: no DOCKER_HOST")
    docker = settings.model_copy(update={"backend": "docker", "instance": f"kubelet-{os.getpid()}"})
    kubelet = FakeKubelet(make_backend(docker, room_image))
    fake = FakeKubernetes(kubelet=kubelet)
    await fake.start()
    chosen = kube_settings(settings, fake.kubeconfig(tmp_path_factory.mktemp("kube")))
    made = make_backend(chosen, room_image)
    assert isinstance(made, KubernetesBackend)
    await made.prepare()
    under_test = FakeClusterUnderTest(made, chosen, fake)
    try:
        yield under_test
    finally:
        await under_test.destroy_all()
        await made.close()
        await fake.close()
        await kubelet.backend.close()


async def test_a_process_killed_for_memory_is_out_of_memory(
    backend: BackendUnderTest, room_id: str
) -> None:
    """The launcher's OOM-kill count, read again after the unexplained SIGKILL."""
    sandbox = await backend.create(room_id, Limits(memory="64m"))
    status, _ = await run(
        sandbox, ["python3", "-c", "x = []\nwhile True: x.append(bytearray(1 << 20))"]
    )
    assert status.reason is ExitReason.OUT_OF_MEMORY, status
    status, output = await run(sandbox, ["sh", "-c", "kill -9 $$"])
    assert status.reason is ExitReason.KILLED, (status, output)


async def test_doctor_reports_the_cluster_permissions_and_runtime_class(
    settings: Settings, room_image: RoomImage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from replroom import doctor

    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("the fake kubelet runs pods as docker sandboxes: no DOCKER_HOST")
    docker = settings.model_copy(update={"backend": "docker", "instance": f"doctor-{os.getpid()}"})
    kubelet = FakeKubelet(make_backend(docker, room_image))
    server = FakeKubernetes(kubelet=kubelet)
    await server.start()
    try:
        chosen = kube_settings(settings, server.kubeconfig(tmp_path))
        assert await doctor.report(chosen) == 0
        out = capsys.readouterr().out
        assert "cluster          ok: cluster http://127.0.0.1:" in out
        assert f"namespace {NAMESPACE}, permissions ok, the default runtime" in out
        assert "room             ok: python prompt" in out
        assert "configured backend: kubernetes (the default runtime" in out

        server.denied.add(("create", "pods", "exec"))
        assert await doctor.report(chosen) == 1
        out = capsys.readouterr().out
        assert "not allowed in namespace replroom-rooms: create pods/exec" in out
    finally:
        await server.close()
        await kubelet.backend.close()

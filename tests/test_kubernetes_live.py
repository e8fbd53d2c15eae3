"""The room contract suite against a REAL Kubernetes cluster, when ``KUBECONFIG`` is set.

Skipped otherwise (no cluster can run on the development machines). How to
run it is in docs/kubernetes-testing.md: the namespace, the Role and the room
image must be there first (deploy/kubernetes, docs/kubernetes.md);
``REPLROOM_KUBERNETES_*`` settings choose the namespace, image and runtime class.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from replroom.config import Settings
from replroom.image import RoomImage
from replroom.sandbox import make_backend
from replroom.sandbox.kubernetes import KubernetesBackend, pod_name
from replroom.sandbox.seccomp import syscall_number
from tests.sandboxes import BackendUnderTest, python

# The room contract suite, collected here a third time: against the cluster.
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


class ClusterUnderTest(BackendUnderTest):
    async def leftovers(self, room_id: str) -> list[str]:
        assert isinstance(self.backend, KubernetesBackend)
        client = await self.backend.client()
        path = f"/api/v1/namespaces/{self.backend.namespace}/pods"
        items = await client.request("GET", path, query=[("labelSelector", self.backend.selector)])
        names = {pod["metadata"]["name"] for pod in items.get("items") or []}
        return [f"pod {name}" for name in names if name == pod_name(room_id)]


@pytest.fixture(scope="module")
async def backend(settings: Settings, room_image: RoomImage) -> AsyncIterator[BackendUnderTest]:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("no cluster: set KUBECONFIG to run the contract suite on Kubernetes")
    # The kubernetes_* settings from the environment (REPLROOM_KUBERNETES_*).
    configured = Settings()
    cluster = {key: getattr(configured, key) for key in Settings.model_fields
               if key.startswith("kubernetes_")}  # fmt: skip
    chosen = settings.model_copy(update={**cluster, "backend": "kubernetes"})
    made = make_backend(chosen, room_image)
    await made.prepare()
    under_test = ClusterUnderTest("kubernetes-live", made, chosen)
    try:
        yield under_test
    finally:
        await under_test.destroy_all()
        await made.close()


async def test_room_processes_are_under_the_policy_without_fuse_or_tun(
    backend: BackendUnderTest, room_id: str
) -> None:
    """What the fakes cannot show: that the cluster's runtime lets every exec's
    launcher install the rooms' policy (under gVisor too, where the pod's own
    profile never reaches an exec) and the pod's mounts cover gVisor's devices."""
    sandbox = await backend.create(room_id)
    uring = syscall_number("io_uring_setup")
    status, output = await python(
        sandbox,
        "import ctypes, errno, os, stat\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"r = libc.syscall({uring}, 8, 0)\n"
        "print('uring', errno.errorcode[ctypes.get_errno()] if r < 0 else 'ok')\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')])\n"
        "for path in ('/dev/fuse', '/dev/net/tun'):\n"
        "    device = os.path.exists(path) and stat.S_ISCHR(os.stat(path).st_mode)\n"
        "    print(path, 'device' if device else 'no device')\n",
    )
    assert status.code == 0, output
    assert output.split("\n")[:4] == [
        "uring EPERM", "['2']", "/dev/fuse no device", "/dev/net/tun no device"
    ], output  # fmt: skip

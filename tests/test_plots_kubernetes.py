"""Sandbox.take_files through the Kubernetes backend: the fake API server with a kubelet
that runs bwrap pods (tests/kube_fake.py, tests/kube_exec_server.py), every exec protocol."""

from __future__ import annotations

from replroom.config import Limits
from replroom.sandbox.kubernetes import KubernetesBackend
from tests.test_kubernetes_fake_api import bwrap_kube  # noqa: F401 - the fixture

DIR = "/tmp/.replroom/plots"


async def test_take_files_through_exec(
    bwrap_kube: tuple[KubernetesBackend, str],  # noqa: F811 - the fixture
    room_id: str,
) -> None:
    backend, _ = bwrap_kube
    sandbox = await backend.create(room_id, Limits())
    try:
        await sandbox.put_file(f"{DIR}/2-small.png", b"\x89PNG" + bytes(range(256)))
        await sandbox.put_file(f"{DIR}/1-big.png", b"x" * 5000)
        await sandbox.put_file(f"{DIR}/.3-hidden.png", b"being written")
        taken = await sandbox.take_files(DIR, 4096, 10)
        assert [(t.name, t.size, t.data) for t in taken] == [
            ("1-big.png", 5000, None),
            ("2-small.png", 260, b"\x89PNG" + bytes(range(256))),
        ]
        assert await sandbox.take_files(DIR, 4096, 10) == []
    finally:
        await sandbox.destroy()

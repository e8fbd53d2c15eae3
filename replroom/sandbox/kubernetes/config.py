"""A room's pod, rendered from its :class:`~replroom.sandbox.spec.RoomSpec`: the
manifest, an exec's command line, the pod's name and labels, and what the
manifest cannot carry (:func:`not_in_pod`, each with what enforces it instead).

``tests/test_sandbox_spec.py`` reads every field of the spec back out of the
manifest, or out of those declarations.
"""

from __future__ import annotations

import hashlib
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from replroom.sandbox.base import SANDBOX_HOME
from replroom.sandbox.kubernetes.exec import command_line
from replroom.sandbox.launch import deflated, filtered
from replroom.sandbox.seccomp import compile_profile
from replroom.sandbox.spec import (
    GVISOR_DEVICES,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_ROOM,
    NAME_PREFIX,
    RoomSpec,
)

# Labels and annotations can change on a running pod (unlike a container's
# labels): after a pooled sandbox's rename() LABEL_ROOM and this annotation
# name the room it serves.
ANNOTATION_ROOM = "replroom.room"  # the room id exactly (a label value cannot hold every id)
CONTAINER = "room"
RUNTIME_DEFAULT = "RuntimeDefault"
LOCALHOST = "Localhost:"

# PID 1: a shell that reaps the processes orphaned in the pod (as Docker's
# init does) and otherwise sleeps. It runs as the room's uid (Kubernetes has
# no per-exec user), yet the room cannot end it: the kernel delivers to a pid
# namespace's init only the signals it handles, and this one handles SIGCHLD
# only. `wait` reaps any child, adopted ones included.
INIT = ["/bin/sh", "-c", "while :; do sleep 2147483647 & wait; done"]

# gVisor's /dev/fuse and /dev/net (with tun) are covered by read-only mounts
# of this volume, which holds no device: /dev/net by the volume (a directory),
# /dev/fuse by its one file. A pod's PID 1 cannot remove them as docker+runsc's
# does (it is not root), and a room cannot unmount them (no capabilities; the
# policy refuses umount). Under runc, whose /dev has neither, they only add
# an empty directory and a file.
NO_DEVICES = "no-devices"
NO_DEVICES_FILE = "placeholder"

# The nodes' architecture label for the one the server's BPF is compiled for:
# under another the launcher's filter kills every exec (ACT_BADARCH).
ARCHITECTURE_LABEL = "kubernetes.io/arch"
NODE_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}

_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def _digest(room_id: str) -> str:
    return hashlib.sha256(room_id.encode()).hexdigest()[:8]


def pod_name(room_id: str) -> str:
    """``replroom-<room id>``, or a lower-case form with a digest when the id has ``_``,
    capitals or a trailing ``-`` (pod names are lower-case DNS names)."""
    if _POD_NAME.fullmatch(room_id):
        return NAME_PREFIX + room_id
    return f"{NAME_PREFIX}{room_id.lower().replace('_', '-')}-{_digest(room_id)}"


def room_label(room_id: str) -> str:
    """The room id as a label value (which must end with a letter or a digit)."""
    if _LABEL_VALUE.fullmatch(room_id):
        return room_id
    return f"{room_id[:54]}.{_digest(room_id)}"


def seccomp_profile(setting: str) -> dict[str, str]:
    """``RuntimeDefault`` or ``Localhost:<path>`` (relative to the kubelet's seccomp dir)."""
    if setting.startswith(LOCALHOST):
        return {"type": "Localhost", "localhostProfile": setting.removeprefix(LOCALHOST)}
    return {"type": setting}


@dataclass(frozen=True)
class PodPlacement:
    """Where and how a cluster runs every room pod of one server (the room's
    own properties are its spec's)."""

    namespace: str
    runtime_class: str | None = None
    seccomp: str = RUNTIME_DEFAULT  # or Localhost:<path>


@dataclass(frozen=True)
class NotInPod:
    """A field of the spec that a pod manifest cannot express: the ``value``
    it must have anyway, and what enforces it (None: nothing on this backend,
    for the reason ``note`` gives; docs/security.md has the account)."""

    value: object
    enforced_by: str | None
    note: str


def not_in_pod(spec: RoomSpec) -> dict[str, NotInPod]:
    """The spec's fields, by name, that :func:`pod_manifest` leaves to others."""
    declared = {
        "pids": NotInPod(
            spec.pids,
            "the kubelet's podPidsLimit on the nodes that run rooms",
            "a pod's spec has no process limit (docs/kubernetes.md says what to set)",
        ),
        "network": NotInPod(
            spec.network,
            "the NetworkPolicy rooms-deny-all (deploy/kubernetes/base/rooms-policy.yaml)",
            "a pod always has a network interface; only a CNI that enforces "
            "NetworkPolicy takes its traffic away",
        ),
    }
    if spec.background:
        declared["background"] = NotInPod(
            spec.background,
            None,
            "the CPU weight follows the pod's request, which equals its limit "
            "and cannot change while it runs",
        )
    return declared


def seccomp_files(spec: RoomSpec, placement: PodPlacement) -> dict[str, str]:
    """What must be on every room node, by path under the kubelet's seccomp
    directory, for the pod's seccomp profile: the rooms' policy itself."""
    if placement.seccomp.startswith(LOCALHOST):
        return {placement.seccomp.removeprefix(LOCALHOST): spec.seccomp}
    return {}


def exec_command(
    spec: RoomSpec,
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str,
    size: tuple[str, str],
) -> list[str]:
    """An exec's command: ``argv`` with ``env`` over the spec's environment (an
    exec has no environment of its own; its user is the pod's), under the
    filtering launcher (sandbox/launch.py), which installs the spec's seccomp
    policy first.

    Whatever the runtime class: gVisor applies a pod's seccomp profile to its
    first process at most, never to execs, and RuntimeDefault is not the
    rooms' policy. Under runc with the Localhost profile the two filters
    stack, the same policy twice.
    """
    inner = command_line(argv, {**dict(spec.env), **(env or {})}, cwd, size)
    return filtered(_launcher_program(spec.seccomp), inner)


@lru_cache(maxsize=4)
def _launcher_program(profile: str) -> str:
    # Compiled and deflated once per policy, not per exec.
    return deflated(compile_profile(profile))


def node_architecture() -> str:
    """The ``kubernetes.io/arch`` of the nodes the server's BPF programs are for (its own)."""
    machine = platform.machine()
    if machine not in NODE_ARCHITECTURES:
        raise ValueError(f"no seccomp policy for {machine}: rooms run on x86_64 or arm64")
    return NODE_ARCHITECTURES[machine]


def pod_manifest(spec: RoomSpec, placement: PodPlacement) -> dict[str, Any]:
    """The pod of ``spec``: one hardened container, requests = limits (Guaranteed QoS,
    which also means no swap)."""
    resources = {"memory": str(spec.memory), "cpu": f"{spec.millicpus}m"}
    identity = {"runAsUser": spec.uid, "runAsGroup": spec.gid, "runAsNonRoot": True}
    seccomp = seccomp_profile(placement.seccomp)
    volumes = {
        "home": (SANDBOX_HOME, spec.home_size),
        "tmp": ("/tmp", spec.tmp_size),
        "shm": ("/dev/shm", spec.shm_size),  # else the runtime's 64 MiB, whatever the limit
    }
    fuse, net = GVISOR_DEVICES
    # fuse_and_tun is always False: covered (NO_DEVICES above).
    no_devices = [
        {"name": NO_DEVICES, "mountPath": net, "readOnly": True},
        {"name": NO_DEVICES, "mountPath": fuse, "subPath": NO_DEVICES_FILE, "readOnly": True},
    ]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostname": spec.hostname,
        "terminationGracePeriodSeconds": 0,
        "nodeSelector": {ARCHITECTURE_LABEL: node_architecture()},
        "securityContext": {**identity, "seccompProfile": seccomp},
        "containers": [
            {
                "name": CONTAINER,
                "image": spec.image,
                "imagePullPolicy": "IfNotPresent",
                "command": INIT,
                "workingDir": SANDBOX_HOME,
                "env": [{"name": key, "value": value} for key, value in spec.env],
                "resources": {"limits": resources, "requests": dict(resources)},
                "securityContext": {
                    **identity,
                    "allowPrivilegeEscalation": not spec.no_new_privileges,
                    "privileged": False,
                    "readOnlyRootFilesystem": spec.read_only_root,
                    "capabilities": {"drop": ["ALL"], "add": list(spec.capabilities)},
                    "seccompProfile": seccomp,
                },
                "volumeMounts": [
                    *({"name": name, "mountPath": path} for name, (path, _) in volumes.items()),
                    *no_devices,
                ],
            }
        ],
        "volumes": [
            *(
                {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": str(size)}}
                for name, (_, size) in volumes.items()
            ),
            {
                "name": NO_DEVICES,
                "downwardAPI": {
                    "items": [
                        # A pod's own name: some file, no device and no secret.
                        {"path": NO_DEVICES_FILE, "fieldRef": {"fieldPath": "metadata.name"}}
                    ],
                    "defaultMode": 0o444,
                },
            },
        ],
    }
    if placement.runtime_class:
        pod["runtimeClassName"] = placement.runtime_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(spec.room_id),
            "namespace": placement.namespace,
            "labels": {
                LABEL_MANAGED: "1",
                LABEL_INSTANCE: spec.instance,
                LABEL_ROOM: room_label(spec.room_id),
            },
            "annotations": {ANNOTATION_ROOM: spec.room_id},
        },
        "spec": pod,
    }

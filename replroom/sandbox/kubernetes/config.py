"""What a room's pod is: its manifest, its name, its labels."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from replroom.config import Limits
from replroom.sandbox.base import DEFAULT_ENV, SANDBOX_HOME, SANDBOX_UID

LABEL_MANAGED = "replroom.managed"
LABEL_INSTANCE = "replroom.instance"
# Labels and annotations can change on a running pod (unlike a container's
# labels): after a pooled sandbox's rename() both name the room it serves.
LABEL_ROOM = "replroom.room"
ANNOTATION_ROOM = "replroom.room"  # the room id exactly (a label value cannot hold every id)
NAME_PREFIX = "replroom-"
CONTAINER = "room"
PAGE = 4096

# PID 1: a shell that reaps the processes orphaned in the pod (as Docker's
# init does) and otherwise sleeps. It runs as the room's uid (Kubernetes has
# no per-exec user), yet the room cannot end it: the kernel delivers to a pid
# namespace's init only the signals it handles, and this one handles SIGCHLD
# only. `wait` reaps any child, adopted ones included.
INIT = ["/bin/sh", "-c", "while :; do sleep 2147483647 & wait; done"]

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


def cpu_quantity(cpus: float) -> str:
    return f"{max(1, round(cpus * 1000))}m"


def split_disk(disk: int) -> tuple[int, int]:
    """Sizes of /home/room and /tmp, adding up to at most ``disk``: /tmp gets a quarter.

    Two emptyDir volumes cannot share one size limit; /dev/shm is the
    runtime's own (64 MiB, counted toward the memory limit like the rest).
    """

    def pages(n: int) -> int:
        return max(PAGE, n // PAGE * PAGE)

    tmp = pages(disk // 4)
    return pages(disk - tmp), tmp


def seccomp_profile(setting: str) -> dict[str, str]:
    """``RuntimeDefault`` or ``Localhost:<path>`` (relative to the kubelet's seccomp dir)."""
    if setting.startswith("Localhost:"):
        return {"type": "Localhost", "localhostProfile": setting.removeprefix("Localhost:")}
    return {"type": setting}


@dataclass(frozen=True)
class PodSettings:
    """What every room pod of one server has in common."""

    namespace: str
    image: str
    instance: str = "replroom"
    runtime_class: str | None = None
    seccomp: str = "RuntimeDefault"


def pod_manifest(settings: PodSettings, room_id: str, limits: Limits) -> dict[str, Any]:
    """The pod of ``room_id``: one hardened container, requests = limits (Guaranteed QoS)."""
    home, tmp = split_disk(limits.disk)
    resources = {"memory": str(limits.memory), "cpu": cpu_quantity(limits.cpus)}
    identity = {"runAsUser": SANDBOX_UID, "runAsGroup": SANDBOX_UID, "runAsNonRoot": True}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostname": "room",
        "terminationGracePeriodSeconds": 0,
        "securityContext": {**identity, "seccompProfile": seccomp_profile(settings.seccomp)},
        "containers": [
            {
                "name": CONTAINER,
                "image": settings.image,
                "imagePullPolicy": "IfNotPresent",
                "command": INIT,
                "workingDir": SANDBOX_HOME,
                "env": [{"name": key, "value": value} for key, value in DEFAULT_ENV.items()],
                "resources": {"limits": resources, "requests": dict(resources)},
                "securityContext": {
                    **identity,
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": seccomp_profile(settings.seccomp),
                },
                "volumeMounts": [
                    {"name": "home", "mountPath": SANDBOX_HOME},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "home", "emptyDir": {"medium": "Memory", "sizeLimit": str(home)}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": str(tmp)}},
        ],
    }
    if settings.runtime_class:
        spec["runtimeClassName"] = settings.runtime_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(room_id),
            "namespace": settings.namespace,
            "labels": {
                LABEL_MANAGED: "1",
                LABEL_INSTANCE: settings.instance,
                LABEL_ROOM: room_label(room_id),
            },
            "annotations": {ANNOTATION_ROOM: room_id},
        },
        "spec": spec,
    }

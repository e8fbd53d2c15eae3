"""The kubernetes backend: one hardened pod per room in a namespace of a cluster.

Every room is one pod of the room image (kubernetes_asyncio loads the
cluster's configuration; requests are plain JSON):

- ``restartPolicy: Never``, no service-account token, no service links, the
  configured RuntimeClass (e.g. gVisor), uid/gid 1000 and non-root, a
  read-only root, no privilege escalation, all capabilities dropped, seccomp
  ``RuntimeDefault`` or the rooms' own policy as a ``Localhost`` profile,
  nodes of the server's architecture; gVisor's ``/dev/fuse`` and
  ``/dev/net`` covered by read-only mounts of no device;
- ``/home/room``, ``/tmp`` and ``/dev/shm`` on memory-backed ``emptyDir``
  volumes that split ``Limits.disk``; requests = limits for memory and CPU;
- no network: that takes the deny-all NetworkPolicy of deploy/kubernetes on a
  CNI that enforces it, and a pids limit takes the kubelet's
  ``podPidsLimit`` (docs/security.md).

A process is an exec session over WebSocket with a tty, started under the
filtering launcher (``sandbox/launch.py``), which installs the rooms'
seccomp policy before the command whatever the runtime class: gVisor gives
execs no seccomp profile, and RuntimeDefault is not the rooms' policy. See
docs/kubernetes.md and docs/kubernetes-testing.md. The modules:

- ``config``: the pod rendered from the room's ``spec.RoomSpec`` (its
  manifest, an exec's command line, what the manifest leaves to the
  cluster), its name and labels;
- ``client``: reaching the API server, its errors;
- ``watch``: the one shared watch of the server's pods;
- ``exec``: one exec session (the channel protocol), and how its end is told;
- ``backend``: :class:`KubernetesBackend` and :class:`KubernetesSandbox`.
"""

from replroom.sandbox.kubernetes.backend import KubernetesBackend, KubernetesSandbox
from replroom.sandbox.kubernetes.config import (
    ANNOTATION_ROOM,
    PodPlacement,
    pod_manifest,
    pod_name,
)
from replroom.sandbox.kubernetes.exec import KubernetesProcess
from replroom.sandbox.spec import LABEL_INSTANCE, LABEL_MANAGED, LABEL_ROOM, NAME_PREFIX

__all__ = [
    "ANNOTATION_ROOM",
    "LABEL_INSTANCE",
    "LABEL_MANAGED",
    "LABEL_ROOM",
    "NAME_PREFIX",
    "KubernetesBackend",
    "KubernetesProcess",
    "KubernetesSandbox",
    "PodPlacement",
    "pod_manifest",
    "pod_name",
]

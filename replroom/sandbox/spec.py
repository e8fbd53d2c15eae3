"""What a room's sandbox is, whatever runs it: one :class:`RoomSpec` per sandbox.

The docker and kubernetes backends build the spec once, in ``create()``,
from their settings, the room id and the room's :class:`~replroom.config.Limits`,
and it is the only input of their renderers: ``docker.config.container_config``
(the Engine's create request) and ``kubernetes.config.pod_manifest`` (the
pod). Neither renderer derives a limit or a hardening option of its own;
what one of them cannot express it declares (``kubernetes.config.not_in_pod``),
naming what enforces it instead. ``tests/test_sandbox_spec.py`` reads every
field back out of both renderings and fails for a field without a check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from replroom.config import Limits
from replroom.sandbox.base import DEFAULT_ENV, SANDBOX_UID
from replroom.sandbox.seccomp import profile_json

# The labels of every sandbox (a container's, a pod's): the server finds its
# own by the first two, and cleans up what a crashed server left by them.
LABEL_MANAGED = "replroom.managed"
LABEL_INSTANCE = "replroom.instance"
LABEL_ROOM = "replroom.room"
NAME_PREFIX = "replroom-"
HOSTNAME = "room"
PAGE = 4096
# gVisor's own /dev (its devtmpfs, whatever the container's mounts say) has
# FUSE and TUN, which a room must not have (RoomSpec.fuse_and_tun): the
# docker backend's runsc PID 1 removes them, a pod covers them with
# read-only mounts of no device (docker.config, kubernetes.config).
GVISOR_DEVICES = ("/dev/fuse", "/dev/net")


@dataclass(frozen=True)
class RoomSpec:
    """One room's sandbox: its identity, limits and hardening, in effective values.

    Sizes are bytes; the hardening fields are ``Literal`` because they are
    not options, yet every renderer has to carry them (and the parity test
    checks that each does).
    """

    room_id: str
    instance: str  # label: which server's sandbox this is
    image: str  # the room image, as the backend's engine or cluster names it
    memory: int  # hard limit
    swap: int  # on top of memory; always 0 (Limits: swap is off)
    millicpus: int  # CPU time, in thousandths of a core (Kubernetes' unit)
    background: bool  # least CPU weight until handed to a room (pool spares)
    pids: int  # processes and threads
    home_size: int  # tmpfs /home/room
    tmp_size: int  # tmpfs /tmp
    shm_size: int  # tmpfs /dev/shm
    uid: int  # of every room process
    gid: int
    hostname: str
    env: tuple[tuple[str, str], ...]  # every process's environment before its own
    # The policy's JSON profile (sandbox/seccomp.py), the content itself
    # (about 15 KB: left out of the repr).
    seccomp: str = field(repr=False)
    read_only_root: Literal[True] = True
    network: Literal[False] = False
    fuse_and_tun: Literal[False] = False  # no /dev/fuse, no /dev/net/tun (gVisor has them)
    capabilities: tuple[()] = ()  # kept: none
    no_new_privileges: Literal[True] = True

    @property
    def memory_and_swap(self) -> int:
        return self.memory + self.swap


def split_disk(disk: int) -> tuple[int, int, int]:
    """Sizes of /home/room, /tmp and /dev/shm, adding up to at most ``disk``.

    Neither Docker nor Kubernetes can back several places with one tmpfs:
    /tmp gets a quarter, /dev/shm an eighth and /home/room the rest (whole
    pages, at least one each).
    """

    def pages(n: int) -> int:
        return max(PAGE, n // PAGE * PAGE)

    tmp, shm = pages(disk // 4), pages(disk // 8)
    return pages(disk - tmp - shm), tmp, shm


def room_spec(
    room_id: str, limits: Limits, *, image: str, instance: str, background: bool = False
) -> RoomSpec:
    """The spec of ``room_id``'s sandbox: ``limits`` in the units both engines take."""
    home, tmp, shm = split_disk(limits.disk)
    return RoomSpec(
        room_id=room_id,
        instance=instance,
        image=image,
        memory=limits.memory,
        swap=0,
        # Rounded once here, so that NanoCpus and a "500m" quantity agree.
        millicpus=max(1, round(limits.cpus * 1000)),
        background=background,
        pids=limits.pids,
        home_size=home,
        tmp_size=tmp,
        shm_size=shm,
        uid=SANDBOX_UID,
        gid=SANDBOX_UID,
        hostname=HOSTNAME,
        env=tuple(DEFAULT_ENV.items()),
        seccomp=profile_json(),
    )

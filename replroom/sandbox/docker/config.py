"""What a room's container is: the Engine's create request, and the names and labels on it."""

from __future__ import annotations

from typing import Any, Literal

from replroom.config import Limits
from replroom.sandbox.base import DEFAULT_ENV, SANDBOX_HOME, SANDBOX_UID
from replroom.sandbox.seccomp import docker_security_opt

Runtime = Literal["runc", "runsc"]

LABEL_MANAGED = "replroom.managed"
# The id the container was made with. Labels are fixed for a container's life:
# after a pooled sandbox's rename() only its name says which room it serves.
LABEL_ROOM = "replroom.room"
LABEL_INSTANCE = "replroom.instance"
NAME_PREFIX = "replroom-"
BUILD_HINT = "run `replroom image build --docker`"

USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
# PID 1's user: not the room's (the room could kill it, ending the container
# and its files), not root (but see RUNSC_INIT).
INIT_USER = "65534:65534"
INIT = ["sleep", "infinity"]
PAGE = 4096

# gVisor's own /dev (its devtmpfs, whatever the container's mounts say) has
# FUSE and TUN; runsc ignores MaskedPaths. On runsc PID 1 starts as root (no
# capabilities: the room cannot kill it either) and removes them before it
# becomes the sleep (/dev is root's, 0755: the room cannot put them back, and
# the policy refuses device nodes elsewhere). launch.LAUNCH_FILTERED waits for that.
GVISOR_DEVICES = ("/dev/fuse", "/dev/net")
RUNSC_INIT = ["/bin/sh", "-c", 'rm -rf -- "$@" && exec sleep infinity', "init", *GVISOR_DEVICES]
RUNSC_INIT_USER = "0:0"

# runsc counts its own threads (the Sentry's and, on the ptrace platform, about
# a dozen per sandboxed process) against the host's pids limit: a runsc
# container started with the room's pids limit dies at once. The host limit
# is scaled instead; it still bounds what a fork bomb can take from the host.
RUNSC_PIDS_BASE = 128
RUNSC_PIDS_PER_TASK = 16


# The Engine's default weight (cgroup v1 cpu.shares) and the least it allows.
DEFAULT_CPU_SHARES, BACKGROUND_CPU_SHARES = 1024, 2


def container_name(room_id: str) -> str:
    return NAME_PREFIX + room_id


def split_disk(disk: int) -> tuple[int, int, int]:
    """Sizes of /home/room, /tmp and /dev/shm, adding up to at most ``disk``.

    Docker cannot bind one tmpfs at several places: /tmp gets a quarter,
    /dev/shm an eighth and /home/room the rest.
    """

    def pages(n: int) -> int:
        return max(PAGE, n // PAGE * PAGE)

    tmp, shm = pages(disk // 4), pages(disk // 8)
    return pages(disk - tmp - shm), tmp, shm


def host_pids_limit(runtime: Runtime, pids: int) -> int:
    if runtime == "runsc":
        return RUNSC_PIDS_BASE + RUNSC_PIDS_PER_TASK * pids
    return pids


def container_config(
    image: str,
    room_id: str,
    limits: Limits,
    runtime: Runtime,
    instance: str = "replroom",
    *,
    background: bool = False,
) -> dict[str, Any]:
    """The Engine's create request for a room's container (``background``: least CPU weight)."""
    home, tmp, shm = split_disk(limits.disk)
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
            # starts under launch.LAUNCH_FILTERED, see docs/security.md.
            "SecurityOpt": ["no-new-privileges", docker_security_opt()],
            "IpcMode": "private",
            "Memory": limits.memory,
            "MemorySwap": limits.memory,
            "NanoCpus": round(limits.cpus * 1e9),
            "CpuShares": BACKGROUND_CPU_SHARES if background else DEFAULT_CPU_SHARES,
            "PidsLimit": host_pids_limit(runtime, limits.pids),
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

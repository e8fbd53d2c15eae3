"""A room's container, rendered from its :class:`~replroom.sandbox.spec.RoomSpec`:
the Engine's create request, an exec's user and environment, names.

Docker expresses every field of the spec in the container itself;
``tests/test_sandbox_spec.py`` reads each back out of the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from replroom.sandbox.base import SANDBOX_HOME
from replroom.sandbox.spec import (
    GVISOR_DEVICES,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_ROOM,
    NAME_PREFIX,
    RoomSpec,
)

Runtime = Literal["runc", "runsc"]
BUILD_HINT = "run `replroom image build --docker`"

# PID 1's user: not the room's (the room could kill it, ending the container
# and its files), not root (but see RUNSC_INIT).
INIT_USER = "65534:65534"
INIT = ["sleep", "infinity"]

# gVisor's own /dev (its devtmpfs, whatever the container's mounts say) has
# FUSE and TUN; runsc ignores MaskedPaths. On runsc PID 1 starts as root (no
# capabilities: the room cannot kill it either) and removes them before it
# becomes the sleep (/dev is root's, 0755: the room cannot put them back, and
# the policy refuses device nodes elsewhere). launch.LAUNCH_FILTERED waits for that.
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


def host_pids_limit(runtime: Runtime, pids: int) -> int:
    if runtime == "runsc":
        return RUNSC_PIDS_BASE + RUNSC_PIDS_PER_TASK * pids
    return pids


def exec_options(spec: RoomSpec, env: Mapping[str, str] | None, cwd: str) -> dict[str, Any]:
    """An exec's ``user``, ``environment`` and ``workdir`` (aiodocker's names):
    the room's user, and ``env`` over the spec's environment."""
    return {
        "user": f"{spec.uid}:{spec.gid}",
        "environment": {**dict(spec.env), **(env or {})},
        "workdir": cwd,
    }


def container_config(spec: RoomSpec, runtime: Runtime) -> dict[str, Any]:
    """The Engine's create request for the container of ``spec`` on ``runtime``."""
    # noexec would be the Docker default; rooms run their own scripts.
    tmpfs = "rw,exec,nosuid,nodev"
    init, init_user = (RUNSC_INIT, RUNSC_INIT_USER) if runtime == "runsc" else (INIT, INIT_USER)
    home = f"{tmpfs},size={spec.home_size},uid={spec.uid},gid={spec.gid},mode=0700"
    return {
        "Image": spec.image,
        "Entrypoint": init,
        "Cmd": [],
        "User": init_user,
        "WorkingDir": "/",
        "Hostname": spec.hostname,
        "Env": [f"{key}={value}" for key, value in spec.env],
        "NetworkDisabled": not spec.network,
        # Fixed for a container's life: after a pooled sandbox's rename()
        # only its name says which room it serves.
        "Labels": {LABEL_MANAGED: "1", LABEL_ROOM: spec.room_id, LABEL_INSTANCE: spec.instance},
        "HostConfig": {
            "Runtime": runtime,
            "Init": True,
            "NetworkMode": "none",
            "ReadonlyRootfs": spec.read_only_root,
            "CapDrop": ["ALL"],
            "CapAdd": list(spec.capabilities),
            # runc applies the profile to every exec'd REPL too; runsc (with
            # --oci-seccomp) to the first process only: there every exec
            # starts under the filtering launcher (sandbox/launch.py), see
            # docs/security.md.
            "SecurityOpt": ["no-new-privileges", f"seccomp={spec.seccomp}"],
            "IpcMode": "private",
            "Memory": spec.memory,
            "MemorySwap": spec.memory_and_swap,
            "NanoCpus": spec.millicpus * 1_000_000,
            "CpuShares": BACKGROUND_CPU_SHARES if spec.background else DEFAULT_CPU_SHARES,
            "PidsLimit": host_pids_limit(runtime, spec.pids),
            "Tmpfs": {SANDBOX_HOME: home, "/tmp": f"{tmpfs},size={spec.tmp_size},mode=1777"},
            "ShmSize": spec.shm_size,
            # PID 1 prints nothing; no log file to create per room.
            "LogConfig": {"Type": "none", "Config": {}},
            "RestartPolicy": {"Name": "no"},
        },
    }

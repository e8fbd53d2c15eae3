"""Parity: one RoomSpec renders the Docker container and the room pod alike.

For every field of :class:`RoomSpec` there is a reader of its effective
value out of each rendering: the Engine's create request (and an exec's
options), and the pod manifest (and an exec's command line, and the seccomp
file its ``Localhost`` profile names). Both must give the spec's value.
The seccomp policy of a pod is the one its execs' launcher installs (the
BPF program carried in the command line, run here through a small BPF
interpreter and compared, decision by decision, with the spec's profile),
whatever the pod's own profile: gVisor applies that to the first process at
most, and RuntimeDefault is not the rooms' policy.
What a pod cannot express, ``kubernetes.config.not_in_pod`` declares, with
what enforces it instead; the test checks the declaration and that enforcer.

It fails when
- a field of the spec has no reader (a new limit added to the spec and to
  one renderer only cannot go unread);
- a renderer ignores a field or renders another value (specs are drawn by
  hypothesis over the whole range of the limits, so a constant cannot pass);
- a rendering holds a key that no reader reads and that is not listed below
  as plumbing, with the reason it is not a property of the room (a limit
  added straight into one renderer, past the spec, fails here);
- the pod declares a field it could express, or declares one without a
  check of what enforces it.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import platform
import shlex
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from replroom.config import GiB, Limits, MiB
from replroom.sandbox import launch
from replroom.sandbox.base import DEFAULT_ENV, ROOM_ID, SANDBOX_HOME
from replroom.sandbox.docker.config import (
    BACKGROUND_CPU_SHARES,
    DEFAULT_CPU_SHARES,
    INIT,
    RUNSC_INIT,
    RUNSC_INIT_USER,
    RUNSC_PIDS_BASE,
    RUNSC_PIDS_PER_TASK,
    Runtime,
    container_config,
    exec_options,
)
from replroom.sandbox.kubernetes.config import (
    ANNOTATION_ROOM,
    ARCHITECTURE_LABEL,
    NODE_ARCHITECTURES,
    NotInPod,
    PodPlacement,
    exec_command,
    not_in_pod,
    pod_manifest,
    room_label,
    seccomp_files,
)
from replroom.sandbox.seccomp import (
    REFUSAL,
    compiled_filter,
    docker_profile,
    native_rules,
    profile_json,
    syscall_number,
)
from replroom.sandbox.spec import (
    GVISOR_DEVICES,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_ROOM,
    PAGE,
    RoomSpec,
    room_spec,
    split_disk,
)

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
NAMESPACE = "replroom-rooms"  # deploy/kubernetes's rooms' namespace
RUNTIMES: tuple[Runtime, ...] = ("runc", "runsc")
PLACEMENTS = (
    PodPlacement(NAMESPACE, runtime_class="gvisor", seccomp="Localhost:replroom.json"),
    PodPlacement(NAMESPACE, seccomp="Localhost:profiles/rooms-v2.json"),
    PodPlacement(NAMESPACE, runtime_class="gvisor"),  # RuntimeDefault
)
Path_ = tuple[str, ...]  # keys into a rendering; "[]" stands for any list index


# ------------------------------------------------------------ the renderings


@dataclass
class Rendering:
    """A rendering, and the paths into it that readers took (each taking the whole
    subtree below it)."""

    document: Mapping[str, Any]
    read: set[Path_] = field(default_factory=set)

    def at(self, *path: str | int) -> Any:
        value: Any = self.document
        for key in path:
            value = value[key]
        self.read.add(tuple("[]" if isinstance(key, int) else key for key in path))
        return value


@dataclass
class Docker:
    runtime: Runtime
    config: Rendering
    exec: Mapping[str, Any]  # aiodocker's exec options for a command


@dataclass
class Pod:
    placement: PodPlacement
    manifest: Rendering
    command: list[str]  # an exec's command line
    declared: dict[str, NotInPod]
    files: dict[str, str]  # seccomp files the nodes must hold


def render_docker(spec: RoomSpec, runtime: Runtime) -> Docker:
    return Docker(
        runtime, Rendering(container_config(spec, runtime)), exec_options(spec, None, SANDBOX_HOME)
    )


def render_pod(spec: RoomSpec, placement: PodPlacement) -> Pod:
    return Pod(
        placement,
        Rendering(pod_manifest(spec, placement)),
        exec_command(spec, ["true"], None, SANDBOX_HOME, ("", "")),
        not_in_pod(spec),
        seccomp_files(spec, placement),
    )


# -------------------------------------------------------------- the readers


def quantity(text: str) -> float:
    """A Kubernetes quantity as a number (the forms the API accepts for ours)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


def tmpfs_options(text: str) -> dict[str, str]:
    return dict(option.partition("=")[::2] for option in text.split(","))


def policy(profile_text: str) -> dict[str, Any]:
    """A seccomp profile as what it decides: the defaults, and per system call the
    set of (action, errno, argument conditions) that apply to it."""
    profile = json.loads(profile_text)
    calls: dict[str, set[tuple[Any, ...]]] = {}
    for entry in profile["syscalls"]:
        conditions = tuple(
            sorted(
                (a["index"], a["op"], a["value"], a.get("valueTwo", 0))
                for a in entry.get("args", [])
            )
        )
        for name in entry["names"]:
            calls.setdefault(name, set()).add((entry["action"], entry.get("errnoRet"), conditions))
    return {
        "default": (profile["defaultAction"], profile.get("defaultErrnoRet")),
        "architectures": sorted(profile["architectures"]),
        "calls": calls,
    }


# ------------------------------------------------ seccomp, as decisions made

# seccomp_data.arch of the native ABI, as the kernel reports it to a filter.
AUDIT_ARCH = {"x86_64": 0xC000_003E, "aarch64": 0xC000_00B7}[platform.machine()]
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF_0000, 0x0005_0000
HIGHEST_CALL = 512  # above every native system call number


def run_bpf(program: bytes, nr: int, args: Sequence[int]) -> int:
    """What a classic-BPF seccomp program returns for call ``nr`` with ``args``
    (the native ABI): the kernel's interpretation, for the instructions
    libseccomp emits (loads, stores, AND, jumps, returns)."""
    data = struct.pack("<iIQ6Q", nr, AUDIT_ARCH, 0, *args, *[0] * (6 - len(args)))
    code = [struct.unpack_from("<HBBI", program, at) for at in range(0, len(program), 8)]
    a = x = pc = 0
    memory = [0] * 16
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        kind = op & 0x07
        if kind == 0x00 and op & 0xE0 == 0x20:  # LD W ABS
            a = struct.unpack_from("<I", data, k)[0]
        elif kind == 0x00 and op & 0xE0 == 0x60:  # LD MEM
            a = memory[k]
        elif kind == 0x00 and op & 0xE0 == 0x00:  # LD IMM
            a = k
        elif kind == 0x01:  # LDX (IMM or MEM)
            x = memory[k] if op & 0xE0 == 0x60 else k
        elif kind == 0x02:  # ST
            memory[k] = a
        elif kind == 0x03:  # STX
            memory[k] = x
        elif kind == 0x04 and op & 0xF0 == 0x50:  # ALU AND
            a &= x if op & 0x08 else k
        elif kind == 0x05:  # JMP
            operand = x if op & 0x08 else k
            test = op & 0xF0
            if test == 0x00:  # JA
                pc += k
                continue
            taken = {
                0x10: a == operand,
                0x20: a > operand,
                0x30: a >= operand,
                0x40: bool(a & operand),
            }[test]
            pc += jt if taken else jf
        elif kind == 0x06:  # RET
            return a if op & 0x18 == 0x10 else k
        elif kind == 0x07:  # TAX / TXA
            a, x = (a, a) if op & 0xF8 == 0x00 else (x, x)
        else:
            raise AssertionError(f"BPF instruction {op:#x} not understood")


Conditions = tuple[tuple[int, int, int], ...]  # (index, mask, value): masked equals value


@cache
def profile_table(profile_text: str) -> tuple[int, dict[int, list[tuple[Conditions, int]]]]:
    """A Docker seccomp profile as (the value of what it does not list, and per
    call number its rules: argument conditions and the value a filter returns)."""
    profile = json.loads(profile_text)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    table: dict[int, list[tuple[Conditions, int]]] = {}
    for entry in profile["syscalls"]:
        if entry["action"] == "SCMP_ACT_ALLOW":
            decision = SECCOMP_RET_ALLOW
        else:
            assert entry["action"] == "SCMP_ACT_ERRNO", entry
            decision = SECCOMP_RET_ERRNO | entry.get("errnoRet", REFUSAL)
        conditions = []
        for a in entry.get("args", []):
            assert a["op"] == "SCMP_CMP_MASKED_EQ", a
            conditions.append((a["index"], a["value"], a["valueTwo"]))
        for name in entry["names"]:
            nr = syscall_number(name)
            if nr is not None:
                table.setdefault(nr, []).append((tuple(conditions), decision))
    return SECCOMP_RET_ERRNO | profile["defaultErrnoRet"], table


def run_profile(profile_text: str, nr: int, args: Sequence[int]) -> int:
    """What a Docker seccomp profile decides for call ``nr`` with ``args``, as
    the value a seccomp filter would return."""
    default, table = profile_table(profile_text)
    full = [*args, *[0] * (6 - len(args))]
    decided = {
        decision
        for conditions, decision in table.get(nr, [])
        if all(full[index] & mask == value for index, mask, value in conditions)
    }
    assert len(decided) <= 1, f"call {nr}: the profile decides two ways"
    return decided.pop() if decided else default


def probes() -> list[tuple[int, tuple[int, ...]]]:
    """Calls to ask a policy about: every call number with zero arguments, and
    for each argument condition of the rooms' policy, values on either side of
    it and with the upper 32 bits set (which the kernel ignores for ints)."""
    found: list[tuple[int, tuple[int, ...]]] = [(nr, ()) for nr in range(HIGHEST_CALL)]
    for rule in native_rules():
        nr = syscall_number(rule.name)
        assert nr is not None
        for condition in rule.when:
            lowest = condition.mask & -condition.mask
            for value in (condition.value, condition.value ^ lowest, condition.value | 1 << 32):
                args = [0] * 6
                args[condition.index] = value
                found.append((nr, tuple(args)))
    return found


@cache
def decisions_of_bpf(program: bytes) -> dict[tuple[int, tuple[int, ...]], int]:
    return {probe: run_bpf(program, *probe) for probe in probes()}


@cache
def decisions_of_profile(profile_text: str) -> dict[tuple[int, tuple[int, ...]], int]:
    return {probe: run_profile(profile_text, *probe) for probe in probes()}


def launched(command: Sequence[str]) -> tuple[bytes, list[str]]:
    """The BPF program a pod's exec installs and the command it then runs:
    the exec must start under the filtering launcher, with nothing to wait for
    (a pod's PID 1 removes nothing: its devices are covered instead)."""
    assert list(command[:4]) == [launch.PYTHON, "-I", "-S", "-c"], "not under the launcher"
    assert command[4] == launch.program(()), "not the launcher's program"
    argument, report, cols, rows, *inner = command[5:]
    assert (report, cols, rows) == ("", "", ""), "the inner launcher reports and sizes"
    if argument.startswith(launch.DEFLATED):
        bpf = zlib.decompress(binascii.a2b_base64(argument.removeprefix(launch.DEFLATED)))
    else:
        bpf = bytes.fromhex(argument)
    return bpf, inner


def docker_env(docker: Docker) -> tuple[tuple[str, str], ...]:
    pid_1 = tuple(tuple(item.split("=", 1)) for item in docker.config.at("Env"))
    assert pid_1 == tuple(docker.exec["environment"].items()), "PID 1 and execs differ"
    return pid_1  # type: ignore[return-value]


def pod_env(pod: Pod) -> tuple[tuple[str, str], ...]:
    pid_1 = tuple(
        (item["name"], item["value"]) for item in pod.manifest.at("spec", "containers", 0, "env")
    )
    # launcher, env -i -C <cwd> NAME=value ... /bin/sh: an exec starts with exactly these.
    _bpf, command = launched(pod.command)
    assert command[:2] == ["env", "-i"] and command[2] == "-C"
    variables = command[4 : command.index("/bin/sh")]
    in_exec = tuple(tuple(item.split("=", 1)) for item in variables)
    assert pid_1 == in_exec, "PID 1 and execs differ"
    return pid_1


def docker_pids(docker: Docker) -> int:
    limit = docker.config.at("HostConfig", "PidsLimit")
    if docker.runtime == "runsc":  # the Sentry's threads count too: the limit is scaled
        tasks, rest = divmod(limit - RUNSC_PIDS_BASE, RUNSC_PIDS_PER_TASK)
        assert rest == 0
        return int(tasks)
    return int(limit)


def docker_background(docker: Docker) -> bool:
    shares = docker.config.at("HostConfig", "CpuShares")
    assert shares in (DEFAULT_CPU_SHARES, BACKGROUND_CPU_SHARES)
    return bool(shares == BACKGROUND_CPU_SHARES)


def docker_millicpus(docker: Docker) -> int:
    millis, rest = divmod(docker.config.at("HostConfig", "NanoCpus"), 1_000_000)
    assert rest == 0
    return int(millis)


def docker_swap(docker: Docker) -> int:
    return int(
        docker.config.at("HostConfig", "MemorySwap") - docker.config.at("HostConfig", "Memory")
    )


def docker_user(docker: Docker, which: int) -> int:
    ids = [int(part) for part in docker.exec["user"].split(":")]
    home = tmpfs_options(docker.config.at("HostConfig", "Tmpfs", SANDBOX_HOME))
    assert [int(home["uid"]), int(home["gid"])] == ids, "/home/room is not the room user's"
    return ids[which]


def docker_size(docker: Docker, mount: str) -> int:
    if mount == "/dev/shm":
        return int(docker.config.at("HostConfig", "ShmSize"))
    return int(tmpfs_options(docker.config.at("HostConfig", "Tmpfs", mount))["size"])


def docker_profile_text(docker: Docker) -> str:
    (profile,) = [
        opt.removeprefix("seccomp=")
        for opt in docker.config.at("HostConfig", "SecurityOpt")
        if opt.startswith("seccomp=")
    ]
    return str(profile)


def docker_seccomp(docker: Docker) -> dict[tuple[int, tuple[int, ...]], int]:
    # runc applies the profile to every exec; runsc to PID 1, and the docker
    # backend's launcher to each exec (tests/test_containment.py runs it).
    return decisions_of_profile(docker_profile_text(docker))


def docker_fuse_and_tun(docker: Docker) -> bool:
    if docker.runtime == "runsc":
        # PID 1 starts as root (no capabilities) and removes gVisor's devices.
        assert docker.config.at("Entrypoint") == RUNSC_INIT
        assert RUNSC_INIT[-len(GVISOR_DEVICES) :] == list(GVISOR_DEVICES)
        assert docker.config.at("User") == RUNSC_INIT_USER
    else:
        assert docker.config.at("Entrypoint") == INIT  # runc's /dev has neither
    return False


def docker_network(docker: Docker) -> bool:
    mode = docker.config.at("HostConfig", "NetworkMode")
    disabled = docker.config.at("NetworkDisabled")
    assert (mode == "none") is disabled
    return not disabled


def docker_capabilities(docker: Docker) -> tuple[str, ...]:
    assert docker.config.at("HostConfig", "CapDrop") == ["ALL"]
    return tuple(docker.config.at("HostConfig", "CapAdd"))


def container(pod: Pod, *path: str) -> Any:
    return pod.manifest.at("spec", "containers", 0, *path)


def both_contexts(pod: Pod, key: str) -> Any:
    """A securityContext field the pod's and the container's both set (the same)."""
    pod_level = pod.manifest.at("spec", "securityContext", key)
    assert container(pod, "securityContext", key) == pod_level
    return pod_level


def pod_labels(pod: Pod, key: str) -> str:
    return str(pod.manifest.at("metadata", "labels", key))


def pod_room(pod: Pod) -> str:
    room_id = pod.manifest.at("metadata", "annotations", ANNOTATION_ROOM)
    assert pod_labels(pod, LABEL_ROOM) == room_label(room_id)
    return str(room_id)


def pod_resources(pod: Pod, kind: str) -> float:
    limits = container(pod, "resources", "limits")
    return quantity(limits[kind])


def pod_swap(pod: Pod) -> int:
    # Guaranteed QoS (requests = limits, memory and CPU): the kubelet gives such
    # a pod no swap, whatever the node's swap behaviour.
    resources = container(pod, "resources")
    assert resources["requests"] == resources["limits"], "not Guaranteed QoS: swap possible"
    return 0


def pod_size(pod: Pod, mount: str) -> int:
    (name,) = [m["name"] for m in container(pod, "volumeMounts") if m["mountPath"] == mount]
    (volume,) = [v for v in pod.manifest.at("spec", "volumes") if v["name"] == name]
    assert volume["emptyDir"]["medium"] == "Memory"
    return int(quantity(volume["emptyDir"]["sizeLimit"]))


def pod_user(pod: Pod, key: str) -> int:
    assert both_contexts(pod, "runAsNonRoot") is True
    return int(both_contexts(pod, key))


def pod_seccomp(pod: Pod) -> dict[tuple[int, tuple[int, ...]], int]:
    """The policy every exec's launcher installs; the pod's own profile, if it is
    the rooms' (Localhost), must decide the same."""
    bpf, _command = launched(pod.command)
    decided = decisions_of_bpf(bpf)
    profile = both_contexts(pod, "seccompProfile")
    if profile["type"] == "Localhost":
        assert decisions_of_profile(pod.files[profile["localhostProfile"]]) == decided
    else:
        assert profile == {"type": "RuntimeDefault"}, profile
    # The program is for the server's architecture, so are the nodes.
    selector = pod.manifest.at("spec", "nodeSelector", ARCHITECTURE_LABEL)
    assert selector == NODE_ARCHITECTURES[platform.machine()]
    return decided


def pod_fuse_and_tun(pod: Pod) -> bool:
    """gVisor's FUSE and TUN devices are covered by read-only mounts of a volume
    that holds no device (an empty directory, a file)."""
    mounts = {m["mountPath"]: m for m in container(pod, "volumeMounts")}
    volumes = {v["name"]: v for v in pod.manifest.at("spec", "volumes")}
    for path in GVISOR_DEVICES:
        mount = mounts.get(path)
        if mount is None or not mount.get("readOnly"):
            return True
        kinds = set(volumes[mount["name"]]) - {"name"}
        if not kinds <= {"downwardAPI", "emptyDir", "configMap"}:
            return True
    return False


def pod_capabilities(pod: Pod) -> tuple[str, ...]:
    assert container(pod, "securityContext", "capabilities", "drop") == ["ALL"]
    return tuple(container(pod, "securityContext", "capabilities", "add"))


Reader = tuple[Callable[[Docker], object], Callable[[Pod], object]]

# One reader pair per field of RoomSpec: (from Docker, from the pod).
READERS: dict[str, Reader] = {
    "room_id": (lambda d: d.config.at("Labels", LABEL_ROOM), pod_room),
    "instance": (
        lambda d: d.config.at("Labels", LABEL_INSTANCE),
        lambda p: pod_labels(p, LABEL_INSTANCE),
    ),
    "image": (lambda d: d.config.at("Image"), lambda p: container(p, "image")),
    "memory": (
        lambda d: d.config.at("HostConfig", "Memory"),
        lambda p: int(pod_resources(p, "memory")),
    ),
    "swap": (docker_swap, pod_swap),
    "millicpus": (docker_millicpus, lambda p: round(pod_resources(p, "cpu") * 1000)),
    # A pod's CPU weight follows its request: the usual weight, never the least.
    "background": (docker_background, lambda p: False),
    "pids": (docker_pids, lambda p: pytest.fail("a pod has no pids limit")),
    "home_size": (lambda d: docker_size(d, SANDBOX_HOME), lambda p: pod_size(p, SANDBOX_HOME)),
    "tmp_size": (lambda d: docker_size(d, "/tmp"), lambda p: pod_size(p, "/tmp")),
    "shm_size": (lambda d: docker_size(d, "/dev/shm"), lambda p: pod_size(p, "/dev/shm")),
    "uid": (lambda d: docker_user(d, 0), lambda p: pod_user(p, "runAsUser")),
    "gid": (lambda d: docker_user(d, 1), lambda p: pod_user(p, "runAsGroup")),
    "hostname": (lambda d: d.config.at("Hostname"), lambda p: p.manifest.at("spec", "hostname")),
    "env": (docker_env, pod_env),
    "seccomp": (docker_seccomp, pod_seccomp),
    "read_only_root": (
        lambda d: d.config.at("HostConfig", "ReadonlyRootfs"),
        lambda p: container(p, "securityContext", "readOnlyRootFilesystem"),
    ),
    "network": (docker_network, lambda p: pytest.fail("a pod has no network switch")),
    "fuse_and_tun": (docker_fuse_and_tun, pod_fuse_and_tun),
    "capabilities": (docker_capabilities, pod_capabilities),
    "no_new_privileges": (
        lambda d: "no-new-privileges" in d.config.at("HostConfig", "SecurityOpt"),
        lambda p: not container(p, "securityContext", "allowPrivilegeEscalation"),
    ),
}

# How each field's value compares (the seccomp content as the decisions it makes).
EXPECTED: dict[str, Callable[[RoomSpec], object]] = {
    "seccomp": lambda spec: decisions_of_profile(spec.seccomp)
}

# Keys of the renderings that are no property of the room, and why.
DOCKER_PLUMBING: dict[Path_, str] = {
    ("Entrypoint",): "PID 1 (Docker's init runs sleep): nothing of the room runs in it",
    ("Cmd",): "PID 1's arguments",
    ("User",): "PID 1's user, not the room's: the room cannot kill it (docs/security.md)",
    ("WorkingDir",): "PID 1's; execs are given theirs",
    ("Labels", LABEL_MANAGED): "marks the server's own containers",
    ("HostConfig", "Runtime"): "the engine's runtime setting (docker_runtime), a placement",
    ("HostConfig", "Init"): "Docker's init reaps orphans; the pod's PID 1 does that itself",
    ("HostConfig", "IpcMode"): "a pod has its own IPC namespace too",
    ("HostConfig", "LogConfig"): "PID 1 prints nothing",
    ("HostConfig", "RestartPolicy"): "never restarted; a pod's restartPolicy is Never",
}
POD_PLUMBING: dict[Path_, str] = {
    ("apiVersion",): "the object's kind",
    ("kind",): "the object's kind",
    ("metadata", "name"): "the pod's name, made from the room id",
    ("metadata", "namespace"): "where the pods go, a placement",
    ("metadata", "labels", LABEL_MANAGED): "marks the server's own pods",
    ("spec", "restartPolicy"): "never restarted, as Docker's RestartPolicy no",
    ("spec", "automountServiceAccountToken"): "no API token in the room: Docker has no such token",
    ("spec", "enableServiceLinks"): "no service addresses in the environment: Docker has none",
    ("spec", "terminationGracePeriodSeconds"): "deletion at once, as Docker's forced removal",
    ("spec", "runtimeClassName"): "the cluster's runtime class setting, a placement",
    ("spec", "containers", "[]", "name"): "the container's name in the pod",
    ("spec", "containers", "[]", "imagePullPolicy"): "when a node pulls the image",
    ("spec", "containers", "[]", "command"): "PID 1 (a shell that reaps orphans)",
    ("spec", "containers", "[]", "workingDir"): "PID 1's; execs are given theirs",
    ("spec", "containers", "[]", "securityContext", "privileged"): "Docker's default too",
}

# Fields a pod manifest cannot carry: what enforces them instead, and how the
# test checks that (None: nothing does on Kubernetes, as docs/security.md says).
ENFORCERS: dict[str, Callable[[Pod, NotInPod], None] | None] = {}


def enforcer(
    name: str,
) -> Callable[[Callable[[Pod, NotInPod], None]], Callable[[Pod, NotInPod], None]]:
    def register(check: Callable[[Pod, NotInPod], None]) -> Callable[[Pod, NotInPod], None]:
        ENFORCERS[name] = check
        return check

    return register


def deploy_objects() -> Iterator[dict[str, Any]]:
    for path in sorted((DEPLOY / "base").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


@enforcer("network")
def deny_all_policy_selects_the_pod(pod: Pod, declared: NotInPod) -> None:
    assert declared.value is False
    labels = pod.manifest.document["metadata"]["labels"]
    namespace = pod.manifest.document["metadata"]["namespace"]
    denying = [
        obj["metadata"]["name"]
        for obj in deploy_objects()
        if obj["kind"] == "NetworkPolicy"
        and obj["metadata"]["namespace"] == namespace
        and set(obj["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not obj["spec"].get("ingress")
        and not obj["spec"].get("egress")
        and obj["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
        and not obj["spec"]["podSelector"].get("matchExpressions")
    ]
    assert denying, f"no deny-all NetworkPolicy in deploy/kubernetes selects the pod in {namespace}"
    assert any(name in declared.enforced_by for name in denying)  # type: ignore[operator]


@enforcer("pids")
def pods_limit_is_the_kubelets(pod: Pod, declared: NotInPod) -> None:
    assert declared.enforced_by is not None and "podPidsLimit" in declared.enforced_by
    # What an operator must set, per runtime, is written where they read it.
    guide = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "podPidsLimit" in guide and "REPLROOM_LIMITS__PIDS" in guide
    assert f"{RUNSC_PIDS_BASE} + {RUNSC_PIDS_PER_TASK} \N{MULTIPLICATION SIGN} pids" in guide


# Accepted gaps: nothing enforces these on Kubernetes; docs/security.md says so.
ENFORCERS["background"] = None


# ---------------------------------------------------------------- the tests


def spec_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(RoomSpec)}


def missing_readers(names: set[str]) -> set[str]:
    return names - set(READERS)


def test_every_field_of_the_spec_has_a_reader_for_both_renderings() -> None:
    assert not missing_readers(spec_fields()), "read these fields out of both renderings"
    assert set(READERS) <= spec_fields(), "readers of fields the spec no longer has"


def test_a_field_added_to_the_spec_without_readers_fails() -> None:
    @dataclass(frozen=True)
    class Grown(RoomSpec):
        files_limit: int = 1024

    assert missing_readers({f.name for f in dataclasses.fields(Grown)}) == {"files_limit"}


def room_ids() -> st.SearchStrategy[str]:
    return st.from_regex(ROOM_ID, fullmatch=True)


def sizes(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low // PAGE, high // PAGE).map(lambda pages: pages * PAGE)


# Another policy than the rooms': a renderer must carry the content it is given.
SMALLER_POLICY = json.dumps(
    {
        **docker_profile(),
        "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}],
    }
)

specs = st.builds(
    RoomSpec,
    room_id=room_ids(),
    instance=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
    image=st.from_regex(r"[a-z0-9./-]{1,30}:[a-z0-9]{1,12}", fullmatch=True),
    memory=st.integers(16 * MiB, 64 * GiB),
    swap=st.just(0),  # Limits: swap is always off
    millicpus=st.integers(10, 64_000),
    background=st.booleans(),
    pids=st.integers(8, 65536),
    home_size=sizes(PAGE, 40 * GiB),
    tmp_size=sizes(PAGE, 16 * GiB),
    shm_size=sizes(PAGE, 8 * GiB),
    uid=st.integers(1, 65534),
    gid=st.integers(1, 65534),
    hostname=st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
    env=st.lists(
        st.tuples(
            st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True),
            st.text("abc/: .-", max_size=12),
        ),
        unique_by=lambda item: item[0],
        max_size=8,
    ).map(tuple),
    seccomp=st.sampled_from([profile_json(), SMALLER_POLICY]),
)


def check_parity(spec: RoomSpec, runtime: Runtime, placement: PodPlacement) -> None:
    docker, pod = render_docker(spec, runtime), render_pod(spec, placement)
    for name, (from_docker, from_pod) in READERS.items():
        expected = EXPECTED[name](spec) if name in EXPECTED else getattr(spec, name)
        assert from_docker(docker) == expected, f"docker: {name}"
        if name in pod.declared:
            declared = pod.declared[name]
            assert name in ENFORCERS, f"the pod leaves {name} to nobody the test knows"
            assert declared.value == getattr(spec, name), f"declared {name}: {declared.value!r}"
            check = ENFORCERS[name]
            if check is None:
                assert declared.enforced_by is None and declared.note, f"{name}: say why not"
            else:
                assert declared.enforced_by, f"{name}: say what enforces it"
                check(pod, declared)
        else:
            assert from_pod(pod) == expected, f"pod: {name}"
    unread = unclassified(docker.config, DOCKER_PLUMBING)
    assert not unread, f"Container keys that are neither read from the spec nor plumbing: {unread}"
    unread = unclassified(pod.manifest, POD_PLUMBING)
    assert not unread, f"pod keys that are neither read from the spec nor plumbing: {unread}"


def leaves(value: Any, path: Path_ = ()) -> Iterator[Path_]:
    if isinstance(value, Mapping) and value:
        for key, inner in value.items():
            yield from leaves(inner, (*path, key))
    elif isinstance(value, list) and value:
        for inner in value:
            yield from leaves(inner, (*path, "[]"))
    else:
        yield path


def unclassified(rendering: Rendering, plumbing: Mapping[Path_, str]) -> set[Path_]:
    covered = rendering.read | set(plumbing)
    return {
        leaf
        for leaf in leaves(rendering.document)
        if not any(leaf[: len(prefix)] == prefix for prefix in covered)
    }


@settings(max_examples=150, deadline=None)
@given(
    spec=specs,
    runtime=st.sampled_from(RUNTIMES),
    placement=st.sampled_from(PLACEMENTS),
)
def test_any_spec_renders_the_same_room_on_docker_and_kubernetes(
    spec: RoomSpec, runtime: Runtime, placement: PodPlacement
) -> None:
    check_parity(spec, runtime, placement)


@settings(max_examples=100, deadline=None)
@given(
    memory=st.integers(16 * MiB, 64 * GiB),
    cpus=st.floats(0.01, 64),
    pids=st.integers(8, 65536),
    disk=st.integers(1 * MiB, 64 * GiB),
    room_id=room_ids(),
    background=st.booleans(),
)
def test_the_spec_of_any_limits_renders_alike(
    memory: int, cpus: float, pids: int, disk: int, room_id: str, background: bool
) -> None:
    limits = Limits(memory=memory, cpus=cpus, pids=pids, disk=disk)
    spec = room_spec(
        room_id, limits, image="replroom-room:abc", instance="i", background=background
    )
    assert spec.home_size + spec.tmp_size + spec.shm_size <= max(disk, 3 * PAGE)
    assert abs(spec.millicpus / 1000 - cpus) <= 0.0005
    for runtime in RUNTIMES:
        for placement in PLACEMENTS:
            check_parity(spec, runtime, placement)


def test_non_default_limits_in_the_units_each_engine_takes() -> None:
    """Readers and renderers could agree on a wrong unit: the values, spelt out."""
    spec = room_spec(
        "abc123", Limits(memory="100m", cpus=0.2, pids=64, disk="40m"), image="img:1", instance="i"
    )
    home, tmp, shm = split_disk(40 * MiB)
    assert (home, tmp, shm) == (25 * MiB, 10 * MiB, 5 * MiB)
    docker = container_config(spec, "runc")["HostConfig"]
    assert docker["Memory"] == docker["MemorySwap"] == 104_857_600
    assert docker["NanoCpus"] == 200_000_000 and docker["PidsLimit"] == 64
    assert docker["Tmpfs"]["/tmp"].endswith(f"size={10 * MiB},mode=1777")
    assert container_config(spec, "runsc")["HostConfig"]["PidsLimit"] == 128 + 16 * 64
    pod = pod_manifest(spec, PLACEMENTS[0])["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "104857600", "cpu": "200m"}
    volumes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v}
    assert volumes == {"home": str(25 * MiB), "tmp": str(10 * MiB), "shm": str(5 * MiB)}


def test_the_localhost_profile_is_the_policy_docker_gets() -> None:
    """The file docs/kubernetes.md tells operators to install is the content that
    the pod's Localhost profile names, and the policy Docker gets inline."""
    spec = room_spec("abc123", Limits(), image="img:1", instance="i")
    pod = render_pod(spec, PLACEMENTS[0])
    docker = render_docker(spec, "runc")
    assert pod.files == {"replroom.json": profile_json()}
    assert policy(pod.files["replroom.json"]) == policy(docker_profile_text(docker))
    assert pod_seccomp(pod) == docker_seccomp(docker) == decisions_of_profile(profile_json())
    assert policy(profile_json())["calls"], "an empty policy"
    # The command in the guide, run as written: it prints that very content.
    guide = (ROOT / "docs" / "kubernetes.md").read_text()
    (line,) = [
        line for line in guide.splitlines() if "python -c" in line and "profile_json" in line
    ]
    _python, option, code, redirect, _file = shlex.split(line)
    assert (option, redirect) == ("-c", ">")
    printed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert printed.stdout == spec.seccomp


def test_every_exec_installs_the_rooms_policy_whatever_the_pods_profile() -> None:
    """Under RuntimeDefault (or gVisor, which gives execs no profile) the launcher
    still installs the rooms' policy: nothing is declared left out, and the
    program an exec carries is the very BPF bwrap and docker+runsc install."""
    spec = room_spec("abc123", Limits(), image="img:1", instance="i")
    for placement in PLACEMENTS:
        assert "seccomp" not in not_in_pod(spec)
        pod = render_pod(spec, placement)
        bpf, command = launched(pod.command)
        assert bpf == compiled_filter()
        assert command[-1] == "true" and "/bin/sh" in command
    assert seccomp_files(spec, PLACEMENTS[2]) == {}
    # The command goes into the exec's URL: short enough for proxies that cap it.
    assert len(" ".join(render_pod(spec, PLACEMENTS[2]).command)) < 6000


def test_the_bpf_interpreter_reads_the_policy_as_the_profile_says() -> None:
    """The reader itself: the compiled program and the JSON profile, each read
    its own way, decide alike, and as the policy says for a few known calls."""
    decided = decisions_of_bpf(compiled_filter())
    assert decided == decisions_of_profile(profile_json())

    def ask(name: str, *args: int) -> int:
        nr = syscall_number(name)
        assert nr is not None
        return run_bpf(compiled_filter(), nr, args)

    assert ask("read") == SECCOMP_RET_ALLOW
    assert ask("io_uring_setup") == SECCOMP_RET_ERRNO | REFUSAL
    assert ask("unshare", 0x1000_0000) == SECCOMP_RET_ERRNO | REFUSAL
    assert ask("clone", 0x1000_0000) == SECCOMP_RET_ERRNO | REFUSAL  # CLONE_NEWUSER
    assert ask("clone", 0x11) == SECCOMP_RET_ALLOW  # SIGCHLD
    assert ask("clone3") == SECCOMP_RET_ERRNO | 38  # ENOSYS
    assert decisions_of_bpf(compiled_filter()) != decisions_of_profile(SMALLER_POLICY)


def test_a_pod_whose_devices_are_not_covered_fails_the_check() -> None:
    spec = room_spec("abc123", Limits(), image="img:1", instance="i")
    pod = render_pod(spec, PLACEMENTS[0])
    assert pod_fuse_and_tun(pod) is False
    mounts = pod.manifest.document["spec"]["containers"][0]["volumeMounts"]
    mounts[:] = [m for m in mounts if m["mountPath"] != "/dev/fuse"]
    assert pod_fuse_and_tun(pod) is True


def test_a_renderer_that_ignores_a_field_fails_the_check() -> None:
    """The check itself: a pod whose memory is the default whatever the spec says."""
    spec = room_spec("abc123", Limits(memory="100m"), image="img:1", instance="i")
    pod = render_pod(spec, PLACEMENTS[0])
    pod.manifest.document["spec"]["containers"][0]["resources"]["limits"]["memory"] = str(256 * MiB)
    assert READERS["memory"][1](pod) != spec.memory
    extra = render_docker(spec, "runc")
    extra.config.document["HostConfig"]["OomScoreAdj"] = 500  # a limit past the spec
    for reader, _ in READERS.values():
        reader(extra)
    assert unclassified(extra.config, DOCKER_PLUMBING) == {("HostConfig", "OomScoreAdj")}


def test_default_env_is_the_sandboxes() -> None:
    spec = room_spec("abc123", Limits(), image="img:1", instance="i")
    assert dict(spec.env) == dict(DEFAULT_ENV)

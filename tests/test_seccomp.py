"""The rooms' seccomp policy: its data, its two renderings, and the compiled
filter loaded into a real process on this kernel (the containment tests run
it inside real sandboxes on every backend)."""

from __future__ import annotations

import errno
import json
import platform
import random
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from replroom.sandbox import seccomp
from replroom.sandbox.seccomp import Masked, all_but, all_file_types_but

UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def holds(conditions: list[Masked], value: int) -> bool:
    return any(value & c.mask == c.value for c in conditions)


def compiled_names() -> set[str]:
    return set(re.findall(r'# filter for syscall "(\w+)"', seccomp.filter_text()))


@pytest.mark.fast
@pytest.mark.parametrize("refused", [(0x5412, 0x541C), (40,), (0,), (0xFFFF_FFFF,), (7, 8, 9)])
def test_all_but_matches_every_32_bit_value_except_the_refused(refused: tuple[int, ...]) -> None:
    conditions = list(all_but(1, refused))
    assert all(c.index == 1 for c in conditions)
    for value in refused:
        assert not holds(conditions, value)
        # The kernel reads a 32-bit int: the register's upper half must not matter.
        assert not holds(conditions, value | 0xDEAD_BEEF << 32)
    neighbours = {value ^ 1 << bit for value in refused for bit in range(32)}
    neighbours |= {(value + delta) & 0xFFFF_FFFF for value in refused for delta in (-1, 1)}
    rng = random.Random(7)
    samples = neighbours | {rng.getrandbits(32) for _ in range(2000)}
    for value in samples - set(refused):
        assert holds(conditions, value), hex(value)
        assert holds(conditions, value | 1 << 40), hex(value)
    # One condition per bit prefix not leading to a refused value: small.
    assert len(conditions) <= 32 * len(refused)


@pytest.mark.fast
@pytest.mark.parametrize("index", [1, 2])
def test_mknod_conditions_refuse_exactly_character_and_block_devices(index: int) -> None:
    conditions = list(all_file_types_but(index, seccomp.REFUSED_FILE_TYPES))
    assert all(c.index == index for c in conditions)
    # Every 16-bit mode (the kernel's umode_t), with permission bits and with
    # upper register bits the kernel drops.
    for mode in range(1 << 16):
        refused = stat.S_IFMT(mode) in (stat.S_IFCHR, stat.S_IFBLK)
        assert holds(conditions, mode) is not refused, oct(mode)
        assert holds(conditions, mode | 0xDEAD_0000_0000) is not refused, oct(mode)
    for allowed in (0, stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
        assert holds(conditions, allowed | 0o644)


@pytest.mark.fast
def test_io_uring_is_not_allowed_and_personality_only_with_dockers_values() -> None:
    names = {rule.name for rule in seccomp.rules()}
    assert not {"io_uring_setup", "io_uring_enter", "io_uring_register"} & names
    assert not {"unshare", "setns", "mount", "keyctl", "add_key", "request_key", "bpf"} & names
    persona = [rule.when for rule in seccomp.rules() if rule.name == "personality"]
    assert sorted(w[0].value for w in persona) == [0x0, 0x8, 0x2_0000, 0x2_0008, 0xFFFF_FFFF]
    assert all(w[0].mask == 0xFFFF_FFFF for w in persona)


@pytest.mark.fast
@pytest.mark.skipif(platform.machine() != "x86_64", reason="checks x86_64's table")
def test_every_allowed_x86_64_call_is_in_the_compiled_filter() -> None:
    if not UNISTD_64.exists():
        pytest.skip("needs the kernel's x86_64 call table: apt-get install linux-libc-dev")
    on_x86_64 = set(re.findall(r"#define __NR_(\w+) \d+", UNISTD_64.read_text()))
    conditional = {"personality", "clone", "ioctl", "socket", "mknod", "mknodat"}
    allowed = set(seccomp.ALLOWED) | conditional
    missing = (allowed & on_x86_64) - compiled_names()
    assert not missing, f"libseccomp here does not know {sorted(missing)}"
    # Whatever was skipped does not exist on x86_64 (32-bit or arm64 only).
    assert not (set(seccomp.ALLOWED) - compiled_names()) & on_x86_64
    assert compiled_names() - allowed == {"clone3"}


@pytest.mark.fast
def test_docker_profile_holds_exactly_the_compiled_rules() -> None:
    opt = seccomp.docker_security_opt()
    assert opt.startswith("seccomp=")
    profile = json.loads(opt.removeprefix("seccomp="))
    assert profile == seccomp.docker_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == errno.EPERM
    if platform.machine() == "x86_64":
        # Only the native ABI: no i386 or x32 calls.
        assert profile["architectures"] == ["SCMP_ARCH_X86_64"]
    names = {name for entry in profile["syscalls"] for name in entry["names"]}
    assert names == compiled_names()
    refusals = [e for e in profile["syscalls"] if e["action"] != "SCMP_ACT_ALLOW"]
    assert refusals == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    clone = [e for e in profile["syscalls"] if e["names"] == ["clone"]]
    assert clone == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 0x7E02_0000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    ]
    mknodat = [e["args"] for e in profile["syscalls"] if e["names"] == ["mknodat"]]
    assert {(a["index"], a["value"], a["valueTwo"]) for [a] in mknodat} == {
        (2, 0o160000, 0o000000),  # regular (0) and FIFO
        (2, 0o170000, 0o030000),
        (2, 0o160000, 0o040000),  # directory and 0o50000
        (2, 0o170000, 0o070000),
        (2, 0o100000, 0o100000),  # regular, symlink, socket, ...
    }
    assert len(seccomp.allowed_names()) == len(names) - 1  # all but clone3


# Runs in a fresh interpreter: loads the BPF the way bwrap does (no new
# privileges, then SECCOMP_MODE_FILTER) and makes raw calls. It runs as root,
# so every refusal below is the filter's, not a missing capability's.
CHILD = r"""
import ctypes, errno, fcntl, json, os, pty, sys, termios
numbers, bpf = json.loads(sys.argv[1]), sys.stdin.buffer.read()
os.chdir(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

master, slave = pty.openpty()
code = ctypes.create_string_buffer(bpf)
prog = Prog(len(bpf) // 8, ctypes.addressof(code))
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
buf = ctypes.create_string_buffer(4096)
results = {}
def call(label, name, *args):
    if numbers[name] is None:  # not on this architecture (mknod on arm64)
        return
    args = [ctypes.addressof(buf) if a == "buf" else a for a in args]
    kept = [ctypes.create_string_buffer(a) if isinstance(a, bytes) else a for a in args]
    args = [ctypes.addressof(a) if isinstance(a, ctypes.Array) else a for a in kept]
    r = libc.syscall(ctypes.c_long(numbers[name]), *[ctypes.c_ulong(a) for a in args])
    results[label] = "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]

high = 1 << 32
call("io_uring_setup", "io_uring_setup", 8, "buf")
call("io_uring_enter", "io_uring_enter", 0xFFFFFFFF, 0, 0, 0, 0, 0)
call("io_uring_register", "io_uring_register", 0xFFFFFFFF, 0, 0, 0)
call("personality ADDR_NO_RANDOMIZE", "personality", 0x0040000)
call("personality READ_IMPLIES_EXEC", "personality", 0x0400000)
call("personality high|ADDR_NO_RANDOMIZE", "personality", high | 0x0040000)
call("personality PER_LINUX", "personality", 0)
call("personality query", "personality", 0xFFFFFFFF)
call("ioctl TCGETS", "ioctl", slave, termios.TCGETS, "buf")
call("ioctl TIOCSTI", "ioctl", slave, termios.TIOCSTI, "buf")
call("ioctl high|TIOCSTI", "ioctl", slave, high | termios.TIOCSTI, "buf")
call("ioctl TIOCLINUX", "ioctl", slave, 0x541C, "buf")
call("socket AF_UNIX", "socket", 1, 1, 0)
call("socket AF_VSOCK", "socket", 40, 1, 0)
call("socket high|AF_VSOCK", "socket", high | 40, 1, 0)
# Arguments the kernel would reject (CLONE_FS with a new user namespace, no
# clone_args): a filter that let these through must not fork this process.
call("clone CLONE_NEWUSER", "clone", 0x10000000 | 0x200 | 17, 0, 0, 0, 0)
call("clone3", "clone3", 0, 0)
call("unshare", "unshare", 0x10000000)
call("keyctl", "keyctl", 0, 0)
call("mount", "mount", 0, 0, 0, 0, 0)
call("add_key", "add_key", 0, 0, 0, 0, 0)
AT_FDCWD, null, sda = -100 & 0xFFFFFFFF, os.makedev(1, 3), os.makedev(8, 0)
call("mknodat char", "mknodat", AT_FDCWD, b"null", 0o020600, null)
call("mknodat block", "mknodat", AT_FDCWD, b"sda", 0o060600, sda)
call("mknodat high|char", "mknodat", AT_FDCWD, b"null", 1 << 32 | 1 << 16 | 0o020600, null)
call("mknodat fifo", "mknodat", AT_FDCWD, b"fifo", 0o010600, 0)
call("mknodat regular", "mknodat", AT_FDCWD, b"file", 0o100600, 0)
call("mknodat type 0", "mknodat", AT_FDCWD, b"plain", 0o600, 0)
call("mknod char", "mknod", b"null2", 0o020600, null)
call("mknod fifo", "mknod", b"fifo2", 0o010600, 0)
pid = os.fork()
if pid == 0:
    os._exit(7)
results["fork"] = os.waitpid(pid, 0)[1] >> 8
print(json.dumps(results))
"""

NUMBERS = (
    "io_uring_setup", "io_uring_enter", "io_uring_register", "personality", "ioctl", "socket",
    "clone", "clone3", "unshare", "keyctl", "add_key", "mount", "mknodat", "mknod",
)  # fmt: skip


def test_compiled_filter_in_a_real_process(tmp_path: Path) -> None:
    numbers = {name: seccomp.syscall_number(name) for name in NUMBERS}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(numbers), str(tmp_path)],
        input=seccomp.compiled_filter(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    results = json.loads(done.stdout)
    if numbers["mknod"] is not None:
        assert results.pop("mknod char") == "EPERM"
        assert results.pop("mknod fifo") == "ok"
    assert results == {
        "io_uring_setup": "EPERM",
        "io_uring_enter": "EPERM",
        "io_uring_register": "EPERM",
        "personality ADDR_NO_RANDOMIZE": "EPERM",
        "personality READ_IMPLIES_EXEC": "EPERM",
        "personality high|ADDR_NO_RANDOMIZE": "EPERM",
        "personality PER_LINUX": "ok",
        "personality query": "ok",
        "ioctl TCGETS": "ok",
        "ioctl TIOCSTI": "EPERM",
        "ioctl high|TIOCSTI": "EPERM",
        "ioctl TIOCLINUX": "EPERM",
        "socket AF_UNIX": "ok",
        "socket AF_VSOCK": "EPERM",
        "socket high|AF_VSOCK": "EPERM",
        "clone CLONE_NEWUSER": "EPERM",
        "clone3": "ENOSYS",
        "unshare": "EPERM",
        "keyctl": "EPERM",
        "mount": "EPERM",
        "add_key": "EPERM",
        "mknodat char": "EPERM",
        "mknodat block": "EPERM",
        "mknodat high|char": "EPERM",
        "mknodat fifo": "ok",
        "mknodat regular": "ok",
        "mknodat type 0": "ok",
        "fork": 7,
    }
    # Root made what was allowed and nothing else.
    kinds = {p.name: stat.S_IFMT(p.lstat().st_mode) for p in tmp_path.iterdir()}
    assert {k: v for k, v in kinds.items() if not k.endswith("2")} == {
        "fifo": stat.S_IFIFO,
        "file": stat.S_IFREG,
        "plain": stat.S_IFREG,
    }


def test_a_profile_compiles_back_to_the_policys_program() -> None:
    # Room pods' launcher installs the spec's profile compiled to BPF: the
    # rooms' profile must give exactly the program bwrap and runsc get.
    assert seccomp.compile_profile(seccomp.profile_json()) == seccomp.compiled_filter()
    smaller = json.dumps(
        {**seccomp.docker_profile(), "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    )
    assert seccomp.compile_profile(smaller) != seccomp.compiled_filter()


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"defaultAction": "SCMP_ACT_ALLOW"}, "default action"),
        ({"architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]}, "architectures"),
        ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_LOG"}]}, "action"),
        (
            {"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                           "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_GT"}]}]},
            "comparison",
        ),
    ],
)  # fmt: skip
def test_a_profile_that_bpf_would_not_mean_alike_is_refused(
    change: dict[str, object], refused: str
) -> None:
    with pytest.raises(ValueError, match=refused):
        seccomp.compile_profile(json.dumps({**seccomp.docker_profile(), **change}))

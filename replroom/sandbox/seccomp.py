"""The one seccomp policy of every room, rendered for each backend.

The policy is an allowlist derived from Docker's default profile (moby's
``profiles/seccomp/default.json``): the system calls it allows to a container
without capabilities, minus what a room must not have:

- io_uring (``io_uring_setup``/``_enter``/``_register``): a large, young
  kernel interface that the syscall filter cannot see into;
- ``personality`` only with the values Docker allows (plain Linux, 32-bit
  and 2.6-uname variants, and the query), so no ``ADDR_NO_RANDOMIZE`` and no
  ``READ_IMPLIES_EXEC``;
- ``clone`` only without ``CLONE_NEW*`` flags, ``clone3`` answers ENOSYS (its
  flags are in memory, out of the filter's sight, and libc then falls back to
  ``clone``); ``unshare``, ``setns``, mounts, keyrings, BPF, perf,
  userfaultfd, kernel modules, clocks and reboot are not on the list at all;
- ``ioctl`` ``TIOCSTI``/``TIOCLINUX``, which push keystrokes into a terminal;
- ``mknod``/``mknodat`` of character and block devices (FIFOs, sockets and
  regular files stay allowed): without ``CAP_MKNOD`` Linux refuses them
  anyway, but gVisor makes them for anyone, leading to the Sentry's devices.

Everything not allowed fails with EPERM, an ordinary permission error.
Conditions are all "argument masked with M equals V": the kernel reads these
arguments as 32-bit ints, so masking to 32 bits compares exactly what it will
use, and a refusal of some values is an allowance of all the others, spelt as
bit prefixes (libseccomp can neither add a rule with the default action nor
compare one argument twice in a rule).

Renderings: ``docker_profile()`` is the Docker/OCI JSON profile (as text,
``profile_json()``, carried by ``spec.RoomSpec``) that the docker backend
hands to the Engine and that room pods read from a ``Localhost`` profile
file; ``compiled_filter()`` is the same rules compiled by libseccomp to BPF
for ``bwrap --seccomp`` and for the docker backend's launcher on runsc
(which applies the profile to a container's first process only), and
``compile_profile()`` compiles a profile's JSON back to that same BPF, for
the launcher every room pod's exec starts under (sandbox/launch.py). Both
contain exactly the names this host's libseccomp resolves on the native
architecture; calls through a foreign ABI (i386, x32) are not allowed.
"""

from __future__ import annotations

import errno
import json
import platform
import socket
import stat
import tempfile
import termios
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# The unconditional allowlist of Docker's default profile (architecture
# specific names for x86_64 and arm64 included; the others simply do not
# resolve), with ptrace and process_vm_readv/writev, which Docker allows on
# every kernel >= 4.8, and without io_uring.
ALLOWED: tuple[str, ...] = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset",
    "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr",
    "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv",
    "futimesat", "get_robust_list", "get_thread_area", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "getrusage", "getsid", "getsockname", "getsockopt", "gettid",
    "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit", "ioprio_get",
    "ioprio_set", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat",
    "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget",
    "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap", "name_to_handle_at",
    "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2", "pause",
    "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "process_vm_readv", "process_vm_writev", "pselect6",
    "pselect6_time64", "ptrace", "pwrite64", "pwritev", "pwritev2", "read", "readahead",
    "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64",
    "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat", "renameat2",
    "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid",
    "setsockopt", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget",
    "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn",
    "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx",
    "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill",
    "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat",
    "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4",
    "waitid", "waitpid", "write", "writev",
    # x86 only
    "arch_prctl", "modify_ldt",
    # arm64 only
    "arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls",
    "sync_file_range2",
    # Newer than the profile's list, ordinary calls: a libc that uses them
    # falls back only on ENOSYS, so EPERM would break lchmod and threads.
    "fchmodat2", "map_shadow_stack",
)  # fmt: skip

# Arguments the kernel declares as (unsigned) int: compare their low 32 bits
# only, since the upper half of the register is ignored by the kernel.
INT = 0xFFFF_FFFF

# personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26,
# PER_LINUX32|UNAME26, and 0xffffffff, which only queries.
PERSONALITIES = (0x0, 0x8, 0x2_0000, 0x2_0008, 0xFFFF_FFFF)

# CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET. CLONE_NEWTIME
# (0x80) is not a clone() flag: that bit belongs to the exit signal there.
CLONE_NAMESPACES = 0x7E02_0000

# mknod's mode: S_IFMT, the four file type bits, is 0o170000. The types
# refused, as values of those four bits: S_IFCHR and S_IFBLK.
FILE_TYPE_SHIFT, FILE_TYPE_BITS = 12, 4
REFUSED_FILE_TYPES = (stat.S_IFCHR >> FILE_TYPE_SHIFT, stat.S_IFBLK >> FILE_TYPE_SHIFT)

REFUSED_IOCTLS = (termios.TIOCSTI, getattr(termios, "TIOCLINUX", 0x541C))
REFUSED_SOCKET_FAMILIES = (getattr(socket, "AF_VSOCK", 40),)

# The errno of everything the policy does not allow.
REFUSAL = errno.EPERM

_ARCHITECTURES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


@dataclass(frozen=True)
class Masked:
    """Argument ``index``, masked with ``mask``, equals ``value``."""

    index: int
    mask: int
    value: int


@dataclass(frozen=True)
class Rule:
    """One system call, allowed (``refuse_with`` None) or refused with that errno, when all of
    ``when`` hold. Rules for the same call are alternatives."""

    name: str
    when: tuple[Masked, ...] = ()
    refuse_with: int | None = None


def all_but(index: int, refused: tuple[int, ...], bits: int = 32) -> Iterator[Masked]:
    """Conditions that, as alternatives, hold for every ``bits``-bit value of
    argument ``index`` except the ``refused`` ones: one per bit prefix that no
    refused value starts with, so about ``bits`` per refused value."""

    def walk(prefix: int, length: int, inside: list[int]) -> Iterator[Masked]:
        shift = bits - length
        if not inside:
            yield Masked(index, ((1 << length) - 1) << shift, prefix << shift)
        elif length < bits:
            for child in (prefix << 1, prefix << 1 | 1):
                yield from walk(child, length + 1, [v for v in inside if v >> shift - 1 == child])

    yield from walk(0, 0, sorted(set(refused)))


def all_file_types_but(index: int, refused: tuple[int, ...]) -> Iterator[Masked]:
    """Conditions that, as alternatives, hold for every mode of argument
    ``index`` whose file type (``mode & S_IFMT``) is not one of ``refused``
    (given as values of the four type bits). Only those bits are compared:
    the kernel reads a 16-bit mode, and the other bits are permissions."""
    for m in all_but(index, refused, bits=FILE_TYPE_BITS):
        yield Masked(index, m.mask << FILE_TYPE_SHIFT, m.value << FILE_TYPE_SHIFT)


def rules() -> tuple[Rule, ...]:
    """The whole policy, for any architecture; names may not exist on this one."""
    conditional = [
        *(Rule("personality", (Masked(0, INT, value),)) for value in PERSONALITIES),
        Rule("clone", (Masked(0, CLONE_NAMESPACES, 0),)),
        Rule("clone3", refuse_with=errno.ENOSYS),
        *(Rule("ioctl", (m,)) for m in all_but(1, REFUSED_IOCTLS)),
        *(Rule("socket", (m,)) for m in all_but(0, REFUSED_SOCKET_FAMILIES)),
        *(Rule("mknod", (m,)) for m in all_file_types_but(1, REFUSED_FILE_TYPES)),
        *(Rule("mknodat", (m,)) for m in all_file_types_but(2, REFUSED_FILE_TYPES)),
    ]
    return (*(Rule(name) for name in ALLOWED), *conditional)


def syscall_number(name: str) -> int | None:
    """The call's number on this machine, or None if the architecture (or
    this libseccomp, which may be older than the kernel) does not know it."""
    import pyseccomp as seccomp  # noqa: PLC0415 - loads libseccomp; see compiled_filter

    try:
        number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
    except (ValueError, OSError):
        return None
    # Negative numbers are libseccomp's pseudo-calls for other architectures.
    return number if number >= 0 else None


@lru_cache(maxsize=1)
def native_rules() -> tuple[Rule, ...]:
    """The rules whose call exists here: what both renderings contain."""
    return tuple(rule for rule in rules() if syscall_number(rule.name) is not None)


def allowed_names() -> list[str]:
    """The calls allowed here, at least for some arguments."""
    return sorted({rule.name for rule in native_rules() if rule.refuse_with is None})


def docker_profile() -> dict[str, Any]:
    """The policy as a Docker seccomp profile (the Engine's ``seccomp=<json>``)."""
    unconditional = [r.name for r in native_rules() if not r.when and r.refuse_with is None]
    entries: list[dict[str, Any]] = [{"names": unconditional, "action": "SCMP_ACT_ALLOW"}]
    for rule in native_rules():
        if not rule.when and rule.refuse_with is None:
            continue
        entry: dict[str, Any] = {"names": [rule.name], "action": "SCMP_ACT_ALLOW"}
        if rule.refuse_with is not None:
            entry.update(action="SCMP_ACT_ERRNO", errnoRet=rule.refuse_with)
        if rule.when:
            entry["args"] = [
                {"index": m.index, "value": m.mask, "valueTwo": m.value, "op": "SCMP_CMP_MASKED_EQ"}
                for m in rule.when
            ]
        entries.append(entry)
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": REFUSAL,
        "architectures": [_ARCHITECTURES[platform.machine()]],
        "syscalls": entries,
    }


@lru_cache(maxsize=1)
def profile_json() -> str:
    """:func:`docker_profile` as JSON text: what the Engine gets inline, and the
    content of the file a kubelet reads for a ``Localhost`` seccomp profile."""
    return json.dumps(docker_profile(), separators=(",", ":"))


def docker_security_opt() -> str:
    """The ``HostConfig.SecurityOpt`` entry that installs the profile."""
    return "seccomp=" + profile_json()


def _libseccomp_filter(policy: tuple[Rule, ...] | None = None, refusal: int = REFUSAL) -> Any:
    """libseccomp's filter of ``policy`` (the rooms' rules that exist here by
    default), refusing everything else with ``refusal``."""
    # Imported here: it loads libseccomp, whose absence `replroom doctor` reports.
    import pyseccomp as seccomp  # noqa: PLC0415

    flt = seccomp.SyscallFilter(seccomp.ERRNO(refusal))
    # A call through another ABI would be matched against the wrong numbers.
    flt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    # A binary tree of call numbers instead of a linear scan of ~350 of them.
    flt.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    for rule in native_rules() if policy is None else policy:
        action = seccomp.ALLOW if rule.refuse_with is None else seccomp.ERRNO(rule.refuse_with)
        args = [seccomp.Arg(m.index, seccomp.MASKED_EQ, m.mask, m.value) for m in rule.when]
        flt.add_rule(action, rule.name, *args)
    return flt


def _export_bpf(flt: Any) -> bytes:
    with tempfile.TemporaryFile() as bpf:
        flt.export_bpf(bpf)
        bpf.seek(0)
        return bpf.read()


@lru_cache(maxsize=1)
def compiled_filter() -> bytes:
    """The policy as BPF bytes, ready for ``bwrap --seccomp`` or ``PR_SET_SECCOMP``."""
    return _export_bpf(_libseccomp_filter())


def profile_rules(profile_text: str) -> tuple[int, tuple[Rule, ...]]:
    """A Docker seccomp profile in the form :func:`docker_profile` writes, as
    (the errno of everything else, its rules). Anything else in it — another
    default action or architecture, other actions or comparisons — is a
    ValueError: the profile could not mean the same as BPF."""
    profile = json.loads(profile_text)
    if profile.get("defaultAction") != "SCMP_ACT_ERRNO":
        raise ValueError(f"default action {profile.get('defaultAction')!r}: only errors compile")
    if profile.get("architectures") != [_ARCHITECTURES[platform.machine()]]:
        raise ValueError(f"architectures {profile.get('architectures')!r}: not only this one")
    found: list[Rule] = []
    for entry in profile["syscalls"]:
        action = entry.get("action")
        if action not in ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"):
            raise ValueError(f"action {action!r}")
        refuse_with = int(entry.get("errnoRet", REFUSAL)) if action == "SCMP_ACT_ERRNO" else None
        when = []
        for arg in entry.get("args") or []:
            if arg.get("op") != "SCMP_CMP_MASKED_EQ":
                raise ValueError(f"comparison {arg.get('op')!r}")
            when.append(Masked(int(arg["index"]), int(arg["value"]), int(arg.get("valueTwo", 0))))
        found += (Rule(name, tuple(when), refuse_with) for name in entry["names"])
    return int(profile.get("defaultErrnoRet", REFUSAL)), tuple(found)


@lru_cache(maxsize=4)
def compile_profile(profile_text: str) -> bytes:
    """A Docker seccomp profile (as :func:`profile_json` writes one) compiled to
    BPF: what a launcher installs where the runtime does not apply the profile
    to every process. ``compile_profile(profile_json()) == compiled_filter()``."""
    refusal, policy = profile_rules(profile_text)
    return _export_bpf(_libseccomp_filter(policy, refusal))


def filter_text() -> str:
    """libseccomp's readable form of the compiled filter (for tests and debugging)."""
    with tempfile.TemporaryFile() as pfc:
        _libseccomp_filter().export_pfc(pfc)
        pfc.seek(0)
        return pfc.read().decode()

"""The seccomp filter of bwrap sandboxes, modelled on Docker's default profile.

Docker allows the system calls a normal program needs and refuses those that
need a capability the container does not have or that widen the kernel's
attack surface. This filter refuses the same set (with EPERM, as Docker does,
so programs see an ordinary permission error) and additionally refuses
``TIOCSTI``/``TIOCLINUX`` so that nothing in a room can push keystrokes into a
terminal. System calls made through another ABI (i386, x32) kill the process:
libseccomp's default for foreign architectures.

The filter is compiled once per server with libseccomp and handed to bwrap
as BPF bytes through ``--seccomp FD``.
"""

from __future__ import annotations

import errno
import tempfile
import termios
from functools import lru_cache

# Each group mirrors a block of Docker's default profile that a container
# without capabilities does not get.
DENIED_SYSCALLS: tuple[str, ...] = (
    # mounts and filesystem views (CAP_SYS_ADMIN)
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr",
    # namespaces
    "unshare", "setns",
    # kernel modules, kexec, reboot, swap, quotas, accounting (CAP_SYS_MODULE/BOOT/ADMIN)
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "quotactl", "acct",
    # clocks (CAP_SYS_TIME)
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    # kernel keyring, BPF, perf, userfaultfd, io_uring: attack surface
    "add_key", "request_key", "keyctl", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # peeking at other processes' memory and handles (CAP_SYS_PTRACE/DAC_READ_SEARCH)
    "process_vm_readv", "process_vm_writev", "kcmp", "open_by_handle_at",
    "name_to_handle_at",
    # raw hardware and obsolete interfaces
    "iopl", "ioperm", "lookup_dcookie", "syslog", "uselib", "ustat", "sysfs",
    "vhangup", "nfsservctl", "personality_unused", "fanotify_init",
    # NUMA placement (CAP_SYS_NICE)
    "mbind", "set_mempolicy", "move_pages", "migrate_pages",
)  # fmt: skip

# clone() with any CLONE_NEW* flag: a second line of defence behind bwrap's
# --disable-userns, as in Docker's profile.
CLONE_NAMESPACE_FLAGS = (
    0x0002_0000,  # CLONE_NEWNS
    0x0200_0000,  # CLONE_NEWCGROUP
    0x0400_0000,  # CLONE_NEWUTS
    0x0800_0000,  # CLONE_NEWIPC
    0x1000_0000,  # CLONE_NEWUSER
    0x2000_0000,  # CLONE_NEWPID
    0x4000_0000,  # CLONE_NEWNET
    0x0000_0080,  # CLONE_NEWTIME
)
DENIED_IOCTLS = (termios.TIOCSTI, getattr(termios, "TIOCLINUX", 0x541C))


@lru_cache(maxsize=1)
def compiled_filter() -> bytes:
    """The filter as BPF bytes, ready for ``bwrap --seccomp``."""
    # Imported here: it loads libseccomp, whose absence `replroom doctor` reports.
    import pyseccomp as seccomp  # noqa: PLC0415

    deny = seccomp.ERRNO(errno.EPERM)
    flt = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(deny, name)
        except (ValueError, OSError):
            continue  # not a system call on this architecture
    # Rules for one system call are alternatives; each matches one flag.
    for flag in CLONE_NAMESPACE_FLAGS:
        flt.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    for request in DENIED_IOCTLS:
        flt.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFF_FFFF, request))
    # clone3 passes its flags in memory, out of seccomp's sight: make libc fall
    # back to clone(), which the rules above can inspect.
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as bpf:
        flt.export_bpf(bpf)
        bpf.seek(0)
        return bpf.read()

"""The filtering launcher: the rooms' seccomp policy installed in a process before its command.

Some runtimes apply a container's seccomp profile to its first process only
(gVisor's runsc: every ``docker exec`` and every Kubernetes exec of a REPL
would run without it). There the command starts under :func:`filtered`: a
small Python program that installs the policy, compiled to BPF by the server
(``seccomp.compiled_filter`` or ``seccomp.compile_profile``), with
``prctl(PR_SET_SECCOMP)`` and only then ``exec``s the command. It fails
closed: if the filter cannot be installed, or a path it must wait for stays,
the command does not run.

The docker backend uses it on runsc (``docker.launch``); the kubernetes
backend on every exec (``kubernetes.config.exec_command``), whatever the
runtime class. Filters stack: under a runtime that applies a profile too,
a call must pass both.
"""

from __future__ import annotations

import binascii
import zlib
from collections.abc import Sequence

PYTHON = "/usr/bin/python3"
# The program's argument: hex, or this prefix and the deflated program in
# base64 (5 KB of BPF is 10 KB of hex, 2.8 KB so: a Kubernetes exec carries
# its command in the URL, which proxies in front of an API server may cap).
DEFLATED = "zlib:"

# argv: the BPF program (hex or DEFLATED), "pid" to print the pid first (or
# ""), columns and rows to size the terminal (or two ""), the command. The
# filter goes on before anything else, then the launcher waits until the
# paths in WAIT_GONE are gone (the docker backend's runsc PID 1 removes
# gVisor's devices): if either fails, the command does not run and no pid
# is reported. Room processes cannot reach the launcher before the filter:
# gVisor's ptrace (Yama scope 1) and /proc/<pid>/mem refuse non-descendants.
# Python ignores SIGPIPE and SIGXFSZ, which an exec would pass on.
_PROGRAM = r"""
import os, sys
bpf, report, cols, rows, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
try:
    import ctypes
    class Program(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    if bpf.startswith(DEFLATED):
        import binascii, zlib
        code = zlib.decompress(binascii.a2b_base64(bpf[len(DEFLATED):]))
    else:
        code = bytes.fromhex(bpf)
    word = ctypes.c_ulong
    program, libc = Program(len(code) // 8, code), ctypes.CDLL(None, use_errno=True)
    # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER.
    if libc.prctl(38, word(1), word(0), word(0), word(0)) or libc.prctl(
        22, word(2), ctypes.byref(program), word(0), word(0)
    ):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
except Exception as error:
    message = f"replroom: cannot install the seccomp filter ({error}); {argv[0]} not run\n"
    os.write(2, message.encode())
    os._exit(126)
deadline = None
while any(os.path.lexists(path) for path in WAIT_GONE):
    import time
    deadline = deadline or time.monotonic() + 10
    if time.monotonic() > deadline:
        os.write(2, f"replroom: gVisor's devices are still there; {argv[0]} not run\n".encode())
        os._exit(126)
    time.sleep(0.01)
if cols:
    import termios
    try:
        termios.tcsetwinsize(0, (int(rows), int(cols)))
    except termios.error:  # not a terminal: ignored, as stty would
        pass
if report:
    os.write(1, b"%d\n" % os.getpid())
import signal
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
try:
    os.execvp(argv[0], argv)
except OSError as error:
    os.write(2, f"{argv[0]}: {error.strerror}\n".encode())
    os._exit(127 if isinstance(error, FileNotFoundError) else 126)
""".replace("DEFLATED", repr(DEFLATED))


def program(wait_gone: tuple[str, ...] = ()) -> str:
    """The launcher's Python source, waiting for ``wait_gone`` to be gone before the command."""
    return _PROGRAM.replace("WAIT_GONE", repr(tuple(wait_gone)))


def deflated(bpf: bytes) -> str:
    """``bpf`` as the launcher's short form of its program argument."""
    return DEFLATED + binascii.b2a_base64(zlib.compress(bpf, 9), newline=False).decode()


def filtered(
    bpf: str,
    argv: Sequence[str],
    *,
    report_pid: bool = False,
    size: tuple[str, str] = ("", ""),
    wait_gone: tuple[str, ...] = (),
) -> list[str]:
    """``argv`` under the launcher, which installs ``bpf`` (hex or :func:`deflated`) first.

    ``report_pid`` prints the command's pid on a line of its own before it
    starts; ``size`` (columns and rows, or "") sizes its terminal.
    """
    report = "pid" if report_pid else ""
    return [PYTHON, "-I", "-S", "-c", program(wait_gone), bpf, report, *size, *argv]

"""How a command starts in a room's container: the launchers every exec begins with.

Docker has no API to signal an exec, so every command starts under a
one-line ``sh`` launcher (:data:`LAUNCH`) that prints its own pid and then
``exec``s the command: the pid is the command's, and a signal is a ``kill``
run in the container by a second exec. That works the same with runc and
runsc and with remote engines, which a host pid (exec inspect) would not.

runsc applies the container's seccomp profile to its first process only, so
there every exec (commands and the backend's own helpers) starts under a
Python launcher instead (:data:`LAUNCH_FILTERED`): it installs the rooms'
policy, compiled to BPF by the server, and only then does what the ``sh``
launcher does.
"""

from __future__ import annotations

from collections.abc import Sequence

from replroom.sandbox.docker.config import GVISOR_DEVICES, Runtime
from replroom.sandbox.seccomp import compiled_filter

# The launcher: size the pty before the command can ask for it (exec has no
# initial size on this API version), report the pid, become the command.
LAUNCH = (
    'if [ -n "$1" ]; then stty cols "$1" rows "$2" 2>/dev/null; fi; shift 2; echo $$; exec "$@"'
)

# The launcher of every exec on runsc, where the container's seccomp profile
# reaches the first process only. argv: the BPF program in hex (compiled by
# the server: nothing in the room can change it), "pid" to report the pid as
# LAUNCH does (or ""), columns and rows (or two ""), the command. The filter
# goes on before anything else, then the launcher waits until PID 1 removed
# GVISOR_DEVICES: if either fails, the command does not run and no pid is
# reported. Room processes cannot reach the launcher before the filter:
# gVisor's ptrace (Yama scope 1) and /proc/<pid>/mem refuse non-descendants.
# Python ignores SIGPIPE and SIGXFSZ, which an exec would pass on.
LAUNCH_FILTERED = r"""
import os, sys
bpf, report, cols, rows, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
try:
    import ctypes
    class Program(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    code, word = bytes.fromhex(bpf), ctypes.c_ulong
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
while any(os.path.lexists(path) for path in GVISOR_DEVICES):
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
    except termios.error:  # not a terminal: ignored, as by stty in LAUNCH
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
""".replace("GVISOR_DEVICES", repr(GVISOR_DEVICES))
PYTHON = "/usr/bin/python3"


def launcher(
    runtime: Runtime, argv: Sequence[str], *, report_pid: bool, size: tuple[str, str] = ("", "")
) -> list[str]:
    """The exec's command line for ``argv``: on runsc under the rooms' seccomp policy.

    ``report_pid`` and ``size`` (columns and rows, or "" not to resize) as for :data:`LAUNCH`.
    """
    if runtime == "runsc":
        bpf, report = compiled_filter().hex(), "pid" if report_pid else ""
        return [PYTHON, "-I", "-S", "-c", LAUNCH_FILTERED, bpf, report, *size, *argv]
    # runc puts every exec under the container's profile itself.
    if not report_pid:
        return list(argv)
    return ["/bin/sh", "-c", LAUNCH, "replroom", *size, *argv]

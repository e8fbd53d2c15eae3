"""How a command starts in a room's container: the launchers every exec begins with.

Docker has no API to signal an exec, so every command starts under a
one-line ``sh`` launcher (:data:`LAUNCH`) that prints its own pid and then
``exec``s the command: the pid is the command's, and a signal is a ``kill``
run in the container by a second exec. That works the same with runc and
runsc and with remote engines, which a host pid (exec inspect) would not.

runsc applies the container's seccomp profile to its first process only, so
there every exec (commands and the backend's own helpers) starts under the
filtering launcher instead (``sandbox/launch.py``, shared with the
kubernetes backend): it installs the rooms' policy, compiled to BPF by the
server, waits until PID 1 removed gVisor's devices (``GVISOR_DEVICES``), and
only then does what the ``sh`` launcher does.
"""

from __future__ import annotations

from collections.abc import Sequence

from replroom.sandbox.docker.config import Runtime
from replroom.sandbox.launch import PYTHON, filtered, program
from replroom.sandbox.seccomp import compiled_filter
from replroom.sandbox.spec import GVISOR_DEVICES

__all__ = ["LAUNCH", "LAUNCH_FILTERED", "PYTHON", "launcher"]

# The launcher: size the pty before the command can ask for it (exec has no
# initial size on this API version), report the pid, become the command.
LAUNCH = (
    'if [ -n "$1" ]; then stty cols "$1" rows "$2" 2>/dev/null; fi; shift 2; echo $$; exec "$@"'
)

# The launcher of every exec on runsc, where the container's seccomp profile
# reaches the first process only; it waits for PID 1 to have removed
# GVISOR_DEVICES (docker.config). argv: the BPF program in hex, "pid" to
# report the pid as LAUNCH does (or ""), columns and rows (or two ""), the
# command.
LAUNCH_FILTERED = program(GVISOR_DEVICES)


def launcher(
    runtime: Runtime, argv: Sequence[str], *, report_pid: bool, size: tuple[str, str] = ("", "")
) -> list[str]:
    """The exec's command line for ``argv``: on runsc under the rooms' seccomp policy.

    ``report_pid`` and ``size`` (columns and rows, or "" not to resize) as for :data:`LAUNCH`.
    """
    if runtime == "runsc":
        return filtered(
            compiled_filter().hex(), argv, report_pid=report_pid, size=size,
            wait_gone=GVISOR_DEVICES,
        )  # fmt: skip
    # runc puts every exec under the container's profile itself.
    if not report_pid:
        return list(argv)
    return ["/bin/sh", "-c", LAUNCH, "replroom", *size, *argv]

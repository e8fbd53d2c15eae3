"""The docker backend: one hardened container per room on a Docker Engine.

Every room is one container of the room image, talking to the Engine through
its API (aiodocker; the ``docker`` CLI is never used):

- no network, a read-only root, all capabilities dropped, no-new-privileges,
  the rooms' seccomp policy (``sandbox/seccomp.py``) as the container's
  profile, memory = memory+swap (no swap), CPU and process limits;
- tmpfs at /home/room and /tmp (and a small /dev/shm), splitting ``Limits.disk``;
- PID 1 is Docker's init (tini) running ``sleep infinity`` as uid 65534, not
  as the room user: the room's processes can then neither kill it (which would
  end the container and lose the room's files) nor be left as zombies (on
  runsc, as root without capabilities: it first removes gVisor's devices);
- runtime ``runc``, or ``runsc`` (gVisor) for a second kernel between the room
  and the host.

A process is a ``docker exec`` (attached, on a pty or on pipes) started
under a launcher that reports its pid. See docs/docker.md. The modules:

- ``config``: the container rendered from the room's ``spec.RoomSpec`` (its create
  request, an exec's user and environment), its name;
- ``engine``: reaching the Engine, and its errors in words people can act on;
- ``launch``: the launchers every exec starts under (pid, seccomp on runsc);
- ``events``: the Engine's event stream, as what it says about each container;
- ``process``: one exec, its life as a state, and how its end is told;
- ``backend``: :class:`DockerBackend` and :class:`DockerSandbox`;
- ``diagnose``: ``replroom doctor``'s check of a runtime.
"""

from replroom.sandbox.docker.backend import DockerBackend, DockerSandbox
from replroom.sandbox.docker.config import Runtime, container_config
from replroom.sandbox.docker.diagnose import diagnose
from replroom.sandbox.docker.engine import connect, disconnect, resolve_docker_host
from replroom.sandbox.docker.process import DockerProcess, ExecState
from replroom.sandbox.spec import LABEL_INSTANCE, LABEL_MANAGED, LABEL_ROOM, NAME_PREFIX

__all__ = [
    "LABEL_INSTANCE",
    "LABEL_MANAGED",
    "LABEL_ROOM",
    "NAME_PREFIX",
    "DockerBackend",
    "DockerProcess",
    "DockerSandbox",
    "ExecState",
    "Runtime",
    "connect",
    "container_config",
    "diagnose",
    "disconnect",
    "resolve_docker_host",
]

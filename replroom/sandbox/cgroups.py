"""Control groups for bwrap sandboxes: limits, accounting and kill-everything.

Works on the three layouts hosts have: cgroup v1 (one hierarchy per
controller), hybrid (v1 controllers plus an empty v2 tree, used here only for
``cgroup.kill``) and pure v2. Every room gets ``<instance>/<name>`` in each
hierarchy it needs, where the instance (``replroom`` unless configured) keeps
servers that share a host out of each other's way. All file operations are
tiny sysfs writes, done inline.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from replroom.config import Limits
from replroom.sandbox.host import mounts

CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
# CPU weights: the kernel's defaults and its smallest values.
V1_DEFAULT_SHARES, V1_BACKGROUND_SHARES = 1024, 2
V2_DEFAULT_WEIGHT, V2_BACKGROUND_WEIGHT = 100, 1


class CgroupError(Exception):
    pass


def _mounts() -> tuple[dict[str, Path], Path | None]:
    """Find the v1 controller mount points and the v2 mount point."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for mount in mounts():
        if mount.fstype == "cgroup2":
            v2 = mount.point
        elif mount.fstype == "cgroup":
            for option in mount.options:
                if option in V1_CONTROLLERS:
                    v1[option] = mount.point
    return v1, v2


@dataclass
class Hierarchy:
    """Where this host keeps each controller."""

    v1: dict[str, Path] = field(default_factory=dict)
    v2: Path | None = None

    @classmethod
    def detect(cls) -> Hierarchy:
        v1, v2 = _mounts()
        return cls(v1=v1, v2=v2)

    @property
    def v2_controllers(self) -> set[str]:
        if self.v2 is None:
            return set()
        try:
            return set((self.v2 / "cgroup.controllers").read_text().split())
        except OSError:
            return set()

    def problems(self) -> list[str]:
        """What keeps limits from working here, in words an operator can act on."""
        missing = []
        for controller in ("memory", "cpu", "pids"):
            if controller not in self.v1 and controller not in self.v2_controllers:
                missing.append(controller)
        if missing:
            return [f"cgroup controllers not available: {', '.join(missing)}"]
        writable = [p for p in (*self.v1.values(), self.v2) if p and os.access(p, os.W_OK)]
        if not writable:
            return ["cgroup filesystem is not writable (run the server as root)"]
        return []

    def controller_dir(self, controller: str) -> Path | None:
        if controller in self.v1:
            return self.v1[controller]
        if controller in self.v2_controllers:
            return self.v2
        return None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Cgroup:
    """One room's cgroup, in every hierarchy that has a controller we use."""

    def __init__(self, hierarchy: Hierarchy, parent: str, name: str) -> None:
        self.hierarchy = hierarchy
        self.parent = parent
        self.name = name
        self.v1_dirs = {c: root / parent / name for c, root in hierarchy.v1.items()}
        self.v2_dir = hierarchy.v2 / parent / name if hierarchy.v2 else None

    # -- life cycle ---------------------------------------------------------

    def create(self, limits: Limits, *, background: bool = False) -> None:
        for directory in {*self.v1_dirs.values(), *filter(None, [self.v2_dir])}:
            directory.mkdir(parents=True, exist_ok=True)
        if self.v2_dir:
            self._enable_v2_controllers()
        self._set_memory(limits.memory)
        self._set_cpu(limits.cpus)
        self._set_pids(limits.pids)
        if background:
            self.set_background(True)

    def set_background(self, background: bool) -> None:
        """Give the cgroup the least CPU weight (or the usual one again).

        The quota still caps it; the weight decides who waits when rooms
        compete for the CPU, so a sandbox made ahead of time waits.
        """
        if "cpu" in self.v1_dirs:
            shares = V1_BACKGROUND_SHARES if background else V1_DEFAULT_SHARES
            _write(self.v1_dirs["cpu"] / "cpu.shares", str(shares))
        elif self.v2_dir:
            weight = V2_BACKGROUND_WEIGHT if background else V2_DEFAULT_WEIGHT
            _write(self.v2_dir / "cpu.weight", str(weight))

    def _enable_v2_controllers(self) -> None:
        assert self.hierarchy.v2 is not None
        wanted = {"memory", "cpu", "pids"} & self.hierarchy.v2_controllers
        for parent in (self.hierarchy.v2, self.hierarchy.v2 / self.parent):
            control = parent / "cgroup.subtree_control"
            enabled = set(control.read_text().split())
            for controller in wanted - enabled:
                _write(control, f"+{controller}")

    def _set_memory(self, limit: int) -> None:
        if "memory" in self.v1_dirs:
            directory = self.v1_dirs["memory"]
            _write(directory / "memory.limit_in_bytes", str(limit))
            swap = directory / "memory.memsw.limit_in_bytes"
            if swap.exists():  # only with swap accounting; memory+swap = memory means no swap
                _write(swap, str(limit))
        elif self.v2_dir:
            _write(self.v2_dir / "memory.max", str(limit))
            _write(self.v2_dir / "memory.swap.max", "0")

    def _set_cpu(self, cpus: float) -> None:
        quota = max(1000, int(cpus * CPU_PERIOD_US))
        if "cpu" in self.v1_dirs:
            directory = self.v1_dirs["cpu"]
            _write(directory / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(directory / "cpu.cfs_quota_us", str(quota))
        elif self.v2_dir:
            _write(self.v2_dir / "cpu.max", f"{quota} {CPU_PERIOD_US}")

    def _set_pids(self, pids: int) -> None:
        if "pids" in self.v1_dirs:
            _write(self.v1_dirs["pids"] / "pids.max", str(pids))
        elif self.v2_dir:
            _write(self.v2_dir / "pids.max", str(pids))

    @property
    def procs_files(self) -> list[Path]:
        """Files a process writes ``0`` into to join this cgroup everywhere."""
        dirs = {*self.v1_dirs.values(), *filter(None, [self.v2_dir])}
        return sorted(d / "cgroup.procs" for d in dirs)

    def pids(self) -> list[int]:
        directory = self.v1_dirs.get("pids") or self.v1_dirs.get("freezer") or self.v2_dir
        if directory is None:
            return []
        try:
            return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process, fork bombs included, and wait until none is left."""
        if self.v2_dir and (self.v2_dir / "cgroup.kill").exists():
            _write(self.v2_dir / "cgroup.kill", "1")
        else:
            self._freeze_and_kill()
        deadline = time.monotonic() + timeout
        # Killed tasks leave the cgroup asynchronously, within microseconds.
        while self.pids() and time.monotonic() < deadline:
            self._freeze_and_kill()
            time.sleep(0.001)
        if self.pids():
            raise CgroupError(f"processes of {self.name} survived SIGKILL: {self.pids()}")

    def _freeze_and_kill(self) -> None:
        # Freezing first stops a fork bomb from outrunning the kill loop.
        freezer = self.v1_dirs.get("freezer")
        if freezer:
            _write(freezer / "freezer.state", "FROZEN")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if freezer:
            _write(freezer / "freezer.state", "THAWED")

    def remove(self, timeout: float = 5.0) -> None:
        """Remove the cgroup once it is empty (call kill() first).

        Killed processes leave it when they are reaped, which their parent
        (bwrap, or this server) does a moment later: until then rmdir says
        EBUSY, and we try again.
        """
        deadline = time.monotonic() + timeout
        for directory in {*self.v1_dirs.values(), *filter(None, [self.v2_dir])}:
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as error:
                    if error.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise CgroupError(f"cannot remove {directory}: {error}") from None
                    time.sleep(0.001)

    def exists(self) -> bool:
        return any(d.exists() for d in (*self.v1_dirs.values(), self.v2_dir) if d)

    # -- accounting ---------------------------------------------------------

    def oom_kills(self) -> int:
        """How many processes the kernel has killed here for memory."""
        if "memory" in self.v1_dirs:
            source = self.v1_dirs["memory"] / "memory.oom_control"
        elif self.v2_dir:
            source = self.v2_dir / "memory.events"
        else:
            return 0
        try:
            for line in source.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except FileNotFoundError:
            pass
        return 0

    def memory_bytes(self) -> int:
        if "memory" in self.v1_dirs:
            return int((self.v1_dirs["memory"] / "memory.usage_in_bytes").read_text())
        if self.v2_dir:
            return int((self.v2_dir / "memory.current").read_text())
        return 0

    def cpu_seconds(self) -> float:
        if "cpuacct" in self.v1_dirs:
            return int((self.v1_dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        if self.v2_dir:
            for line in (self.v2_dir / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        return 0.0

    def pids_current(self) -> int:
        if "pids" in self.v1_dirs:
            return int((self.v1_dirs["pids"] / "pids.current").read_text())
        if self.v2_dir:
            return int((self.v2_dir / "pids.current").read_text())
        return len(self.pids())


def make_parent(hierarchy: Hierarchy, parent: str) -> None:
    """Make the instance's own cgroup directories, under which its rooms' cgroups go."""
    for root in (*hierarchy.v1.values(), hierarchy.v2):
        if root:
            try:
                (root / parent).mkdir(exist_ok=True)
            except OSError as error:
                raise CgroupError(
                    f"cannot create the cgroup {root / parent}: {error.strerror}"
                ) from None


def remove_parent(hierarchy: Hierarchy, parent: str) -> None:
    """Remove the instance's own cgroup directories once no room is left in them."""
    for root in (*hierarchy.v1.values(), hierarchy.v2):
        if root:
            with contextlib.suppress(FileNotFoundError, OSError):
                (root / parent).rmdir()


def leftover_names(hierarchy: Hierarchy, parent: str) -> set[str]:
    """Names of the room cgroups under ``parent`` that exist now."""
    names: set[str] = set()
    for root in (*hierarchy.v1.values(), hierarchy.v2):
        if root and (root / parent).is_dir():
            names.update(p.name for p in (root / parent).iterdir() if p.is_dir())
    return names

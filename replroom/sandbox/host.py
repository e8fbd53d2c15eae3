"""What the sandboxes need from the host's filesystem: its mounts, and directories made right.

Shared by the bwrap backend (room directories, tmpfs mounts), its cgroups
(where each controller is mounted), the image builder (what a killed build
left mounted) and the server's start-up (``replroom/host.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    point: Path
    fstype: str
    source: str
    options: tuple[str, ...]  # the filesystem's own (for cgroup v1: its controllers)


def _unescape(field: str) -> str:
    # The kernel writes a space, tab, newline or backslash in a path as \ooo.
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts ``/proc/<pid>/mountinfo`` lists (proc(5)), in its order."""
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, filesystem = left.split(), right.split()
        if len(fields) < 5 or len(filesystem) < 3:
            continue
        fstype, source, options = filesystem[:3]
        mounts.append(Mount(Path(_unescape(fields[4])), fstype, source, tuple(options.split(","))))
    return mounts


def mounts() -> list[Mount]:
    """The mounts this process sees."""
    return parse_mountinfo(MOUNTINFO.read_text())


def mounted_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (symlinks resolved), deepest first.

    Deepest first is the order to unmount them in.
    """
    root = path.resolve()
    points = {mount.point for mount in mounts()}
    inside = [point for point in points if point == root or root in point.parents]
    return sorted(inside, key=lambda point: (len(point.parts), str(point)), reverse=True)


def make_directory(path: Path, mode: int, *, parents_mode: int = 0o755) -> None:
    """Make ``path`` (``mode``) and its missing parents (``parents_mode``), whatever the umask.

    Nothing may assume an earlier run: ``/run`` is emptied at every boot.
    Raises OSError; a directory another process makes meanwhile is fine.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        wanted = mode if directory == path else parents_mode
        try:
            directory.mkdir(mode=wanted)
        except FileExistsError:
            continue  # made by another process between our look and our mkdir
        directory.chmod(wanted)

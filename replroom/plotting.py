"""What a REPL needs in its sandbox to draw plots into the page (docs/protocol.md, Plots).

A language that draws (:data:`DRAWING`) gets, before its REPL starts, the
files that send its plots to :data:`PLOTS_DIR` in the sandbox, and the
environment that loads them: for Python a matplotlib backend
(replroom/libraries/replroom_plots.py, ``MPLBACKEND=module://replroom_plots``),
for R a profile that draws on a device of its own and sends what changed after
each top-level call (replroom/libraries/replroom_plots.R, ``R_PROFILE_USER``).
The server takes the images from that directory from outside the sandbox
(``Sandbox.take_files``, replroom/room/plots.py): nothing goes through the
terminal. The files are written at every start of the REPL, so that a room
that removed them (``rm -rf /tmp/*``) gets them back with a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from replroom.languages import Language
from replroom.sandbox import Sandbox, SandboxError

log = logging.getLogger(__name__)

PLOTS_DIR = "/tmp/.replroom/plots"
LIB_DIR = "/tmp/.replroom/lib"


@dataclass(frozen=True)
class Drawing:
    """How one language's REPL sends its plots: files written to LIB_DIR, and its environment."""

    files: tuple[str, ...]  # in replroom/libraries
    env: Mapping[str, str]


DRAWING: dict[str, Drawing] = {
    "python": Drawing(
        files=("replroom_plots.py",),
        env={
            "MPLBACKEND": "module://replroom_plots",
            "PYTHONPATH": LIB_DIR,
            "REPLROOM_PLOTS_DIR": PLOTS_DIR,
        },
    ),
    "r": Drawing(
        files=("replroom_plots.R",),
        env={"R_PROFILE_USER": f"{LIB_DIR}/replroom_plots.R", "REPLROOM_PLOTS_DIR": PLOTS_DIR},
    ),
}


def _source(name: str) -> bytes:
    return (resources.files("replroom") / "libraries" / name).read_bytes()


async def prepare(sandbox: Sandbox, language: Language) -> dict[str, str]:
    """Write ``language``'s drawing files into ``sandbox``; the environment its REPL needs.

    A room that cannot take the files (its disk is full) gets its REPL
    without plots rather than no REPL: it is logged, and the environment is
    left out, so that matplotlib falls back to its own default.
    """
    drawing = DRAWING.get(language.name)
    if drawing is None:
        return {}
    try:
        for name in drawing.files:
            await sandbox.put_file(f"{LIB_DIR}/{name}", _source(name))
    except SandboxError as error:
        log.warning("room %s: %s will draw no plots: %s", sandbox.room_id, language.title, error)
        return {}
    return dict(drawing.env)

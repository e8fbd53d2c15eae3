# mypy: ignore-errors
# (This module runs in the rooms' Python, next to matplotlib; the server has neither.)
"""A matplotlib backend that shows figures in the room's plots panel, not in a window.

The server writes this file into each Python sandbox and starts the REPL with
``MPLBACKEND=module://replroom_plots`` (replroom/plotting.py). A figure is
shown by writing it as a PNG into ``REPLROOM_PLOTS_DIR``, where the server
takes it from outside the sandbox when the REPL shows its prompt again
(docs/protocol.md, Plots); nothing goes through the terminal.

A figure is shown:

- by ``plt.show()`` (every open figure, then closed, as IPython's inline
  backend does) or ``figure.show()``;
- at the prompt after a Run, or after any line in interactive mode
  (``plt.ion()``): every figure changed since it was last shown.
"""

from __future__ import annotations

import itertools
import os
import sys
import time

from matplotlib import is_interactive
from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

PLOTS_DIR = os.environ.get("REPLROOM_PLOTS_DIR", "/tmp/.replroom/plots")
_numbers = itertools.count(1)


def send(figure) -> None:
    """Write ``figure`` for the server to take: named so that name order is drawing order,
    and with the language that drew it."""
    os.makedirs(PLOTS_DIR, exist_ok=True)
    name = f"{time.time_ns():020d}-python-{os.getpid()}-{next(_numbers)}.png"
    # Written under a hidden name and renamed: the server never takes half a file.
    hidden = os.path.join(PLOTS_DIR, "." + name)
    try:
        figure.savefig(hidden, format="png", bbox_inches="tight")
        os.replace(hidden, os.path.join(PLOTS_DIR, name))
    except BaseException:
        if os.path.exists(hidden):
            os.remove(hidden)
        raise
    # Saving changes and restores the figure's size and dpi, which marks it changed.
    figure.stale = False


class FigureManager(FigureManagerBase):
    def show(self) -> None:
        send(self.canvas.figure)


class FigureCanvas(FigureCanvasAgg):
    manager_class = FigureManager


def show(*args, **kwargs) -> None:
    """``plt.show()``: every open figure to the plots panel, then closed."""
    for manager in Gcf.get_all_fig_managers():
        send(manager.canvas.figure)
    Gcf.destroy_all()


def show_changed() -> None:
    """Every open figure changed since it was last shown (a Run's, or interactive mode's)."""
    for manager in Gcf.get_all_fig_managers():
        if manager.canvas.figure.stale:
            send(manager.canvas.figure)


def _after_run() -> bool:
    """Whether the line just run was a Run's load line (typed by the server)."""
    try:
        import readline  # noqa: PLC0415 - the REPL has loaded it when it has it
    except ImportError:
        return True  # no history to tell: show what changed after every line
    last = readline.get_history_item(readline.get_current_history_length()) or ""
    # The load line (replroom/languages.py; typed by hand, it is a Run too).
    return "exec(compile(open(" in last


class _Prompt:
    """The REPL's prompt, which shows what changed before it is printed."""

    def __init__(self, prompt: object) -> None:
        self.prompt = prompt

    def __str__(self) -> str:
        try:
            if is_interactive() or _after_run():
                show_changed()
        except Exception as error:  # a figure that cannot be drawn must not break the REPL
            print(f"[plot not shown: {error}]", file=sys.stderr)
        return str(self.prompt)


# Only an interactive REPL has a prompt; a script run with python3 shows with plt.show().
if hasattr(sys, "ps1") and not isinstance(sys.ps1, _Prompt):
    sys.ps1 = _Prompt(sys.ps1)

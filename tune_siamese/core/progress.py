"""Where a run's progress lines go: printed, as the command line shows them, or to the display the Python API
installs for the call (one line updated in place in a notebook or a terminal). A context variable, not state on
a class: Tune pickles its callbacks with the experiment, and a display belongs to one call of one process."""
from __future__ import annotations

from contextvars import ContextVar
from typing import Callable

Display = Callable[[str], None]

display: ContextVar[Display | None] = ContextVar("tune_siamese_progress", default=None)


def report(line: str, live: bool = False) -> None:
    """Show a progress line. `live`: a passing update (a trial's new result), shown by a display only, since on
    the command line a line per result would bury the ones that count."""
    shown = display.get()
    if shown is not None:
        shown(line)
    elif not live:
        print(line, flush=True)

"""The Python API's progress display: one line, updated in place where the user looks. In a notebook it is one
output (an IPython display handle) replaced at each update; in a terminal one line rewritten with a carriage
return; anywhere else (a log file, CI) a line per change, since rewriting means nothing there."""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def in_notebook() -> bool:
    """True in a Jupyter kernel (where stdout is a display, not a terminal)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class LiveLine:
    """A core.progress display. A line that reports a trial ending always shows; the passing updates between
    (a result per trial and epoch) only where the line is rewritten in place, at most one per `every` seconds."""

    def __init__(self, stream: TextIO | None = None, every: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.every, self.last_shown, self.text = every, 0.0, ""
        self.notebook, self.handle = in_notebook(), None
        self.terminal = not self.notebook and self.stream.isatty()

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        same_count = line.split(",")[0] == self.text.split(",")[0]  # no trial ended since the last line
        in_place = self.notebook or self.terminal
        if line == self.text or (same_count and (not in_place or now - self.last_shown < self.every)):
            return
        self.text, self.last_shown = line, now
        if self.notebook:
            self._display(line)
        elif self.terminal:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        else:
            print(line, file=self.stream, flush=True)

    def _display(self, line: str) -> None:
        from IPython.display import Pretty, display

        if self.handle is None:
            self.handle = display(Pretty(line), display_id=True)
        else:
            self.handle.update(Pretty(line))

    def close(self) -> None:
        """End the line in a terminal (what follows starts on a line of its own)."""
        if self.terminal and self.text:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> LiveLine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

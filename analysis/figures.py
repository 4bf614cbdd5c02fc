"""What every picture of the analysis shares: the Figure that Jupyter shows, writing it whole, and how each trial
status is drawn (plots.py, time_plots.py, parallel.py and pareto_plot.py draw alike)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from tune_siamese.core import storage
from tune_siamese.core.names import ASHA_STOPPED, DIVERGED, ERRORED, FINISHED, PENDING, RUNNING

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType  # matplotlib >= 3.8; only an annotation here

DPI = 110  # of the files written and of the notebook picture
LOSS_LABEL = "validation loss (binary cross-entropy, nats)"
# How each status is drawn on the learning curves: line style and the marker at the trial's last epoch.
STYLES: dict[str, tuple[LineStyleType, str | None]] = {
    FINISHED: ("-", None), ASHA_STOPPED: ("--", "o"), DIVERGED: (":", "X"), ERRORED: (":", "s"),
    RUNNING: ("-.", ">"), PENDING: ("-.", None)}
STATUS_COLOURS = {FINISHED: "tab:blue", ASHA_STOPPED: "tab:orange", DIVERGED: "tab:red", ERRORED: "black",
                  RUNNING: "tab:purple", PENDING: "tab:grey"}
LABELS = {FINISHED: "finished (max epochs or patience)", ASHA_STOPPED: "stopped early by ASHA",
          DIVERGED: "diverged", ERRORED: "errored", RUNNING: "running", PENDING: "pending"}


class NotebookFigure(Figure):
    """A matplotlib Figure that Jupyter shows as a PNG when it is a cell's last expression.

    A Figure made without pyplot shows only as text ("<Figure size ... with 1 Axes>") until IPython's inline
    backend is loaded (by a pyplot figure or %matplotlib inline); this PNG covers that case. Once loaded, the
    backend's own printer for Figure takes precedence over it, so a figure never shows twice.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write `fig` to `path` whole or not at all (the format from its suffix, PNG without one); returns the path."""
    path = Path(path)
    with storage.replacing(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format=path.suffix.removeprefix(".") or "png")  # tmp's suffix is not the format
    return path


def finish_figure(fig: Figure, path: str | Path | None) -> Figure:
    """The figure, written to `path` first when one is given."""
    if path is not None:
        save_figure(fig, path)
    return fig

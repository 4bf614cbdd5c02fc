"""Pictures of an experiment in wall time: each trial's best val loss and the best so far as the search went on
(`optimisation_history`), and when each trial ran (`trial_timeline`). Both need Tune's timestamps."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tune_siamese.core.errors import InputError

from .experiment import Experiment, counted
from .figures import LABELS, LOSS_LABEL, STATUS_COLOURS, NotebookFigure, finish_figure


def trial_spans(exp: Experiment) -> pd.DataFrame:
    """When each trial trained: start (its first epoch's start) and end (its last report), in seconds from the
    first start, with its status and best val loss; ordered by start. Needs Tune's timestamps."""
    history = exp.history
    if not {"timestamp", "time_this_iter_s"} <= set(history.columns):
        return pd.DataFrame(columns=["trial_id", "start", "end", "status", "best_val_loss"])
    rows = []
    for trial_id, frame in history.groupby("trial_id", sort=False):
        frame = frame.sort_values("timestamp")
        rows.append({"trial_id": trial_id, "start": frame["timestamp"].iloc[0] - frame["time_this_iter_s"].iloc[0],
                     "end": frame["timestamp"].iloc[-1]})
    spans = pd.DataFrame(rows).merge(exp.trials[["trial_id", "status", "best_val_loss"]], on="trial_id")
    origin = spans["start"].min()
    spans[["start", "end"]] -= origin
    return spans.sort_values("start", ignore_index=True)


def optimisation_history(exp: Experiment, path: str | Path | None = None) -> Figure:
    """Each trial's best val loss and the best so far, against the trial's order and against wall time.

    Args:
        exp: a loaded experiment (`analysis.load`).
        path: where to write the picture as well (PNG); None writes nothing.

    Returns:
        The Figure: two Axes sharing the loss axis, by trial order (left) and by wall time (right).

    Raises:
        InputError: the trials' results carry no timestamps (Tune's `timestamp`, `time_this_iter_s`).
        OSError: `path` could not be written.

    Example:
        >>> analysis.optimisation_history(exp)
    """
    spans = _spans_or_error(exp)
    fig = NotebookFigure(figsize=(11, 4.5), layout="constrained")
    by_order, by_time = fig.subplots(1, 2, sharey=True)
    finite = spans[spans["best_val_loss"].notna()]
    best_so_far = finite.sort_values("end")["best_val_loss"].cummin()
    by_order.scatter(finite.index + 1, finite["best_val_loss"], color=[STATUS_COLOURS[s] for s in finite["status"]],
                     s=28, zorder=3)
    by_order.step(finite.index + 1, finite["best_val_loss"].cummin(), where="post", color="black",
                  label="best so far")
    by_order.set_xlabel("trial (in the order it started)")
    by_order.set_ylabel("best " + LOSS_LABEL)
    ended = finite.sort_values("end")
    scale, unit = _time_unit(spans)
    by_time.scatter(ended["end"] / scale, ended["best_val_loss"], color=[STATUS_COLOURS[s] for s in ended["status"]],
                    s=28, zorder=3)
    by_time.step(ended["end"] / scale, best_so_far, where="post", color="black", label="best so far")
    by_time.set_xlabel(f"wall time when the trial ended ({unit})")
    handles = [Line2D([], [], color="black", label="best so far")] + [
        Line2D([], [], marker="o", linestyle="", color=STATUS_COLOURS[s], label=LABELS[s])
        for s in dict.fromkeys(finite["status"])]
    by_time.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    for ax in (by_order, by_time):
        ax.grid(alpha=0.3)
    fig.suptitle(f"Optimisation history, {exp.name} ({counted(len(spans), 'trial')})")
    return finish_figure(fig, path)


def trial_timeline(exp: Experiment, path: str | Path | None = None) -> Figure:
    """A bar per trial from its start to its last epoch, coloured by how it ended: shows the concurrency and
    where ASHA cut trials short.

    Args:
        exp: a loaded experiment (`analysis.load`).
        path: where to write the picture as well (PNG); None writes nothing.

    Returns:
        The Figure (one Axes, one bar per trial, in the order the trials started).

    Raises:
        InputError: the trials' results carry no timestamps (Tune's `timestamp`, `time_this_iter_s`).
        OSError: `path` could not be written.

    Example:
        >>> analysis.trial_timeline(exp)
    """
    spans = _spans_or_error(exp)
    fig = NotebookFigure(figsize=(9, 0.28 * len(spans) + 1.8), layout="constrained")
    ax = fig.add_subplot()
    scale, unit = _time_unit(spans)
    for row in spans.itertuples():
        ax.barh(row.Index, (row.end - row.start) / scale, left=row.start / scale, color=STATUS_COLOURS[row.status],
                height=0.7)
    ax.set_yticks(range(len(spans)), [str(t) for t in spans["trial_id"]], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"wall time ({unit} from the first trial's start)")
    handles = [Line2D([], [], color=STATUS_COLOURS[s], linewidth=6, label=LABELS[s])
               for s in dict.fromkeys(spans["status"])]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"When each trial ran, {exp.name}")
    return finish_figure(fig, path)


def _time_unit(spans: pd.DataFrame) -> tuple[float, str]:
    """Seconds for a search of a few minutes, minutes for longer ones."""
    return (60.0, "minutes") if len(spans) and spans["end"].max() > 300 else (1.0, "seconds")


def _spans_or_error(exp: Experiment) -> pd.DataFrame:
    spans = trial_spans(exp)
    if spans.empty:
        raise InputError("no timestamps in the trials' results (timestamp, time_this_iter_s): cannot place the "
                         "trials in time", exp.path)
    return spans

"""Pictures of an experiment in time: each trial's best val loss and the best so far as the search went on
(`optimisation_history`) and when each trial ran (`trial_timeline`), both in wall time from Tune's timestamps; the
best val loss so far against the epochs all trials had trained (`anytime_curve`, `anytime_plot`)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from tune_siamese.core.errors import InputError
from tune_siamese.core.names import DIVERGED, DIVERGED_ABOVE, ERRORED, VAL_LOSS

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


def anytime_curve(exp: Experiment) -> pd.DataFrame:
    """Every epoch any trial reported, in the order it was reported, numbered as cumulative epochs, with the lowest
    val loss found by then: how the search's result improved with the compute it spent.

    Args:
        exp: a loaded experiment (`analysis.load`).

    Returns:
        One row per row of `exp.history` (epochs of trials that ASHA stopped, that diverged or that errored
        count too), ordered by Tune's `timestamp`, which has whole seconds: reports within one second keep the
        history's order (by trial, then epoch); without timestamps, the history's order (trial after trial).
        Columns: cumulative_epochs (1, 2, ... N), trial_id, training_iteration, val_loss (as reported: a
        diverged trial's last report has the stand-in names.DIVERGED_LOSS), status (how the trial ended) and
        best_so_far: the lowest val loss reported up to that row by a trial the search can hand back, diverged
        and errored trials left out as its pick leaves them out (`Experiment.best`); NaN before the first such
        report. `.attrs["ordered_by"]` is "timestamp" or "history".

    Raises:
        Nothing of its own: every loaded experiment has a history.

    Example:
        >>> analysis.anytime_curve(exp).tail(2)
            cumulative_epochs  trial_id  training_iteration  val_loss    status  best_so_far
        12                 13  39a3bef4                   3  0.611874  finished     0.611874
        13                 14  7ee44e7b                   3  0.693185  finished     0.611874
    """
    history = exp.history
    timed = "timestamp" in history and bool(history["timestamp"].notna().any())
    rows = history.sort_values("timestamp", kind="stable", na_position="last") if timed else history
    status = rows["trial_id"].map(exp.trials.set_index("trial_id")["status"])
    loss = rows[VAL_LOSS].astype(float) if VAL_LOSS in rows else pd.Series(float("nan"), index=rows.index)
    stand_in = rows["diverged"].fillna(0).gt(0) if "diverged" in rows else pd.Series(False, index=rows.index)
    usable = ~status.isin([DIVERGED, ERRORED]) & ~stand_in
    iteration = rows["training_iteration"] if "training_iteration" in rows else rows["epoch"]
    curve = pd.DataFrame({
        "cumulative_epochs": range(1, len(rows) + 1), "trial_id": rows["trial_id"].to_numpy(),
        "training_iteration": iteration.to_numpy(), "val_loss": loss.to_numpy(), "status": status.to_numpy(),
        "best_so_far": loss.where(usable).cummin().ffill().to_numpy()})  # cummin leaves NaN rows NaN
    curve.attrs["ordered_by"] = "timestamp" if timed else "history"
    return curve


def anytime_plot(exp: Experiment, path: str | Path | None = None) -> Figure:
    """The anytime curve: the lowest val loss found so far (a step line) against cumulative epochs, every epoch's
    val loss as a dot coloured by how its trial ended, each trial's dots joined by a faint line.

    The loss axis leaves out outliers (above the 3rd quartile + 1.5 interquartile ranges, unless the best so far
    starts higher) and diverged trials' stand-in loss: those reports are drawn on its top edge as triangles.

    Args:
        exp: a loaded experiment (`analysis.load`).
        path: where to write the picture as well (PNG); None writes nothing.

    Returns:
        The Figure (one Axes); the lowest val loss is starred.

    Raises:
        OSError: `path` could not be written.

    Example:
        >>> analysis.anytime_plot(exp, "anytime.png")
    """
    curve = anytime_curve(exp)
    fig = NotebookFigure(figsize=(10, 4.8), layout="constrained")
    ax = fig.add_subplot()
    loss = curve["val_loss"]
    bottom, ceiling, pad = _loss_scale(curve)
    shown = loss.clip(upper=ceiling)
    for _, rows in curve.groupby("trial_id", sort=False):
        colour = STATUS_COLOURS[rows["status"].iloc[0]]
        ax.plot(rows["cumulative_epochs"], shown[rows.index], color=colour, linewidth=0.8, alpha=0.3)
    above = loss > ceiling
    for marker, rows in (("o", curve[~above]), ("^", curve[above])):
        ax.scatter(rows["cumulative_epochs"], shown[rows.index], color=[STATUS_COLOURS[s] for s in rows["status"]],
                   marker=marker, s=22, zorder=3, clip_on=False)
    end = len(curve) + 1  # the last level drawn to the axis' end, seen also when the last epoch set it
    ax.step([*curve["cumulative_epochs"], end], [*curve["best_so_far"], curve["best_so_far"].iloc[-1]], where="post",
            color="black", linewidth=2, zorder=4, label="lowest val loss so far")
    handles = [Line2D([], [], color="black", linewidth=2, label="lowest val loss so far")]
    if curve["best_so_far"].notna().any():
        best = curve.loc[curve["best_so_far"].idxmin()]  # the first report of the lowest loss
        ax.scatter([best["cumulative_epochs"]], [best["best_so_far"]], marker="*", s=220, color="gold",
                   edgecolor="black", zorder=5)
        handles.append(Line2D([], [], marker="*", markersize=12, linestyle="", color="gold", markeredgecolor="black",
                              label=f"lowest: {best['best_so_far']:.4f} (trial {best['trial_id']}, "
                                    f"epoch {best['training_iteration']})"))
    handles += [Line2D([], [], marker="o", linestyle="", color=STATUS_COLOURS[s], label=LABELS[s])
                for s in dict.fromkeys(curve["status"])]
    if above.any():
        handles.append(Line2D([], [], marker="^", linestyle="", color="grey",
                              label=f"above {ceiling:.3g}, drawn at the top ({counted(int(above.sum()), 'report')})"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_ylim(bottom - pad, ceiling)
    ax.set_xlim(0, end)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    order = "in the order reported" if curve.attrs["ordered_by"] == "timestamp" else "trial after trial: no timestamps"
    ax.set_xlabel(f"cumulative epochs (every epoch of every trial, {order})")
    ax.set_ylabel(LOSS_LABEL)
    ax.grid(alpha=0.3)
    ax.set_title(f"Anytime curve, {exp.name} ({counted(len(exp.trials), 'trial')}, "
                 f"{counted(len(curve), 'epoch')})")
    return finish_figure(fig, path)


def _loss_scale(curve: pd.DataFrame) -> tuple[float, float, float]:
    """(lowest loss, top of the loss axis, padding) for `anytime_plot`: the usable losses up to the best so far's
    start or, if higher, the upper outlier fence (3rd quartile + 1.5 interquartile ranges), so that neither a
    diverged trial's stand-in loss nor one wild report flattens the curve."""
    loss = curve["val_loss"]
    on_scale = loss[loss.notna() & (loss <= DIVERGED_ABOVE)]
    if on_scale.empty:  # no val loss, or only stand-ins: nothing to scale by
        on_scale = loss.dropna() if loss.notna().any() else pd.Series([0.0, 1.0])
    q1, q3 = on_scale.quantile([0.25, 0.75])
    best = curve["best_so_far"].max()  # NaN without a usable report
    fence = q3 + 1.5 * (q3 - q1) if math.isnan(best) else max(q3 + 1.5 * (q3 - q1), best)
    top, bottom = min(on_scale.max(), fence), on_scale.min()
    pad = 0.08 * (top - bottom) or 0.05 * abs(top) or 0.05
    return bottom, top + pad, pad


def _time_unit(spans: pd.DataFrame) -> tuple[float, str]:
    """Seconds for a search of a few minutes, minutes for longer ones."""
    return (60.0, "minutes") if len(spans) and spans["end"].max() > 300 else (1.0, "seconds")


def _spans_or_error(exp: Experiment) -> pd.DataFrame:
    spans = trial_spans(exp)
    if spans.empty:
        raise InputError("no timestamps in the trials' results (timestamp, time_this_iter_s): cannot place the "
                         "trials in time", exp.path)
    return spans

"""The parallel-coordinates plot of an experiment: one axis per searched hyperparameter and one for the best val
loss, each scaled to [0, 1] (categories evenly spaced, wide ranges on a log scale), one line per trial."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tune_siamese.core.names import FINISHED, RUNNING

from .experiment import Experiment, config_column, counted
from .figures import LABELS, STYLES, NotebookFigure, finish_figure
from .plots import axis_kinds, categories

LOSS_AXIS = "best val loss"
NO_LOSS = 1.1  # where a trial without a val loss (diverged at once, errored) meets the loss axis, above its top


def parallel_axes(exp: Experiment) -> tuple[pd.DataFrame, dict[str, tuple[list[float], list[str]]]]:
    """Each trial's searched values and best val loss on axes scaled to [0, 1], one row per trial (index
    trial_id; columns the hyperparameters, then LOSS_AXIS; NaN where there is no value), and each axis's ticks:
    (positions, the real values as text). Categorical axes space the choices seen evenly, in the space's order;
    log axes are scaled on log10; numeric axes span the searched range (the values seen for an inferred space)."""
    from .importance import distributions

    kinds, spaces = axis_kinds(exp), distributions(exp)
    trials = exp.trials.set_index("trial_id")
    frame = pd.DataFrame(index=trials.index)
    ticks: dict[str, tuple[list[float], list[str]]] = {}
    for name in exp.hyperparameters:
        values = trials[config_column(name)]
        if kinds.get(name, "categorical") == "categorical":
            names = categories(exp, name, values.dropna())
            spots = [i / (len(names) - 1) if len(names) > 1 else 0.5 for i in range(len(names))]
            frame[name] = [spots[names.index(str(v))] if not _missing(v) else math.nan for v in values]
            ticks[name] = (spots, names)
            continue
        log = kinds[name] == "log"
        numbers = values.astype(float)
        space = spaces.get(name)
        low = float(getattr(space, "low", numbers.min()))
        high = float(getattr(space, "high", numbers.max()))
        scale = np.log10 if log else (lambda x: x)
        frame[name], ticks[name] = _scaled(scale(numbers), scale(low), scale(high), log)
    losses = trials["best_val_loss"].astype(float)
    finite = losses[np.isfinite(losses)]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    frame[LOSS_AXIS], ticks[LOSS_AXIS] = _scaled(losses.where(np.isfinite(losses)), low, high, False)
    return frame, ticks


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _scaled(values: pd.Series, low: float, high: float, log: bool) -> tuple[pd.Series, tuple[list[float], list[str]]]:
    """Values (already on log10 for a log axis) to [0, 1] between low and high, and ticks labelled with the real
    values: whole decades and both ends on a log axis, five even steps otherwise."""
    if high <= low:
        return values * 0 + 0.5, ([0.5], [_number(10 ** low if log else low)])
    if log:
        near = 0.15 * (high - low)  # a decade this close to an end would print over it
        marks = [low, *(float(d) for d in range(math.ceil(low), math.floor(high) + 1)
                        if min(d - low, high - d) > near), high]
    else:
        marks = [float(m) for m in np.linspace(low, high, 5)]
    spots = [float((m - low) / (high - low)) for m in marks]
    return (values - low) / (high - low), (spots, [_number(10 ** m if log else m) for m in marks])


def _number(value: float) -> str:
    return f"{value:.2g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"


def parallel_coordinates(exp: Experiment, path: str | Path | None = None) -> Figure:
    """One line per trial through its searched values to its best val loss, coloured by that loss (darkest is
    best); ASHA-stopped, diverged and errored trials thin and faint, the best trial outlined in gold.

    Args:
        exp: a loaded experiment (`analysis.load`).
        path: where to write the picture as well (PNG); None writes nothing.

    Returns:
        The Figure (one Axes with a vertical axis per hyperparameter and one for the loss, and a colour bar).

    Raises:
        OSError: `path` could not be written.

    Example:
        >>> analysis.parallel_coordinates(exp)
    """
    frame, ticks = parallel_axes(exp)
    columns = list(frame.columns)
    trials = exp.trials.set_index("trial_id")
    fig = NotebookFigure(figsize=(max(8.0, 1.5 * len(columns) + 2.5), 5.8), layout="constrained")
    ax = fig.add_subplot()
    losses = trials["best_val_loss"].astype(float)
    finite = losses[np.isfinite(losses)]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    # dark = low loss; viridis without its palest yellow, which vanishes on white in a faint line
    cmap = ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.85, 256)))
    mappable = ScalarMappable(Normalize(low, high if high > low else low + 1e-9), cmap)
    x = np.arange(len(columns))
    best = exp.best(1)
    top = best.iloc[0]["trial_id"] if len(best) else None
    # worst first, so the best lines lie on top; trials without a loss first of all
    for trial_id in losses.fillna(np.inf).sort_values(ascending=False).index:
        y = frame.loc[trial_id].to_numpy(dtype=float, copy=True)
        loss = losses[trial_id]
        if not np.isfinite(loss):
            y[-1] = NO_LOSS
        colour = mappable.to_rgba(loss) if np.isfinite(loss) else "grey"
        _trial_line(ax, x, y, colour, trials.at[trial_id, "status"], best=trial_id == top)
    unscored = bool((~np.isfinite(losses)).any())
    if unscored:
        spots, labels = ticks[LOSS_AXIS]
        ticks[LOSS_AXIS] = ([*spots, NO_LOSS], [*labels, "no val loss"])
    _axes(ax, columns, ticks, axis_kinds(exp), top=NO_LOSS + 0.05 if unscored else 1.05)
    fig.colorbar(mappable, ax=ax, label="best val loss (darker is better)", pad=0.01)
    handles = _legend(set(trials["status"]), top, cmap(0.0))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=8)
    fig.suptitle(f"Searched values and best val loss of {counted(len(frame), 'trial')}, {exp.name}")
    return finish_figure(fig, path)


def _gold_outline() -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.Stroke(linewidth=6.5, foreground="gold"), patheffects.Normal()]


def _trial_line(ax: Any, x: np.ndarray, y: np.ndarray, colour: Any, status: str, best: bool) -> None:
    if best:
        ax.plot(x, y, color=colour, linewidth=3, zorder=4, path_effects=_gold_outline())
    elif status in (FINISHED, RUNNING):  # ran its course (or still runs): full strength
        ax.plot(x, y, color=colour, linewidth=1.8, alpha=0.9, zorder=3)
    else:  # cut short: thin and faint, with the learning curves' line style and end marker
        style, marker = STYLES[status]
        ax.plot(x, y, color=colour, linewidth=1.0, alpha=0.5, linestyle=style, zorder=2)
        if marker:
            ax.plot(x[-1], y[-1], marker=marker, color=colour, markeredgecolor="black", markersize=6,
                    alpha=0.8, zorder=3)


def _axes(ax: Any, columns: list[str], ticks: dict[str, tuple[list[float], list[str]]], kinds: dict[str, str],
          top: float) -> None:
    """A vertical axis per column with its own tick labels (the plot's y is 0..1 on every axis)."""
    for i, name in enumerate(columns):
        ax.axvline(i, color="black", linewidth=0.8, zorder=1)
        for spot, label in zip(*ticks[name]):
            ax.plot([i - 0.03, i], [spot, spot], color="black", linewidth=0.8)
            ax.text(i - 0.05, spot, label, fontsize=7.5, ha="right", va="center", zorder=6,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.5})
    ax.set_xticks(np.arange(len(columns)), [n + (" (log)" if kinds.get(n) == "log" else "") for n in columns],
                  rotation=20 if len(columns) > 6 else 0, ha="right" if len(columns) > 6 else "center")
    ax.set_xlim(-0.55, len(columns) - 0.8)
    ax.set_ylim(-0.05, top)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)


def _legend(statuses: set[str], top: str | None, best_colour: Any) -> list[Line2D]:
    handles = []
    for s in [s for s in STYLES if s in statuses]:
        line: Any = "-" if s in (FINISHED, RUNNING) else STYLES[s][0]
        handles.append(Line2D([], [], color="grey", linewidth=1.8 if line == "-" else 1.0, label=LABELS[s],
                              linestyle=line, marker=None if line == "-" else STYLES[s][1],
                              markeredgecolor="black"))
    if top is not None:
        handles.append(Line2D([], [], color=best_colour, linewidth=3, label=f"best trial {top}",
                              path_effects=_gold_outline()))
    return handles

"""Pictures of an experiment, drawn on plain matplotlib Figures (no pyplot state: nothing leaks between calls).

Here: the learning curves and the pictures of the hyperparameters; those in wall time are in time_plots.py. Each
function returns its Figure, and writes it to `path` too when given one (PNG, the format the report uses). In Jupyter
a returned Figure shows as a picture when it is a cell's last expression (NotebookFigure), with or without pyplot;
in a script, `fig.savefig(...)` or pass `path`.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from tune_siamese.core.errors import InputError

from . import importance
from .experiment import Experiment, config_column, counted
from .figures import LABELS, LOSS_LABEL, STATUS_COLOURS, STYLES, NotebookFigure, finish_figure
from .figures import save_figure as save_figure  # still importable from here, where it was before figures.py
from .time_plots import optimisation_history as optimisation_history  # these three too: as before time_plots.py
from .time_plots import trial_spans as trial_spans
from .time_plots import trial_timeline as trial_timeline


def axis_kinds(exp: Experiment) -> dict[str, str]:
    """Each hyperparameter's axis: "categorical" (tune.choice), "log" (log-uniform) or "linear"."""
    from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

    from .importance import distributions

    def kind(d: BaseDistribution) -> str:
        if isinstance(d, CategoricalDistribution):
            return "categorical"
        return "log" if isinstance(d, (FloatDistribution, IntDistribution)) and d.log else "linear"

    return {h: kind(d) for h, d in distributions(exp).items()}


def categories(exp: Experiment, name: str, values: pd.Series) -> list[str]:
    """The choices present in `values`, as text, in the space's order (else in order of appearance)."""
    from .importance import distributions

    choices = getattr(distributions(exp).get(name), "choices", ())
    present = {str(v) for v in values}
    return list(dict.fromkeys([*(str(c) for c in choices if str(c) in present), *(str(v) for v in values)]))


def default_color_by(exp: Experiment) -> str | None:
    """The first continuous hyperparameter (usually the learning rate), else the first one."""
    kinds = axis_kinds(exp)
    continuous = [h for h in exp.hyperparameters if kinds.get(h, "categorical") != "categorical"]
    candidates = continuous or exp.hyperparameters
    return candidates[0] if candidates else None


def check_color_by(exp: Experiment, name: str | None) -> str | None:
    if name is not None and name not in exp.hyperparameters:
        raise InputError(f"option --color-by: {name!r} is not a hyperparameter of this search; "
                         f"choose one of {', '.join(exp.hyperparameters)}", exp.path)
    return name


def learning_curves(exp: Experiment, path: str | Path | None = None, color_by: str | None = None) -> Figure:
    """Val loss per epoch for every trial, coloured by `color_by`; ASHA-stopped trials dashed with an end dot,
    the best trial's best epoch a gold star.

    Args:
        exp: a loaded experiment (`analysis.load`).
        path: where to write the picture as well (PNG); None writes nothing.
        color_by: the hyperparameter that colours the curves; None: the first continuous one (usually lr).

    Returns:
        The Figure (one Axes, one line per trial that reported a val loss).

    Raises:
        InputError: `color_by` is not a hyperparameter of this search.
        OSError: `path` could not be written (nothing is left half-written).

    Example:
        >>> fig = analysis.learning_curves(exp, color_by="lr")   # shown in Jupyter
        >>> analysis.learning_curves(exp, "curves.png")           # also written
    """
    color_by = check_color_by(exp, color_by) or default_color_by(exp)
    fig = NotebookFigure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    trials = exp.trials.set_index("trial_id")
    colour = _colours(exp, color_by, fig, ax)
    history = exp.history[exp.history["val_loss"].notna()]
    if "diverged" in history:
        history = history[history["diverged"].ne(1)]  # its DIVERGED_LOSS row is a stand-in, not a loss
    for trial_id, rows in history.groupby("trial_id", sort=False):
        status = trials.at[trial_id, "status"]
        style, marker = STYLES[status]
        c = colour(trials.at[trial_id, config_column(color_by)] if color_by else None)
        ax.plot(rows["epoch"], rows["val_loss"], linestyle=style, color=c, linewidth=1.6, alpha=0.9)
        if marker:
            ax.plot(rows["epoch"].iloc[-1], rows["val_loss"].iloc[-1], marker=marker, color=c, markersize=7,
                    markeredgecolor="black")
    best = exp.best(1)
    if len(best):
        top = best.iloc[0]
        ax.plot(top["best_epoch"], top["best_val_loss"], marker="*", markersize=16, color="gold",
                markeredgecolor="black", linestyle="none", zorder=5)
    handles = [Line2D([], [], color="grey", linestyle=STYLES[s][0], marker=STYLES[s][1], label=LABELS[s])
               for s in STYLES if s in set(exp.trials["status"])]
    handles.append(Line2D([], [], marker="*", color="gold", markeredgecolor="black", markersize=12,
                          linestyle="none", label="best trial's best epoch"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, title="trial status")  # next to _colours' legend
    ax.set_xlabel("epoch")
    ax.set_ylabel(LOSS_LABEL)
    locator = ax.xaxis.get_major_locator()  # AutoLocator, a MaxNLocator: whole epochs only
    if isinstance(locator, MaxNLocator):
        locator.set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_title(f"Learning curves of {counted(len(exp.trials), 'trial')}, {exp.name}"
                 + (f" (colour: {color_by})" if color_by else ""))
    return finish_figure(fig, path)


def _colours(exp: Experiment, name: str | None, fig: Figure, ax: Any) -> Any:
    """A value -> colour function, with a colour bar (numbers) or a legend (categories) explaining it."""
    if name is None:
        return lambda _: "tab:blue"
    values = exp.trials[config_column(name)]
    kind = axis_kinds(exp).get(name, "categorical")
    if kind != "categorical":
        present = values.dropna().astype(float)
        low, high = float(present.min()), float(present.max())
        if low == high:
            low, high = low * 0.9 or -1.0, high * 1.1 or 1.0
        log = kind == "log" and low > 0
        norm = LogNorm(low, high) if log else Normalize(low, high)
        cmap = colormaps["viridis"]
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=name + (" (log scale)" if log else ""))
        return lambda v: cmap(norm(float(v))) if v is not None and not pd.isna(v) else "grey"
    names = categories(exp, name, values)
    palette = {c: f"C{i % 10}" for i, c in enumerate(names)}
    ax.add_artist(ax.legend(handles=[Line2D([], [], color=palette[c], label=c) for c in names],
                            title=name, loc="upper center", fontsize=8))
    return lambda v: palette[str(v)]


def loss_vs_hyperparameters(exp: Experiment, path: str | Path | None = None) -> Figure:
    """Best val loss of each trial against each hyperparameter: scatter for numbers, box + points for choices,
    points coloured by the trial's status.

    Args:
        exp: a loaded experiment (`analysis.load`).
        path: where to write the picture as well (PNG); None writes nothing.

    Returns:
        The Figure, one Axes per hyperparameter (up to three a row).

    Raises:
        InputError: the experiment has no hyperparameters (nothing was searched).
        OSError: `path` could not be written.

    Example:
        >>> analysis.loss_vs_hyperparameters(exp)
    """
    names = exp.hyperparameters
    if not names:
        raise InputError("no hyperparameters to plot", exp.path)
    trials = exp.trials.dropna(subset=["best_val_loss"])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = NotebookFigure(figsize=(4.2 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    kinds = axis_kinds(exp)
    for ax, name in zip(axes, names):
        values = trials[config_column(name)]
        status_colour = [STATUS_COLOURS[s] for s in trials["status"]]
        kind = kinds.get(name, "categorical")
        if kind != "categorical":
            ax.scatter(values.astype(float), trials["best_val_loss"], c=status_colour, edgecolors="black",
                       linewidths=0.5, zorder=3)
            if kind == "log":
                ax.set_xscale("log")
            ax.set_xlabel(name + (" (log scale)" if kind == "log" else ""))
        else:
            names_ = categories(exp, name, values)
            groups = [trials.loc[values.astype(str) == c, "best_val_loss"].to_numpy() for c in names_]
            ax.boxplot(groups, tick_labels=names_, widths=0.5, showfliers=False,
                       medianprops={"color": "black"})
            jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(trials))
            x = [names_.index(str(v)) + 1 + j for v, j in zip(values, jitter)]
            ax.scatter(x, trials["best_val_loss"], c=status_colour, edgecolors="black", linewidths=0.5, zorder=3)
            ax.set_xlabel(name)
        ax.set_ylabel("best val loss (BCE)")
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    present = [s for s in STYLES if s in set(trials["status"])]
    fig.legend(handles=[Line2D([], [], marker="o", linestyle="none", color=STATUS_COLOURS[s], markeredgecolor="black",
                               label=LABELS[s]) for s in present], loc="outside lower center", ncols=len(present))
    fig.suptitle(f"Best validation loss of each trial against each hyperparameter, {exp.name}")
    return finish_figure(fig, path)


def importance_chart(table: pd.DataFrame | Experiment, path: str | Path | None = None, title: str = "") -> Figure:
    """Two evaluators' shares side by side, the most important by fANOVA on top: fANOVA's mean over its seeds
    with a bar of ± 1 s.d., and PED-ANOVA (Optuna's default); the trial count in the title.

    Args:
        table: `analysis.importance.methods(exp)`'s table, or the experiment itself (its table is computed, which
            warns below FEW_TRIALS trials, and its name titles the chart).
        path: where to write the picture as well (PNG); None writes nothing.
        title: the chart's title; "" gives "Hyperparameter importance" (with the experiment's name when given one).

    Returns:
        The Figure (one Axes, two bars per hyperparameter).

    Raises:
        InputError: given an experiment whose importances cannot be computed (fewer than two trials with
            different val losses).
        OSError: `path` could not be written.

    Example:
        >>> analysis.importance_chart(exp)
        >>> analysis.importance_chart(analysis.importance.methods(exp), "importance.png", "My search")
    """
    if isinstance(table, Experiment):
        from .importance import FewTrialsWarning, methods, warn_if_few

        title = title or f"Hyperparameter importance, {table.name}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FewTrialsWarning)
            table = methods(table)
        warn_if_few(table.attrs["trials"])  # at the caller's line, not at this one
    fig = NotebookFigure(figsize=(7.5, 0.6 * len(table) + 1.9), layout="constrained")
    ax = fig.add_subplot()
    ordered = table.iloc[::-1]
    y = np.arange(len(ordered))
    fanova = ax.barh(y + 0.2, ordered["fanova"], height=0.4, xerr=ordered["fanova_sd"], color="tab:blue",
                     error_kw={"elinewidth": 1, "capsize": 2},
                     label=f"fANOVA, mean ± s.d. over {len(importance.FANOVA_SEEDS)} seeds")
    ped = ax.barh(y - 0.2, ordered["ped_anova"], height=0.4, color="tab:orange", label="PED-ANOVA (Optuna's default)")
    ax.bar_label(fanova, fmt="%.2f", padding=3, fontsize=8)
    ax.bar_label(ped, fmt="%.2f", padding=3, fontsize=8)
    ax.set_yticks(y, list(ordered.index))
    ax.set_xlim(0, max(1.0, float((ordered[["fanova", "ped_anova"]].max()).max()) * 1.15))
    ax.set_xlabel("importance for the best val loss (share; each method's shares sum to 1)")
    trials = table.attrs.get("trials")
    ax.set_title(f"{title or 'Hyperparameter importance'}\n"
                 + (counted(trials, "trial") if isinstance(trials, int) else "? trials"), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return finish_figure(fig, path)

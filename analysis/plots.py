"""PNG pictures of an experiment, drawn on plain matplotlib Figures (Agg canvas, no pyplot state, no display).

Each function writes one file and returns its path.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tune_siamese.core import storage
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import ASHA_STOPPED, DIVERGED, ERRORED, FINISHED, PENDING, RUNNING

from .experiment import Experiment, config_column
from .importance import FANOVA_SEEDS

LOSS_LABEL = "validation loss (binary cross-entropy, nats)"
# How each status is drawn on the learning curves: line style and the marker at the trial's last epoch.
STYLES = {FINISHED: ("-", None), ASHA_STOPPED: ("--", "o"), DIVERGED: (":", "X"), ERRORED: (":", "s"),
          RUNNING: ("-.", ">"), PENDING: ("-.", None)}
STATUS_COLOURS = {FINISHED: "tab:blue", ASHA_STOPPED: "tab:orange", DIVERGED: "tab:red", ERRORED: "black",
                  RUNNING: "tab:purple", PENDING: "tab:grey"}
LABELS = {FINISHED: "finished (max epochs or patience)", ASHA_STOPPED: "stopped early by ASHA",
          DIVERGED: "diverged", ERRORED: "errored", RUNNING: "running", PENDING: "pending"}


def axis_kinds(exp: Experiment) -> dict[str, str]:
    """Each hyperparameter's axis: "categorical" (tune.choice), "log" (log-uniform) or "linear"."""
    from optuna.distributions import CategoricalDistribution

    from .importance import distributions

    return {h: "categorical" if isinstance(d, CategoricalDistribution) else "log" if d.log else "linear"
            for h, d in distributions(exp).items()}


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
    return (continuous or exp.hyperparameters or [None])[0]


def check_color_by(exp: Experiment, name: str | None) -> str | None:
    if name is not None and name not in exp.hyperparameters:
        raise InputError(f"option --color-by: {name!r} is not a hyperparameter of this search; "
                         f"choose one of {', '.join(exp.hyperparameters)}", exp.path)
    return name


def learning_curves(exp: Experiment, path: str | Path, color_by: str | None = None) -> Path:
    """Val loss per epoch for every trial, coloured by `color_by`; ASHA-stopped trials dashed with an end dot."""
    color_by = check_color_by(exp, color_by) or default_color_by(exp)
    fig = Figure(figsize=(9, 5.5), layout="constrained")
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
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_title(f"Learning curves of {len(exp.trials)} trials, {exp.name}"
                 + (f" (colour: {color_by})" if color_by else ""))
    return save_figure(fig, path)


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
        mappable = ScalarMappable(LogNorm(low, high) if log else Normalize(low, high), "viridis")
        fig.colorbar(mappable, ax=ax, label=name + (" (log scale)" if log else ""))
        return lambda v: mappable.to_rgba(float(v)) if v is not None and not pd.isna(v) else "grey"
    names = categories(exp, name, values)
    palette = {c: f"C{i % 10}" for i, c in enumerate(names)}
    ax.add_artist(ax.legend(handles=[Line2D([], [], color=palette[c], label=c) for c in names],
                            title=name, loc="upper center", fontsize=8))
    return lambda v: palette[str(v)]


def loss_vs_hyperparameters(exp: Experiment, path: str | Path) -> Path:
    """Best val loss of each trial against each hyperparameter: scatter for numbers, box + points for choices."""
    names = exp.hyperparameters
    if not names:
        raise InputError("no hyperparameters to plot", exp.path)
    trials = exp.trials.dropna(subset=["best_val_loss"])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows), layout="constrained")
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
    return save_figure(fig, path)


def importance_chart(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Two evaluators' shares side by side (importance.methods), the most important by fANOVA on top: fANOVA's
    mean over its seeds with a bar of ± 1 s.d., and PED-ANOVA (Optuna's default); the trial count in the title."""
    fig = Figure(figsize=(7.5, 0.6 * len(table) + 1.9), layout="constrained")
    ax = fig.add_subplot()
    ordered = table.iloc[::-1]
    y = np.arange(len(ordered))
    fanova = ax.barh(y + 0.2, ordered["fanova"], height=0.4, xerr=ordered["fanova_sd"], color="tab:blue",
                     error_kw={"elinewidth": 1, "capsize": 2},
                     label=f"fANOVA, mean ± s.d. over {len(FANOVA_SEEDS)} seeds")
    ped = ax.barh(y - 0.2, ordered["ped_anova"], height=0.4, color="tab:orange", label="PED-ANOVA (Optuna's default)")
    ax.bar_label(fanova, fmt="%.2f", padding=3, fontsize=8)
    ax.bar_label(ped, fmt="%.2f", padding=3, fontsize=8)
    ax.set_yticks(y, list(ordered.index))
    ax.set_xlim(0, max(1.0, float((ordered[["fanova", "ped_anova"]].max()).max()) * 1.15))
    ax.set_xlabel("importance for the best val loss (share; each method's shares sum to 1)")
    ax.set_title(f"{title or 'Hyperparameter importance'}\n{table.attrs.get('trials', '?')} trials", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


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


def optimisation_history(exp: Experiment, path: str | Path) -> Path:
    """Each trial's best val loss and the best so far, against the trial's order and against wall time."""
    spans = trial_spans(exp)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
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
    fig.suptitle(f"Optimisation history, {exp.name} ({len(spans)} trials)")
    return save_figure(fig, path)


def trial_timeline(exp: Experiment, path: str | Path) -> Path:
    """A bar per trial from its start to its last epoch, coloured by how it ended: shows the concurrency and
    where ASHA cut trials short."""
    spans = trial_spans(exp)
    fig = Figure(figsize=(9, 0.28 * len(spans) + 1.8), layout="constrained")
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
    return save_figure(fig, path)


def _time_unit(spans: pd.DataFrame) -> tuple[float, str]:
    """Seconds for a search of a few minutes, minutes for longer ones."""
    return (60.0, "minutes") if len(spans) and spans["end"].max() > 300 else (1.0, "seconds")


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with storage.replacing(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path

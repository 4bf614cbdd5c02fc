"""The Pareto plot (the report's pareto.png): what a multi-objective search found, val loss against each other
objective, one panel each."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tune_siamese.core.errors import InputError
from tune_siamese.core.names import ASHA_STOPPED, DIVERGED, ERRORED

from .experiment import Experiment, counted
from .figures import NotebookFigure, finish_figure

UNITS = {"params": "parameters", "flops": "FLOPs per pair", "latency": "ms per pair (CPU, batch 1)"}


def pareto_plot(exp: Experiment, path: str | Path | None = None) -> Figure:
    """Every trial with a val loss: ASHA-stopped ones faint; the front (non-dominated over all objectives) ringed
    and labelled, joined in the panel of the second objective; the trial the search handed back marked.

    Args:
        exp: a loaded experiment of a multi-objective search (`--objectives val_loss,params,...`).
        path: where to write the picture as well (PNG); None writes nothing.

    Returns:
        The Figure, one Axes per objective after val_loss (best val loss against it).

    Raises:
        InputError: the search had val_loss as its only objective.
        OSError: `path` could not be written.

    Example:
        >>> analysis.pareto_plot(analysis.load("ray_results/EXPERIMENT"))
    """
    others = exp.objectives[1:]
    if not others:
        raise InputError("no Pareto plot: val_loss was the search's only objective (see --objectives)", exp.path)
    front = exp.pareto()
    picked = (exp.summary or {}).get("best_trial")
    usable = exp.trials[~exp.trials["status"].isin([DIVERGED, ERRORED])].dropna(subset=["best_val_loss"])
    fig = NotebookFigure(figsize=(5.5 * len(others), 5), layout="constrained")
    axes = fig.subplots(1, len(others), squeeze=False).ravel()
    for ax, name in zip(axes, others):
        last = exp.cost(name)
        x = usable["trial_id"].map(last).to_numpy(dtype=float)
        faint = (usable["status"] == ASHA_STOPPED).to_numpy()
        ax.scatter(x[~faint], usable["best_val_loss"][~faint], color="tab:blue", label="finished", zorder=3)
        ax.scatter(x[faint], usable["best_val_loss"][faint], color="tab:blue", alpha=0.3,
                   label="stopped early by ASHA", zorder=2)
        ordered = front.sort_values(name)
        ax.scatter(ordered[name], ordered["val_loss"], s=160, facecolors="none", edgecolors="tab:red",
                   linewidths=1.8, label="Pareto front (all objectives)", zorder=4)
        if len(others) == 1:  # with two objectives the front is a staircase
            ax.step(ordered[name], ordered["val_loss"], where="post", color="tab:red", alpha=0.6, zorder=1)
        for _, row in ordered.iterrows():
            ax.annotate(row["trial_id"], (row[name], row["val_loss"]), textcoords="offset points", xytext=(6, 6),
                        fontsize=7)
        chosen = usable[usable["trial_id"] == picked]
        if len(chosen):
            ax.scatter(chosen["trial_id"].map(last), chosen["best_val_loss"], marker="*", s=320, color="gold",
                       edgecolors="black", label=f"handed back ({(exp.summary or {}).get('pick', 'best')})",
                       zorder=5)
        if name in ("params", "flops") and np.nanmax(x) / max(np.nanmin(x), 1e-12) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(f"{name}: {UNITS[name]}")
        ax.set_ylabel("best val loss (BCE)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="center right")
    fig.suptitle(f"Pareto front of {exp.name}: {len(front)} of {counted(len(usable), 'trial')} "
                 f"({', '.join(exp.objectives)})")
    return finish_figure(fig, path)

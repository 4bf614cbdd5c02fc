"""The ROC picture face verification reads: false accept rate on a log axis (the operating points that matter sit
at FAR 1e-2 and 1e-3), each curve with its AUC, its TAR at those FARs marked, and the val-chosen threshold.
Used by the search's report and by `tune-siamese evaluate --out`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tune_siamese.core import storage
from tune_siamese.training.metrics import TAR_AT_FAR

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def operating_point(scores: dict[str, Any]) -> tuple[float, float] | None:
    """(FPR, TPR) at the val-chosen threshold, as final.json stores it; None for a record from before."""
    if "threshold_fpr" not in scores or "threshold_tpr" not in scores:
        return None
    return float(scores["threshold_fpr"]), float(scores["threshold_tpr"])


def lowest_far(curves: list[tuple[dict[str, Any], str]]) -> float:
    """The log axis's left end: half the smallest FAR a curve can show (one different-person pair accepted), so
    that FAR 0 is drawn at the edge rather than lost."""
    positive = [f for scores, _ in curves for f in scores["roc_fpr"] if f > 0]
    return min([*positive, min(TAR_AT_FAR)]) / 2


def roc_figure(curves: list[tuple[dict[str, Any], str]], path: str | Path, title: str = "Test ROC") -> Path:
    """`curves`: (scores with roc_fpr/roc_tpr as pair_metrics gives them, label); each gets its own colour."""
    from matplotlib.figure import Figure  # not at the top: `evaluate` without --out needs no matplotlib

    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.add_subplot()
    left = lowest_far(curves)
    for (scores, label), colour in zip(curves, COLOURS):
        fpr = [max(f, left) for f in scores["roc_fpr"]]
        ax.plot(fpr, scores["roc_tpr"], color=colour, linewidth=2, drawstyle="steps-post",
                label=f"{label} (AUC {scores['auc']:.3f})")
        for far, marker in zip(TAR_AT_FAR, ("s", "D")):
            tar = scores.get(f"tar_at_far_{far:g}")
            if tar is not None:
                ax.plot(far, tar, marker=marker, markersize=8, color=colour, markeredgecolor="black",
                        linestyle="none", zorder=5, label=f"TAR at FAR {far:g}: {tar:.3f}")
        point = operating_point(scores)
        if point is not None:
            ax.plot(max(point[0], left), point[1], marker="o", markersize=9, color=colour, markeredgecolor="black",
                    linestyle="none", zorder=5, label=f"val-chosen threshold: FAR {point[0]:.3f}, TAR "
                                                      f"{point[1]:.3f}, accuracy {scores['accuracy_at_threshold']:.3f}")
    chance = [left * (10 ** (i / 20)) for i in range(0, 200) if left * (10 ** (i / 20)) <= 1]
    ax.plot(chance, chance, color="grey", linestyle=":", label="chance")
    for far in TAR_AT_FAR:
        ax.axvline(far, color="grey", linewidth=0.6, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlim(left, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate, FAR (different-person pairs accepted; log scale, 0 at the left edge)")
    ax.set_ylabel("true accept rate, TAR (same-person pairs accepted)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=7.5)
    ax.grid(alpha=0.3, which="both")
    path = Path(path)
    with storage.replacing(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path

"""Scores of a model's logits on labelled pairs, in NumPy: loss, accuracy, AUC, the decision threshold chosen on
validation, TAR at FAR, whether an AUC beats chance, and (with each pair's people) 95 % intervals."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from tune_siamese.training.intervals import bootstrap_intervals

# best_threshold's bound: roc_curve's first threshold is +inf (accept no pair), kept when nothing does better.
THRESHOLD_LIMIT = 1e6


def best_threshold(labels: np.ndarray, logits: np.ndarray, balanced: bool = False) -> float:
    """The logit threshold that maximises accuracy on these (validation) pairs; `balanced`: the mean of the two
    classes' accuracies, so that ten times more different-person pairs do not pull it towards "different".
    Where no threshold beats rejecting every pair (the pairs carry no signal) it is THRESHOLD_LIMIT."""
    fpr, tpr, thresholds = roc_curve(labels, logits)
    positives = labels.sum()
    if balanced:
        accuracy = (tpr + 1 - fpr) / 2
    else:
        accuracy = (tpr * positives + (1 - fpr) * (len(labels) - positives)) / len(labels)
    return float(np.clip(thresholds[int(np.argmax(accuracy))], -THRESHOLD_LIMIT, THRESHOLD_LIMIT))


def threshold_note(threshold_logit: float) -> str | None:
    """What a decision threshold means when it decides every pair the same way (best_threshold's "reject
    everything"), for the summary and final.json; None for a threshold that separates pairs."""
    if threshold_logit < THRESHOLD_LIMIT:
        return None
    return (f"the decision threshold (logit {threshold_logit:g}) rejects every pair: on the val pairs that chose it "
            "no threshold beat rejecting them all, so the model's scores there carry no signal")


def chance_check(auc: float, labels: np.ndarray, scored_on: str) -> dict[str, Any]:
    """Whether an AUC on pairs with these labels is no better than chance: at most the AUC that a model without
    any signal exceeds one time in 20, 0.5 + 1.645 standard errors of the AUC under that null (the Mann-Whitney
    statistic's variance (n1 + n2 + 1) / (12 n1 n2); 0.530 on DevTest's 500 + 500 pairs, 0.564 on 110 + 110 val
    pairs). An AUC that is not a number counts as no better."""
    same = int((labels > 0.5).sum())
    different = len(labels) - same
    bound = 0.5 + 1.645 * math.sqrt((same + different + 1) / (12 * same * different)) if same and different else 1.0
    return {"scored_on": scored_on, "auc": auc, "chance_bound": bound,
            "no_better_than_chance": not auc > bound, "pairs": {"same": same, "different": different}}


def _mean(values: np.ndarray, same: np.ndarray, balanced: bool) -> float:
    """The mean over pairs, or with `balanced` the mean of the same- and different-person pairs' means."""
    if balanced:
        return float(0.5 * values[same].mean() + 0.5 * values[~same].mean())
    return float(np.mean(values))


def pair_metrics(labels: np.ndarray, logits: np.ndarray, threshold: float | None = None,
                 with_roc: bool = False, balanced: bool = False,
                 people: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Loss, accuracy at logit 0 and AUC (and at `threshold`, with ROC points); `balanced` weighs each class half
    whatever its count (validation over all pairs among its people, where different-person pairs outnumber).
    With ROC points and `people` (each pair's two people), every score but the loss gets `<name>_ci`, its 95 %
    interval from a bootstrap over people (tune_siamese.intervals)."""
    labels = labels.astype(np.float64)
    same = labels > 0.5
    balanced = balanced and bool(same.any() and (~same).any())
    losses = np.logaddexp(0, logits) - labels * logits  # BCE with logits, numerically stable
    metrics: dict[str, Any] = {"loss": _mean(losses, same, balanced),
                               "accuracy": _mean((logits > 0) == same, same, balanced)}
    metrics["auc"] = float(roc_auc_score(labels, logits)) if 0 < labels.sum() < len(labels) else float("nan")
    if threshold is not None:
        metrics["threshold_logit"] = threshold
        metrics["accuracy_at_threshold"] = _mean((logits >= threshold) == same, same, balanced)
    if with_roc:
        fpr, tpr, _ = roc_curve(labels, logits)
        metrics["roc_fpr"], metrics["roc_tpr"] = fpr.tolist(), tpr.tolist()
        for far in TAR_AT_FAR:
            metrics[f"tar_at_far_{far:g}"] = tar_at_far(fpr, tpr, far)
        if threshold is not None:  # where the threshold sits on that curve, by the rule accuracy_at_threshold uses
            accepted = logits >= threshold
            metrics["threshold_fpr"] = float(accepted[~same].mean()) if (~same).any() else float("nan")
            metrics["threshold_tpr"] = float(accepted[same].mean()) if same.any() else float("nan")
        if people is not None and same.any() and (~same).any():
            thresholds = {"accuracy": (0.0, True), **({} if threshold is None else
                                                       {"accuracy_at_threshold": (threshold, False)})}
            fars = {f"tar_at_far_{far:g}": far for far in TAR_AT_FAR}
            intervals = bootstrap_intervals(labels, logits, people[0], people[1], thresholds, fars)
            metrics.update({f"{name}_ci": interval for name, interval in intervals.items()})
    return metrics


# What face verification reports: the share of same-person pairs accepted when at most this share of
# different-person pairs is.
TAR_AT_FAR = (1e-2, 1e-3)


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """The true accept rate at the best threshold whose false accept rate is at most `far` (ROC points; with 500
    different-person pairs a FAR of 1e-3 means no false accept at all)."""
    allowed = fpr <= far
    return float(tpr[allowed].max()) if allowed.any() else 0.0

"""95 % intervals for test scores: a bootstrap that resamples people, not pairs.

Pairs share people (one person's photos sit in many pairs), so resampling pairs as if independent gives intervals
that are too narrow. Here the people are drawn with replacement and a pair counts as often as its people were
drawn together: the product of their draw counts, or one person's count for a same-person pair (Owen's
"pigeonhole" bootstrap for crossed data, 2007). Each count averages 1, so a resample weighs every pair 1 on average.
Pure NumPy and scikit-learn: no torch, no Ray.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

LEVEL = 0.95
RESAMPLES = 1000

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], float]  # (labels, logits, weights) -> value


def accuracy_at(threshold: float) -> Metric:
    """Weighted share of pairs decided right with `logit >= threshold` meaning "same person"."""
    def metric(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray) -> float:
        return float(np.average((logits >= threshold) == (labels > 0.5), weights=weights))
    return metric


def auc(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray) -> float:
    return float(roc_auc_score(labels, logits, sample_weight=weights))


def tar_at(far: float) -> Metric:
    """True accept rate at the best threshold whose false accept rate is at most `far` (as engine.tar_at_far)."""
    def metric(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray) -> float:
        fpr, tpr, _ = roc_curve(labels, logits, sample_weight=weights)
        allowed = fpr <= far
        return float(tpr[allowed].max()) if allowed.any() else 0.0
    return metric


def person_weights(person_a: np.ndarray, person_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One resample's weight for each pair: the people drawn with replacement, each pair counted by its people's
    draws (see the module's docstring)."""
    people, index = np.unique(np.concatenate([person_a, person_b]), return_inverse=True)
    draws = np.bincount(rng.integers(0, len(people), len(people)), minlength=len(people)).astype(np.float64)
    a, b = index[:len(person_a)], index[len(person_a):]
    return np.where(a == b, draws[a], draws[a] * draws[b])


def bootstrap_intervals(labels: np.ndarray, logits: np.ndarray, person_a: np.ndarray, person_b: np.ndarray,
                        metrics: dict[str, Metric], resamples: int = RESAMPLES, seed: int = 0,
                        level: float = LEVEL) -> dict[str, list[float]]:
    """{name: [low, high]}: the central `level` interval of each metric over `resamples` person resamples.

    A resample left with one class only (every same-person or every different-person pair drawn zero times) says
    nothing about AUC or accuracy at a threshold; it is drawn again, so every interval rests on `resamples`."""
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    rng = np.random.default_rng(seed)
    same = labels > 0.5
    values: dict[str, list[float]] = {name: [] for name in metrics}
    accepted = 0
    for _ in range(20 * resamples):
        weights = person_weights(person_a, person_b, rng)
        if not (weights[same].sum() > 0 and weights[~same].sum() > 0):
            continue
        kept = weights > 0
        for name, metric in metrics.items():
            values[name].append(metric(labels[kept], logits[kept], weights[kept]))
        accepted += 1
        if accepted == resamples:
            break
    else:
        raise ValueError("too few people in both kinds of pairs to bootstrap")
    tail = (1 - level) / 2 * 100
    return {name: [float(np.percentile(found, tail)), float(np.percentile(found, 100 - tail))]
            for name, found in values.items()}

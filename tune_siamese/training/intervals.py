"""95 % intervals for test scores: a bootstrap that resamples people, not pairs.

Pairs share people (one person's photos sit in many pairs), so resampling pairs as if independent gives intervals
that are too narrow. Here the people are drawn with replacement and a pair counts as often as its people were
drawn together: the product of their draw counts, or one person's count for a same-person pair (Owen's
"pigeonhole" bootstrap for crossed data, 2007). Each count averages 1, so a resample weighs every pair 1 on average.

All resamples are scored at once: one sort of the logits, then cumulative weights per resample give each
resample's ROC curve, so 1000 resamples of 1000 pairs take well under a second. Pure NumPy: no torch, no Ray.
"""
from __future__ import annotations

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000


def person_weights(person_a: np.ndarray, person_b: np.ndarray, resamples: int, rng: np.random.Generator
                   ) -> np.ndarray:
    """[resamples, pairs] weights: in each resample the people are drawn with replacement and each pair counted
    by its people's draws (see the module's docstring)."""
    people, index = np.unique(np.concatenate([person_a, person_b]), return_inverse=True)
    n = len(people)
    picks = rng.integers(0, n, (resamples, n)) + n * np.arange(resamples)[:, None]
    draws = np.bincount(picks.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)
    a, b = index[:len(person_a)], index[len(person_a):]
    return np.where(a == b, draws[:, a], draws[:, a] * draws[:, b])


def weighted_scores(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray,
                    thresholds: dict[str, tuple[float, bool]], fars: dict[str, float]) -> dict[str, np.ndarray]:
    """Per row of `weights`: accuracy at each threshold ((logit, strict): strict means logit > t decides "same",
    else logit >= t), the AUC, and the true accept rate at each false accept rate (as metrics.tar_at_far)."""
    same = labels > 0.5
    total = weights.sum(axis=1)
    scores = {name: (weights @ (((logits > t) if strict else (logits >= t)) == same)) / total
              for name, (t, strict) in thresholds.items()}
    order = np.argsort(-logits, kind="stable")
    ranked = logits[order]
    group_ends = np.r_[ranked[1:] != ranked[:-1], True]  # tied logits move the ROC together
    w = weights[:, order]
    accepted_same = np.cumsum(np.where(same[order], w, 0), axis=1)[:, group_ends]
    accepted_diff = np.cumsum(np.where(same[order], 0, w), axis=1)[:, group_ends]
    zero = np.zeros((len(weights), 1))
    tpr = np.hstack([zero, accepted_same / accepted_same[:, -1:]])
    fpr = np.hstack([zero, accepted_diff / accepted_diff[:, -1:]])
    scores["auc"] = np.sum((fpr[:, 1:] - fpr[:, :-1]) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
    for name, far in fars.items():
        scores[name] = np.where(fpr <= far, tpr, 0.0).max(axis=1)
    return scores


def bootstrap_intervals(labels: np.ndarray, logits: np.ndarray, person_a: np.ndarray, person_b: np.ndarray,
                        thresholds: dict[str, tuple[float, bool]], fars: dict[str, float],
                        resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict[str, list[float]]:
    """{name: [low, high]}: the central `level` interval of each score over `resamples` person resamples.

    A resample left with one kind of pair only (every same-person or every different-person pair drawn zero
    times) says nothing about AUC or accuracy; it is drawn again, so every interval rests on `resamples`."""
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    same = labels > 0.5
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    for _ in range(20):
        weights = person_weights(person_a, person_b, resamples, rng)
        kept += [w for w in weights if w[same].sum() > 0 and w[~same].sum() > 0]
        if len(kept) >= resamples:
            break
    else:
        raise ValueError("too few people in both kinds of pairs to bootstrap")
    scores = weighted_scores(labels, logits, np.array(kept[:resamples]), thresholds, fars)
    tail = (1 - level) / 2 * 100
    return {name: [float(np.percentile(found, tail)), float(np.percentile(found, 100 - tail))]
            for name, found in scores.items()}

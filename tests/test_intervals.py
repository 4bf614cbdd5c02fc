"""The people bootstrap behind the test scores' 95 % intervals (tune_siamese.intervals)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tune_siamese.intervals import accuracy_at, auc, bootstrap_intervals, person_weights, tar_at


def scored_pairs(people: int, pairs: int, person_effect: float, seed: int = 0):
    """Half same-person, half different-person pairs over `people` people; each person shifts the logits of its
    pairs by a shared amount (a face that is easy or hard for the model), which makes pairs of one person alike."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, person_effect, people)
    a = rng.integers(0, people, pairs)
    labels = (np.arange(pairs) < pairs // 2).astype(float)
    b = np.where(labels > 0, a, (a + rng.integers(1, people, pairs)) % people)
    logits = rng.normal(labels * 1.5 - 0.75, 1.0) + effect[a] * np.where(labels > 0, 1, -1)
    return labels, logits, a, b


def test_interval_contains_the_point_estimate_and_repeats_with_its_seed():
    labels, logits, a, b = scored_pairs(people=120, pairs=600, person_effect=0.5)
    metrics = {"auc": auc, "accuracy": accuracy_at(0.0), "tar": tar_at(1e-2)}
    found = bootstrap_intervals(labels, logits, a, b, metrics, resamples=300, seed=3)
    point = {"auc": roc_auc_score(labels, logits), "accuracy": np.mean((logits >= 0) == (labels > 0)),
             "tar": tar_at(1e-2)(labels, logits, np.ones_like(labels))}
    for name, (low, high) in found.items():
        assert low <= point[name] <= high and low < high, name
    assert bootstrap_intervals(labels, logits, a, b, metrics, resamples=300, seed=3) == found


def test_pairs_of_the_same_people_widen_the_interval_beyond_a_pair_bootstrap():
    """With few people whose pairs move together, resampling pairs as if independent understates the spread."""
    labels, logits, a, b = scored_pairs(people=15, pairs=600, person_effect=1.5)
    low, high = bootstrap_intervals(labels, logits, a, b, {"auc": auc}, resamples=300)["auc"]
    rng = np.random.default_rng(0)
    by_pairs = []
    for _ in range(300):
        pick = rng.integers(0, len(labels), len(labels))
        by_pairs.append(roc_auc_score(labels[pick], logits[pick]))
    pair_width = np.percentile(by_pairs, 97.5) - np.percentile(by_pairs, 2.5)
    assert high - low > 1.5 * pair_width


def test_a_pair_counts_as_often_as_its_people_were_drawn():
    a, b = np.array([0, 0, 1]), np.array([0, 1, 2])  # a same-person pair, then two different-person pairs
    for seed in range(20):
        rng = np.random.default_rng(seed)
        weights = person_weights(a, b, rng)
        draws = np.bincount(np.random.default_rng(seed).integers(0, 3, 3), minlength=3)
        assert weights.tolist() == [draws[0], draws[0] * draws[1], draws[1] * draws[2]]


def test_one_kind_of_pair_only_is_refused():
    labels, logits = np.ones(4), np.zeros(4)
    with pytest.raises(ValueError):
        bootstrap_intervals(labels, logits, np.arange(4), np.arange(4), {"auc": auc}, resamples=10)

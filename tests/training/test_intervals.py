"""The people bootstrap behind the test scores' 95 % intervals (tune_siamese.training.intervals)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tune_siamese.training.intervals import bootstrap_intervals, person_weights, weighted_scores
from tune_siamese.training.metrics import pair_metrics

THRESHOLDS = {"accuracy": (0.0, True), "accuracy_at_threshold": (0.3, False)}
FARS = {"tar_at_far_0.01": 1e-2, "tar_at_far_0.001": 1e-3}


def scored_pairs(people: int, pairs: int, person_effect: float, seed: int = 0):
    """Half same-person, half different-person pairs over `people` people; each person shifts the logits of its
    pairs by a shared amount (a face that is easy or hard for the model), which makes pairs of one person alike."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, person_effect, people)
    a = rng.integers(0, people, pairs)
    labels = (np.arange(pairs) < pairs // 2).astype(float)
    b = np.where(labels > 0, a, (a + rng.integers(1, people, pairs)) % people)
    logits = np.round(rng.normal(labels * 1.5 - 0.75, 1.0) + effect[a] * np.where(labels > 0, 1, -1), 1)  # ties
    return labels, logits, a, b


def test_weighted_scores_agree_with_the_unweighted_metrics_and_with_repeated_pairs():
    labels, logits, a, b = scored_pairs(people=80, pairs=500, person_effect=0.5)
    metrics = pair_metrics(labels, logits, threshold=0.3, with_roc=True)
    ones = weighted_scores(labels, logits, np.ones((1, len(labels))), THRESHOLDS, FARS)
    for name in ("accuracy", "accuracy_at_threshold", "auc", *FARS):
        assert ones[name][0] == pytest.approx(metrics[name], abs=1e-12), name
    # An integer weight is the pair repeated that many times.
    weights = np.random.default_rng(1).integers(0, 4, len(labels)).astype(float)
    repeated = np.repeat(np.arange(len(labels)), weights.astype(int))
    found = weighted_scores(labels, logits, weights[None, :], THRESHOLDS, FARS)
    assert found["auc"][0] == pytest.approx(roc_auc_score(labels[repeated], logits[repeated]), abs=1e-12)
    assert found["accuracy"][0] == pytest.approx(np.mean((logits[repeated] > 0) == (labels[repeated] > 0)))


def test_interval_contains_the_point_estimate_and_repeats_with_its_seed():
    labels, logits, a, b = scored_pairs(people=120, pairs=600, person_effect=0.5)
    found = bootstrap_intervals(labels, logits, a, b, THRESHOLDS, FARS, resamples=300, seed=3)
    point = pair_metrics(labels, logits, threshold=0.3, with_roc=True)
    for name, (low, high) in found.items():
        assert low <= point[name] <= high and low < high, name
    assert bootstrap_intervals(labels, logits, a, b, THRESHOLDS, FARS, resamples=300, seed=3) == found


def test_pairs_of_the_same_people_widen_the_interval_beyond_a_pair_bootstrap():
    """With few people whose pairs move together, resampling pairs as if independent understates the spread."""
    labels, logits, a, b = scored_pairs(people=15, pairs=600, person_effect=1.5)
    low, high = bootstrap_intervals(labels, logits, a, b, {}, {}, resamples=300)["auc"]
    rng = np.random.default_rng(0)
    by_pairs = []
    for _ in range(300):
        pick = rng.integers(0, len(labels), len(labels))
        by_pairs.append(roc_auc_score(labels[pick], logits[pick]))
    pair_width = np.percentile(by_pairs, 97.5) - np.percentile(by_pairs, 2.5)
    assert high - low > 1.5 * pair_width


def test_a_pair_counts_as_often_as_its_people_were_drawn():
    a, b = np.array([0, 0, 1]), np.array([0, 1, 2])  # a same-person pair, then two different-person pairs
    weights = person_weights(a, b, 50, np.random.default_rng(0))
    draws = np.stack([np.bincount(row, minlength=3) for row in np.random.default_rng(0).integers(0, 3, (50, 3))])
    assert weights.tolist() == np.stack([draws[:, 0], draws[:, 0] * draws[:, 1], draws[:, 1] * draws[:, 2]], 1).tolist()


def test_one_kind_of_pair_only_is_refused():
    with pytest.raises(ValueError):
        bootstrap_intervals(np.ones(4), np.zeros(4), np.arange(4), np.arange(4), {}, {}, resamples=10)

"""val_pairs="all": every same-person pair among the validation identities plus seeded different-person pairs,
scored with each class weighing half; never a test or training identity."""
from __future__ import annotations

import dataclasses
from itertools import combinations

import numpy as np
import pytest
import torch
from helpers import real_lfw_root

from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.data import (
    DIFFERENT_PER_SAME,
    PairData,
    all_validation_pairs,
    load_data,
    split_for_all_pairs,
    split_validation,
)
from tune_siamese.training.engine import fit
from tune_siamese.training.metrics import best_threshold, pair_metrics
from tune_siamese.training.model import build_model
from tune_siamese.training.scoring import images_on, predict, predict_by_image, val_and_test


def hand_made(counts: dict[int, int], val: list[tuple[int, int]], train: list[tuple[int, int]],
              test: list[tuple[int, int]]) -> PairData:
    """A PairData whose person k has counts[k] images; pairs name people, each (first image of a, last of b)."""
    identity = np.concatenate([np.full(n, k, np.int32) for k, n in sorted(counts.items())])
    first = {k: int(np.flatnonzero(identity == k)[0]) for k in counts}
    last = {k: int(np.flatnonzero(identity == k)[-1]) for k in counts}

    def rows(people: list[tuple[int, int]]) -> np.ndarray:
        return np.array([(first[a], last[b], int(a == b)) for a, b in people], dtype=np.int64)

    return PairData(np.zeros((len(identity), 8, 8), np.uint8), identity, [f"p{k}" for k in sorted(counts)],
                    rows(train), rows(val), rows(test))


# Train people 0-3, validation people 4-7 (3, 2, 1 and 4 images), test people 8-9.
COUNTS = {0: 2, 1: 2, 2: 2, 3: 2, 4: 3, 5: 2, 6: 1, 7: 4, 8: 2, 9: 2}
VAL = [(4, 4), (5, 6), (7, 7)]
TRAIN = [(0, 0), (1, 2), (3, 3)]
TEST = [(8, 8), (8, 9)]


def check_rows(data: PairData, rows: np.ndarray) -> None:
    """Labels match the people, no pair repeats (either order), no image is paired with itself."""
    ids = data.identity[rows[:, :2]]
    assert np.array_equal(rows[:, 2] == 1, ids[:, 0] == ids[:, 1])
    assert (rows[:, 0] != rows[:, 1]).all()
    assert len({(min(a, b), max(a, b)) for a, b, _ in rows.tolist()}) == len(rows)


def test_every_same_person_combination_and_the_different_share():
    data = hand_made(COUNTS, VAL, TRAIN, TEST)
    people = {4, 5, 6, 7}
    images = np.flatnonzero(np.isin(data.identity, list(people)))
    expected_same = {(a, b) for a, b in combinations(images.tolist(), 2) if data.identity[a] == data.identity[b]}
    assert len(expected_same) == 3 + 1 + 0 + 6  # C(3,2) + C(2,2) + C(1,2) + C(4,2)
    every_diff = len(list(combinations(images.tolist(), 2))) - len(expected_same)

    rows = all_validation_pairs(data, seed=0)  # 10 per same pair, more than exist: all of them
    check_rows(data, rows)
    assert {(a, b) for a, b, y in rows.tolist() if y} == expected_same
    assert int((rows[:, 2] == 0).sum()) == every_diff == 35
    assert data.identities_of(rows) == people
    fewer = all_validation_pairs(data, seed=0, different_per_same=2)
    check_rows(data, fewer)
    assert same_and_different(fewer) == (10, 20)


def same_and_different(rows: np.ndarray) -> tuple[int, int]:
    return int(rows[:, 2].sum()), int((rows[:, 2] == 0).sum())


def test_many_images_draw_distinct_different_pairs():
    # 30 validation people x 5 images: 300 same pairs, 10875 different ones; 1 per same pair is drawn, not listed.
    counts = {k: 5 for k in range(34)}
    data = hand_made(counts, [(k, k) for k in range(4, 34)], [(0, 0), (1, 2)], [(3, 3)])
    rows = all_validation_pairs(data, seed=0, different_per_same=1)
    check_rows(data, rows)
    assert same_and_different(rows) == (300, 300)
    assert data.identities_of(rows) == set(range(4, 34))


@pytest.mark.parametrize("where", ["test", "train"])
def test_a_validation_person_in_test_or_training_pairs_is_refused(where):
    test, train = (TEST + [(9, 7)], TRAIN) if where == "test" else (TEST, TRAIN + [(0, 5)])
    data = hand_made(COUNTS, VAL, train, test)
    with pytest.raises(InputError, match=f"validation identities also appear in the {where}"):
        all_validation_pairs(data, seed=0)


def test_nothing_to_pair_is_refused():
    data = hand_made({0: 2, 1: 1, 2: 1, 3: 2}, [(1, 2)], [(0, 0)], [(3, 3)])
    with pytest.raises(InputError, match="no two images of one person"):
        all_validation_pairs(data, seed=0)


def test_the_split_for_all_pairs_holds_out_people_for_their_same_person_pairs():
    # Ten people, two images each, one same-person pair each; people 0-3 also sit in different-person pairs.
    identity = np.repeat(np.arange(10, dtype=np.int32), 2)
    same = [(2 * k, 2 * k + 1, 1) for k in range(10)]
    pairs = np.array(same + [(0, 2, 0), (2, 4, 0), (4, 6, 0)], dtype=np.int64)
    for seed in range(3):
        train, val, dropped = split_for_all_pairs(pairs, identity, 0.5, np.random.default_rng(seed))
        assert (len(val), dropped) == (6, 0) and val[:, 2].all()  # budget 6: six people who cost a pair each
        assert set(identity[val[:, 0]].tolist()) == set(range(4, 10))
        # budget 10: all six cheap people, then 0 and 3 (two pairs each; 1 and 2 cost three)
        train, val, dropped = split_for_all_pairs(pairs, identity, 0.7, np.random.default_rng(seed))
        assert set(identity[val[:, 0]].tolist()) == {0, 3, 4, 5, 6, 7, 8, 9} and val[:, 2].all()
        assert dropped == 2 and sorted(map(tuple, train.tolist())) == [(2, 3, 1), (2, 4, 0), (4, 5, 1)]
    # the default split on the same pairs holds out as many pairs, half of them different-person ones
    _, given, _ = split_validation(pairs, identity, 0.5, "identity", np.random.default_rng(0))
    assert len(given) == 6 and int(given[:, 2].sum()) == 3


def test_lfw_folder_with_all_pairs_keeps_the_training_cost(fake_lfw):
    config = Config(data=str(fake_lfw), image_size=72, val_fraction=0.4)
    given, data = load_data(config), load_data(config.replace(val_pairs="all"))
    assert data.val_all is not None and data.val[:, 2].any()  # given pairs among the held-out people
    # at most as many pairs leave training as the default split holds out for validation (it drops more here)
    assert len(data.val) + data.info["dropped_pairs"] <= len(given.val) <= len(given.val) + given.info["dropped_pairs"]
    assert len(data.train) + len(data.val) + data.info["dropped_pairs"] == 12  # the 6 + 6 DevTrain lines
    check_rows(data, data.val_all)
    people = data.identities_of(data.val_all)
    assert people == data.identities_of(data.val)
    assert not people & (data.identities_of(data.train) | data.identities_of(data.test))


def test_random_split_refuses_all_pairs():
    with pytest.raises(InputError, match="val_pairs='all' needs val_split='identity'"):
        Config(val_pairs="all", val_split="random")
    with pytest.raises(InputError, match="val_pairs='some'"):
        Config(val_pairs="some")


def test_synthetic_all_pairs_are_disjoint_seeded_and_leave_the_split_alone(tiny_config):
    given = load_data(tiny_config())
    data = load_data(tiny_config(val_pairs="all"))
    assert given.val_all is None and given.val_scored is given.val and "val_pairs" not in given.info
    assert data.val_all is not None and data.val_scored is data.val_all
    for name in ("train", "val", "test"):  # the split itself is the default's
        assert np.array_equal(getattr(data, name), getattr(given, name))
    check_rows(data, data.val_all)
    people = data.identities_of(data.val_all)
    assert people == data.identities_of(data.val)
    assert not people & data.identities_of(data.test) and not people & data.identities_of(data.train)
    same, diff = same_and_different(data.val_all)
    members = np.bincount(data.identity)[sorted(people)]
    assert same == int((members * (members - 1) // 2).sum())
    assert diff == DIFFERENT_PER_SAME * same
    assert (data.info["val_scored_pairs"], data.info["val_scored_same"]) == (same + diff, same)

    again = load_data(tiny_config(val_pairs="all"))
    assert np.array_equal(again.val_all, data.val_all)  # fixed by data_seed (+3, like the split's +2)
    assert np.array_equal(all_validation_pairs(given, seed=tiny_config().data_seed + 3), data.val_all)
    other = all_validation_pairs(given, seed=tiny_config().data_seed + 4)  # what data_seed=1 would draw
    assert not np.array_equal(other, data.val_all) and same_and_different(other) == (same, diff)
    assert {tuple(r) for r in other[other[:, 2] == 1].tolist()} == {tuple(r) for r in
                                                                     data.val_all[data.val_all[:, 2] == 1].tolist()}


def test_identity_folders_take_all_pairs_among_their_validation_group(identity_folder):
    config = Config(data=str(identity_folder), image_size=72)
    given, data = load_data(config), load_data(config.replace(val_pairs="all"))
    assert data.val_all is not None and np.array_equal(data.val, given.val)  # the groups are the default's
    check_rows(data, data.val_all)
    people = data.identities_of(data.val_all)
    assert people == data.identities_of(data.val)
    assert not people & (data.identities_of(data.train) | data.identities_of(data.test))


def test_balanced_loss_is_the_mean_of_the_class_means():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(5), np.zeros(45)]
    logits = rng.normal(0, 2, 50) + labels
    per_pair = np.logaddexp(0, logits) - labels * logits
    metrics = pair_metrics(labels, logits, threshold=0.3, balanced=True)
    assert metrics["loss"] == pytest.approx(0.5 * per_pair[:5].mean() + 0.5 * per_pair[5:].mean())
    assert metrics["loss"] != pytest.approx(per_pair.mean())  # 1:9 classes: the plain mean differs
    correct = (logits > 0) == (labels > 0.5)
    assert metrics["accuracy"] == pytest.approx(0.5 * correct[:5].mean() + 0.5 * correct[5:].mean())
    at = (logits >= 0.3) == (labels > 0.5)
    assert metrics["accuracy_at_threshold"] == pytest.approx(0.5 * at[:5].mean() + 0.5 * at[5:].mean())
    plain = pair_metrics(labels, logits)
    assert plain["loss"] == pytest.approx(per_pair.mean()) and plain["auc"] == metrics["auc"]


def test_balanced_threshold_maximises_the_mean_of_the_class_accuracies():
    # 4 same pairs, 40 different ones overlapping them: counting pairs pushes the threshold above every same pair.
    labels = np.r_[np.ones(4), np.zeros(40)]
    logits = np.r_[[0.5, 1.0, 1.5, 2.0], np.linspace(-3, 1.2, 40)]

    def balanced_accuracy(t: float) -> float:
        accept = logits >= t
        return 0.5 * accept[:4].mean() + 0.5 * (~accept[4:]).mean()

    best = max(balanced_accuracy(t) for t in logits)
    assert balanced_accuracy(best_threshold(labels, logits, balanced=True)) == pytest.approx(best)
    assert balanced_accuracy(best_threshold(labels, logits)) < best


def test_fit_scores_all_pairs_balanced_and_by_image(synthetic_small, tiny_config):
    config = tiny_config(max_epochs=1, val_pairs="all")
    data = dataclasses.replace(synthetic_small, val_all=all_validation_pairs(synthetic_small, seed=3))
    result = fit(config, data)
    metrics = result.history[-1]
    images = images_on(next(result.model.parameters()).device, data.images)
    expected = pair_metrics(data.val_all[:, 2], predict_by_image(result.model, images, data.val_all, config),
                            balanced=True)
    assert (metrics["val_loss"], metrics["val_auc"]) == pytest.approx((expected["loss"], expected["auc"]))
    some = data.val_all[:200]  # each image embedded once scores as the pair by pair forward does
    for check in (config.replace(precision="fp32"), config.replace(precision="fp32", tta_flip=True)):
        np.testing.assert_allclose(predict_by_image(result.model, images, some, check),
                                   predict(result.model, images, some, check), atol=1e-4)
    scores = val_and_test(result.model, images, data, config)
    assert scores["val"]["loss"] == pytest.approx(metrics["val_loss"])

    with pytest.raises(InputError, match="val_pairs='all' but the data were loaded with val_pairs='given'"):
        fit(config, synthetic_small)
    with pytest.raises(InputError, match="val_pairs='given' but the data were loaded with val_pairs='all'"):
        fit(tiny_config(max_epochs=1), data)


def test_default_scores_the_given_pairs_by_their_plain_mean(synthetic_small, tiny_config):
    config = tiny_config(max_epochs=1)
    result = fit(config, synthetic_small)
    images = images_on(next(result.model.parameters()).device, synthetic_small.images)
    logits = predict(result.model, images, synthetic_small.val, config)
    labels = synthetic_small.val[:, 2]
    assert result.history[-1]["val_loss"] == float(np.mean(np.logaddexp(0, logits) - labels * logits))
    scores = val_and_test(result.model, images, synthetic_small, config)
    threshold = best_threshold(labels, logits)
    assert scores["val"]["threshold_logit"] == threshold
    assert scores["val"]["accuracy_at_threshold"] == float(np.mean((logits >= threshold) == (labels > 0.5)))


def test_ensembles_score_all_pairs_pair_by_pair(synthetic_small, tiny_config):
    from tune_siamese.training.model import EnsembleNet

    config = tiny_config(val_pairs="all")
    data = dataclasses.replace(synthetic_small, val_all=all_validation_pairs(synthetic_small, seed=3)[:200])
    model = EnsembleNet([build_model(config), build_model(config)], [config, config])
    scores = val_and_test(model, images_on(torch.device("cpu"), data.images), data, model.config)
    assert 0.0 <= scores["val"]["auc"] <= 1.0 and np.isfinite(scores["val"]["loss"])


@pytest.fixture
def real_lfw(monkeypatch):
    """The real LFW-a pair lists and folder (as tests/data/test_lfw.py finds them), with the image decoding stubbed out:
    the splits and pairs need only the lists and the file names."""
    from tune_siamese.data import lfw as lfw_mod

    root = real_lfw_root()
    monkeypatch.setattr(lfw_mod, "cached", lambda key, build: {"images": np.zeros((4992, 1, 1), np.uint8)})
    return root


@pytest.mark.lfw
def test_real_lfw_all_pairs_double_the_same_person_half(real_lfw):
    config = Config(data=str(real_lfw), val_pairs="all")
    data = load_data(config)
    assert (len(data.train), int(data.train[:, 2].sum()), len(data.val), data.info["dropped_pairs"]) == \
        (1980, 880, 220, 0)  # the default's training cost; 220 people held out for one same-person pair each
    assert data.val_all is not None and same_and_different(data.val_all) == (220, 2200)
    people = data.identities_of(data.val_all)
    assert len(people) == 220 and not people & (data.identities_of(data.train) | data.identities_of(data.test))
    given = load_data(config.replace(val_pairs="given"))
    assert same_and_different(given.val) == (110, 110) and given.val_all is None

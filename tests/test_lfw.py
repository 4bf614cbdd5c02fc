"""The real LFW-a DevTrain/DevTest data beside the repo (default_lfw_root(): $TUNE_SIAMESE_LFW or
../shared/data/lfw-a). Missing data skips these tests, except under TUNE_SIAMESE_REQUIRE_LFW=1 (CI), where it
fails them."""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest

from tune_siamese import data as data_mod
from tune_siamese.data import default_lfw_root, load_data, parse_pair_list
from tune_siamese.engine import train_and_test

pytestmark = pytest.mark.lfw


@pytest.fixture(scope="module")
def lfw_root():
    root = default_lfw_root()
    if not (root / "pairsDevTrain.txt").is_file() or not (root / "pairsDevTest.txt").is_file():
        reason = f"real LFW-a data not found at {root.resolve()} (set TUNE_SIAMESE_LFW)"
        if os.environ.get("TUNE_SIAMESE_REQUIRE_LFW") == "1":
            pytest.fail(reason + " but TUNE_SIAMESE_REQUIRE_LFW=1")
        pytest.skip(reason)
    return root


@pytest.fixture(scope="module")
def lfw(lfw_root, tiny_config):
    return load_data(tiny_config(data=str(lfw_root), image_size=80))


def test_lfw_sizes(lfw):
    assert lfw.images.shape == (4992, 80, 80) and lfw.images.dtype == np.uint8
    assert (len(lfw.train), len(lfw.val), len(lfw.test)) == (1980, 220, 1000)
    assert int(lfw.test[:, 2].sum()) == 500
    assert int(lfw.val[:, 2].sum()) == 110  # balanced validation
    assert len(lfw.train) + len(lfw.val) + lfw.info["dropped_pairs"] == 2200
    assert lfw.images.std() > 20  # real faces, not an empty decode


def test_no_devtest_identity_in_train_or_val(lfw, lfw_root):
    test_names = {p.name_a for fold in parse_pair_list(lfw_root / "pairsDevTest.txt") for p in fold}
    test_names |= {p.name_b for fold in parse_pair_list(lfw_root / "pairsDevTest.txt") for p in fold}
    assert {lfw.names[i] for i in lfw.identities_of(lfw.test)} == test_names
    assert not lfw.identities_of(lfw.test) & (lfw.identities_of(lfw.train) | lfw.identities_of(lfw.val))


def test_val_is_identity_disjoint_from_train(lfw):
    assert not lfw.identities_of(lfw.val) & lfw.identities_of(lfw.train)
    labels = lfw.identity[lfw.train[:, 0]] == lfw.identity[lfw.train[:, 1]]
    assert labels.tolist() == (lfw.train[:, 2] == 1).tolist()


def test_second_load_does_not_decode(lfw, lfw_root, tiny_config, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("LFW decoded again although it is cached")

    monkeypatch.setattr(data_mod.lfw, "decode_images", refuse)
    again = load_data(tiny_config(data=str(lfw_root), image_size=80))
    for name in ("images", "identity", "train", "val", "test"):
        assert np.array_equal(getattr(again, name), getattr(lfw, name))


def test_one_epoch_on_real_faces(lfw, lfw_root, tiny_config):
    data = dataclasses.replace(lfw, test=lfw.test[::2])  # every other test pair keeps both labels
    result, report = train_and_test(tiny_config(data=str(lfw_root), image_size=80, max_epochs=1), data)
    assert len(result.history) == 1
    row = result.history[0]
    assert all(math.isfinite(row[k]) for k in ("train_loss", "val_loss", "val_auc"))
    for split in ("val", "test"):
        assert all(math.isfinite(report[split][k]) for k in ("loss", "auc", "accuracy_at_threshold"))
    assert 0.0 <= report["test"]["accuracy_at_threshold"] <= 1.0

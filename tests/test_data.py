"""Data layer: pair lists, folder loaders, the synthetic set, the validation split, mining and the cache.

Every folder here is built in tmp_path from PIL-generated images; none is a copy of real data.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from tune_siamese import data as data_mod
from tune_siamese.data import (PairData, PairMiner, balanced_pairs, identity_folder_files, load_data,
                               load_synthetic, parse_pair_list, render_synthetic, split_validation)
from tune_siamese.errors import InputError


def same_counts(pairs: np.ndarray) -> tuple[int, int]:
    return int((pairs[:, 2] == 1).sum()), int((pairs[:, 2] == 0).sum())


# --------------------------------------------------------------------------------------------------
# pair lists

def test_pair_list_tabs_and_spaces_parse_alike(tmp_path):
    tabs, spaces = tmp_path / "tabs.txt", tmp_path / "spaces.txt"
    tabs.write_text("2\nAnn\t1\t2\nBob\t3\t1\nAnn\t1\tBob\t2\nCid\t4\tAnn\t3\n")
    spaces.write_text("2  \nAnn 1  2\n\n  Bob   3 1\nAnn 1 Bob\t2\r\nCid 4 Ann 3\n")
    parsed_tabs, parsed_spaces = parse_pair_list(tabs), parse_pair_list(spaces)
    strip = [[(p.name_a, p.index_a, p.name_b, p.index_b, p.same) for p in fold] for fold in parsed_tabs]
    assert strip == [[(p.name_a, p.index_a, p.name_b, p.index_b, p.same) for p in fold] for fold in parsed_spaces]
    assert strip == [[("Ann", 1, "Ann", 2, True), ("Bob", 3, "Bob", 1, True),
                      ("Ann", 1, "Bob", 2, False), ("Cid", 4, "Ann", 3, False)]]
    assert [p.line for p in parsed_spaces[0]] == [2, 4, 5, 6]  # blank lines keep the numbering honest


def test_view2_header_gives_folds(tmp_path):
    lines = ["2 3"]
    for fold in range(2):
        lines += [f"P{fold}{k} 1 2" for k in range(3)]
        lines += [f"P{fold}{k} 1 Q{fold}{k} 1" for k in range(3)]
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    folds = parse_pair_list(path)
    assert len(folds) == 2 and [len(f) for f in folds] == [6, 6]
    assert [p.same for p in folds[1]] == [True] * 3 + [False] * 3
    assert folds[1][0].name_a == "P10" and folds[1][0].line == 8


def test_view2_folder_tests_on_the_last_fold(tmp_path, make_image, tiny_config):
    root = tmp_path / "lfw"
    lines = ["2 4"]
    for fold in range(2):
        people = [f"F{fold}_P{k}" for k in range(6)]
        for k, name in enumerate(people):
            for i in (1, 2):
                make_image(root / "lfw" / name / f"{name}_{i:04d}.jpg", seed=100 * fold + 10 * k + i)
        lines += [f"{people[k]}\t1\t2" for k in range(4)]
        lines += [f"{people[k]}\t1\t{people[k + 1]}\t2" for k in range(4)]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    data = load_data(tiny_config(data=str(root), val_split="random"))
    assert len(data.test) == 8 and same_counts(data.test) == (4, 4)
    assert {data.names[i] for i in data.identities_of(data.test)} == {f"F1_P{k}" for k in range(5)}
    assert len(data.train) + len(data.val) == 8


@pytest.mark.parametrize("text, line, message", [
    ("2\nAnn\t1\t2\nBob\t1\t2\t3\nAnn\t1\tBob\t2\nCid\t1\tAnn\t2\n", 3, "expected a same-person"),
    ("2\nAnn\t1\t2\nBob\t1\t2\nAnn\t1\tBob\nCid\t1\tAnn\t2\n", 4, "expected a different-person"),
    ("2\nAnn\t1\t2\nBob\t1\tx\nAnn\t1\tBob\t2\nCid\t1\tAnn\t2\n", 3, "must be integers"),
    ("2\nAnn\t1\t2\nBob\t1\t2\nAnn\t1\tBob\t2\n", 1, "header promises 1 fold"),
    ("1 2 3\nAnn\t1\t2\n", 1, "is not `N` or `folds N`"),
    ("two\nAnn\t1\t2\n", 1, "is not `N` or `folds N`"),
    ("0\n", 1, "positive counts"),
    ("", 1, "empty pair list"),
])
def test_bad_pair_list_names_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "pairsDevTrain.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(f"{path}:{line}: ") + ".*" + re.escape(message)):
        parse_pair_list(path)


def test_fake_lfw_loads(fake_lfw, tiny_config):
    data = load_data(tiny_config(data=str(fake_lfw)))
    assert data.images.dtype == np.uint8 and data.images.shape[1:] == (72, 72)
    assert len(data.test) == 4 and same_counts(data.test) == (2, 2)
    assert not data.identities_of(data.val) & data.identities_of(data.train)
    assert len(data.train) + len(data.val) + data.info["dropped_pairs"] == 12


def test_pair_naming_a_missing_image_names_it(fake_lfw, tiny_config):
    missing = fake_lfw / "lfw2" / "Person_B" / "Person_B_0002.jpg"
    missing.unlink()
    with pytest.raises(InputError, match=re.escape(f"{fake_lfw / 'pairsDevTrain.txt'}:3: pair names image "
                                                   f"{missing} which does not exist")):
        load_data(tiny_config(data=str(fake_lfw)))


def test_corrupt_image_names_the_file(fake_lfw, tiny_config):
    corrupt = fake_lfw / "lfw2" / "Person_C" / "Person_C_0001.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 3)
    with pytest.raises(InputError, match=re.escape(f"{corrupt}: unreadable or corrupt image")):
        load_data(tiny_config(data=str(fake_lfw)))


def test_missing_data_folder(tmp_path, tiny_config):
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'nowhere'}: data folder not found")):
        load_data(tiny_config(data=str(tmp_path / "nowhere")))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        load_data(tiny_config(data=str(tmp_path / "file.txt")))


# --------------------------------------------------------------------------------------------------
# identity folders

def test_identity_folder_mixed_formats(identity_folder, tiny_config):
    data = load_data(tiny_config(data=str(identity_folder)))
    assert data.images.shape == (72, 72, 72) and data.images.dtype == np.uint8
    assert len(data.names) == 24
    train, val, test = (data.identities_of(p) for p in (data.train, data.val, data.test))
    assert not train & val and not train & test and not val & test
    for pairs in (data.train, data.val, data.test):
        same, diff = same_counts(pairs)
        assert abs(same - diff) <= 1 and same > 0
        assert (data.identity[pairs[:, 0]] == data.identity[pairs[:, 1]]).tolist() == (pairs[:, 2] == 1).tolist()


def test_identity_folder_too_few_identities(tmp_path, make_image, tiny_config):
    root = tmp_path / "few"
    for p in range(3):
        for i in range(2):
            make_image(root / f"id{p}" / f"{i}.png", seed=p * 10 + i)
    (root / "empty").mkdir()
    (root / "not_images").mkdir()
    (root / "not_images" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=re.escape(f"{root}: identity folder needs at least 4 identities") +
                       ".*found 3 identities"):
        identity_folder_files(root)
    with pytest.raises(InputError, match="found 0 identities"):
        (tmp_path / "bare" / "a").mkdir(parents=True)
        load_data(tiny_config(data=str(tmp_path / "bare")))


def test_identity_folder_too_small_to_split_names_the_folder(tmp_path, make_image, tiny_config):
    root = tmp_path / "ten"
    for p in range(10):  # passes the 4-identity check, but the val group gets a single identity
        for i in range(3):
            make_image(root / f"id{p}" / f"{i}.png", seed=p * 10 + i)
    with pytest.raises(InputError, match=re.escape(f"{root}: too few identities") + ".*val_fraction=0.1"):
        load_data(tiny_config(data=str(root)))


# --------------------------------------------------------------------------------------------------
# synthetic

def test_synthetic_rendering_is_deterministic():
    images, identity = render_synthetic(6, 3, 72, seed=5)
    again, identity_again = render_synthetic(6, 3, 72, seed=5)
    other, _ = render_synthetic(6, 3, 72, seed=6)
    assert images.dtype == np.uint8 and images.shape == (18, 72, 72)
    assert np.array_equal(images, again) and np.array_equal(identity, identity_again)
    assert not np.array_equal(images, other)
    assert images.std() > 10  # not a blank canvas


def test_synthetic_pairs_are_seeded_and_identity_disjoint(tiny_config):
    first = load_synthetic(tiny_config(data_seed=3), n_identities=40, per_identity=4)
    second = load_synthetic(tiny_config(data_seed=3), n_identities=40, per_identity=4)
    other = load_synthetic(tiny_config(data_seed=4), n_identities=40, per_identity=4)
    for name in ("images", "trainval", "test", "val"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.images, other.images)
    assert not np.array_equal(first.trainval, other.trainval)


def test_synthetic_splits(tiny_config):
    data = load_data(tiny_config())
    assert (len(data.train), len(data.val), len(data.test)) == (1980, 220, 1000)
    train, val, test = (data.identities_of(p) for p in (data.train, data.val, data.test))
    assert not train & val and not train & test and not val & test
    assert same_counts(data.val) == (110, 110) and same_counts(data.test) == (500, 500)


# --------------------------------------------------------------------------------------------------
# validation split and mining

@pytest.fixture
def crowded_pairs():
    """Identities that occur in many pairs each, so an identity-disjoint split must drop some."""
    rng = np.random.default_rng(0)
    identity = np.repeat(np.arange(150), 4).astype(np.int32)
    return identity, balanced_pairs(identity, np.arange(150), 800, rng)


def test_split_validation_identity_mode(crowded_pairs):
    identity, pairs = crowded_pairs
    train, val, dropped = split_validation(pairs, identity, 0.1, "identity", np.random.default_rng(1))
    ids = lambda p: set(identity[p[:, 0]].tolist()) | set(identity[p[:, 1]].tolist())  # noqa: E731
    assert not ids(train) & ids(val)
    assert same_counts(val) == (40, 40)
    assert dropped == len(pairs) - len(train) - len(val) and dropped > 0
    # the pairs kept are pairs of the input, none repeated across train and val
    rows = {tuple(r) for r in pairs.tolist()}
    assert {tuple(r) for r in train.tolist()} <= rows and {tuple(r) for r in val.tolist()} <= rows


def test_split_validation_random_mode_keeps_every_pair(crowded_pairs):
    identity, pairs = crowded_pairs
    train, val, dropped = split_validation(pairs, identity, 0.1, "random", np.random.default_rng(1))
    assert dropped == 0 and len(train) + len(val) == len(pairs)
    assert same_counts(val) == (40, 40)
    together = np.concatenate([train, val])
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, pairs.tolist()))


def test_miner_only_uses_training_only_identities():
    identity = np.repeat(np.arange(20), 3).astype(np.int32)
    rng = np.random.default_rng(0)
    train = balanced_pairs(identity, np.arange(0, 15), 60, rng)  # identities 0-14
    val = balanced_pairs(identity, np.arange(10, 17), 20, rng)  # 10-16 overlap train
    test = balanced_pairs(identity, np.arange(14, 20), 20, rng)
    data = PairData(np.zeros((60, 8, 8), np.uint8), identity, [str(i) for i in range(20)], train, val, test)
    assert data.mining_identities.tolist() == list(range(10))
    mined = PairMiner(data, np.random.default_rng(1)).sample(400)
    assert len(mined) == 400 and same_counts(mined) == (200, 200)
    assert set(identity[mined[:, :2].ravel()].tolist()) <= set(range(10))


# --------------------------------------------------------------------------------------------------
# cache

def test_second_load_comes_from_the_cache(fake_lfw, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_SIAMESE_CACHE", str(tmp_path / "fresh-cache"))
    calls = []
    real = data_mod.decode_images
    monkeypatch.setattr(data_mod, "decode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = tiny_config(data=str(fake_lfw))
    first = load_data(config)
    assert calls == [1] and len(list((tmp_path / "fresh-cache").glob("lfw-*.npz"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds these images")

    monkeypatch.setattr(data_mod, "decode_images", refuse)
    second = load_data(config)
    for name in ("images", "identity", "train", "val", "test"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert first.names == second.names

    # the key follows file contents: a changed image is decoded again, never served stale
    shutil.copyfile(fake_lfw / "lfw2" / "Person_B" / "Person_B_0001.jpg",
                    fake_lfw / "lfw2" / "Person_A" / "Person_A_0001.jpg")
    with pytest.raises(AssertionError, match="decoded again"):
        load_data(config)


def test_synthetic_cache_skips_rendering(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_SIAMESE_CACHE", str(tmp_path / "fresh-cache"))
    first = load_synthetic(tiny_config(), n_identities=40, per_identity=4)
    monkeypatch.setattr(data_mod, "render_synthetic", lambda *a, **k: pytest.fail("rendered again"))
    second = load_synthetic(tiny_config(), n_identities=40, per_identity=4)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.trainval, second.trainval)


def test_broken_cache_file_is_rebuilt(fake_lfw, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_SIAMESE_CACHE", str(tmp_path / "fresh-cache"))
    config = tiny_config(data=str(fake_lfw))
    first = load_data(config)
    (cached,) = (tmp_path / "fresh-cache").glob("lfw-*.npz")
    cached.write_bytes(b"truncated")
    assert np.array_equal(load_data(config).images, first.images)

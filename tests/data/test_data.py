"""Data layer: pair lists, folder loaders, the synthetic set, the validation split, mining and the cache.

Every folder here is built in tmp_path from PIL-generated images; none is a copy of real data.
"""
from __future__ import annotations

import os
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tune_siamese import data as data_mod
from tune_siamese.core.errors import InputError
from tune_siamese.data import (
    PairData,
    PairMiner,
    balanced_pairs,
    decode_image,
    decode_images,
    identity_folder_files,
    load_data,
    load_synthetic,
    parse_pair_list,
    render_synthetic,
    split_validation,
)


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


def test_pair_list_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "pairsDevTrain.txt"
    path.write_bytes(b"1\nAnn\t1\t2\nRen\xe9\t1\tAnn\t2\n")  # Latin-1 e-acute
    with pytest.raises(InputError, match=re.escape(f"{path}:3: not UTF-8 text (byte 0xe9)")):
        parse_pair_list(path)


def test_pair_list_lines_are_numbered_as_an_editor_shows_them(tmp_path):
    # U+2028, U+0085 and form feed are whitespace inside a line, not line breaks (str.splitlines breaks there)
    path = tmp_path / "pairsDevTrain.txt"
    path.write_text("2\nAnn\u20281\t2\nBob\x0c1 2\nAnn\x851\tBob\t2\nCid\t1\tAnn\n", encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(f"{path}:5: expected a different-person")):
        parse_pair_list(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"Ann\n", b"Ann\t2\n"))  # and a BOM
    (fold,) = parse_pair_list(path)
    assert [(p.name_a, p.name_b, p.line) for p in fold] == [("Ann", "Ann", 2), ("Bob", "Bob", 3),
                                                             ("Ann", "Bob", 4), ("Cid", "Ann", 5)]


@pytest.mark.parametrize("name", ["Ann/Bob", "..", "Ann\x07", "Ann\x00Bob"])
def test_pair_list_name_that_cannot_be_a_folder_is_refused(tmp_path, name):
    path = tmp_path / "pairsDevTest.txt"
    path.write_text(f"1\nAnn\t1\t2\nCid\t1\t{name}\t2\n")
    with pytest.raises(InputError, match=re.escape(f"{path}:3: {name!r} cannot be a person's folder name")):
        parse_pair_list(path)


def test_pair_naming_an_image_path_too_long_for_the_file_system(fake_lfw, tiny_config):
    train = fake_lfw / "pairsDevTrain.txt"
    text = train.read_text()
    (fake_lfw / "lfw2" / ("B" * 250)).mkdir()  # a folder name may be 250 bytes long, but not B..._0001.jpg
    train.write_text(text.replace("Person_B\t1\t2", f"{'B' * 250}\t1\t2"))
    with pytest.raises(InputError, match=re.escape(f"{train}:3: pair names image ") + ".*cannot be looked up"):
        load_data(tiny_config(data=str(fake_lfw)))
    train.write_text(text.replace("Person_B\t1\t2", f"{'B' * 300}\t1\t2"))  # no folder can be named so
    with pytest.raises(InputError, match=re.escape(f"{train}:3: 'BBB") + ".*" +
                       re.escape("…(300 characters) is longer than a folder name may be (255 bytes)")):
        load_data(tiny_config(data=str(fake_lfw)))


def test_a_different_person_line_naming_one_person_twice_is_refused(tmp_path):
    """`Abdullah_Gul 14 Abdullah_Gul 16` among the different-person lines was scored as a pair of two people:
    a wrong label, trained on or tested, without a word."""
    path = tmp_path / "pairsDevTest.txt"
    path.write_text("1\nAnn\t1\t2\nAbdullah_Gul\t14\tAbdullah_Gul\t16\n")
    with pytest.raises(InputError) as refused:
        parse_pair_list(path)
    assert str(refused.value) == (f"{path}:3: a different-person line names 'Abdullah_Gul' twice; two images of one "
                                  "person make a same-person line `name i j`")


def test_a_huge_pair_list_line_is_quoted_short(tmp_path):
    """A pair-list line of megabytes went whole into the one-line error (twice as long for a bad name); now every
    piece of the file an error quotes is cut to its first 200 characters, and a line too long to be a pair is
    refused before it is split into words."""
    path = tmp_path / "pairsDevTrain.txt"
    huge = "Ann 1 " * 500_000  # 3 MB, a million words
    for line in (huge, "A/" * 1_500_000):
        path.write_text(f"1\nAnn\t1\t2\n{line}\n")
        with pytest.raises(InputError) as refused:
            parse_pair_list(path)
        message = str(refused.value)
        assert message.startswith(f"{path}:3: a line of 3000000 characters is no pair line (at most 1024): ")
        assert message.endswith("…(3000000 characters)") and len(message) < len(str(path)) + 400
    for line, shown in ((f"{'A/' * 300}\t1\tBob\t2", "cannot be a person's folder name"),
                        (f"Ann\t1\tBob\t{'9' * 900}x", "image numbers must be integers in"),
                        (f"Ann\t1\tBob\t2{' 3' * 400}", "expected a different-person")):
        path.write_text(f"1\nAnn\t1\t2\n{line}\n")
        with pytest.raises(InputError, match=re.escape(shown)) as refused:
            parse_pair_list(path)
        assert "characters)" in str(refused.value) and len(str(refused.value)) < len(str(path)) + 400
    path.write_text(f"{'1 ' * 600}\nAnn\t1\t2\n")  # the header too
    with pytest.raises(InputError, match=re.escape("is not `N` or `folds N`")) as refused:
        parse_pair_list(path)
    assert len(str(refused.value)) < len(str(path)) + 400


# --------------------------------------------------------------------------------------------------
# test identities seen in training

# Against the fake training list (Person_A .. Person_H): the first line repeats the training pair `Person_A 1 2`
# reversed, the third repeats `Person_B 2 Person_C 3`; Person_I and Person_J are new.
OVERLAPPING_TEST = "2\nPerson_A\t2\t1\nPerson_I\t1\t2\nPerson_B\t2\tPerson_C\t3\nPerson_I\t1\tPerson_J\t2\n"
OVERLAP = {"shared_identities": 3, "test_identities": 5, "identical_pairs": 2,
           "examples": ["Person_A", "Person_B", "Person_C"]}


def overlap_message(fake_lfw: Path) -> str:
    return (f"{fake_lfw / 'pairsDevTest.txt'}:2: 3 of the 5 test identities also appear in the training/validation "
            f"pairs of {fake_lfw / 'pairsDevTrain.txt'}, and 2 test pair(s) are identical to training pairs (e.g. "
            f"Person_A, Person_B, Person_C); the test score would not measure unseen people. "
            f"--set allow_identity_overlap=true scores it anyway")


def test_test_list_sharing_people_with_training_is_refused_before_decoding(fake_lfw, tiny_config, monkeypatch,
                                                                           tmp_path):
    monkeypatch.setenv("TUNE_SIAMESE_CACHE", str(tmp_path / "fresh-cache"))
    monkeypatch.setattr(data_mod.lfw, "decode_images", lambda *a, **k: pytest.fail("decoded before refusing"))
    (fake_lfw / "pairsDevTest.txt").write_text(OVERLAPPING_TEST)
    with pytest.raises(InputError) as refused:
        load_data(tiny_config(data=str(fake_lfw)))
    assert str(refused.value) == overlap_message(fake_lfw)


def test_identity_overlap_allowed_loads_warns_and_records(fake_lfw, tiny_config, capsys):
    (fake_lfw / "pairsDevTest.txt").write_text(OVERLAPPING_TEST)
    data = load_data(tiny_config(data=str(fake_lfw), allow_identity_overlap=True))
    assert len(data.test) == 4 and data.info["identity_overlap"] == OVERLAP
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"warning: {fake_lfw / 'pairsDevTest.txt'}:2: 3 of the 5 test identities")
    assert warning.endswith("scored anyway (allow_identity_overlap=true)") and "\n" not in warning
    assert "identity_overlap" not in load_data(tiny_config()).info  # disjoint sources record nothing


def test_identity_overlap_is_decided_again_on_a_cached_load(fake_lfw, tiny_config, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TUNE_SIAMESE_CACHE", str(tmp_path / "fresh-cache"))
    (fake_lfw / "pairsDevTest.txt").write_text(OVERLAPPING_TEST)
    allowed = tiny_config(data=str(fake_lfw), allow_identity_overlap=True)
    load_data(allowed)  # fills the image cache
    assert len(list((tmp_path / "fresh-cache").glob("lfw-*.npz"))) == 1
    monkeypatch.setattr(data_mod.lfw, "decode_images", lambda *a, **k: pytest.fail("not served from the cache"))
    with pytest.raises(InputError, match="allow_identity_overlap=true scores it anyway"):
        load_data(tiny_config(data=str(fake_lfw)))
    capsys.readouterr()
    assert load_data(allowed).info["identity_overlap"] == OVERLAP
    assert "scored anyway" in capsys.readouterr().err


def test_view2_last_fold_sharing_people_is_refused(tmp_path, make_image, tiny_config):
    root = tmp_path / "lfw"
    people = [f"P{k}" for k in range(5)]
    for k, name in enumerate(people):
        for i in (1, 2):
            make_image(root / "lfw" / name / f"{name}_{i:04d}.jpg", seed=10 * k + i)
    fold_1 = [f"{people[k]}\t1\t2" for k in range(2)] + [f"{people[k]}\t1\t{people[k + 1]}\t2" for k in range(2)]
    fold_2 = [f"{people[k]}\t1\t2" for k in (3, 4)] + ["P3\t1\tP4\t2", "P4\t2\tP0\t1"]  # P0 is in fold 1
    (root / "pairs.txt").write_text("\n".join(["2 2", *fold_1, *fold_2]) + "\n")
    with pytest.raises(InputError, match=re.escape(f"{root / 'pairs.txt'}:9: 1 of the 3 test identities also "
                                                   f"appear in the training/validation fold 1 (the test pairs are "
                                                   f"fold 2), and 0 test pair(s)")):
        load_data(tiny_config(data=str(root), val_split="random"))


# --------------------------------------------------------------------------------------------------
# self-pairs and duplicates: refused in test pairs, dropped from training pairs before the split

def repeats(pairs: np.ndarray) -> int:
    """Rows that pair an image with itself or repeat an earlier row's two images (either order)."""
    keys = [(min(a, b), max(a, b)) for a, b in pairs[:, :2].tolist()]
    return sum(a == b for a, b in keys) + len(keys) - len(set(keys))


@pytest.mark.parametrize("line_2, line_3, message", [
    ("Person_I\t1\t1", "Person_J\t1\t2", "1 self-pair(s) (one image twice) and 0 duplicate(s) (the same two images as "
     "an earlier line, either order): line 2 (self-pair)"),
    ("Person_I\t1\t2", "Person_I\t2\t1", "0 self-pair(s) (one image twice) and 1 duplicate(s) (the same two images as "
     "an earlier line, either order): line 3 (= line 2)"),
])
def test_test_list_with_a_self_pair_or_a_duplicate_is_refused(fake_lfw, tiny_config, line_2, line_3, message):
    test = fake_lfw / "pairsDevTest.txt"
    lines = test.read_text().splitlines()
    test.write_text("\n".join([lines[0], line_2, line_3, *lines[3:]]) + "\n")
    first = 2 if "self" in message.split(":")[1] else 3
    with pytest.raises(InputError) as refused:
        load_data(tiny_config(data=str(fake_lfw)))
    assert str(refused.value).startswith(f"{test}:{first}: the test pairs hold {message}"), refused.value
    assert "\n" not in str(refused.value)


def test_training_list_repeats_are_dropped_before_the_split_with_a_warning(fake_lfw, tiny_config, capsys):
    train = fake_lfw / "pairsDevTrain.txt"
    lines = train.read_text().splitlines()
    lines[2] = "Person_A\t2\t1"  # line 3 repeats line 2 (Person_A 1 2) reversed
    lines[3] = "Person_C\t1\t1"  # line 4: one image twice
    train.write_text("\n".join(lines) + "\n")
    data = load_data(tiny_config(data=str(fake_lfw)))
    warning = capsys.readouterr().err.strip()
    assert warning == (f"warning: {train}:3: dropped 2 training pair(s) before the validation split: 1 self-pair(s) "
                       f"(one image twice) and 1 duplicate(s) (the same two images as an earlier line, either "
                       f"order): line 3 (= line 2), line 4 (self-pair)")
    assert data.info["repeated_pairs_dropped"] == 2 and "2 repeated" in data.summary()
    assert len(data.train) + len(data.val) + data.info["dropped_pairs"] == 10
    assert repeats(np.concatenate([data.train, data.val])) == 0


def test_generated_pairs_never_repeat(tmp_path, tiny_config, make_image):
    """Identity folders with two images a person have few distinct same-person pairs: drawing more used to
    repeat them (4 of 16 test pairs here)."""
    for person in range(20):
        for i in range(2):
            make_image(tmp_path / "faces" / f"id{person:02d}" / f"{i}.png", seed=10 * person + i)
    data = load_data(tiny_config(data=str(tmp_path / "faces")))
    for part in (data.train, data.val, data.test):
        assert repeats(part) == 0
    assert same_counts(data.test)[0] >= 2 and same_counts(data.test)[1] >= 2
    synthetic = load_data(tiny_config())
    assert repeats(np.concatenate([synthetic.train, synthetic.val, synthetic.test])) == 0


# --------------------------------------------------------------------------------------------------
# decoding images as a viewer shows them

def asymmetric(height: int = 32, width: int = 48) -> np.ndarray:
    image = np.full((height, width), 40, np.uint8)
    image[:8, :16] = 250
    image[20:, 30:] = 128
    return image


@pytest.mark.parametrize("orientation, turns, mirror", [(3, 2, False), (6, 1, False), (8, -1, False),
                                                         (2, 0, True)])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path, orientation, turns, mirror, suffix):
    # EXIF 6: the camera stored the picture turned a quarter counter-clockwise; a viewer turns it back.
    upright = asymmetric()
    stored = np.rot90(np.fliplr(upright) if mirror else upright, turns)
    exif = Image.Exif()
    exif[0x0112] = orientation
    quality = {"quality": 100, "subsampling": 0} if suffix == ".jpg" else {}
    Image.fromarray(upright).save(tmp_path / f"upright{suffix}", **quality)
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / f"phone{suffix}", exif=exif, **quality)
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / f"untagged{suffix}", **quality)
    want = decode_image(tmp_path / f"upright{suffix}", 40, 0.9).astype(int)
    got = decode_image(tmp_path / f"phone{suffix}", 40, 0.9).astype(int)
    untagged = decode_image(tmp_path / f"untagged{suffix}", 40, 0.9).astype(int)
    assert np.abs(got - want).max() <= (0 if suffix == ".png" else 2)  # JPEG: one rounding step apart
    assert np.abs(untagged - want).mean() > 20  # without the tag the picture really differs


def write_pgm16(path: Path, values: np.ndarray) -> Path:
    path.write_bytes(f"P5\n{values.shape[1]} {values.shape[0]}\n65535\n".encode() + values.astype(">u2").tobytes())
    return path


@pytest.mark.parametrize("suffix", [".png", ".pgm"])  # PIL opens them as modes I;16 and I
def test_16_bit_grayscale_is_scaled_by_its_depth(tmp_path, suffix):
    values = np.linspace(0, 65535, 24 * 24).round().astype(np.uint16).reshape(24, 24)
    path = tmp_path / f"deep{suffix}"
    if suffix == ".png":
        Image.fromarray(values).save(path)
        assert Image.open(path).mode == "I;16"
    else:
        write_pgm16(path, values)
        assert Image.open(path).mode == "I"
    decoded = decode_image(path, 24, 1.0)  # same size: no resampling
    assert np.array_equal(decoded, np.round(values / 257).astype(np.uint8))
    assert (decoded == 255).mean() < 0.01  # not clipped to white


def test_16_bit_values_beyond_16_bits_are_refused(tmp_path):
    path = tmp_path / "deep.tif"
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(path)
    with pytest.raises(InputError, match=re.escape(f"{path}: I image with values outside 0..65535")):
        decode_image(path, 8, 1.0)


def transparent_image(mode: str) -> Image.Image:
    """Left third transparent black, middle third half-transparent black, right third opaque grey 100."""
    grey = np.zeros((12, 12), np.uint8)
    grey[:, 8:] = 100
    alpha = np.full((12, 12), 255, np.uint8)
    alpha[:, :4], alpha[:, 4:8] = 0, 128
    if mode in ("RGBA", "LA"):
        return Image.fromarray(np.dstack([grey] * 3 + [alpha])).convert(mode)
    if mode == "RGB":  # colour-key transparency (PNG tRNS): pure black is transparent
        grey[:, 4:8] = 255 - 128  # what 50 % black over white gives
        return Image.fromarray(np.dstack([grey] * 3))
    image = Image.fromarray(np.where(alpha == 0, 0, np.where(alpha == 128, 1, 2)).astype(np.uint8), "P")
    image.putpalette([0, 0, 0, 127, 127, 127, 100, 100, 100])
    return image


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB"])
def test_transparent_pixels_are_white(tmp_path, mode):
    path = tmp_path / f"{mode}.png"
    transparent_image(mode).save(path, **({"transparency": 0} if mode == "P" else
                                          {"transparency": (0, 0, 0)} if mode == "RGB" else {}))
    decoded = decode_image(path, 12, 1.0).astype(int)
    assert (decoded[:, :4] == 255).all()  # transparent: the white background
    assert (np.abs(decoded[:, 4:8] - 127) <= 1).all()  # half: half way to white
    assert (decoded[:, 8:] == 100).all()  # opaque: unchanged


def write_bomb(path: Path, side: int) -> Path:
    """A small file whose header claims side x side pixels (PNG: IHDR patched, checksum fixed; BMP: header)."""
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    if path.suffix == ".png":
        raw[16:24] = side.to_bytes(4, "big") * 2
        raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
    else:
        raw[18:26] = side.to_bytes(4, "little") * 2
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_header_claiming_a_huge_image_is_refused(tmp_path, suffix):
    path = write_bomb(tmp_path / f"bomb{suffix}", 100_000)  # 10^10 pixels
    with pytest.raises(InputError, match=re.escape(f"{path}: refused as a possible decompression bomb")):
        decode_image(path, 32, 1.0)


@pytest.mark.parametrize("side", [40, 50])  # 1600 pixels: PIL only warns; 2500: PIL raises
def test_image_over_the_pixel_limit_is_refused_even_where_pil_only_warns(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.fromarray(asymmetric(side, side)).save(path)
    for decode in (lambda: decode_image(path, 32, 1.0), lambda: decode_images([path], 32, 1.0)):
        with pytest.raises(InputError, match=re.escape(f"{path}: refused as a possible decompression bomb")):
            decode()


@pytest.mark.parametrize("folder, file", [(b"Ren\xe9", b"1.png"), (b"id000", b"img\xff.png")])
def test_identity_folder_name_that_is_not_utf8_is_refused(identity_folder, tiny_config, make_image, folder, file):
    # Latin-1 bytes in a name, as a zip from another system leaves them; os.listdir gives lone surrogates
    odd = Path(os.fsdecode(os.path.join(os.fsencode(identity_folder), folder, file)))
    make_image(odd, seed=5)
    make_image(odd.with_name("2.png"), seed=6)
    with pytest.raises(InputError, match=re.escape(f"{odd.parent if folder == b'id000' else identity_folder}: "
                                                   f"name {(file if folder == b'id000' else folder)!r} is not UTF-8")):
        load_data(tiny_config(data=str(identity_folder)))


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


def test_drawn_pairs_sets_how_many_pairs_a_source_without_lists_draws(tiny_config, identity_folder, fake_lfw):
    """drawn_pairs: a quarter of the synthetic pairs keeps the shares and the people apart; a folder draws the count
    asked; pair lists fix their pairs, so a count there is refused rather than ignored."""
    small = load_data(tiny_config(drawn_pairs=800))
    assert (len(small.train), len(small.val), len(small.test)) == (495, 55, 250)
    train, val, test = (small.identities_of(p) for p in (small.train, small.val, small.test))
    assert not train & val and not train & test and not val & test
    folder = load_data(tiny_config(data=str(identity_folder), drawn_pairs=60))
    assert len(folder.train) + len(folder.val) + len(folder.test) == 60
    for source in (str(fake_lfw), "lfw"):
        with pytest.raises(InputError, match="drawn_pairs=800: .* has pair lists"):
            load_data(tiny_config(data=source, drawn_pairs=800))


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
    monkeypatch.setattr(data_mod.lfw, "decode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = tiny_config(data=str(fake_lfw))
    first = load_data(config)
    assert calls == [1] and len(list((tmp_path / "fresh-cache").glob("lfw-*.npz"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds these images")

    monkeypatch.setattr(data_mod.lfw, "decode_images", refuse)
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
    monkeypatch.setattr(data_mod.synthetic, "render_synthetic", lambda *a, **k: pytest.fail("rendered again"))
    second = load_synthetic(tiny_config(), n_identities=40, per_identity=4)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.trainval, second.trainval)


def test_broken_cache_file_is_rebuilt(fake_lfw, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_SIAMESE_CACHE", str(tmp_path / "fresh-cache"))
    config = tiny_config(data=str(fake_lfw))
    first = load_data(config)
    (cached,) = (tmp_path / "fresh-cache").glob("lfw-*.npz")
    cached.write_bytes(b"truncated")
    assert np.array_equal(load_data(config).images, first.images)

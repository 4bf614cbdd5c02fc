"""FaceVerifier for real use: every image kind scores as its file, batch scoring (score_pairs, embed, similarity,
identify) equals scoring pair by pair, bad input is one line, ts.load finds an experiment's export, and the reprs
stay short. Tiny untrained models from checkpoint files (no export, no Ray) keep it quick."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tune_siamese as ts
from tune_siamese.artifacts import verifier as verifier_mod
from tune_siamese.artifacts.checkpoint import LoadedModel, as_trained, export_model, save_checkpoint
from tune_siamese.artifacts.people import TrainedPeople, people_record
from tune_siamese.artifacts.verifier import FaceVerifier
from tune_siamese.core.errors import InputError
from tune_siamese.training.model import EnsembleNet, SiameseNet, build_model


def quiet(source) -> FaceVerifier:
    """A FaceVerifier without the synthetic-faces warning (the tiny configs say data="synthetic")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FaceVerifier(source)


def seeded_model(config, seed: int) -> SiameseNet:
    """An untrained net whose head weights are all negative, as training makes them: any difference between two
    embeddings lowers the logit, so an image scores highest against itself."""
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():
        model.head.weight.copy_(-model.head.weight.abs())
    return model


def checkpoint(tmp: Path, name: str, config, seed: int = 1) -> Path:
    path = tmp / name / "checkpoint.pt"
    save_checkpoint({"model": seeded_model(config, seed).state_dict(), "config": config.to_dict(),
                     "threshold_logit": 0.3, "trained_people": people_record(["Ann", "Bob", "Cy"])}, path)
    return path


def odd_image(path: Path, seed: int, shape: tuple[int, ...]) -> Path:
    """A random image of any shape (not square: the crop's rounding matters)."""
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_config):
    tmp = tmp_path_factory.mktemp("verifier")
    plain = tiny_config(crop=0.8)  # a crop below 1: the in-memory decoding must crop as the file decoding does
    images = [odd_image(tmp / f"img{k}.png", seed=k, shape=(37 + 3 * k, 51 - 2 * k, 3) if k % 2 else (44, 40 + k))
              for k in range(6)]
    return {"plain": quiet(checkpoint(tmp, "plain", plain)),
            "flip": quiet(checkpoint(tmp, "flip", plain.replace(tta_flip=True))),
            "images": images, "tmp": tmp}


@pytest.fixture(scope="module")
def ensemble(tiny_config):
    """An ensemble as checkpoint.load returns one (without writing the slow export): members with their own zoom
    and head, one with tta_flip."""
    configs = [tiny_config(seed=1, crop=0.8), tiny_config(seed=2, crop=0.8, head="l1_prod", zoom=0.9, tta_flip=True)]
    members = [as_trained(seeded_model(config, config.seed), config) for config in configs]
    model = EnsembleNet(members, configs).eval()
    with pytest.MonkeyPatch.context() as patch:  # only while it loads: other tests load for real
        patch.setattr(verifier_mod, "load", lambda source: LoadedModel(model, model.config, -0.2, None))
        return quiet("ensemble-export")


def kinds(path: Path) -> dict[str, object]:
    """The same image as each accepted kind."""
    opened = Image.open(path)
    pixels = np.asarray(opened)
    floats = torch.from_numpy(pixels / 255.0).float()
    return {"str": str(path), "Path": path, "PIL": opened, "uint8 array": pixels, "float array": pixels / 255.0,
            "uint8 tensor": torch.from_numpy(pixels.copy()),
            "float tensor, channels first": floats.permute(2, 0, 1) if pixels.ndim == 3 else floats.unsqueeze(0)}


@pytest.mark.parametrize("index", [1, 2])  # an RGB and a grayscale image
def test_every_image_kind_scores_as_its_file(made, index):
    verifier, images = made["plain"], made["images"]
    expected = verifier.score(images[index], images[0])
    for kind, image in kinds(images[index]).items():
        assert verifier.score(image, images[0]) == expected, kind
        assert verifier.score(images[0], image) == verifier.score(images[0], images[index]), kind
        assert verifier.verify(image, images[0])["logit"] == verifier.logit(images[index], images[0]), kind


def test_a_pil_image_is_turned_upright_by_its_exif_as_its_file_is(made):
    path = made["tmp"] / "rotated.jpg"
    picture = Image.fromarray(np.random.default_rng(7).integers(0, 256, (30, 50), dtype=np.uint8))
    exif = picture.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    picture.save(path, exif=exif)
    verifier, other = made["plain"], made["images"][0]
    assert verifier.score(Image.open(path), other) == verifier.score(path, other)
    assert verifier.score(np.asarray(Image.open(path)), other) != verifier.score(path, other)  # raw pixels: as stored


@pytest.mark.parametrize("which", ["plain", "flip", "ensemble"])
def test_score_pairs_equals_score_pair_by_pair(made, ensemble, which):
    verifier = ensemble if which == "ensemble" else made[which]
    images = made["images"]
    pil = Image.open(images[3])
    pairs = [(images[0], images[1]), (str(images[1]), images[2]), (pil, images[4]), (images[5], pil),
             (images[2], images[2]), (np.asarray(Image.open(images[4])), images[0]), (images[1], images[0])]
    expected = np.array([verifier.score(a, b) for a, b in pairs])
    for batch_size in (64, 3):  # one batch, and batches cut through the images of a pair
        got = verifier.score_pairs(pairs, batch_size=batch_size)
        assert got.shape == (len(pairs),) and got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert len(np.unique(expected.round(6))) > 3  # the pairs score differently: equality above says something
    assert verifier.score_pairs([]).shape == (0,)


def test_flip_averaging_counts_in_batch_scoring(made):
    """With tta_flip the score differs from the unflipped one (so leaving the mirror images out of the embeddings
    would fail the test above), and embeddings hold both."""
    images = made["images"]
    pairs = [(images[0], images[1]), (images[2], images[3])]
    flip, plain = made["flip"], made["plain"]  # the same weights
    assert np.abs(flip.score_pairs(pairs) - plain.score_pairs(pairs)).max() > 1e-4
    assert flip.embedding_size == 2 * plain.embedding_size
    assert flip.embed(images[:2]).shape == (2, flip.embedding_size)


@pytest.mark.parametrize("which", ["plain", "flip"])
def test_identify_picks_the_probe_itself_from_the_gallery(made, which):
    verifier, images = made[which], made["images"]
    gallery = images[:5]
    probes = [Image.open(images[3]), np.asarray(Image.open(images[0])), str(images[4])]
    assert list(verifier.identify(probes, gallery)) == [3, 0, 4]
    names = ["Ann", "Bob", "Cy", "Di", "Ed"]
    assert verifier.identify(probes, gallery, labels=names) == ["Di", "Ann", "Ed"]
    embedded = verifier.embed(gallery)
    assert embedded.shape == (5, verifier.embedding_size) and embedded.dtype == np.float32
    assert list(verifier.identify(verifier.embed(probes), embedded)) == [3, 0, 4]
    similarity = verifier.similarity(probes, embedded)
    assert similarity.shape == (3, 5)
    np.testing.assert_allclose(similarity[1], [verifier.score(probes[1], g) for g in gallery], rtol=0, atol=1e-5)
    assert verifier.identify([], gallery).shape == (0,)


def test_ensemble_embeddings_hold_each_member_and_view(ensemble, made):
    members = ensemble._verifier.model.members
    assert ensemble.embedding_size == 2 * sum(m.embed_dim for m in members)  # tta_flip: both views
    images = made["images"][:3]
    assert ensemble.embed(images).shape == (3, ensemble.embedding_size)
    np.testing.assert_allclose(ensemble.similarity(images[:1], images)[0],
                               [ensemble.score(images[0], g) for g in images], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def bad(made):
    tmp = made["tmp"]
    garbage = tmp / "garbage.png"
    garbage.write_bytes(b"nope" * 10)
    return {"a": made["images"][0], "missing": tmp / "missing.jpg", "garbage": garbage, "folder": tmp}


@pytest.mark.parametrize("call, message", [
    (lambda v, b: v.score(b["a"], b["missing"]), "image_b: {tmp}/missing.jpg: image not found"),
    (lambda v, b: v.score(b["folder"], b["a"]), "image_a: {tmp}: is a folder, not an image"),
    (lambda v, b: v.verify(b["a"], b["garbage"]), "image_b: {tmp}/garbage.png: unreadable or corrupt image"),
    (lambda v, b: v.score(3, b["a"]), "image_a: a value of type int is not an image"),
    (lambda v, b: v.score(b["a"], np.zeros((5, 5, 2), np.uint8)), "image_b: a NumPy array of shape (5, 5, 2)"),
    (lambda v, b: v.score(b["a"], np.zeros((0, 5), np.uint8)), "image_b: a NumPy array of shape (0, 5)"),
    (lambda v, b: v.score(b["a"], np.full((8, 8), 2.0)), "image_b: a NumPy array of floats must hold values in"),
    (lambda v, b: v.score(b["a"], np.zeros((8, 8), np.int64)), "image_b: a NumPy array of int64; give uint8"),
    (lambda v, b: v.score(torch.zeros(2, 8, 8, 8), b["a"]), "image_a: a torch tensor of shape (2, 8, 8, 8)"),
    (lambda v, b: v.score_pairs([(b["a"], b["a"]), (b["a"],)]), "pairs[1]: must be a pair (image_a, image_b)"),
    (lambda v, b: v.score_pairs([(b["a"], b["a"]), (b["a"], b["garbage"])]),
     "pairs[1][1]: {tmp}/garbage.png: unreadable or corrupt image"),
    (lambda v, b: v.score_pairs([(b["a"], b["a"]), (b["a"], b["missing"])]), "pairs[1][1]: {tmp}/missing.jpg"),
    (lambda v, b: v.score_pairs([(b["a"], b["a"])], batch_size=0), "batch_size=0 must be a whole number >= 1"),
    (lambda v, b: v.embed(b["a"]), "images: give a list, not one path"),
    (lambda v, b: v.embed([b["a"], "x"]), "images[1]: x: image not found"),
    (lambda v, b: v.similarity(np.zeros((2, 3)), [b["a"]]), "probes: a NumPy array is taken as embed()'s"),
    (lambda v, b: v.identify([b["a"]], [b["a"], None]), "gallery[1]: a value of type NoneType is not an image"),
    (lambda v, b: v.identify([b["a"]], [b["a"]], labels=["x", "y"]), "labels: 2 label(s) for 1 gallery image(s)"),
    (lambda v, b: v.identify([b["a"]], []), "gallery: no images"),
])
def test_bad_input_is_one_line_naming_the_argument(made, bad, call, message):
    with pytest.raises(InputError) as raised:
        call(made["plain"], bad)
    text = str(raised.value)
    assert "\n" not in text and text.startswith(message.format(tmp=made["tmp"])), text


def test_load_finds_an_experiments_export(made, tiny_config, tmp_path):
    experiment = tmp_path / "lfw"
    experiment.mkdir()
    (experiment / "final.json").write_text(json.dumps({"export": str(experiment / "export")}))
    (experiment / "search_settings.json").write_text("{}")
    export_model(seeded_model(tiny_config(), 1), tiny_config(), experiment / "export", threshold_logit=0.3,
                 trained_people=["Ann", "Bob"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded, direct = ts.load(str(experiment)), ts.load(experiment / "export")
    images = made["images"]
    assert loaded.source == str(experiment) and loaded.threshold_logit == 0.3
    assert loaded.score(images[0], images[1]) == direct.score(images[0], images[1])
    assert "trained on 2 people" in repr(loaded)


def test_an_experiment_without_export_says_so_in_one_line(tmp_path):
    experiment = tmp_path / "no-retrain"
    experiment.mkdir()
    (experiment / "final.json").write_text("{}")
    with pytest.raises(InputError) as raised:
        ts.load(str(experiment))
    text = str(raised.value)
    assert "\n" not in text and text.startswith(f"{experiment}: an experiment folder without an export"), text
    assert text.endswith("load a checkpoint file instead")
    (experiment / "export-ensemble").mkdir()  # another export is there: it is named
    with pytest.raises(InputError, match=r"load one of its other exports \(export-ensemble\)$"):
        ts.load(experiment)


def test_reprs_are_short(made, ensemble):
    text = repr(made["plain"])
    assert text.startswith("FaceVerifier('") and "threshold=0.574" in text and "image_size=72" in text, text
    assert text.endswith("trained on 3 people)") and len(text) < 200, text
    assert "ensemble of 2" in repr(ensemble) and repr(ensemble).endswith("people not recorded)")
    assert repr(made["plain"].trained_people) == "TrainedPeople(3 people)"
    assert repr(TrainedPeople.of(f"person {k}" for k in range(5000))) == "TrainedPeople(5000 people)"

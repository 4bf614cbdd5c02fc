"""The real LFW-a DevTrain/DevTest data beside the repo (default_lfw_root(): $TUNE_SIAMESE_LFW or
../shared/data/lfw-a). Missing data skips these tests, except under TUNE_SIAMESE_REQUIRE_LFW=1 (CI), where it
fails them."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, cli_json, real_lfw_root

from tune_siamese import data as data_mod
from tune_siamese.app import cli
from tune_siamese.artifacts.checkpoint import export_model
from tune_siamese.data import load_data, parse_pair_list
from tune_siamese.training.engine import fit, train_and_test
from tune_siamese.training.model import build_model

pytestmark = pytest.mark.lfw


@pytest.fixture(scope="module")
def lfw_root():
    return real_lfw_root()


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


def test_real_lists_load_whole_and_devtrain_is_refused_to_a_model_trained_on_it(lfw, lfw_root, tiny_config, tmp_path,
                                                                                 capsys):
    """The real lists hold no self-pair or duplicate; `evaluate --pairs pairsDevTrain.txt` of a model that
    trained on DevTrain used to give a number, exit 0 (refused now before any image is decoded)."""
    assert lfw.info["repeated_pairs_dropped"] == 0 and len(lfw.training_people) == 2132
    config = tiny_config(data=str(lfw_root), image_size=80)
    export = export_model(build_model(config), config, tmp_path / "export", trained_people=lfw.training_people)
    code = cli.main(["evaluate", str(export), "--data", str(lfw_root), "--pairs", str(lfw_root / "pairsDevTrain.txt")])
    assert code == 2 and capsys.readouterr().err.startswith(
        f"tune-siamese: error: {lfw_root / 'pairsDevTrain.txt'}:2: 2132 of the 2132 identities in these pairs are "
        f"among the 2132 people the model trained or was selected on")


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


SNIPPET_MARK = "<!-- plain-torch snippet"
# Runs scripts one after another in one fresh interpreter (each with its own argv and namespace; one start of torch
# for all), then fails if anything they ran imported this package.
RUN_WITHOUT_PACKAGE = """
import json, runpy, sys
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
    print("--- end of run", flush=True)
assert not [m for m in sys.modules if m.startswith("tune_siamese")], "imported tune_siamese"
"""


def readme_snippet() -> str:
    after_mark = (REPO / "docs" / "exports.md").read_text().split(SNIPPET_MARK, 1)[1]
    return after_mark.split("```python\n", 1)[1].split("```", 1)[0]


def run_snippets(folder: Path, runs: list[tuple[str, list]]) -> list[dict]:
    """Each (code, args) as a script of its own; what each printed last, read as JSON."""
    argvs = []
    for number, (code, args) in enumerate(runs):
        script = folder / f"plain_verify_{number}.py"
        script.write_text(code)
        argvs.append([str(script), *map(str, args)])
    done = subprocess.run([sys.executable, "-c", RUN_WITHOUT_PACKAGE, json.dumps(argvs)], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.split("--- end of run\n")[:-1]
    assert len(printed) == len(runs), done.stdout
    return [json.loads(out.strip().splitlines()[-1]) for out in printed]


@pytest.mark.slow
def test_readme_plain_torch_snippet_matches_verify(lfw, lfw_root, tiny_config, tmp_path):
    """The snippet in docs/exports.md (torch, numpy, Pillow only) on the export's verifier.pt2 gives verify's
    probability, with every preprocessing step in play: a face crop, a zoom, a resize to another input size, flip
    averaging."""
    config = tiny_config(data=str(lfw_root), image_size=80, zoom=0.85, input_size=72, tta_flip=True, max_epochs=1)
    model = fit(config, dataclasses.replace(lfw, train=lfw.train[:600]), validate=False).model
    export = export_model(model, config.replace(crop=0.8), tmp_path / "export", threshold_logit=0.1)
    code = readme_snippet()
    assert len(code.strip().splitlines()) <= 10
    people = sorted(p for p in (lfw_root / "lfw2").iterdir() if len(list(p.glob("*.jpg"))) >= 2)
    same, other = sorted(people[0].glob("*.jpg"))[:2], sorted(people[1].glob("*.jpg"))[0]
    pairs = [(same[0], same[1]), (same[0], other)]
    *plain, bilinear = run_snippets(tmp_path, [*((code, [export, a, b]) for a, b in pairs),
                                              (code.replace("LANCZOS", "BILINEAR"), [export, same[0], other])])
    for (a, b), snippet in zip(pairs, plain):
        verified = cli_json(cli.main, ["verify", str(export), str(a), str(b)])
        assert snippet["probability_same"] == pytest.approx(verified["probability_same"], abs=1e-4)
        assert snippet["same_person"] == verified["same_person"]
    # The comparison can tell decodings apart: a bilinear resize instead of Lanczos moves the probability.
    assert abs(bilinear["probability_same"] - plain[1]["probability_same"]) > 1e-4

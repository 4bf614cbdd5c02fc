"""`evaluate --one-shot` on Lake's fixed Omniglot runs (all_runs/runNN/class_labels.txt): layout detection,
parsing into tasks, the accuracy, the command end to end, and one-line errors for malformed runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tune_siamese.app import cli
from tune_siamese.artifacts.checkpoint import load_model, save_checkpoint
from tune_siamese.core.errors import InputError
from tune_siamese.data import decode_images
from tune_siamese.training import oneshot
from tune_siamese.training.model import build_model
from tune_siamese.training.oneshot import find_omniglot_runs, omniglot_runs_accuracy, read_omniglot_runs
from tune_siamese.training.scoring import images_on

RUNS, WAYS = 2, 3


def draw_character(path: Path, seed: int, shift: int = 0, noise: int = 0) -> None:
    """Omniglot-like: black strokes on white, 105x105; one random polyline per seed (a class), optionally shifted
    and with flipped pixels (a test item: another drawing of the same character)."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (105, 105), 255)
    points = [tuple(int(v) + shift for v in rng.integers(15, 90, 2)) for _ in range(5)]
    ImageDraw.Draw(image).line(points, fill=0, width=4)
    pixels = np.asarray(image).copy()
    spots = np.random.default_rng(seed + 7919).integers(0, 105, (noise, 2))
    pixels[spots[:, 0], spots[:, 1]] = 255 - pixels[spots[:, 0], spots[:, 1]]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert("1" if seed % 2 else "L").save(path)  # Omniglot's PNGs come in both modes


def write_runs(parent: Path) -> tuple[Path, dict[str, str]]:
    """parent/all_runs in Lake's layout, RUNS runs of WAYS classes; returns it and {test item: true class file}."""
    folder = parent / "all_runs"
    truth = {}
    for r in range(1, RUNS + 1):
        run = f"run{r:02d}"
        for j in range(1, WAYS + 1):
            draw_character(folder / run / "training" / f"class{j:02d}.png", seed=100 * r + j)
        lines = []
        for k in range(1, WAYS + 1):
            j = (k + r) % WAYS + 1  # a different permutation per run: item k is not always class k
            draw_character(folder / run / "test" / f"item{k:02d}.png", seed=100 * r + j, shift=3, noise=40)
            truth[f"{run}/test/item{k:02d}.png"] = f"{run}/training/class{j:02d}.png"
            lines.append(f"{run}/test/item{k:02d}.png {run}/training/class{j:02d}.png")
        (folder / run / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return folder, truth


@pytest.fixture
def omniglot(tmp_path) -> tuple[Path, dict[str, str]]:
    return write_runs(tmp_path / "omniglot")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_config) -> Path:
    """An untrained tiny model saved as a checkpoint: the command's arithmetic does not need a good model."""
    config = tiny_config()
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("oneshot") / "checkpoint.pt"
    save_checkpoint({"model": build_model(config).state_dict(), "config": config.to_dict(),
                     "threshold_logit": 0.0}, path)
    return path


def run_main(argv: list, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def relative(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def test_the_fixture_looks_like_omniglot(omniglot):
    folder, _ = omniglot
    with Image.open(folder / "run01" / "training" / "class01.png") as image:
        assert image.size == (105, 105) and image.mode in ("1", "L")
        pixels = np.asarray(image.convert("L"))
    assert (pixels == 255).mean() > 0.8 and (pixels == 0).any()  # black strokes on white


def test_layout_is_detected_from_all_runs_or_its_parent(omniglot, identity_folder, tmp_path):
    folder, _ = omniglot
    assert find_omniglot_runs(folder) == folder
    assert find_omniglot_runs(folder.parent) == folder
    assert find_omniglot_runs(identity_folder) is None
    assert find_omniglot_runs(tmp_path / "nowhere") is None  # the identity-folder loader says "not found"
    with pytest.raises(InputError, match="run01: is one run of Lake's layout; give the all_runs folder"):
        find_omniglot_runs(folder / "run01")
    (tmp_path / "empty" / "all_runs" / "run01").mkdir(parents=True)
    with pytest.raises(InputError, match="all_runs: holds no run folder with a class_labels.txt"):
        find_omniglot_runs(tmp_path / "empty")


def test_runs_parse_into_fixed_tasks(omniglot):
    folder, truth = omniglot
    runs = read_omniglot_runs(folder)
    assert runs.names == ["run01", "run02"] and runs.folder == folder
    assert runs.candidates.shape == (RUNS * WAYS, WAYS) and runs.run.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(runs.paths) == len(set(runs.paths)) == 2 * RUNS * WAYS  # each image once
    asked = [relative(runs.paths[q], folder) for q in runs.query]
    assert asked == sorted(truth)  # every test item once, in file order
    for t, item in enumerate(asked):
        run = item.split("/")[0]
        row = [relative(runs.paths[c], folder) for c in runs.candidates[t]]
        assert row == [f"{run}/training/class{j:02d}.png" for j in range(1, WAYS + 1)]  # its own run, Lake's order
        assert row[runs.target[t]] == truth[item]


def test_accuracy_is_the_share_of_tasks_whose_true_class_scores_highest(omniglot, tiny_config, monkeypatch):
    folder, truth = omniglot
    runs = read_omniglot_runs(folder)
    # Scores from a table instead of a model: the class each test item "looks like" most.
    picks = {"run01/test/item01.png": truth["run01/test/item01.png"],  # right
             "run01/test/item02.png": truth["run01/test/item02.png"],  # right
             "run01/test/item03.png": "run01/training/class01.png",    # wrong (its class is 03)
             "run02/test/item01.png": "run02/training/class02.png",    # wrong (01)
             "run02/test/item02.png": truth["run02/test/item02.png"],  # right
             "run02/test/item03.png": "run02/training/class01.png"}    # wrong (03)
    assert sum(picks[item] == truth[item] for item in picks) == 3

    def table_scores(model, images, query, candidates, config):
        return np.array([[1.0 if relative(runs.paths[c], folder) == picks[relative(runs.paths[q], folder)] else 0.0
                          for c in row] for q, row in zip(query, candidates)])

    monkeypatch.setattr(oneshot, "one_shot_scores", table_scores)
    metrics = omniglot_runs_accuracy(None, None, runs, tiny_config())  # type: ignore[arg-type]
    assert metrics == {"accuracy": 0.5, "runs": 2, "tasks": 6, "ways": 3, "chance": 1 / 3,
                       "per_run": [{"run": "run01", "accuracy": 2 / 3, "tasks": 3},
                                   {"run": "run02", "accuracy": 1 / 3, "tasks": 3}]}


def test_evaluate_one_shot_on_the_runs_end_to_end(omniglot, checkpoint, capsys):
    folder, truth = omniglot
    code, out, err = run_main(["evaluate", checkpoint, "--one-shot", folder.parent], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["layout"] == "omniglot-runs" and result["source"] == str(checkpoint)
    assert (result["runs"], result["tasks"], result["ways"]) == (2, 6, 3) and result["chance"] == pytest.approx(1 / 3)
    # The same by hand: decode every image like the command, score each test item against its run's classes
    # with the one scorer, pick the best class by path.
    model, config, _ = load_model(checkpoint)
    items = sorted(truth)
    classes = {run: [f"{run}/training/class{j:02d}.png" for j in range(1, WAYS + 1)] for run in ("run01", "run02")}
    paths = items + [c for run in classes.values() for c in run]
    images = images_on(torch.device("cpu"), decode_images([folder / p for p in paths], config.image_size, config.crop))
    query = np.arange(len(items))
    candidates = np.array([[paths.index(c) for c in classes[item[:5]]] for item in items])
    scores = oneshot.one_shot_scores(model, images, query, candidates, config)
    right = [paths[candidates[t, scores[t].argmax()]] == truth[item] for t, item in enumerate(items)]
    assert result["accuracy"] == pytest.approx(np.mean(right))
    assert [r["accuracy"] for r in result["per_run"]] == pytest.approx([np.mean(right[:3]), np.mean(right[3:])])
    assert [r["run"] for r in result["per_run"]] == ["run01", "run02"]
    # all_runs itself gives the same numbers
    code, again, _ = run_main(["evaluate", checkpoint, "--one-shot", folder], capsys)
    assert code == 0 and {**json.loads(again), "data": ""} == {**result, "data": ""}


def test_evaluate_one_shot_on_identity_folders_keeps_its_defaults(identity_folder, checkpoint, capsys):
    code, out, err = run_main(["evaluate", checkpoint, "--one-shot", identity_folder], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["layout"] == "identity-folders"
    assert (result["ways"], result["trials"], result["seed"]) == (20, 400, 0) and result["chance"] == 0.05


def assert_one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("tune-siamese: error: "), err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("options", [["--ways", "20"], ["--trials", "400", "--seed", "0"]])
def test_trial_options_are_refused_for_the_fixed_runs(omniglot, checkpoint, options, capsys):
    folder, _ = omniglot
    code, out, err = run_main(["evaluate", checkpoint, "--one-shot", folder, *options], capsys)
    given = "/".join(o for o in options if o.startswith("--"))
    assert_one_line_error(code, out, err, f"option {given} does not apply to the fixed Omniglot runs in {folder}")


@pytest.mark.parametrize("line, replacement, message", [
    (1, "run01/test/item01.png", "expected 2 fields"),
    (2, "run01/test/item02.png run01/training/class01.png extra", "expected 2 fields"),
    (1, "run01/test/item01.png run02/training/class01.png", "class file run02/training/class01.png is outside run01/"),
    (3, "../all_runs/run01/test/item03.png run01/training/class03.png", "test item ../all_runs/run01/test/item03.png "
                                                                         "is outside run01/"),
    (2, "run01/test/item02.png run01/training/class09.png", "class file run01/training/class09.png not found"),
    (3, "run01/test/item01.png run01/training/class03.png", "test item run01/test/item01.png is listed twice "
                                                            "(first on line 1)"),
    (1, "run01/test/item01.png run01/test/item02.png", "class file run01/test/item02.png is not a file in "
                                                       "run01/training/"),
    (2, "run01/training/class02.png run01/training/class02.png", "test item run01/training/class02.png is not a "
                                                                 "file in run01/test/"),
])
def test_malformed_class_labels_name_the_file_and_line(omniglot, checkpoint, line, replacement, message, capsys):
    folder, _ = omniglot
    labels = folder / "run01" / "class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[line - 1] = replacement
    labels.write_text("\n".join(lines) + "\n")
    code, out, err = run_main(["evaluate", checkpoint, "--one-shot", folder.parent], capsys)
    assert_one_line_error(code, out, err, f"{labels}:{line}: {message}")


def test_malformed_runs_name_the_file(omniglot, checkpoint, capsys):
    folder, _ = omniglot
    labels = folder / "run02" / "class_labels.txt"
    labels.write_text("".join(line + "\n" for line in labels.read_text().splitlines()[:2]))  # 2 of 3 classes
    code, out, err = run_main(["evaluate", checkpoint, "--one-shot", folder], capsys)
    assert_one_line_error(code, out, err, f"{labels}: names 2 classes but {folder / 'run01' / 'class_labels.txt'} "
                                          f"names 3; every run needs the same number of ways")
    labels.unlink()
    code, out, err = run_main(["evaluate", checkpoint, "--one-shot", folder], capsys)
    assert_one_line_error(code, out, err, f"{labels}: class_labels.txt not found")

"""Koch et al.'s N-way one-shot evaluation, on an identity-labelled image set or on Lake's fixed Omniglot runs.

Each trial: a query image of identity X and N candidates, exactly one of them another image of X and N-1 of
N-1 other identities; it is correct when the same-identity candidate scores highest. Every image is embedded
once, then only the cheap head runs per (query, candidate) pair, so thousands of trials cost one pass.

Identity folders get seeded random trials. Lake's runs (the 20-way test Koch et al. report: all_runs/run01 ...
run20, 20 test items each) are fixed trials read from each run's class_labels.txt; both go through one scorer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.data import decode_images, identity_folder_files
from tune_siamese.training.model import SiameseNet
from tune_siamese.training.scoring import images_on, predict_by_image


def one_shot_trials(identity: np.ndarray, ways: int, trials: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded trials: (query image [T], candidate images [T, N], position of the true match [T]).

    The true match sits at a random position, so ties in the scores cannot favour it."""
    if ways < 2:
        raise InputError(f"option --ways={ways} must be at least 2")
    if trials < 1:
        raise InputError(f"option --trials={trials} must be at least 1")
    members = [np.flatnonzero(identity == i) for i in np.unique(identity)]
    queryable = [k for k, m in enumerate(members) if len(m) >= 2]
    if not queryable:
        raise InputError("one-shot needs an identity with at least 2 images")
    if len(members) < ways:
        raise InputError(f"option --ways={ways} needs {ways} identities but the data has {len(members)}")
    rng = np.random.default_rng(seed)
    query = np.empty(trials, dtype=np.int64)
    candidates = np.empty((trials, ways), dtype=np.int64)
    target = rng.integers(ways, size=trials)
    for t in range(trials):
        k = queryable[rng.integers(len(queryable))]
        q, match = rng.choice(members[k], size=2, replace=False)
        others = rng.choice(len(members) - 1, size=ways - 1, replace=False)
        others = others + (others >= k)  # skip identity k itself
        row = [rng.choice(members[o]) for o in others]
        row.insert(int(target[t]), match)
        query[t], candidates[t] = q, row
    return query, candidates, target


def one_shot_correct(model: SiameseNet, images: torch.Tensor, query: np.ndarray, candidates: np.ndarray,
                     target: np.ndarray, config: Config) -> np.ndarray:
    """Per trial: does the true match (candidates[t, target[t]]) get the highest logit? A tie goes to the
    first candidate, as in Lake's reference code."""
    return one_shot_scores(model, images, query, candidates, config).argmax(axis=1) == target


def one_shot_scores(model: SiameseNet, images: torch.Tensor, query: np.ndarray, candidates: np.ndarray,
                    config: Config) -> np.ndarray:
    """Logits [T, N] of (query, candidate) pairs: each used image is embedded once, in eval batches."""
    pairs = np.stack([np.repeat(query, candidates.shape[1]), candidates.ravel(),
                      np.zeros(candidates.size, dtype=np.int64)], axis=1)
    return predict_by_image(model, images, pairs, config).reshape(candidates.shape)


def one_shot_accuracy(model: SiameseNet, images: torch.Tensor, identity: np.ndarray, config: Config,
                      ways: int = 20, trials: int = 400, seed: int = 0) -> dict[str, Any]:
    """Fraction of trials whose true match gets the highest logit (chance = 1 / ways)."""
    query, candidates, target = one_shot_trials(identity, ways, trials, seed)
    correct = one_shot_correct(model, images, query, candidates, target, config)
    return {"accuracy": float(correct.mean()), "ways": ways, "trials": trials, "seed": seed,
            "chance": 1.0 / ways}


# --------------------------------------------------------------------------------------------------
# Lake's Omniglot one-shot runs

RUNS_FOLDER = "all_runs"
LABELS_FILE = "class_labels.txt"
_RUN_NAME = re.compile(r"run(\d+)")


@dataclass(frozen=True)
class OneShotRuns:
    """Fixed trials as indices into `paths` (each image once): task t asks which of candidates[t] shows the
    class of query[t]; the answer is candidates[t, target[t]]; run[t] indexes `names`."""
    folder: Path
    paths: list[Path]
    query: np.ndarray
    candidates: np.ndarray
    target: np.ndarray
    run: np.ndarray
    names: list[str]


def _run_folders(folder: Path) -> list[Path]:
    """runNN sub-folders in run order (run2 before run10)."""
    try:
        found = [(int(m.group(1)), d) for d in folder.iterdir() if (m := _RUN_NAME.fullmatch(d.name)) and d.is_dir()]
    except OSError as exc:
        raise InputError(f"cannot list the folder ({exc.strerror or exc})", exc.filename or folder) from None
    return [d for _, d in sorted(found, key=lambda pair: (pair[0], pair[1].name))]


def find_omniglot_runs(root: Path) -> Path | None:
    """The all_runs folder when ROOT is it (runNN/class_labels.txt inside) or holds it; None for another layout."""
    for folder in (root, root / RUNS_FOLDER):
        if folder.is_dir() and any((run / LABELS_FILE).is_file() for run in _run_folders(folder)):
            return folder
    # Meant as Lake's layout: say what is wrong rather than "too few identities".
    if (root / RUNS_FOLDER).is_dir():
        raise InputError(f"holds no run folder with a {LABELS_FILE} (runNN/{LABELS_FILE})", root / RUNS_FOLDER)
    if (root / LABELS_FILE).is_file():
        raise InputError(f"is one run of Lake's layout; give the {RUNS_FOLDER} folder that holds the runs", root)
    return None


def _run_file(text: str, part: str, folder: Path, run: str, labels: Path, line: int) -> Path:
    """A path of class_labels.txt (relative to all_runs/, as in Lake's lists) checked to be a file of this run's
    test/ or training/ folder."""
    parts = PurePosixPath(text).parts
    what = "test item" if part == "test" else "class file"
    if not parts or parts[0] != run or ".." in parts:
        raise InputError(f"{what} {text} is outside {run}/ (paths are relative to {folder.name}/, e.g. "
                         f"{run}/test/item01.png {run}/training/class01.png)", labels, line)
    if len(parts) != 3 or parts[1] != part:
        raise InputError(f"{what} {text} is not a file in {run}/{part}/", labels, line)
    path = folder.joinpath(*parts)
    if not path.is_file():
        raise InputError(f"{what} {text} not found", labels, line)
    return path


def _read_labels(labels: Path, folder: Path, run: str) -> list[tuple[Path, Path]]:
    """(test item, its class file) per line of one run's class_labels.txt."""
    if not labels.is_file():
        raise InputError(f"{LABELS_FILE} not found (every runNN folder needs one)", labels)
    try:
        text = labels.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", labels) from None
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror or exc})", labels) from None
    seen: dict[Path, int] = {}
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise InputError(f"expected 2 fields (test item, class file: {run}/test/itemKK.png "
                             f"{run}/training/classJJ.png), found {len(fields)}", labels, number)
        item = _run_file(fields[0], "test", folder, run, labels, number)
        true_class = _run_file(fields[1], "training", folder, run, labels, number)
        if item in seen:
            raise InputError(f"test item {fields[0]} is listed twice (first on line {seen[item]})", labels, number)
        seen[item] = number
        pairs.append((item, true_class))
    if not pairs:
        raise InputError("lists no test items", labels)
    return pairs


def read_omniglot_runs(folder: Path) -> OneShotRuns:
    """Every run of an all_runs folder as fixed trials: each test item against every class file its run's
    class_labels.txt names, in name order (Lake's order)."""
    index: dict[Path, int] = {}
    query: list[int] = []
    candidates: list[list[int]] = []
    target: list[int] = []
    run_of: list[int] = []
    names: list[str] = []
    first: Path | None = None
    for r, run in enumerate(_run_folders(folder)):
        labels = run / LABELS_FILE
        pairs = _read_labels(labels, folder, run.name)
        classes = sorted({true_class for _, true_class in pairs})
        if len(classes) < 2:
            raise InputError("names fewer than 2 classes: nothing to choose between", labels)
        if first is None:
            first = labels
        elif len(classes) != len(candidates[0]):  # one [tasks, ways] array for the scorer
            raise InputError(f"names {len(classes)} classes but {first} names {len(candidates[0])}; every run "
                             f"needs the same number of ways", labels)
        row = [index.setdefault(path, len(index)) for path in classes]
        for item, true_class in pairs:
            query.append(index.setdefault(item, len(index)))
            candidates.append(row)
            target.append(classes.index(true_class))
            run_of.append(r)
        names.append(run.name)
    return OneShotRuns(folder, list(index), np.array(query, dtype=np.int64), np.array(candidates, dtype=np.int64),
                       np.array(target, dtype=np.int64), np.array(run_of, dtype=np.int64), names)


def omniglot_runs_accuracy(model: SiameseNet, images: torch.Tensor, runs: OneShotRuns,
                           config: Config) -> dict[str, Any]:
    """Accuracy over all tasks (Koch et al.'s number), and per run; `images` are runs.paths decoded in order."""
    correct = one_shot_correct(model, images, runs.query, runs.candidates, runs.target, config)
    ways = int(runs.candidates.shape[1])
    per_run = [{"run": name, "accuracy": float(correct[runs.run == r].mean()), "tasks": int((runs.run == r).sum())}
               for r, name in enumerate(runs.names)]
    return {"accuracy": float(correct.mean()), "runs": len(runs.names), "tasks": len(correct), "ways": ways,
            "chance": 1.0 / ways, "per_run": per_run}


# --------------------------------------------------------------------------------------------------
# `tune-siamese evaluate --one-shot ROOT`

def one_shot_report(model: SiameseNet, root: Path, config: Config, device: torch.device, ways: int | None = None,
                    trials: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Lake's fixed runs when ROOT is or holds all_runs/, else seeded random trials on an identity folder
    (ways 20, trials 400, seed 0 unless given). Images are decoded with the model's crop and image size."""
    runs_folder = find_omniglot_runs(root)
    if runs_folder is not None:
        given = [f"--{name}" for name, value in (("ways", ways), ("trials", trials), ("seed", seed))
                 if value is not None]
        if given:  # the runs fix their trials: ignoring the option silently would mislabel the result
            raise InputError(f"option {'/'.join(given)} does not apply to the fixed Omniglot runs in {runs_folder} "
                             f"(their {LABELS_FILE} files set the ways and tasks); leave it out")
        runs = read_omniglot_runs(runs_folder)
        images = images_on(device, decode_images(runs.paths, config.image_size, config.crop))
        return {"layout": "omniglot-runs", **omniglot_runs_accuracy(model, images, runs, config)}
    files = identity_folder_files(root)
    paths = [p for name in files for p in files[name]]
    identity = np.array([i for i, name in enumerate(files) for _ in files[name]], dtype=np.int64)
    images = images_on(device, decode_images(paths, config.image_size, config.crop))
    metrics = one_shot_accuracy(model, images, identity, config, 20 if ways is None else ways,
                                400 if trials is None else trials, 0 if seed is None else seed)
    return {"layout": "identity-folders", **metrics}

"""What `tune-siamese train`, `evaluate` and `verify` do (cli.py parses; this module loads torch only when a
command runs, so `tune-siamese --help` stays quick)."""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tune_siamese import data as data_mod
from tune_siamese.artifacts.checkpoint import export_model, load, save_checkpoint
from tune_siamese.artifacts.people import TrainedPeople, people_record
from tune_siamese.artifacts.provenance import mismatch_warning
from tune_siamese.artifacts.verifier import FaceVerifier, threshold_and_people
from tune_siamese.core import storage
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.training.device import resolve_device
from tune_siamese.training.engine import Diverged, print_epochs, train_and_test
from tune_siamese.training.metrics import pair_metrics
from tune_siamese.training.model import EnsembleNet
from tune_siamese.training.oneshot import one_shot_report
from tune_siamese.training.scoring import images_on, predict

PROG = "tune-siamese"


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity; write null for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_history(history: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    with storage.replacing(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def cmd_train(config: Config, out: Path, export: bool) -> int:
    """Train `config` (checked, with `out`, by cli.py before torch loaded), test it, write into `out`."""
    resolve_device(config)  # an unusable device is bad input: refuse it before loading anything
    data = data_mod.load_data(config)
    print(data.summary(), file=sys.stderr)
    try:
        result, report = train_and_test(config, data, on_epoch=print_epochs("", config.max_epochs))
    except Diverged as exc:
        print(f"{PROG}: training diverged: {exc}", file=sys.stderr)
        return 1
    threshold = float(report["val"]["threshold_logit"])
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in result.model.state_dict().items()}
    people = data.training_people  # so that `evaluate` can tell whether it scores people the model has seen
    save_checkpoint({"model": weights, "config": config.to_dict(), "threshold_logit": threshold,
                     "trained_people": people_record(people)}, out / "checkpoint.pt")
    write_history(result.history, out / "metrics.csv")
    summary = {"out": str(out), "best_epoch": report["best_epoch"], "epochs": report["epochs"],
               "stopped_early": result.stopped_early, "threshold_logit": threshold,
               "val": report["val"], "test": {k: v for k, v in report["test"].items() if not k.startswith("roc_")}}
    storage.write_text(out / "metrics.json", json.dumps(_finite({**report, "data": data_mod.describe(data),
                                                                 "config": config.to_dict()}), indent=2) + "\n")
    if export:
        export_model(result.model, config, out / "export", summary["test"], threshold, trained_people=people)
        summary["export"] = str(out / "export")
    print(json.dumps(_finite(summary), indent=2))
    return 0


# --------------------------------------------------------------------------------------------------
# evaluate and verify

def pair_list_data(pair_file: Path, lines: list[data_mod.PairLine], lfw_root: Path, config: Config
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, pair rows) for the lines of an LFW pair list, images from an LFW folder; a self-pair or a
    duplicate is refused before any image is decoded."""
    if not lfw_root.is_dir():
        raise InputError("LFW folder for --pairs not found (give it with --data)", lfw_root)
    index, paths = data_mod.index_pair_images(data_mod.lfw_image_dir(lfw_root), [(pair_file, lines)])
    pairs = data_mod.pair_rows(lines, index)
    data_mod.refuse_repeated_pairs(pairs, "evaluated", data_mod.PairOrigin(pair_file, [p.line for p in lines]))
    return data_mod.decode_images(paths, config.image_size, config.crop), pairs


def people_overlap(people: TrainedPeople | None, source: str, evaluated: list[tuple[int | None, set[str]]],
                   what: str, where: str | Path, allow: bool) -> dict[str, Any] | None:
    """Refuse to score people the model trained or was selected on (the search's rule for its test pairs), unless
    `allow`: then warn and return the overlap for the JSON. `evaluated`: (line or None, names) per pair or part."""
    if people is None:
        print(f"warning: {source} records no training identities (written before they were recorded): cannot "
              f"check the evaluated people against them", file=sys.stderr)
        return None
    names = set().union(*(pair for _, pair in evaluated))
    shared = people.among(names)
    if not shared:
        return None
    line = next(number for number, pair in evaluated if pair.intersection(shared))
    text = (f"{len(shared)} of the {len(names)} identities in {what} are among the {len(people.digests)} people "
            f"the model trained or was selected on (e.g. {', '.join(shared[:3])}); the score would not measure "
            f"unseen people")
    if not allow:
        raise InputError(f"{text}. --allow-identity-overlap scores it anyway", where, line)
    print(f"warning: {where if line is None else f'{where}:{line}'}: {text}; scored anyway "
          f"(--allow-identity-overlap)", file=sys.stderr)
    return {"shared_identities": len(shared), "identities": len(names), "examples": shared[:3]}


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.out is not None:  # before the scoring, which can take a while
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise InputError("option --out must be a folder", args.out)
        storage.check_writable(args.out, "--out")
    loaded = load(args.source)
    config = loaded.config.replace(device=args.device)
    device = resolve_device(config)
    model = loaded.model.to(device)
    metrics: dict[str, Any] = {"source": str(args.source)}
    if args.one_shot is not None:
        if isinstance(model, EnsembleNet):  # one-shot compares embeddings; an ensemble has one per member
            raise InputError("option --one-shot needs a single model, not an ensemble export", args.source)
        metrics.update(data=str(args.one_shot), **one_shot_report(model, Path(args.one_shot), config, device,
                                                                   args.ways, args.trials, args.seed))
        if args.out is not None:  # no ROC: one-shot scores picks among candidates, not pairs
            storage.write_text(Path(args.out) / "metrics.json", json.dumps(_rounded(_finite(metrics)), indent=2) + "\n")
        print(json.dumps(_finite(metrics), indent=2))
        return 0
    if args.pairs is not None and args.data is None:
        raise InputError("option --pairs needs --data, the LFW folder that holds the images")
    threshold, people, about_threshold = threshold_and_people(loaded, config, device, args.source)
    allow = args.allow_identity_overlap
    if args.pairs is not None:
        pair_file = Path(args.pairs)
        lines = [p for fold in data_mod.parse_pair_list(pair_file) for p in fold]
        overlap = people_overlap(people, args.source, [(p.line, {p.name_a, p.name_b}) for p in lines],
                                 "these pairs", pair_file, allow)
        images, pairs = pair_list_data(pair_file, lines, Path(args.data), config)
        people_of_pairs = (np.array([p.name_a for p in lines]), np.array([p.name_b for p in lines]))
        metrics.update(pairs=str(args.pairs))
    else:
        if args.data is not None and args.data != config.data:
            # The model's count of drawn pairs was for the data it drew from: another source draws its own number
            # (and one with pair lists none), as `train --data` there would.
            config = config.replace(data=args.data, drawn_pairs=0)
        data = data_mod.load_data(config)
        test_people = {data.names[i] for i in data.identities_of(data.test)}
        overlap = people_overlap(people, args.source, [(None, test_people)], "the test pairs", config.data, allow)
        images, pairs = data.images, data.test
        people_of_pairs = (data.identity[pairs[:, 0]], data.identity[pairs[:, 1]])
        metrics.update(data=config.data)
    warning = mismatch_warning(loaded.config.data, config.data if args.pairs is None else str(args.pairs))
    if warning:
        print(warning, file=sys.stderr)
        metrics["warning"] = warning.removeprefix("WARNING: ")
    logits = predict(model, images_on(device, images), pairs, config)
    scores = pair_metrics(pairs[:, 2], logits, threshold, with_roc=True, people=people_of_pairs)  # with intervals
    metrics.update(n_pairs=len(pairs), **about_threshold,
                   **{key: value for key, value in scores.items() if not key.startswith("roc_")})
    if overlap is not None:
        metrics["identity_overlap"] = overlap
    if args.out is not None:
        write_evaluation(Path(args.out), metrics, scores)
    print(json.dumps(_finite(metrics), indent=2))
    return 0


def write_evaluation(out: Path, metrics: dict[str, Any], scores: dict[str, Any]) -> None:
    """evaluate --out: the metrics rounded for reading, the ROC points, and the ROC picture."""
    from tune_siamese.artifacts.roc_plot import roc_figure

    out.mkdir(parents=True, exist_ok=True)
    storage.write_text(out / "metrics.json", json.dumps(_rounded(_finite(metrics)), indent=2) + "\n")
    rows = "\n".join(f"{f:.6g},{t:.6g}" for f, t in zip(scores["roc_fpr"], scores["roc_tpr"]))
    storage.write_text(out / "roc.csv", "fpr,tpr\n" + rows + "\n")
    model = Path(str(metrics["source"])).name or "model"
    pairs = Path(str(metrics.get("pairs") or metrics.get("data"))).name
    roc_figure([(scores, model)], out / "roc.png", f"ROC of {model} on {pairs} ({metrics['n_pairs']} pairs)")


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def cmd_verify(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():  # said once, as a line on stderr, not as Python's warning
        warnings.simplefilter("ignore")
        verifier = FaceVerifier(args.source)
    answer = verifier.verify(args.image_a, args.image_b)  # bad images: their one-line error alone
    if verifier.warning:
        print(verifier.warning, file=sys.stderr)
    print(json.dumps(answer, indent=2))
    return 0

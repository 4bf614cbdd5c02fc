"""What `tune-siamese train`, `evaluate` and `verify` do (cli.py parses; this module loads torch only when a
command runs, so `tune-siamese --help` stays quick)."""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import data as data_mod
from . import storage
from .checkpoint import export_model, load_model, save_checkpoint
from .config import Config, parse_overrides
from .engine import Diverged, images_on, pair_metrics, predict, print_epochs, resolve_device, train_and_test
from .errors import InputError
from .model import EnsembleNet, Verifier
from .oneshot import one_shot_report

PROG = "tune-siamese"


def build_config(config_file: str | None, data: str | None, overrides: Sequence[str]) -> Config:
    """File values, then --data, then --set; every layer is validated by Config.from_dict."""
    base = Config.load(config_file) if config_file else Config()
    changes: dict[str, Any] = parse_overrides(overrides)
    if data is not None:
        changes = {"data": data, **changes}
    return Config.from_dict({**base.to_dict(), **changes}, source="command line")


def _prepare_out(out: str | None) -> Path:
    path = Path(out) if out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    if path.exists() and not path.is_dir():
        raise InputError("output path exists and is not a folder", path)
    if path.is_dir() and any((path / name).exists() for name in ("checkpoint.pt", "metrics.json")):
        raise InputError("output folder already holds a run; choose another --out", path)
    return path


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


def cmd_train(args: argparse.Namespace) -> int:
    config = build_config(args.config, args.data, args.overrides)
    out = _prepare_out(args.out)
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
    save_checkpoint({"model": weights, "config": config.to_dict(), "threshold_logit": threshold},
                    out / "checkpoint.pt")
    write_history(result.history, out / "metrics.csv")
    summary = {"out": str(out), "best_epoch": report["best_epoch"], "epochs": report["epochs"],
               "stopped_early": result.stopped_early, "threshold_logit": threshold,
               "val": report["val"], "test": {k: v for k, v in report["test"].items() if not k.startswith("roc_")}}
    storage.write_text(out / "metrics.json", json.dumps(_finite({**report, "data": data_mod.describe(data),
                                                                 "config": config.to_dict()}), indent=2) + "\n")
    if args.export:
        export_model(result.model, config, out / "export", summary["test"], threshold)
        summary["export"] = str(out / "export")
    print(json.dumps(_finite(summary), indent=2))
    return 0


# --------------------------------------------------------------------------------------------------
# evaluate and verify

def pair_list_data(pair_file: Path, lfw_root: Path, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, pair rows) for every pair of an LFW pair list, images from an LFW folder."""
    lines = [p for fold in data_mod.parse_pair_list(pair_file) for p in fold]
    if not lfw_root.is_dir():
        raise InputError("LFW folder for --pairs not found (give it with --data)", lfw_root)
    index, paths = data_mod.index_pair_images(data_mod.lfw_image_dir(lfw_root), [(pair_file, lines)])
    return data_mod.decode_images(paths, config.image_size, config.crop), data_mod.pair_rows(lines, index)


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, config, threshold = load_model(args.source)
    config = config.replace(device=args.device)
    device = resolve_device(config)
    model = model.to(device)
    if args.one_shot is not None:
        if isinstance(model, EnsembleNet):  # one-shot compares embeddings; an ensemble has one per member
            raise InputError("option --one-shot needs a single model, not an ensemble export", args.source)
        metrics = one_shot_report(model, Path(args.one_shot), config, device, args.ways, args.trials, args.seed)
        metrics = {"source": str(args.source), "data": str(args.one_shot), **metrics}
    elif args.pairs is not None:
        if args.data is None:
            raise InputError("option --pairs needs --data, the LFW folder that holds the images")
        images, pairs = pair_list_data(Path(args.pairs), Path(args.data), config)
        logits = predict(model, images_on(device, images), pairs, config)
        metrics = {"source": str(args.source), "pairs": str(args.pairs), "n_pairs": len(pairs),
                   **pair_metrics(pairs[:, 2], logits, threshold)}
    else:
        if args.data is not None:
            config = config.replace(data=args.data)
        data = data_mod.load_data(config)
        logits = predict(model, images_on(device, data.images), data.test, config)
        metrics = {"source": str(args.source), "data": config.data, "n_pairs": len(data.test),
                   **pair_metrics(data.test[:, 2], logits, threshold)}
    print(json.dumps(_finite(metrics), indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    model, config, threshold = load_model(args.source)
    config = config.replace(device="cpu")
    decoded = []
    for name in (args.image_a, args.image_b):
        path = Path(name)
        if not path.is_file():
            raise InputError("image not found", path)
        decoded.append(data_mod.decode_image(path, config.image_size, config.crop))
    # fp32 on purpose (not the bf16 autocast of batch scoring): one pair costs nothing, and the exported
    # verifier.pt2, which runs the same Verifier, then agrees with this to float precision.
    a, b = (torch.tensor(image).unsqueeze(0) for image in decoded)
    with torch.no_grad():
        logit = float(Verifier(model.eval(), config)(a, b)[0])
    print(json.dumps({"probability_same": 1.0 / (1.0 + math.exp(-logit)), "logit": logit,
                      "threshold_logit": threshold, "same_person": logit >= threshold}, indent=2))
    return 0

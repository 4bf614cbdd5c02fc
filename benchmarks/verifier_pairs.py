"""FaceVerifier.score pair by pair vs FaceVerifier.score_pairs on LFW-a's DevTest pairs: wall time, the speed ratio
(issue 33's target: score_pairs at least 10x faster) and the largest difference between their scores (must be ~0:
both run in float32; score_pairs embeds each distinct image once, in batches, and scores pairs from the embeddings).

Each model is an untrained net built from a Config and written through the project's own export path
(checkpoint.export_model, into a temporary folder), then loaded as a user loads it (FaceVerifier(EXPORT)); the
speed does not depend on training. Models (--models):

- default: Config() at full width, Koch's net as published: width 1, 105 px, embedding 4096, head l1;
- small: the size of the searches' picks (RESULTS.md, objectives_search): width 0.25, embedding 1024, 105 px
  images seen at 80 px (input_size 80), head l1_prod.

score_pairs runs before and after the pair-by-pair loop (load changes hit both) and its mean time is the one
compared; every image is read once beforehand, so neither side pays for a cold disk.

    python3 benchmarks/verifier_pairs.py                     # 1000 DevTest pairs, both models, ~1 min on 2 quiet cores
    python3 benchmarks/verifier_pairs.py --models small --pairs 200 --no-record
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)

MODELS = {
    "default": {},
    "small": {"width": 0.25, "embedding": 1024, "input_size": 80, "head": "l1_prod"},
}
TARGET = 10.0  # issue 33: score_pairs at least this many times faster than score pair by pair


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="LFW-a folder (default: $TUNE_SIAMESE_LFW or ../shared/data/lfw-a)")
    p.add_argument("--pairs", type=int, default=1000, help="DevTest pairs scored (default 1000, all of them; fewer: "
                                                           "a seeded sample)")
    p.add_argument("--models", default="default,small", help=f"comma list of {', '.join(MODELS)} (default both)")
    p.add_argument("--batch-size", type=int, default=64, help="score_pairs' batch size (default 64, its default)")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default (default 0)")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def devtest_pairs(root: Path, count: int) -> list[tuple[str, str]]:
    from tune_siamese.data import lfw_image_dir, lfw_image_path, parse_pair_list

    lines = [line for fold in parse_pair_list(root / "pairsDevTest.txt") for line in fold]
    if count < len(lines):
        lines = [lines[k] for k in sorted(np.random.default_rng(0).choice(len(lines), count, replace=False))]
    images = lfw_image_dir(root)
    return [(str(lfw_image_path(images, line.name_a, line.index_a)),
             str(lfw_image_path(images, line.name_b, line.index_b))) for line in lines]


def measure(name: str, root: Path, pairs: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tune_siamese.artifacts.checkpoint import export_model
    from tune_siamese.artifacts.verifier import FaceVerifier
    from tune_siamese.core.config import Config
    from tune_siamese.training.costs import parameter_count
    from tune_siamese.training.model import build_model

    config = Config(data=str(root), **MODELS[name])
    torch.manual_seed(0)
    model = build_model(config).eval()
    with tempfile.TemporaryDirectory(prefix="verifier-pairs-") as folder:
        started = time.perf_counter()
        export = export_model(model, config, Path(folder) / "export", threshold_logit=0.0)
        export_s = time.perf_counter() - started
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            verifier = FaceVerifier(export)
    verifier.score_pairs(pairs[:8], batch_size=args.batch_size)  # warm-up: first calls allocate
    verifier.score(*pairs[0])
    times, batched = [], None
    for turn in ("before", "loop", "after"):
        started = time.perf_counter()
        if turn == "loop":
            one_by_one = np.array([verifier.score(a, b) for a, b in pairs])
        else:
            batched = verifier.score_pairs(pairs, batch_size=args.batch_size)
        times.append(time.perf_counter() - started)
    assert batched is not None
    pairs_s = (times[0] + times[2]) / 2
    return {"model": name, "config": describe(config), "params": parameter_count(model),
            "distinct": len({image for pair in pairs for image in pair}), "export_s": export_s,
            "loop_s": times[1], "pairs_s": pairs_s, "pairs_runs": (times[0], times[2]),
            "ratio": times[1] / pairs_s, "max_diff": float(np.abs(batched - one_by_one).max())}


def describe(config: Any) -> str:
    return (f"width {config.width:g}, {config.image_size} px (model sees {config.model_input_size}), embedding "
            f"{config.embedding}, head {config.head}, tta_flip {config.tta_flip}")


def report(rows: list[dict[str, Any]], pairs: int, args: argparse.Namespace) -> str:
    table = _common.md_table(
        ["model", "config", "params", "pairs", "distinct images", "score pair by pair s (ms/pair)",
         "score_pairs s (two runs)", "speed ratio", f"≥ {TARGET:g}x", "max abs score difference"],
        [[r["model"], r["config"], f"{r['params']:,}", pairs, r["distinct"],
          f"{r['loop_s']:.2f} ({1000 * r['loop_s'] / pairs:.1f})",
          f"{r['pairs_s']:.2f} ({r['pairs_runs'][0]:.2f}, {r['pairs_runs'][1]:.2f})", f"{r['ratio']:.1f}x",
          "met" if r["ratio"] >= TARGET else "not met", f"{r['max_diff']:.1e}"] for r in rows])
    lines = [f"- {pairs} pairs of pairsDevTest.txt (image paths), untrained models written with "
             f"checkpoint.export_model and loaded with FaceVerifier(EXPORT); score_pairs batch size "
             f"{args.batch_size}; float32 throughout", "", table, ""]
    for r in rows:
        per_image = 1000 * r["pairs_s"] / r["distinct"]
        fewer = 2 * pairs / r["distinct"]  # images decoded and embedded: 2 per pair by pair, each distinct one once
        lines.append(f"- {r['model']}: score_pairs {r['ratio']:.1f}x faster: {fewer:.2f}x from decoding and embedding "
                     f"{r['distinct']} distinct images instead of {2 * pairs}, {r['ratio'] / fewer:.1f}x from batches "
                     f"and parallel decoding ({per_image:.2f} ms per distinct image vs "
                     f"{1000 * r['loop_s'] / (2 * pairs):.2f} ms per image pair by pair, decoding included); scores "
                     f"differ by at most {r['max_diff']:.1e} (float32 sums in another order: oneDNN picks other "
                     f"kernels for a batch of 64 than for one pair)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.time()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = _common.machine_info(args.threads or None)
    root = Path(args.data or _common.default_lfw())
    pairs = devtest_pairs(root, args.pairs)
    from tune_siamese.data import decode_images

    decode_images(sorted({Path(image) for pair in pairs for image in pair}), 105, 1.0)  # the files into the page cache
    rows = []
    for name in args.models.split(","):
        if name not in MODELS:
            sys.exit(f"--models: unknown model {name!r} (known: {', '.join(MODELS)})")
        rows.append(measure(name, root, pairs, args))
        print(rows[-1], flush=True)
    _common.record("verifier_pairs", report(rows, len(pairs), args), info, started, enabled=not args.no_record)


if __name__ == "__main__":
    main()

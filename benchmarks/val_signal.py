"""How noisy is the validation loss that model selection rests on? The given validation pairs (DevTrain's 90:10
identity-disjoint split) against val_pairs="all" (every same-person pair among the validation identities plus
seeded different-person pairs, each class weighing half), scored by one fixed model.

One small model is trained a few epochs on the training pairs that share no person with any validation set
compared here; after every epoch each validation set is scored. Reported per set: pair counts, validation
identities, the balanced val loss of the last epoch with three standard errors, the standard error of the change
between the last two epochs (paired: what telling two epochs or two models apart needs), the epoch-to-epoch
jitter of the val loss (s.d. of consecutive differences) and the scoring time:

- pair bootstrap: resample the pairs of each class with replacement (pairs treated as independent);
- clustered by person (the honest one: all pairs of one person, and the different-person pairs of one image, are
  correlated): the analytic cluster-robust (dyadic) variance, which counts the product of two pairs' residuals
  once per person they share; it is what a bootstrap over people estimates, without its bias below;
- bootstrap over people: draw the validation identities with replacement; a pair counts once per draw of its
  person (same-person) or per draw of both its people (different-person). Conservative where people sit in one
  pair each (the given split's different-person pairs): a product of two draws has variance 3, not 1.

Sets compared: the given split at --val-fraction (the default) against val_pairs="all" (its own split: people
held out for their same-person pairs), with the different-person share varied (--multiples) to choose
DIFFERENT_PER_SAME; then the levers: all pairs among the default split's people (scoring alone changed), people
with several images at the same training cost (benchmark only), and both splits at larger fractions.

    python3 benchmarks/val_signal.py                     # real LFW-a, width 1/8, 80 px, 8 epochs, ~3 min
    python3 benchmarks/val_signal.py --data synthetic --epochs 3 --no-record
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="LFW-a folder (default: $TUNE_SIAMESE_LFW or ../shared/data/lfw-a) "
                                                "or 'synthetic'")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--image-size", type=int, default=105)
    p.add_argument("--input-size", type=int, default=80)
    p.add_argument("--zoom", type=float, default=0.8)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--fractions", default="0.15,0.2",
                   help="larger validation fractions to compare, given and all (default 0.15,0.2)")
    p.add_argument("--multiples", default="1,4,10,30",
                   help="different-person pairs per same-person pair to compare for val_pairs=all (plus 'every')")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Validation sets


def with_val_identities(data: Any, people: set[int]) -> Any:
    """`data` re-split so that `people` are the validation identities: val = the given pairs among them, train =
    the pairs touching none of them (the rest are dropped, as the identity split drops straddling pairs)."""
    trainval = np.concatenate([data.train, data.val])
    inside = np.isin(data.identity[trainval[:, :2]], list(people))
    return dataclasses.replace(data, train=trainval[~inside.any(axis=1)], val=trainval[inside.all(axis=1)],
                               val_all=None)


def multi_image_identities(data: Any, fraction: float, rng: np.random.Generator) -> set[int]:
    """The lever at equal training cost: people chosen for their same-person pairs (C(n, 2) over the pairs they
    take from training, cheapest first) until `fraction` of the train + val pairs leave training, plus every person
    whose pairs all left with them."""
    trainval = np.concatenate([data.train, data.val])
    ids = data.identity[trainval[:, :2]]
    images = np.bincount(data.identity, minlength=len(data.names))
    occurrences = np.bincount(ids.ravel(), minlength=len(data.names))
    test = data.identities_of(data.test)
    candidates = [k for k in rng.permutation(len(data.names)).tolist() if images[k] >= 2 and occurrences[k]
                  and k not in test]
    candidates.sort(key=lambda k: occurrences[k] / (images[k] * (images[k] - 1) / 2))
    budget, chosen = round(fraction * len(trainval)), np.zeros(len(data.names), bool)
    for k in candidates:
        chosen[k] = True
        if chosen[ids].any(axis=1).sum() > budget:
            chosen[k] = False
    touched = chosen[ids].any(axis=1)
    free = set(ids[touched].ravel().tolist()) - set(ids[~touched].ravel().tolist()) - test
    return set(np.flatnonzero(chosen).tolist()) | free


# ----------------------------------------------------------------------------------------------------------------
# Statistics


def losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, logits) - labels * logits


def balanced(values: np.ndarray, same: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The balanced mean (half each class) of `values`, for each row of `weights` [B, M] (or unweighted)."""
    if weights is None:
        return np.asarray(0.5 * values[same].mean() + 0.5 * values[~same].mean())
    parts = [(weights[:, mask] @ values[mask]) / weights[:, mask].sum(axis=1) for mask in (same, ~same)]
    return 0.5 * parts[0] + 0.5 * parts[1]


def pair_bootstrap_se(values: np.ndarray, same: np.ndarray, boot: int, rng: np.random.Generator) -> float:
    """Resample the pairs of each class with replacement."""
    means = []
    for mask in (same, ~same):
        v = values[mask]
        means.append(np.array([v[rng.integers(len(v), size=len(v))].mean() for _ in range(boot)]))
    return float(np.std(0.5 * means[0] + 0.5 * means[1], ddof=1))


def clustered_se(values: np.ndarray, same: np.ndarray, ids: np.ndarray) -> float:
    """Standard error of the balanced mean with pairs clustered by person: sum over people of the squared sum of
    the weighted residuals of their pairs, less the double count of different-person pairs of the same two people."""
    weight = np.where(same, 0.5 / same.sum(), 0.5 / (~same).sum())
    part = weight * (values - np.where(same, values[same].mean(), values[~same].mean()))
    people, index = np.unique(ids, return_inverse=True)
    index = index.reshape(-1, 2)
    per_person = np.bincount(index[:, 0], part, len(people)) + np.bincount(index[~same, 1], part[~same], len(people))
    dyads, group = np.unique(np.sort(index[~same], axis=1), axis=0, return_inverse=True)
    per_dyad = np.bincount(group.ravel(), part[~same], len(dyads))
    return float(np.sqrt(max(0.0, (per_person ** 2).sum() - (per_dyad ** 2).sum())))


def cluster_bootstrap_se(values: np.ndarray, same: np.ndarray, ids: np.ndarray, people: np.ndarray, boot: int,
                         rng: np.random.Generator) -> float:
    """Resample the validation identities with replacement; a pair's weight is the number of draws of its person
    (same-person) or the product of its two people's draws (different-person)."""
    position = {k: i for i, k in enumerate(people.tolist())}
    a = np.array([position[k] for k in ids[:, 0].tolist()])
    b = np.array([position[k] for k in ids[:, 1].tolist()])
    out = []
    for start in range(0, boot, 100):
        draws = rng.multinomial(len(people), np.full(len(people), 1 / len(people)), size=min(100, boot - start))
        weights = np.where(same, draws[:, a], draws[:, a] * draws[:, b]).astype(np.float64)
        out.append(balanced(values, same, weights))
    return float(np.std(np.concatenate(out), ddof=1))


# ----------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the validation sets, train the fixed model and score every set after every epoch."""
    import torch

    from tune_siamese.core.config import Config
    from tune_siamese.data import DIFFERENT_PER_SAME, all_validation_pairs, load_data
    from tune_siamese.training.engine import make_optimizer, make_scheduler, setup, train_one_epoch
    from tune_siamese.training.model import build_model
    from tune_siamese.training.scoring import images_on, predict, predict_by_image

    cfg = Config(data=args.data or _common.default_lfw(), image_size=args.image_size, input_size=args.input_size,
                 zoom=args.zoom, width=args.width, batchnorm=True, init="torch", optimizer="adam", lr=args.lr,
                 max_epochs=args.epochs, val_fraction=args.val_fraction, threads=args.threads, device="cpu")
    base = load_data(cfg)  # the default split: what val_pairs=given scores
    new = load_data(cfg.replace(val_pairs="all"))  # val_pairs=all, its split and pairs as the project builds them
    assert new.val_all is not None
    multi = with_val_identities(base, multi_image_identities(base, args.val_fraction, np.random.default_rng(0)))
    seed = cfg.data_seed + 3  # load_data's seed for the all-pairs set
    fraction = f"val_fraction {args.val_fraction:g}"

    # name -> (pairs, the split they belong to, scored by image); "given" sets are scored pair by pair, as in fit
    sets: dict[str, tuple[np.ndarray, Any, bool]] = {f"given, {fraction} (the default)": (base.val, base, False)}
    for m in [int(m) for m in args.multiples.split(",") if m]:
        rows = new.val_all if m == DIFFERENT_PER_SAME else all_validation_pairs(new, seed, m)
        sets[f"all, {fraction}, {m}× different" + (" (val_pairs=all)" if m == DIFFERENT_PER_SAME else "")] = (
            rows, new, True)
    sets[f"all, {fraction}, every different pair"] = (all_validation_pairs(new, seed, 10**9), new, True)
    sets[f"all pairs among the given split's people, {fraction}, {DIFFERENT_PER_SAME}× different"] = (
        all_validation_pairs(base, seed), base, True)
    sets[f"people with several images, the training cost of {fraction}, {DIFFERENT_PER_SAME}× different"] = (
        all_validation_pairs(multi, seed), multi, True)
    for larger in [float(f) for f in args.fractions.split(",") if f]:
        given, every = (load_data(cfg.replace(val_fraction=larger, val_pairs=kind)) for kind in ("given", "all"))
        sets[f"given, val_fraction {larger:g}"] = (given.val, given, False)
        sets[f"all, val_fraction {larger:g}, {DIFFERENT_PER_SAME}× different"] = (every.val_scored, every, True)

    # The fixed model trains on the pairs that share no person with any of these validation sets (nor the test).
    held_out = set().union(*(split.identities_of(split.val) for _, split, _ in sets.values()))
    train = base.train[~np.isin(base.identity[base.train[:, :2]], list(held_out)).any(axis=1)]
    device = setup(cfg)
    images = images_on(device, base.images)
    model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
    optimizer, generator = make_optimizer(cfg, model), torch.Generator().manual_seed(cfg.seed)
    scheduler = make_scheduler(cfg, optimizer)
    logits: dict[str, list[np.ndarray]] = {name: [] for name in sets}
    seconds: dict[str, float] = {name: 0.0 for name in sets}
    for epoch in range(1, args.epochs + 1):
        tick = time.perf_counter()
        train_loss = train_one_epoch(model, optimizer, images, train, cfg, generator)
        scheduler.step()
        line = [f"epoch {epoch}: train loss {train_loss:.4f} ({time.perf_counter() - tick:.1f} s)"]
        for name, (rows, _, by_image) in sets.items():
            tick = time.perf_counter()
            logits[name].append((predict_by_image if by_image else predict)(model, images, rows, cfg))
            seconds[name] += time.perf_counter() - tick
            if len(line) < 3:
                value = balanced(losses(logits[name][-1], rows[:, 2]), rows[:, 2] == 1)
                line.append(f"{name.split(',')[0]} {value:.4f}")
        print(", ".join(line), flush=True)
    return {"sets": {name: (rows, split.identity[rows[:, :2]],
                            f"{len(split.train)} ({100 * split.train[:, 2].mean():.0f} % same)")
                     for name, (rows, split, _) in sets.items()},
            "logits": logits, "seconds": seconds, "train_pairs": len(train), "summary": base.summary(), "cfg": cfg}


def report(args: argparse.Namespace, state: dict[str, Any]) -> str:
    rng = np.random.default_rng(0)
    table, figures = [], {}
    for name, (rows, ids, kept) in state["sets"].items():
        same = rows[:, 2] == 1
        per_epoch = [losses(lg, rows[:, 2]) for lg in state["logits"][name]]
        history = [float(balanced(v, same)) for v in per_epoch]
        values = per_epoch[-1]
        se = (pair_bootstrap_se(values, same, args.boot, rng), clustered_se(values, same, ids),
              cluster_bootstrap_se(values, same, ids, np.unique(ids), args.boot, rng))
        change = clustered_se(per_epoch[-1] - per_epoch[-2], same, ids) if len(per_epoch) > 1 else float("nan")
        jitter = float(np.std(np.diff(history), ddof=1)) if len(history) > 2 else float("nan")
        figures[name] = (*se, change, jitter)
        table.append([name, f"{int(same.sum())} / {int((~same).sum())}",
                      f"{len(np.unique(ids))} ({len(np.unique(ids[same, 0]))})", kept, f"{history[-1]:.4f}",
                      *(f"{x:.4f}" for x in (*se, change, jitter)), f"{state['seconds'][name] / len(history):.2f}"])
    given = next(iter(figures.values()))
    ratios = [[name, *(f"{g / f:.2f}×" for g, f in zip(given, figs))] for name, figs in list(figures.items())[1:]]
    cfg = state["cfg"]
    return (
        f"Fixed model: width {cfg.width}, {cfg.image_size} px stored, zoom {cfg.zoom} → {cfg.input_size} px, "
        f"BatchNorm, Adam {cfg.lr}, {args.epochs} epochs on the {state['train_pairs']} training pairs that share no "
        f"person with any set below; {args.threads} torch threads, CPU. Data: {state['summary']}. Every loss is "
        f"balanced (half each class); bootstraps: {args.boot} replicates; last = epoch {args.epochs}.\n\n"
        + _common.md_table(["validation set", "pairs same / different", "people (with a same-person pair)",
                            "training pairs its split keeps", "val loss, last", "s.e., pair bootstrap",
                            "s.e., clustered by person", "s.e., bootstrap over people",
                            "s.e. of last − previous epoch (clustered, paired)", "jitter: s.d. of epoch diffs",
                            "scoring s / epoch"], table)
        + "\n\nHow many times smaller than the given split's (first row):\n\n"
        + _common.md_table(["validation set", "pair bootstrap", "clustered by person", "bootstrap over people",
                            "last − previous", "jitter"], ratios))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.time()
    info = _common.machine_info(args.threads)
    body = report(args, run(args))
    _common.record("val_signal", body, info, started, enabled=not args.no_record)


if __name__ == "__main__":
    main()

"""How fast each search method finds a near-best configuration, against the exhaustive grid of a small space.

Space (default 24 configurations): width {0.0625, 0.125} x lr {3e-4, 3e-3, 3e-2} x BatchNorm {on, off} x
optimizer {sgd, adam}, synthetic data at 72 px by default. Methods, all through Ray Tune on the same cores:

  grid         tune.grid_search over every configuration, FIFO, every trial runs --max-epochs epochs: the
               reference, whose best val loss (any trial, any epoch) is the target;
  random+ASHA  OptunaSearch with optuna's RandomSampler + ASHA: the project's search.build_tuner with only its
               TPESampler swapped for RandomSampler (same seed);
  TPE+ASHA     search.build_tuner exactly as run_search.py uses it (OptunaSearch TPE + ASHA);

the last two with --num-samples trials for each of --seeds searcher seeds. Every trial trains with the same
trial seed (Config.seed), whatever the searcher seed, so one configuration yields the same learning curve in
every method (the script checks that) and the methods differ only in which configurations they run and for how
long. Early stopping by patience is off by default (--patience), so ASHA is the only early stopper.

Figures: epochs consumed until the best val loss found so far is within --tolerance (1 %) of the grid's best,
counting every reported epoch of every trial in the order the reports happened (precise wall-clock stamps
added to each report), and the same counted in trial-completion order (sum of training_iteration of the
trials completed so far); each method's final best val loss; with --retrain, the test accuracy of each
method's best configuration retrained on train + val (finish.retrain_and_test).

    python3 benchmarks/search_efficiency.py                 # ~15-25 min on 2 cores (see README.md)
    python3 benchmarks/search_efficiency.py --seeds 1 --max-epochs 2 --num-samples 4 --widths 0.0625 \\
        --pairs 256 --no-record                             # quick check, ~3-4 min
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from tune_siamese.config import Config  # noqa: E402
from tune_siamese.data import load_data  # noqa: E402


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", help="'synthetic' (default) or an LFW-a folder")
    p.add_argument("--widths", type=floats, default=[0.0625, 0.125])
    p.add_argument("--lrs", type=floats, default=[3e-4, 3e-3, 3e-2])
    p.add_argument("--batchnorm", default="true,false", help="comma list of true/false")
    p.add_argument("--optimizers", default="sgd,adam", help="comma list")
    p.add_argument("--image-size", type=int, default=72)
    p.add_argument("--pairs", type=int, default=0, help="seeded subset of N training pairs (0 = all)")
    p.add_argument("--max-epochs", type=int, default=6, help="grid epochs per trial = ASHA's max_t")
    p.add_argument("--num-samples", type=int, default=16, help="trials per random / TPE search")
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--patience", type=int, default=0, help="early-stopping patience (0 = off: max_epochs + 1)")
    p.add_argument("--seeds", type=int, default=3, help="searcher seeds for random and TPE")
    p.add_argument("--trial-seed", type=int, default=0, help="Config.seed of every trial, in every method")
    p.add_argument("--tolerance", type=float, default=0.01, help="'found' = within this fraction of grid's best")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--retrain", action="store_true", help="also retrain each method's best and score the test pairs")
    p.add_argument("--storage-path", help="keep the Ray experiments here (default: a temporary folder, removed)")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def space_values(args: argparse.Namespace) -> dict[str, list[Any]]:
    return {"width": args.widths, "lr": args.lrs,
            "batchnorm": [v.strip().lower() in ("1", "true", "on", "yes") for v in args.batchnorm.split(",")],
            "optimizer": [v.strip() for v in args.optimizers.split(",")]}


def build(args: argparse.Namespace, storage: str, name: str, searcher_seed: int, num_samples: int) -> Any:
    """SearchSettings as run_search.py builds them; the trials' seed is then pinned to --trial-seed."""
    import run_search

    patience = args.patience or args.max_epochs + 1
    fixed = {"image_size": args.image_size, "embedding": 4096, "init": "koch", "batch_size": 32,
             "momentum": 0.9, "patience": patience}
    argv = ["--data", args.data, "--space", "smoke", "--seed", str(searcher_seed), "--num-samples", str(num_samples),
            "--max-epochs", str(args.max_epochs), "--grace-period", str(args.grace_period),
            "--reduction-factor", str(args.reduction_factor), "--cpus-per-trial", "1",
            "--max-concurrent", str(args.max_concurrent), "--storage-path", storage, "--name", name,
            "--max-failures", "0"]
    for key, value in fixed.items():
        argv += ["--set", f"{key}={value}"]
    settings, _ = run_search.build_settings(run_search.parse_args(argv))
    base = {k: v for k, v in settings.base.items() if k not in ("width",)}  # width comes from the space
    return dataclasses.replace(settings, base={**base, "seed": args.trial_seed})


def trainable_for(settings: Any, data: Any) -> Any:
    from ray import tune

    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(_common.trial_shared, data=data), resources)


def grid_tuner(settings: Any, data: Any, values: dict[str, list[Any]]) -> Any:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    return tune.Tuner(
        trainable_for(settings, data),
        param_space={**settings.base, **{k: tune.grid_search(v) for k, v in values.items()}},
        tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1,
                                    max_concurrent_trials=settings.max_concurrent,
                                    trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(name=settings.name, storage_path=settings.storage_path,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures)))


def project_tuner(settings: Any, data: Any, values: dict[str, list[Any]], sampler: str) -> Any:
    """search.build_tuner with the instrumented trainable; for 'random' its TPESampler becomes RandomSampler."""
    import optuna
    from ray import tune

    from tune_siamese import search

    space = {k: tune.choice(v) for k, v in values.items()}
    original_trainable, original_tpe = search.build_trainable, optuna.samplers.TPESampler
    search.build_trainable = trainable_for
    if sampler == "random":
        optuna.samplers.TPESampler = lambda seed=None, **_: optuna.samplers.RandomSampler(seed=seed)
    try:
        return search.build_tuner(settings, data, space, [])
    finally:
        search.build_trainable, optuna.samplers.TPESampler = original_trainable, original_tpe


def config_key(config: dict[str, Any], keys: list[str]) -> tuple:
    return tuple(round(float(config[k]), 12) if isinstance(config[k], float) else config[k] for k in keys)


def collect(results: Any, keys: list[str]) -> dict[str, Any]:
    rows, trials, errors = [], [], 0
    for result in results:
        if result.error is not None:
            errors += 1
        frame = result.metrics_dataframe
        if frame is None or "wall_time" not in frame:
            continue
        frame = frame[frame["val_loss"].notna()]
        key = config_key(result.config, keys)
        records = frame.to_dict("records")
        trial_rows = [{"t": float(r["wall_time"]), "epoch": int(r["training_iteration"]),
                       "val_loss": float(r["val_loss"]), "key": key} for r in records]
        rows += trial_rows
        if trial_rows:
            trials.append({"key": key, "end": max(r["t"] for r in trial_rows), "epochs": len(trial_rows),
                           "first_start": float(records[0]["wall_time"]) - float(records[0]["epoch_seconds"]),
                           "best": min(r["val_loss"] for r in trial_rows), "config": dict(result.config),
                           "result": result})
    rows.sort(key=lambda r: r["t"])
    return {"rows": rows, "trials": trials, "errors": errors}


def epochs_to_target(run: dict[str, Any], target: float) -> tuple[int | None, int | None]:
    """(epochs in report order, epochs in trial-completion order) until best-so-far <= target; None = never."""
    by_report = None
    best = float("inf")
    for count, row in enumerate(run["rows"], 1):
        best = min(best, row["val_loss"])
        if best <= target:
            by_report = count
            break
    by_trial, total, best = None, 0, float("inf")
    for trial in sorted(run["trials"], key=lambda t: t["end"]):
        total += trial["epochs"]
        best = min(best, trial["best"])
        if best <= target:
            by_trial = total
            break
    return by_report, by_trial


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    info = _common.machine_info(1)
    print(_common.machine_line(info), flush=True)
    temp = tempfile.mkdtemp(prefix="search_efficiency-")
    storage = args.storage_path or os.path.join(temp, "ray_results")
    try:
        return run(args, info, storage, started)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def run(args: argparse.Namespace, info: dict[str, Any], storage: str, started: float) -> int:
    import ray

    if args.data != "synthetic":
        args.data = str(Path(args.data).resolve())
    values = space_values(args)
    keys = list(values)
    n_grid = len(list(itertools.product(*values.values())))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    grid_settings = build(args, storage, f"grid-{stamp}", 0, 1)
    data = _common.subset_train(load_data(Config.from_dict({**grid_settings.base, "width": args.widths[0]})),
                                args.pairs)
    print(data.summary(), flush=True)

    runs: list[dict[str, Any]] = []
    _common.start_ray(args.cpus)
    try:
        plan = [("grid", 0)] + [(m, s) for s in range(args.seeds) for m in ("random+ASHA", "TPE+ASHA")]
        for method, seed in plan:
            n = n_grid if method == "grid" else args.num_samples
            settings = build(args, storage, f"{method.split('+')[0].lower()}-s{seed}-{stamp}", seed, n)
            tuner = grid_tuner(settings, data, values) if method == "grid" else \
                project_tuner(settings, data, values, "random" if method.startswith("random") else "tpe")
            print(f"{method} (searcher seed {seed}): {n} trials ...", flush=True)
            t0 = time.time()
            results = tuner.fit()
            wall = time.time() - t0
            run = {"method": method, "seed": seed, "wall": wall, "started": t0, **collect(results, keys),
                   "results": results, "settings": settings}
            _common.add_slot_latency(run, args.max_concurrent)
            run["latency"] = _common.mean_sd([t["slot_latency"] for t in run["trials"]])[0]
            runs.append(run)
            print(f"  {len(run['trials'])} trials, {len(run['rows'])} epochs, {wall:.0f} s, mean trial start "
                  f"latency {run['latency']:.1f} s", flush=True)
        retrained = retrain_all(runs, data, keys) if args.retrain else {}
    finally:
        ray.shutdown()

    errors = sum(r["errors"] for r in runs)
    runs = [r for r in runs if r["rows"]]  # a run whose every trial errored has nothing to count
    if not runs or runs[0]["method"] != "grid":
        raise SystemExit("search_efficiency: the grid produced no results; see the errors above")
    grid = runs[0]
    grid_best = min(r["val_loss"] for r in grid["rows"])
    target = grid_best * (1 + args.tolerance)
    curve = {(r["key"], r["epoch"]): r["val_loss"] for r in grid["rows"]}
    deviation = max((abs(curve[(r["key"], r["epoch"])] - r["val_loss"]) for run in runs[1:] for r in run["rows"]
                     if (r["key"], r["epoch"]) in curve), default=0.0)

    table, per_method = [], {}
    for run in runs:
        by_report, by_trial = epochs_to_target(run, target)
        best = min(r["val_loss"] for r in run["rows"])
        best_trial = min(run["trials"], key=lambda t: t["best"])
        test = retrained.get((run["method"], run["seed"]), {})
        row = [run["method"], run["seed"], len(run["trials"]), len(run["rows"]),
               by_report if by_report is not None else f"not reached ({len(run['rows'])})",
               by_trial if by_trial is not None else "—", f"{best:.4f}", f"{100 * (best / grid_best - 1):+.2f} %",
               describe(best_trial["config"], keys), f"{run['wall']:.0f}", f"{run['latency']:.1f}"]
        if args.retrain:
            row.append(f"{test['accuracy_at_threshold']:.3f}" if test else "—")
        table.append(row)
        per_method.setdefault(run["method"], []).append((by_report, len(run["rows"]), best, run["wall"]))

    summary = []
    for method, items in per_method.items():
        reached = [e for e, _, _, _ in items if e is not None]
        m_epochs, sd_epochs = _common.mean_sd([float(e) for e in reached])
        m_total, _ = _common.mean_sd([float(t) for _, t, _, _ in items])
        m_best, sd_best = _common.mean_sd([b for _, _, b, _ in items])
        m_wall, _ = _common.mean_sd([w for _, _, _, w in items])
        summary.append([method, f"{len(reached)}/{len(items)}",
                        f"{m_epochs:.1f} ± {sd_epochs:.1f}" if reached else "—", f"{m_total:.1f}",
                        f"{m_best:.4f} ± {sd_best:.4f}" if len(items) > 1 else f"{m_best:.4f}", f"{m_wall:.0f}"])
    headers = ["method", "searcher seed", "trials", "epochs run", "epochs to within tol. (report order)",
               "(trial-completion order)", "best val loss", "vs grid best", "best configuration", "wall s",
               "trial start latency s (free slot → first epoch, mean)"]
    if args.retrain:
        headers.append("retrained test acc. (val threshold)")
    body = "\n".join([
        f"- data: {data.summary()}",
        f"- space ({n_grid} configurations): " + "; ".join(f"{k} {v}" for k, v in values.items())
        + f"; fixed: {args.image_size} px, batch 32, momentum 0.9 (SGD), Koch init, trial seed {args.trial_seed}, "
        f"patience {args.patience or 'off'}",
        f"- grid: FIFO, {args.max_epochs} epochs per trial; random+ASHA and TPE+ASHA: {args.num_samples} trials, "
        f"ASHA max_t {args.max_epochs}, grace {args.grace_period}, reduction factor {args.reduction_factor:g}; "
        f"searcher seeds 0..{args.seeds - 1}; {args.max_concurrent} trials at once on ray.init(num_cpus={args.cpus}), "
        "1 CPU and 1 torch thread each",
        f"- target: grid's best val loss {grid_best:.4f} × (1 + {args.tolerance:g}) = {target:.4f}; the same "
        f"configuration gave the same val loss at the same epoch in every method to within {deviation:.2g} "
        "(trials are seeded alike)",
        "",
        _common.md_table(["method", "runs reaching target", "epochs to target (mean ± s.d. over those)",
                          "epochs run (mean)", "best val loss", "wall s (mean)"], summary),
        "",
        _common.md_table(headers, table),
        *(["", f"Errored trials: {errors}"] if errors else []),
    ])
    _common.record("search_efficiency", body, info, started, enabled=not args.no_record)
    return 0


def describe(config: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={config[k]:g}" if isinstance(config[k], float) else f"{k}={config[k]}" for k in keys)


def retrain_all(runs: list[dict[str, Any]], data: Any, keys: list[str]) -> dict[tuple, dict[str, Any]]:
    """finish.retrain_and_test for each run's best (trial, epoch), reusing results for repeated picks."""
    from tune_siamese import finish

    done: dict[tuple, dict[str, Any]] = {}
    out: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        best, epoch, _ = finish.best_trial(run["results"])
        # the search is over: the retrain may use every core torch sees (threads=0)
        config = Config.from_dict({**best.config, "threads": 0}, source="best trial")
        key = (config_key(best.config, keys), epoch)
        if key not in done:
            print(f"retraining {describe(best.config, keys)} for {epoch} epochs ...", flush=True)
            _, scores = finish.retrain_and_test(config, data, epoch, finish.trial_model(best.checkpoint, config))
            done[key] = scores["test"]
        out[(run["method"], run["seed"])] = done[key]
    return out


if __name__ == "__main__":
    sys.exit(main())

"""What Ray Tune costs: the same fixed-length trainings through the project's Ray machinery and in plain Python.

N identical trials (default 4) of E epochs each (no early stopping: patience > E, and ASHA's grace period = its
max_t, so it stops nothing) on the same cores:

  plain    multiprocessing (spawn) pool of --max-concurrent workers, 1 torch thread each, every worker loading
           the data once (disk cache) and calling tune_siamese.engine.fit per trial;
  Tune     run_search.py's path: tune_siamese.app.api.search_settings -> tune_siamese.searching.tuner.build_tuner (OptunaSearch +
           ASHA, per-epoch checkpoints, max_concurrent_trials) with the dataset shared through Ray's object
           store (tune.with_parameters, what the project does), cpus_per_trial 1;
  Tune, each trial loads the data itself (load_data inside the trainable; --cache cold gives every trial an
           empty cache folder, i.e. what a trial pays on a node that never decoded the data);
  Tune, reuse_actors=True: the project path with the one change of TuneConfig(reuse_actors=True), so a trial
           reuses the finished trial's process (torch, the project and the data already loaded) instead of
           starting a new one.

The Tune trainables are the project's trainable.train_siamese wrapped so that each tune.report also carries a
precise wall-clock stamp, the time the trainable was entered and the process's memory (/proc/self/status
VmHWM, RssAnon, RssShmem; psutil USS); the search space is one fixed configuration, so every trial (and every
plain run) trains exactly the same thing. Ray is started here (ray.init(num_cpus=--cpus)) and shut down at the end.

    python3 benchmarks/tune_overhead.py                    # 4 trials x 3 epochs, synthetic 72 px, width 1/16
    python3 benchmarks/tune_overhead.py --trials 2 --epochs 1 --pairs 256 --no-record     # quick check
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)

from tune_siamese.core.config import Config  # noqa: E402
from tune_siamese.data import load_data  # noqa: E402
from tune_siamese.searching.cluster import ray_console_environment  # noqa: E402

ray_console_environment()  # Ray's console as run_search.py sets it
FIXED_SPACE_KEY, FIXED_SPACE_VALUE = "batch_size", 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", help="'synthetic' (default) or an LFW-a folder")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial, all of them run")
    p.add_argument("--width", type=float, default=0.0625)
    p.add_argument("--image-size", type=int, default=72)
    p.add_argument("--pairs", type=int, default=0, help="seeded subset of N training pairs (0 = all)")
    p.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...) and the plain pool's total cores")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--cache", choices=("warm", "cold"), default="warm",
                   help="for the trials that load the data themselves: the shared disk cache (warm) or an "
                        "empty cache folder per trial (cold: every trial decodes / renders the images)")
    p.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                   help="skip the extra Tune run with TuneConfig(reuse_actors=True) (a change the project could make)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage-path", help="keep the Ray experiments here (default: a temporary folder, removed)")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def build(args: argparse.Namespace, storage: str, name: str) -> Any:
    """SearchSettings exactly as ts.search (and run_search.py) builds them."""
    from tune_siamese.app.api import search_settings

    fixed = {"width": args.width, "image_size": args.image_size, "embedding": 4096, "batchnorm": True,
             "optimizer": "adam", "lr": 1e-3, "init": "koch", "patience": args.epochs + 1}
    settings, _ = search_settings(data=args.data, space="smoke", seed=args.seed, num_samples=args.trials,
                                  max_epochs=args.epochs, grace_period=args.epochs, cpus_per_trial=1,
                                  max_concurrent=args.max_concurrent, storage_path=storage, name=name,
                                  max_failures=0, set=fixed)
    return settings


# ------------------------------------------------------------------------------------------------------
# Plain Python: a spawn pool, engine.fit per trial

_PLAIN_DATA = None


def _plain_init(base: dict[str, Any], pairs: int) -> None:
    global _PLAIN_DATA
    _PLAIN_DATA = _common.subset_train(load_data(Config.from_dict(base)), pairs)


def _plain_trial(config: dict[str, Any]) -> dict[str, Any]:
    from tune_siamese.training.engine import fit

    entered = time.time()
    rows: list[dict[str, Any]] = []
    fit(Config.from_dict(config), _PLAIN_DATA,
        on_epoch=lambda metrics, state: rows.append({**metrics, "wall_time": time.time(), "trial_entered": entered,
                                                     **_common.memory_metrics()}))
    return {"rows": rows, "pid": os.getpid()}


def plain_run(args: argparse.Namespace, settings: Any, config: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    with mp.get_context("spawn").Pool(args.max_concurrent, initializer=_plain_init,
                                      initargs=(settings.base, args.pairs)) as pool:
        outs = pool.map(_plain_trial, [config] * args.trials, chunksize=1)
    ended = time.time()
    return {"started": started, "ended": ended, "trials": [trial_summary(o["rows"]) for o in outs]}


# ------------------------------------------------------------------------------------------------------
# Tune


def tune_run(args: argparse.Namespace, settings: Any, data: Any, variant: str, cold_dir: str) -> dict[str, Any]:
    from ray import tune

    from tune_siamese.searching import tuner as tuner_module

    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    if variant in ("shared", "reuse"):
        trainable = tune.with_parameters(_common.trial_shared, data=data, memory=True)
    else:
        trainable = tune.with_parameters(_common.trial_loading, memory=True, pairs=args.pairs,
                                         cold_cache=cold_dir if args.cache == "cold" else "")
    trainable = tune.with_resources(trainable, resources)
    original, original_config = tuner_module.build_trainable, tune.TuneConfig
    tuner_module.build_trainable = lambda s, d: trainable  # build_tuner is otherwise exactly the project's
    if variant == "reuse":  # the one change this variant measures: Tune keeps trial actors (processes) alive
        tune.TuneConfig = functools.partial(original_config, reuse_actors=True)
    try:
        tuner = tuner_module.build_tuner(settings, data, {FIXED_SPACE_KEY: tune.choice([FIXED_SPACE_VALUE])}, [])
    finally:
        tuner_module.build_trainable, tune.TuneConfig = original, original_config
    started = time.time()
    results = tuner.fit()
    ended = time.time()
    trials, errors = [], []
    for result in results:
        if result.error is not None:
            errors.append(repr(result.error)[:300])
            continue
        frame = result.metrics_dataframe
        trials.append(trial_summary(frame.to_dict("records")))
    return {"started": started, "ended": ended, "trials": trials, "errors": errors}


# ------------------------------------------------------------------------------------------------------
# Figures


def trial_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in rows if r.get("epoch_seconds") == r.get("epoch_seconds") and "epoch_seconds" in r]

    def peak(key: str) -> float:
        values = [r[key] for r in rows if key in r and r[key] == r[key]]
        return max(values) if values else float("nan")

    return {"entered": rows[0]["trial_entered"], "first_start": rows[0]["wall_time"] - rows[0]["epoch_seconds"],
            "end": rows[-1]["wall_time"], "epochs": len(rows), "compute": sum(r["epoch_seconds"] for r in rows),
            "val_loss": rows[-1].get("val_loss", float("nan")), "data_load_s": rows[0].get("data_load_s", 0.0),
            **{k: peak(k) for k in ("peak_rss_mb", "uss_mb", "rss_anon_mb", "rss_shmem_mb")}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    info = _common.machine_info(1)
    print(_common.machine_line(info), flush=True)
    temp = tempfile.mkdtemp(prefix="tune_overhead-")
    storage = args.storage_path or os.path.join(temp, "ray_results")
    try:
        return run(args, info, storage, temp, started)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def run(args: argparse.Namespace, info: dict[str, Any], storage: str, temp: str, started: float) -> int:
    import ray

    from tune_siamese.searching.cluster import fit_resources

    if args.data != "synthetic":
        args.data = str(Path(args.data).resolve())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    variants = ("shared", "loading") + (("reuse",) if args.reuse_actors else ())
    settings = {v: build(args, storage, f"overhead-{v}-{stamp}") for v in variants}
    base = settings["shared"].base
    data = _common.subset_train(load_data(Config.from_dict(base)), args.pairs)  # also warms the disk cache
    print(data.summary(), flush=True)
    config = {**base, FIXED_SPACE_KEY: FIXED_SPACE_VALUE}  # what every Tune trial's config will be

    print(f"plain: {args.trials} x fit() in a spawn pool of {args.max_concurrent} ...", flush=True)
    plain = plain_run(args, settings["shared"], config)
    runs: dict[str, dict[str, Any]] = {"plain": plain}

    ray_started = time.time()
    _common.start_ray(args.cpus)
    ray_init_s = time.time() - ray_started
    try:
        for variant in variants:
            s = fit_resources(settings[variant])
            print(f"Tune ({variant}): {args.trials} trials ...", flush=True)
            runs[variant] = tune_run(args, s, data, variant, temp)
    finally:
        ray.shutdown()
    for r in runs.values():
        _common.add_slot_latency(r, args.max_concurrent)

    names = {"plain": f"plain Python (spawn pool of {args.max_concurrent}, engine.fit)",
             "shared": "Tune, project path (data via object store)",
             "loading": f"Tune, each trial loads the data ({args.cache} cache)",
             "reuse": "Tune, project path + TuneConfig(reuse_actors=True)"}
    plain_wall = plain["ended"] - plain["started"]
    overhead_rows = []
    for key, r in runs.items():
        wall = r["ended"] - r["started"]
        compute = sum(t["compute"] for t in r["trials"])
        epochs = sum(t["epochs"] for t in r["trials"])
        overhead_rows.append([names[key], f"{wall:.1f}", f"{compute:.1f}", f"{compute / max(epochs, 1):.2f}",
                              f"{len(r['trials'])} / {epochs}",
                              "—" if key == "plain" else f"{100 * (wall - plain_wall) / plain_wall:+.1f} %"])
    latency_rows = []
    for key, r in runs.items():
        for i, t in enumerate(sorted(r["trials"], key=lambda t: t["first_start"]), 1):
            latency_rows.append([names[key], i, f"{t['since_start']:.2f}", f"{t['slot_latency']:.2f}",
                                 f"{t['first_start'] - t['entered']:.2f}", f"{t['compute']:.1f}"])
    memory_rows = []
    for key, r in runs.items():
        ts = r["trials"]
        mean = lambda k: _common.mean_sd([t[k] for t in ts])[0]  # noqa: E731
        memory_rows.append([names[key], f"{mean('slot_latency'):.2f}", f"{mean('data_load_s'):.2f}",
                            f"{mean('peak_rss_mb'):.0f}", f"{mean('uss_mb'):.0f}",
                            f"{mean('rss_anon_mb'):.0f}", f"{mean('rss_shmem_mb'):.0f}"])
    losses = {key: sorted({round(t["val_loss"], 6) for t in r["trials"]}) for key, r in runs.items()}
    errors = [e for r in runs.values() for e in r.get("errors", [])]

    body = "\n".join([
        f"- data: {data.summary()}",
        f"- trials: {args.trials} identical trainings of {args.epochs} epoch(s) each: Koch net width {args.width}, "
        f"{args.image_size} px, BatchNorm, Adam lr 1e-3, batch 32, seed {args.seed}, 1 torch thread; "
        f"{args.max_concurrent} at once on ray.init(num_cpus={args.cpus}) / a pool of {args.max_concurrent}; "
        f"patience {args.epochs + 1}, ASHA grace = max_t = {args.epochs} (stops nothing)",
        f"- ray.init(num_cpus={args.cpus}) took {ray_init_s:.1f} s (not in the Tune walls: run_search.py starts Ray "
        "before the search, and a cluster is up already); Tune wall = tuner.fit(); plain wall = pool start to last "
        "result (process spawn, imports and data loading included)",
        "- overhead = (wall − plain wall) ÷ plain wall; trial compute = Σ of the trials' epoch_seconds (train + "
        "val of each epoch, as engine.fit measures it)",
        "",
        _common.md_table(["run", "wall s", "trial compute s", "s per epoch", "trials / epochs", "overhead"],
                         overhead_rows),
        "",
        "Start latency per trial, in the order first epochs started: seconds from the run's start; from the moment "
        "a slot was free (run start, or the end of the trial it replaced) to its first epoch; from entering the "
        "trainable (after actor start, imports and the object-store fetch) to its first epoch.",
        "",
        _common.md_table(["run", "trial", "first epoch after start s", "after a free slot s",
                          "trainable entry → first epoch s", "compute s"], latency_rows),
        "",
        "Sharing the dataset through the object store vs loading it in every trial (means over trials; memory is "
        "each trial process's own, read at every report, max over epochs; RssShmem counts object-store pages the "
        "trial touched, which all trials share; USS is the process's private memory):",
        "",
        _common.md_table(["run", "slot → first epoch s", "data load in trial s", "peak RSS MB", "USS MB",
                          "RssAnon MB", "RssShmem MB"], memory_rows),
        "",
        "Final val loss of the trials (identical configs and seeds, so equal values mean the same training): "
        + "; ".join(f"{names[k]}: {', '.join(f'{v:.6f}' for v in vals)}" for k, vals in losses.items()),
        *(["", f"Errored trials: {len(errors)}: {errors[:3]}"] if errors else []),
    ])
    _common.record("tune_overhead", body, info, started, enabled=not args.no_record)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

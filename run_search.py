"""Run a hyperparameter search: Ray Tune + OptunaSearch (TPE) + ASHA, then retrain the best, test and export.

    python run_search.py                        # small search on the offline synthetic data
    python run_search.py --data ../shared/data/lfw-a --space default --num-samples 16
    python run_search.py --address auto --gpus-per-trial 0.25 --storage-path /shared/ray_results
    python run_search.py --resume ray_results/siamese-quick-20261128-170000
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

# Tune warns whenever per-epoch checkpoints force an experiment snapshot; locally a snapshot takes ~10 ms.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from tune_siamese.config import Config  # noqa: E402
from tune_siamese.errors import InputError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic",
                   help="LFW-a folder with pair lists, an identity folder, 'lfw' (torchvision download) "
                        "or 'synthetic' (default)")
    p.add_argument("--space", default="quick",
                   help="preset name (default, paper, seed, quick, smoke), module:SPACE or file.py:SPACE "
                        "(default: quick)")
    p.add_argument("--num-samples", type=int, help="trials to run (default: the preset's)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial at most, ASHA's max_t (default: the preset's)")
    p.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial (default: the preset's)")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA's reduction factor (default 3)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial; also its torch threads")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial; fractions that divide one GPU (0.5, 0.25, ...) share it")
    p.add_argument("--max-concurrent", type=int,
                   help="trials running at once (default: as many as the resources allow)")
    p.add_argument("--address", default="",
                   help="empty: start Ray here; 'auto' or host:port or ray://host:port: join a cluster")
    p.add_argument("--storage-path", default="ray_results",
                   help="where experiments go: a local folder, a shared filesystem or s3://bucket/path")
    p.add_argument("--name", help="experiment name (default: siamese-<space>-<time>)")
    p.add_argument("--resume", metavar="EXPERIMENT",
                   help="continue an interrupted experiment folder; finished trials are not run again")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher and of every trial")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a Config value for every trial, e.g. --set image_size=96 (repeatable)")
    p.add_argument("--export-dir", help="where the retrained best model goes (default: EXPERIMENT/export)")
    p.add_argument("--no-retrain", action="store_true", help="stop after the search: no retrain, test or export")
    p.add_argument("--ensemble", type=int, default=0, metavar="K",
                   help="also test and export the mean of the top K trials' own models (K >= 2; exported to "
                        "EXPERIMENT/export-ensemble, or EXPORT_DIR-ensemble)")
    p.add_argument("--max-failures", type=int, default=3, help="restarts of a failing trial before it errors")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (bound to 127.0.0.1)")
    args = p.parse_args(argv)
    args.argv = None if argv is None else [str(a) for a in argv]  # None: the real command line (sys.argv)
    return args


def check_fraction(gpus: float) -> None:
    if gpus < 0:
        raise InputError(f"option --gpus-per-trial={gpus} must be >= 0")
    if 0 < gpus < 1 and not math.isclose(1 / gpus, round(1 / gpus), rel_tol=1e-6):
        raise InputError(f"option --gpus-per-trial={gpus} does not divide a GPU (use 1/2, 1/3, 1/4, ...)")
    if gpus > 1 and not float(gpus).is_integer():
        raise InputError(f"option --gpus-per-trial={gpus}: above 1 it must be a whole number of GPUs")


def check_storage(path: str) -> str:
    if "://" in path:
        return path
    folder = Path(path).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"option --storage-path is not writable ({exc.strerror})", folder) from None
    return str(folder)


def build_settings(args: argparse.Namespace) -> tuple[Any, Any]:
    """Validate every option and build (SearchSettings, Preset) before any Ray work starts."""
    from search_spaces import get_preset
    from tune_siamese.cli import parse_overrides
    from tune_siamese.search import SearchSettings

    preset = get_preset(args.space)
    for name in ("num_samples", "max_epochs", "grace_period", "max_concurrent"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"option --{name.replace('_', '-')}={value} must be >= 1")
    if args.cpus_per_trial <= 0:
        raise InputError(f"option --cpus-per-trial={args.cpus_per_trial} must be > 0")
    if args.reduction_factor <= 1:
        raise InputError(f"option --reduction-factor={args.reduction_factor} must be > 1")
    check_fraction(args.gpus_per_trial)
    run = {"num_samples": 8, "max_epochs": 20, "grace_period": 2, **preset.run}
    max_epochs = args.max_epochs or run["max_epochs"]
    base = {**preset.fixed, **parse_overrides(args.set), "data": args.data, "max_epochs": max_epochs,
            "seed": args.seed, "threads": max(1, int(args.cpus_per_trial))}
    Config.from_dict(base, source="search settings")  # fail now on a bad fixed value, not in every trial
    name = args.name or f"siamese-{Path(args.space).stem.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = SearchSettings(
        base=base, space=args.space, num_samples=args.num_samples or run["num_samples"], max_epochs=max_epochs,
        grace_period=min(args.grace_period or run["grace_period"], max_epochs),
        reduction_factor=args.reduction_factor, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent or 0, seed=args.seed,
        storage_path=check_storage(args.storage_path), name=name, max_failures=args.max_failures,
        command=shlex.join(["python", "run_search.py", *(sys.argv[1:] if args.argv is None else args.argv)]))
    return settings, preset


def load_resume_settings(path: str) -> Any:
    from tune_siamese.search import SETTINGS_FILE, SearchSettings, join, read_text

    path = path if "://" in path else str(Path(path).expanduser().resolve())
    text = read_text(join(path, SETTINGS_FILE))
    if text is None:
        raise InputError(f"option --resume: no experiment here ({SETTINGS_FILE} missing)", path)
    settings = SearchSettings(**json.loads(text))
    storage, _, name = path.rstrip("/").rpartition("/")
    return dataclasses.replace(settings, storage_path=storage, name=name)


def start_ray(args: argparse.Namespace) -> None:
    import ray

    if ray.is_initialized():
        return  # tests and notebooks may have started (or joined) Ray already
    kwargs: dict[str, Any] = {"include_dashboard": bool(args.dashboard), "log_to_driver": True}
    if args.dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    # "local" always starts a new Ray here; None would silently join any Ray already running on this machine.
    ray.init(address=args.address or "local", **kwargs)


def check_resources(settings: Any) -> Any:
    """Refuse trials the cluster can never place; default concurrency to what fits at once."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if settings.gpus_per_trial > gpus:
        raise InputError(f"option --gpus-per-trial={settings.gpus_per_trial} but the cluster has {gpus:g} GPU(s)")
    if settings.cpus_per_trial > cpus:
        raise InputError(f"option --cpus-per-trial={settings.cpus_per_trial:g} but the cluster has {cpus:g} CPUs")
    if settings.max_concurrent:
        return settings
    fits = int(cpus // settings.cpus_per_trial)
    if settings.gpus_per_trial:
        fits = min(fits, int(round(gpus / settings.gpus_per_trial, 6)))
    return dataclasses.replace(settings, max_concurrent=max(1, min(fits, settings.num_samples)))


def run(args: argparse.Namespace) -> tuple[dict[str, Any] | None, Any]:
    """The whole job; returns (summary as written to final.json, retrained model); (None, None) if interrupted."""
    from search_spaces import get_preset
    from tune_siamese.data import load_data
    from tune_siamese.search import SETTINGS_FILE, build_tuner, finish, join, restore_tuner, write_text

    if args.resume:
        settings = load_resume_settings(args.resume)
        preset = get_preset(settings.space)
    else:
        settings, preset = build_settings(args)
    if args.ensemble == 1 or args.ensemble < 0:
        raise InputError(f"option --ensemble={args.ensemble} must be 0 (off) or at least 2")
    if args.export_dir and "://" in args.export_dir:
        raise InputError("option --export-dir must be a local folder", args.export_dir)
    data = load_data(Config.from_dict(settings.base, source="search settings"))
    print(data.summary(), flush=True)

    start_ray(args)
    settings = check_resources(settings)
    if args.resume:
        tuner = restore_tuner(settings, data)
    else:
        write_text(join(settings.experiment_path, SETTINGS_FILE),
                   json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
        tuner = build_tuner(settings, data, preset.space, preset.points)
    print(f"Experiment: {settings.experiment_path} ({settings.num_samples} trials, "
          f"{settings.max_concurrent} at once)", flush=True)
    search_started = time.time()
    results = tuner.fit()
    search_seconds = time.time() - search_started
    if results.num_terminated + results.num_errors < settings.num_samples:
        # Ctrl-C or a lost driver: Tune saved its state; finishing now would retrain a half-searched space.
        print(f"\nSearch interrupted ({results.num_terminated} of {settings.num_samples} trials finished). "
              f"Continue it with: python run_search.py --resume {settings.experiment_path}", flush=True)
        return None, None
    summary, model = finish(settings, results, data, args.export_dir, retrain=not args.no_retrain,
                            ensemble=args.ensemble, search_seconds=search_seconds, resumed=bool(args.resume))
    print("\nBest configuration (val loss {:.4f} at epoch {}):".format(summary["best_val_loss"],
                                                                       summary["best_epoch"]))
    print(json.dumps({k: summary["best_config"][k] for k in sorted(preset.space)}, indent=2))
    if "test" in summary:
        test = summary["test"]
        print(f"Retrained on train+val for {summary['epochs']} epochs; test: accuracy {test['accuracy']:.4f}, "
              f"accuracy at val threshold {test['accuracy_at_threshold']:.4f}, AUC {test['auc']:.4f}")
        print(f"Exported to {summary['export']}")
    if "ensemble" in summary:
        ens = summary["ensemble"]
        print(f"Ensemble of the top {len(ens['members'])} trials' own models; test: accuracy "
              f"{ens['test']['accuracy']:.4f}, accuracy at val threshold {ens['test']['accuracy_at_threshold']:.4f}, "
              f"AUC {ens['test']['auc']:.4f}; exported to {ens['export']}")
    print(f"Trials: {summary['trials']} ({summary['errored_trials']} errored)")
    print(f"Analyse it: python -m analysis {settings.experiment_path}")
    return summary, model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary, _ = run(args)
    except InputError as exc:
        print(f"run_search.py: error: {exc}", file=sys.stderr)
        return 2
    return 0 if summary is not None else 130


if __name__ == "__main__":
    sys.exit(main())

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
from tune_siamese.errors import InputError, OneLineParser  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="run_search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--address",
                   help="Ray cluster to join: 'auto' (the one running on this node) or HEAD_IP:6379 (default: "
                        "$RAY_ADDRESS when set, as in a Ray job; else a new local Ray)")
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up joining a cluster after this long (default 30)")
    p.add_argument("--wait-for-resources", type=float, default=0.0, metavar="SECONDS",
                   help="let trials wait up to this long for nodes that fit them (nodes you add by hand); with "
                        "an autoscaler they always wait for the nodes it can add (default 0: refuse at once)")
    p.add_argument("--storage-path", default="ray_results",
                   help="where experiments go: a local folder, a shared filesystem or a URI (s3://bucket/path, "
                        "gs://..., file:///...; S3 options in the query, e.g. ?endpoint_override=HOST:PORT)")
    p.add_argument("--study-storage", metavar="URL",
                   help="where the Optuna study lives: an SQLAlchemy URL (postgresql://..., sqlite:///...) or a "
                        "journal file path (default: sqlite EXPERIMENT/optuna.db for a local storage path, in "
                        "memory for a URI)")
    p.add_argument("--name", help="experiment name (default: siamese-<space>-<time>)")
    p.add_argument("--resume", metavar="EXPERIMENT",
                   help="continue an interrupted experiment folder; finished trials are not run again")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher and of every trial")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a Config value for every trial, e.g. --set image_size=96 (repeatable)")
    p.add_argument("--export-dir", help="also copy the export (EXPERIMENT/export) to this local folder")
    p.add_argument("--no-retrain", action="store_true", help="stop after the search: no retrain, test or export")
    p.add_argument("--ensemble", type=int, default=0, metavar="K",
                   help="also test and export the mean of the top K trials' own models (K >= 2; exported to "
                        "EXPERIMENT/export-ensemble, or EXPORT_DIR-ensemble)")
    p.add_argument("--retrain-cpus", type=float, default=0.0,
                   help="CPUs of the retrain task (default: what the search used at once, up to one node's)")
    p.add_argument("--retrain-gpus", type=float,
                   help="GPUs of the retrain task, which runs on a worker node (default: --gpus-per-trial)")
    p.add_argument("--max-failures", type=int, default=3, help="restarts of a failing trial before it errors")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (bound to 127.0.0.1)")
    args = p.parse_args(argv)
    args.argv = None if argv is None else [str(a) for a in argv]  # None: the real command line (sys.argv)
    return args


def check_fraction(gpus: float, option: str) -> None:
    if gpus < 0:
        raise InputError(f"option {option}={gpus} must be >= 0")
    if 0 < gpus < 1 and not math.isclose(1 / gpus, round(1 / gpus), rel_tol=1e-6):
        raise InputError(f"option {option}={gpus} does not divide a GPU (use 1/2, 1/3, 1/4, ...)")
    if gpus > 1 and not float(gpus).is_integer():
        raise InputError(f"option {option}={gpus}: above 1 it must be a whole number of GPUs")


# Config fields that options of this script set; --set must not set them behind the option's back.
SET_BY_OPTION = {"data": "--data", "seed": "--seed", "threads": "--cpus-per-trial"}


def build_settings(args: argparse.Namespace) -> tuple[Any, Any]:
    """Validate every option and every value the space can give a trial; build (SearchSettings, Preset)
    before any Ray work starts."""
    from search_spaces import check_values, get_preset
    from tune_siamese import storage
    from tune_siamese.config import parse_overrides
    from tune_siamese.search import SearchSettings, default_study_storage

    check_numbers(args)
    preset = get_preset(args.space)
    overrides = parse_overrides(args.set)
    for key, option in SET_BY_OPTION.items():
        if key in overrides:
            raise InputError(f"option --set {key}=...: use {option} instead")
    run = {"num_samples": 8, "max_epochs": 20, "grace_period": 2, **preset.run}
    if "max_epochs" in overrides:  # --set max_epochs=N means what --max-epochs N means
        if args.max_epochs is not None and str(args.max_epochs) != overrides["max_epochs"]:
            raise InputError("options --max-epochs and --set max_epochs disagree")
        args.max_epochs = Config.from_dict({"max_epochs": overrides["max_epochs"]}, source="option --set").max_epochs
    max_epochs = args.max_epochs or run["max_epochs"]
    if args.grace_period is not None and args.grace_period > max_epochs:
        raise InputError(f"option --grace-period={args.grace_period} exceeds the {max_epochs} epochs a trial runs "
                         "at most (--max-epochs)")
    grace_period = min(args.grace_period or run["grace_period"], max_epochs)  # the preset's, cut to short runs
    base = {**preset.fixed, **overrides, "data": args.data, "max_epochs": max_epochs,
            "seed": args.seed, "threads": max(1, int(args.cpus_per_trial))}
    Config.from_dict(base, source="search settings")  # fail now on a bad fixed value, not in every trial
    check_trial_values(check_values(preset, base, args.space), args)
    name = args.name or f"siamese-{Path(args.space).stem.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_path = storage.resolve(args.storage_path)
    settings = SearchSettings(
        base=base, space=args.space, num_samples=args.num_samples or run["num_samples"], max_epochs=max_epochs,
        grace_period=grace_period, reduction_factor=args.reduction_factor, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent or 0, seed=args.seed,
        storage_path=storage_path, name=name, max_failures=args.max_failures,
        study_storage=args.study_storage or default_study_storage(storage_path, name),
        retrain_cpus=args.retrain_cpus, retrain_gpus=args.retrain_gpus,
        command=shlex.join(["python", "run_search.py", *(sys.argv[1:] if args.argv is None else args.argv)]))
    return settings, preset


def check_numbers(args: argparse.Namespace) -> None:
    for name in ("num_samples", "max_epochs", "grace_period", "max_concurrent"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"option --{name.replace('_', '-')}={value} must be >= 1")
    for name in ("cpus_per_trial", "gpus_per_trial", "reduction_factor", "retrain_cpus", "retrain_gpus",
                 "connect_timeout", "wait_for_resources"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise InputError(f"option --{name.replace('_', '-')}={value} must be a finite number")
    if args.cpus_per_trial <= 0:
        raise InputError(f"option --cpus-per-trial={args.cpus_per_trial} must be > 0")
    if args.reduction_factor <= 1:
        raise InputError(f"option --reduction-factor={args.reduction_factor} must be > 1")
    if args.max_failures < 0:
        raise InputError(f"option --max-failures={args.max_failures} must be >= 0 (restarts of a failing trial)")
    check_fraction(args.gpus_per_trial, "--gpus-per-trial")
    if args.retrain_gpus is not None:
        check_fraction(args.retrain_gpus, "--retrain-gpus")
    if args.retrain_cpus < 0:
        raise InputError(f"option --retrain-cpus={args.retrain_cpus} must be >= 0")


def check_trial_values(trial_values: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """What Config alone cannot judge: a CUDA device needs a GPU share (and, for a Ray started here, CUDA
    here); a compile backend must exist."""
    import ray
    import torch

    from tune_siamese.cluster import resolve_address
    from tune_siamese.engine import check_compile_backend

    starts_local_ray = resolve_address(args.address) == "local" and not ray.is_initialized()
    for values in trial_values:
        config = Config.from_dict(values, source="search settings")
        check_compile_backend(config.compile)
        if config.device.startswith("cuda"):
            if not args.gpus_per_trial:
                raise InputError(f"option device={config.device!r} needs --gpus-per-trial > 0 (a trial without a "
                                 "GPU share sees no GPU)")
            if starts_local_ray and not torch.cuda.is_available():
                raise InputError(f"option device={config.device!r} but CUDA is not available here")


def load_resume_settings(path: str) -> Any:
    from tune_siamese import storage
    from tune_siamese.names import SETTINGS_FILE
    from tune_siamese.search import SearchSettings

    experiment = storage.resolve(path)
    where = storage.child(experiment, SETTINGS_FILE)
    text = storage.read_text(where)
    if text is None:
        raise InputError(f"option --resume: no experiment here ({SETTINGS_FILE} missing)", path)
    check_owner(experiment)
    try:
        values = json.loads(text)
        settings = SearchSettings(**values)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg})", where, exc.lineno) from None
    except TypeError as exc:  # not an object, unknown or missing keys
        raise InputError(f"not this project's search settings ({exc})", where) from None
    storage_path, name = storage.parent_and_name(experiment)
    return dataclasses.replace(settings, storage_path=storage_path, name=name)


def check_owner(experiment: str) -> None:
    """Resuming unpickles Ray's own state files (tuner.pkl, the searcher's state), i.e. runs code they hold:
    resume only a local folder this user owns and nobody else may write. (A storage URI cannot be checked
    here: whoever can write to the bucket can run code in a resumed search.)"""
    from tune_siamese import storage

    if storage.is_uri(experiment) and not experiment.startswith("file://"):
        return
    folder = Path(experiment.removeprefix("file://"))
    for path in [folder, *sorted(folder.glob("*.pkl"))]:
        info = path.stat()
        if info.st_uid != os.getuid():
            raise InputError("option --resume: this experiment belongs to another user; resuming it would run "
                             "code from its pickled state files", path)
        if info.st_mode & 0o022:
            raise InputError("option --resume: others may write to this experiment (group/world-writable); "
                             "resuming it would run code from its pickled state files", path)


def check_targets(settings: Any, export_dir: str | None, new: bool) -> None:
    """Everything the search writes to must take writes now, not after hours of searching."""
    from tune_siamese import storage
    from tune_siamese.names import SETTINGS_FILE
    from tune_siamese.search import check_new_study, open_study_storage

    if new and storage.exists(storage.child(settings.experiment_path, SETTINGS_FILE)):
        raise InputError("an experiment of this name exists already; --resume it or choose another --name",
                         settings.experiment_path)
    storage.check_writable(settings.experiment_path, "--storage-path")
    if export_dir is not None:
        if storage.is_uri(export_dir):
            raise InputError("option --export-dir must be a local folder (the export is in the experiment's "
                             "storage already)", export_dir)
        storage.check_writable(export_dir, "--export-dir")
    if new:
        check_new_study(settings.study_storage, settings.name)
    else:
        open_study_storage(settings.study_storage)


# Options that shape a search; a resumed search keeps its own (from search_settings.json).
RESUME_KEEPS = ("data", "space", "num_samples", "max_epochs", "grace_period", "reduction_factor", "cpus_per_trial",
                "gpus_per_trial", "max_concurrent", "storage_path", "study_storage", "name", "seed", "set",
                "max_failures", "retrain_cpus", "retrain_gpus")


def check_resume_options(args: argparse.Namespace) -> None:
    defaults = vars(parse_args([]))
    changed = [f"--{name.replace('_', '-')}" for name in RESUME_KEEPS if getattr(args, name) != defaults[name]]
    if changed:
        raise InputError(f"option --resume continues the experiment with its own settings; {', '.join(changed)} "
                         "would be ignored, so leave them out (or start a new search)")


def run(args: argparse.Namespace) -> tuple[dict[str, Any] | None, Any]:
    """The whole job; returns (summary as written to final.json, retrained model); (None, None) if interrupted."""
    from search_spaces import get_preset
    from tune_siamese import cluster, storage
    from tune_siamese.data import load_data

    if args.resume:
        check_resume_options(args)
        settings = load_resume_settings(args.resume)
        preset = get_preset(settings.space)
    else:
        settings, preset = build_settings(args)
    if args.ensemble == 1 or args.ensemble < 0:
        raise InputError(f"option --ensemble={args.ensemble} must be 0 (off) or at least 2")
    if not args.connect_timeout > 0:
        raise InputError(f"option --connect-timeout={args.connect_timeout} must be > 0")
    if not args.wait_for_resources >= 0:
        raise InputError(f"option --wait-for-resources={args.wait_for_resources} must be >= 0")
    cluster.resolve_address(args.address)
    data = load_data(Config.from_dict(settings.base, source="search settings"))  # the data are input too
    print(data.summary(), flush=True)
    check_targets(settings, args.export_dir, new=not args.resume)  # the first thing written
    with storage.experiment_lock(settings.experiment_path):
        return search_and_finish(args, settings, preset, data)


def search_and_finish(args: argparse.Namespace, settings: Any, preset: Any, data: Any
                      ) -> tuple[dict[str, Any] | None, Any]:
    from tune_siamese import cluster, storage
    from tune_siamese.finish import finish
    from tune_siamese.names import SETTINGS_FILE
    from tune_siamese.search import CompletionWatch, build_tuner, interrupted, redact, restore_tuner

    cluster.connect(args.address, args.connect_timeout, args.dashboard)
    settings = cluster.fit_resources(settings, args.wait_for_resources)
    if args.resume:
        tuner = restore_tuner(settings, data)
    else:
        storage.write_text(storage.child(settings.experiment_path, SETTINGS_FILE),
                           json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
        tuner = build_tuner(settings, data, preset.space, preset.points)
    print(f"Experiment: {settings.experiment_path} ({settings.num_samples} trials, "
          f"{settings.max_concurrent} at once)", flush=True)
    if settings.study_storage:
        print(f"Optuna study {settings.name!r} in {redact(settings.study_storage)}", flush=True)
    search_started = time.time()
    results = tuner.fit()
    search_seconds = time.time() - search_started
    if interrupted(results, settings.num_samples):
        # Ctrl-C: Tune saved its state; finishing now would retrain the best of a half-searched space.
        done = results.num_terminated + results.num_errors - len(CompletionWatch.latest.cut_short
                                                                 if CompletionWatch.latest else ())
        print(f"\nSearch interrupted ({done} of {settings.num_samples} trials ended); nothing was retrained or "
              f"exported. Continue it with: python run_search.py --resume {settings.experiment_path}", flush=True)
        return None, None
    summary, model = finish(settings, results, data, args.export_dir, retrain=not args.no_retrain,
                            ensemble=args.ensemble, search_seconds=search_seconds, resumed=bool(args.resume))
    print("\nBest configuration (val loss {:.4f} at epoch {}):".format(summary["best_val_loss"],
                                                                       summary["best_epoch"]))
    print(json.dumps({k: summary["best_config"][k] for k in sorted(preset.space)}, indent=2))
    if "test" in summary:
        test = summary["test"]
        print(f"Retrained on train+val for {summary['epochs']} epochs (node {summary['retrain_node'][:12]}); "
              f"test: accuracy {test['accuracy']:.4f}, accuracy at val threshold "
              f"{test['accuracy_at_threshold']:.4f}, AUC {test['auc']:.4f}")
        print(f"Exported to {summary['export']}" + (f" and {summary['export_copy']}" if "export_copy" in summary
                                                     else ""))
    if "ensemble" in summary:
        ens = summary["ensemble"]
        print(f"Ensemble of the top {len(ens['members'])} trials' own models; test: accuracy "
              f"{ens['test']['accuracy']:.4f}, accuracy at val threshold {ens['test']['accuracy_at_threshold']:.4f}, "
              f"AUC {ens['test']['auc']:.4f}; exported to {ens['export']}")
    if "identity_overlap" in summary:
        overlap = summary["identity_overlap"]
        print(f"WARNING: {overlap['shared_identities']} of the {overlap['test_identities']} test identities also "
              "appear in training (allow_identity_overlap): the test scores above overstate verification of "
              "unseen people")
    print(f"Trials: {summary['trials']} ({summary['errored_trials']} errored)")
    print(f"Analyse it: python -m analysis {settings.experiment_path}")
    return summary, model


def main(argv: list[str] | None = None) -> int:
    try:
        summary, _ = run(parse_args(argv))
    except InputError as exc:
        print(f"run_search.py: error: {exc}", file=sys.stderr)
        return 2
    return 0 if summary is not None else 130


if __name__ == "__main__":
    sys.exit(main())

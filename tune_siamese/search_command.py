"""The search command, shared by `python run_search.py` and `tune-siamese search`: options → recipe → summary."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

DESCRIPTION = """\
Run a hyperparameter search: Ray Tune + OptunaSearch (TPE by default) + ASHA, then retrain the best, test and export.

    {prog}                        # small search on the offline synthetic data
    {prog} --data ../shared/data/lfw-a --space default --num-samples 16
    {prog} --address auto --gpus-per-trial 0.25 --storage-path /shared/ray_results
    {prog} --resume ray_results/siamese-quick-20261128-170000
"""

# Tune warns whenever per-epoch checkpoints force an experiment snapshot; locally a snapshot takes ~10 ms.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Ray colours the "(task pid=...)" prefix of worker output; in a log file that is escape codes, not colour.
if not sys.stderr.isatty():
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")

from .config import Config  # noqa: E402
from .errors import InputError, OneLineParser  # noqa: E402
from .names import RUNG_METRICS  # noqa: E402
from .settings import SEARCHERS, rerun  # noqa: E402


def parse_args(argv: Sequence[str] | None = None, prog: str = "run_search.py") -> argparse.Namespace:
    from search_spaces import describe  # the presets' names and one line on each, for --help

    p = OneLineParser(prog=prog, description=DESCRIPTION.format(prog=rerun(prog)), epilog="presets (--space):\n"
                      + describe(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic",
                   help="LFW-a folder with pair lists, an identity folder, 'lfw' (torchvision download) "
                        "or 'synthetic' (default)")
    p.add_argument("--space", default="quick",
                   help="a preset (listed below), module:SPACE or file.py:SPACE (default: quick)")
    p.add_argument("--num-samples", type=int, help="trials to run (default: the preset's)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial at most, ASHA's max_t (default: the preset's)")
    p.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial (default: the preset's)")
    p.add_argument("--reduction-factor", type=float, help="ASHA's reduction factor (default: the preset's, else 3)")
    p.add_argument("--searcher", choices=SEARCHERS,
                   help="Optuna's sampler (default: the preset's, else tpe): tpe (multivariate, constant liar for "
                        "parallel trials), random, gp (Gaussian process; choices as unordered categories), cmaes "
                        "(CMA-ES on the ranges only: choices are drawn at random, with Optuna's warning; needs "
                        "pip install cmaes), qmc (scrambled Sobol, seeded)")
    p.add_argument("--rung-metric", choices=list(RUNG_METRICS),
                   help="what ASHA judges a trial by at each rung: last (this epoch's val loss), best (best so far) "
                        "or avg3 (mean of the last 3 epochs') (default: the preset's, else last)")
    p.add_argument("--reproducible", action=argparse.BooleanOptionalAction,
                   help="the same trials run to run on the same machine: suggestions in batches of --max-concurrent, "
                        "each from finished batches only, and no early stopping (ASHA off) (default: the preset's, "
                        "else off)")
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
                        "journal file path, used as given (default: sqlite EXPERIMENT/optuna.db for a local "
                        "storage path, found in the experiment folder wherever it is moved; in memory for a URI)")
    p.add_argument("--name", help="experiment name, the experiment's folder in --storage-path: one folder name, "
                   "not starting with '-' (default: siamese-<space>-<time>)")
    p.add_argument("--mlflow", metavar="URI",
                   help="also log the search to MLflow: an MLflow experiment named like the search, one run per "
                        "trial (its config, every epoch's metrics). A tracking URI (http://HOST:5000, "
                        "sqlite:///PATH/mlflow.db, file:///PATH/mlruns) or a folder; folders and relative paths are "
                        "made absolute file:// URIs (a resume or a Ray job logs to the same store). Needs MLflow: "
                        'pip install "tune-siamese[mlflow]"')
    p.add_argument("--resume", metavar="EXPERIMENT",
                   help="continue an interrupted experiment folder; finished trials are not run again")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher and of every trial")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a Config value for every trial, e.g. --set image_size=96 (repeatable); a key the "
                        "space searches is then not searched")
    p.add_argument("--export-dir", help="also copy the export (EXPERIMENT/export) to this local folder")
    p.add_argument("--no-retrain", action="store_true",
                   help="stop after the search: no finalists, retrain, test or export")
    p.add_argument("--finalists", type=int, metavar="K",
                   help="after the search, train the top K configurations again with --finalist-seeds fresh seeds "
                        "each (Ray trials, in parallel, under EXPERIMENT/finalists) and retrain and export the one "
                        "with the lowest mean best val loss (default: the preset's, else 0: off)")
    p.add_argument("--finalist-seeds", type=int, metavar="S",
                   help="seeds per finalist, >= 1 with --finalists (default: the preset's, else 0)")
    p.add_argument("--ensemble", type=int, default=0, metavar="K",
                   help="also test and export the mean of the top K trials' own models (K >= 2; exported to "
                        "EXPERIMENT/export-ensemble, or EXPORT_DIR-ensemble)")
    p.add_argument("--retrain-cpus", type=float, default=0.0,
                   help="CPUs of the retrain task (default: what the search used at once, up to one node's)")
    p.add_argument("--retrain-gpus", type=float,
                   help="GPUs of the retrain task, which runs on a worker node (default: --gpus-per-trial)")
    p.add_argument("--max-failures", type=int, default=3, help="restarts of a failing trial before it errors")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (bound to 127.0.0.1)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more console: -v each trial's results and Optuna's log, -vv everything Tune prints")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no live table: only the progress lines and the summary")
    args = p.parse_args(argv)
    args.argv = None if argv is None else [str(a) for a in argv]  # None: the real command line (sys.argv)
    args.prog = prog
    return args


def run(args: argparse.Namespace) -> tuple[dict[str, Any] | None, Any]:
    """The recipe; returns (summary as written to final.json, retrained model), or (None, None) if interrupted."""
    from . import cluster, storage
    from .data import load_data
    from .finish import finish_search, run_finalists
    from .search import interrupted, tuner_for
    from .settings import check_targets, prepare

    settings, preset = prepare(args, defaults=vars(parse_args([], args.prog)))  # every option and space value
    data = load_data(Config.from_dict(settings.base, source="search settings"))  # the data are input too
    print(data.summary(), flush=True)
    check_targets(settings, args.export_dir, new=not args.resume)  # the first thing written
    with storage.experiment_lock(settings.experiment_path):
        address = cluster.connect(args.address, args.connect_timeout, args.dashboard)
        settings = cluster.fit_resources(settings, args.wait_for_resources)
        verbose = tune_verbosity(args)
        tuner = tuner_for(settings, preset, data, resume=bool(args.resume), verbose=verbose)
        print_start(settings, on_cluster=address not in ("local", "existing"))
        started = time.time()
        results = tuner.fit()
        search_seconds = time.time() - started
        if interrupted(results, settings.num_samples):
            # Ctrl-C: Tune saved its state; finishing now would retrain the best of a half-searched space.
            print(f"\nSearch interrupted; nothing was retrained or exported. Continue it with: "
                  f"{rerun(args.prog)} --resume {settings.experiment_path}", flush=True)
            return None, None
        finalists = None
        if settings.finalists and not args.no_retrain:
            finalists = run_finalists(settings, results, data, verbose)
            if finalists is None:  # Ctrl-C: a winner from some of the runs would be the luck this stage removes
                print(f"\nFinalist stage interrupted; nothing was retrained or exported. Continue it with: "
                      f"{rerun(args.prog)} --resume {settings.experiment_path}", flush=True)
                return None, None
        summary, model = finish_search(settings, results, data, args.export_dir, retrain=not args.no_retrain,
                                ensemble=args.ensemble, search_seconds=search_seconds, resumed=bool(args.resume),
                                finalists=finalists)
    print_summary(summary, preset, settings)
    return summary, model


def tune_verbosity(args: argparse.Namespace) -> int:
    """Tune's verbose level from -q/-v; Optuna logs only warnings unless -v."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.WARNING)
    return 0 if args.quiet else min(3, 1 + args.verbose)


def print_start(settings: Any, on_cluster: bool = False) -> None:
    from .gpu_sharing import sharing_warning
    from .study import redact

    print(f"Experiment: {settings.experiment_path} ({settings.num_samples} trials, "
          f"{settings.max_concurrent} at once)", flush=True)
    for key in settings.not_searched:
        print(f"--set {key}={settings.base[key]} fixes {key}, which the space searches: not searched", flush=True)
    if settings.study_storage:
        print(f"Optuna study {settings.study_name!r} in {redact(settings.study_location)}", flush=True)
    if settings.mlflow:
        print(f"MLflow experiment {settings.name!r} in {redact(settings.mlflow)}", flush=True)
    warning = sharing_warning(settings.gpus_per_trial, on_cluster)  # trials sharing a GPU without MPS take turns
    if warning:
        print(warning, flush=True)


def print_summary(summary: dict[str, Any], preset: Any, settings: Any) -> None:
    print("\nBest configuration (val loss {:.4f} at epoch {}):".format(summary["best_val_loss"],
                                                                       summary["best_epoch"]))
    print(json.dumps({k: summary["best_config"][k] for k in sorted(preset.space)}, indent=2))
    if "finalists" in summary:
        print_finalists(summary, preset)
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
    statuses = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in summary["trial_statuses"].items())
    wall = summary["wall_seconds"]
    print(f"Trials: {summary['trials']} ({statuses}); best: {summary['best_trial']}")
    finalists = f", finalists {wall['finalists']:.0f} s" if "finalists" in wall else ""
    print(f"Wall time: search {wall['search']:.0f} s{finalists}, retrain/test/export "
          f"{wall['retrain_test_export']:.0f} s")
    print(f"Analyse it: python -m analysis {settings.experiment_path}")


def print_finalists(summary: dict[str, Any], preset: Any) -> None:
    """One line per finalist (best val loss over its seeds, mean ± s.d.; the winner marked), then what is retrained."""
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    record = summary["finalists"]
    seeds = ", ".join(map(str, record["seeds"]))
    print(f"\nFinalists: the top {len(record['trials'])} trials trained again with seeds {seeds} "
          "(best val loss, mean ± s.d. over the seeds):")
    for entry in record["trials"]:
        runs = ", ".join(f"{number(loss)} at epoch {epoch}" if loss is not None else str(failed)
                         for loss, epoch, failed in zip(entry["val_losses"], entry["best_epochs"], entry["failed"]))
        mark = "  <- winner" if entry["winner"] else ""
        print(f"  {'*' if entry['winner'] else ' '} {entry['trial_id']}: {number(entry['mean_val_loss'])} ± "
              f"{number(entry['sd_val_loss'])} ({runs}; in the search {entry['search_val_loss']:.4f}){mark}")
    if record["fallback"]:
        print(f"No finalist wins ({record['fallback']}): the search's best trial is retrained instead.")
        return
    winner = next(entry for entry in record["trials"] if entry["winner"])
    same = winner["trial_id"] == summary["best_trial"]
    print(f"Retrained: the winner's configuration{' (the best trial above)' if same else ''}, for "
          f"{record['retrain_epochs']} epochs (the median of its seeds' best epochs; threshold from its run "
          f"{record['threshold_run']}){'' if same else ':'}")
    if not same:
        print(json.dumps({k: winner["config"][k] for k in sorted(preset.space)}, indent=2))


def main(argv: Sequence[str] | None = None, prog: str = "run_search.py") -> int:
    try:
        summary, _ = run(parse_args(argv, prog))
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if summary is not None else 130

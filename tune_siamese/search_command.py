"""The search command, shared by `python run_search.py` and `tune-siamese search`: options → recipe → summary."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any, Sequence

from .config import Config
from .console import print_start, print_summary, ray_console_environment
from .errors import InputError, OneLineParser
from .names import EXIT_CTRL_C, EXIT_NO_USABLE_TRIAL, EXIT_SIGTERM, FINAL_POLICIES, RUNG_METRICS, SEARCHERS
from .options import DEFAULTS, FALLBACKS, SearchOptions, command_to_rerun

DESCRIPTION = """\
Run a hyperparameter search: Ray Tune + OptunaSearch (TPE by default) + ASHA, then build the final model from the
best configuration (--final), test it and export it.

    {prog}                        # small search on the offline synthetic data
    {prog} --data ../shared/data/lfw-a --space default --num-samples 16
    {prog} --address auto --gpus-per-trial 0.25 --storage-path /shared/ray_results
    {prog} --resume ray_results/siamese-quick-20261128-170000

Exit status: 0 done; 2 bad input; 3 no usable trial (every one diverged or errored: final.json says why, nothing is
exported); 130 Ctrl-C, 143 SIGTERM (both print the command that resumes the search).
"""


class SigtermAsCtrlC:
    """While installed, SIGTERM (what Kubernetes, Slurm and most schedulers send to preempt a job) does what Ctrl-C
    does at that moment: in a Tune run, Tune's SIGINT handler ends the run and saves its state; elsewhere it
    raises KeyboardInterrupt. `received` remembers it, for exit code 143 instead of 130."""

    def __init__(self) -> None:
        self.received = False
        self.previous: Any = None
        self.installed = False

    def install(self) -> None:
        """Install (again: ray.init sets a SIGTERM handler of its own, which aborted the driver, exit 134)."""
        if threading.current_thread() is not threading.main_thread():
            return  # Python runs signal handlers in the main thread only, and sets them there only
        previous = signal.signal(signal.SIGTERM, self._handle)
        if not self.installed:
            self.previous, self.installed = previous, True

    def uninstall(self) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous)
            self.installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):  # Tune's during a run, else Python's own (KeyboardInterrupt)
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored (a background job) or left to the system: SIGTERM must still stop the run
            raise KeyboardInterrupt

    def how(self) -> str:
        return " (SIGTERM)" if self.received else ""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a search that can be resumed: `message` says how (already printed)."""

    def __init__(self, message: str, experiment: str):
        super().__init__(message)
        self.message, self.experiment = message, experiment


def parse_args(argv: Sequence[str] | None = None, prog: str = "run_search.py") -> SearchOptions:
    """The options of a command line (None: sys.argv's)."""
    return SearchOptions.from_namespace(build_parser(prog).parse_args(argv), prog, argv)


def preset_default(name: str) -> str:
    value = FALLBACKS[name]
    return f"default: the preset's, else {value:g}" if isinstance(value, float) else (
        f"default: the preset's, else {value}")


def build_parser(prog: str = "run_search.py") -> OneLineParser:
    """The search's options, in groups; `ts.search` takes the same ones as keyword arguments. Defaults come from
    options.SearchOptions ("the preset's": the preset's option_defaults, else the fallback named)."""
    from search_spaces import describe  # the presets' names and one line on each, for --help

    p = OneLineParser(prog=prog, description=DESCRIPTION.format(prog=command_to_rerun(prog)),
                      epilog="presets (--space):\n" + describe(), formatter_class=argparse.RawDescriptionHelpFormatter)
    search = p.add_argument_group("what to search")
    search.add_argument("--data", default=DEFAULTS.data, metavar="PATH",
                        help="an LFW-a folder with its pair lists, an identity folder, 'lfw' (torchvision download) or "
                             "'synthetic' (default: %(default)s)")
    search.add_argument("--space", default=DEFAULTS.space, metavar="SPACE",
                        help="a preset (listed below), module:SPACE or file.py:SPACE (default: %(default)s)")
    search.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a Config field for every trial, e.g. --set image_size=96 (repeatable; a key the "
                             "space searches is then not searched); `tune-siamese config-fields` lists the fields")
    search.add_argument("--num-samples", type=int, metavar="N", help=f"trials to run ({preset_default('num_samples')})")
    search.add_argument("--max-epochs", type=int, metavar="N",
                        help=f"epochs per trial at most, ASHA's max_t ({preset_default('max_epochs')})")
    search.add_argument("--seed", type=int, default=DEFAULTS.seed, metavar="N",
                        help="seed of the searcher and of every trial (default: %(default)s)")
    search.add_argument("--name", help="the experiment's folder in --storage-path: one folder name, not starting "
                        "with '-' (default: siamese-<space>-<time>)")

    tuning = p.add_argument_group("searcher and early stopping (Optuna, ASHA)")
    tuning.add_argument("--searcher", choices=SEARCHERS,
                        help=f"Optuna's sampler ({preset_default('searcher')}): tpe (multivariate, constant liar "
                             "for parallel trials), random, gp (Gaussian process; choices as unordered categories), "
                             "cmaes (CMA-ES on the ranges only: choices are drawn at random; needs pip install "
                             "cmaes), qmc (scrambled Sobol, seeded)")
    tuning.add_argument("--grace-period", type=int, metavar="N",
                        help=f"epochs before ASHA may stop a trial ({preset_default('grace_period')})")
    tuning.add_argument("--reduction-factor", type=float, metavar="X",
                        help=f"ASHA's reduction factor ({preset_default('reduction_factor')})")
    tuning.add_argument("--rung-metric", choices=list(RUNG_METRICS),
                        help="what ASHA judges a trial by at each rung: last (this epoch's val loss), best (best so "
                             f"far) or avg3 (mean of the last 3 epochs') ({preset_default('rung_metric')})")
    tuning.add_argument("--reproducible", action=argparse.BooleanOptionalAction,
                        help="the same trials run to run on the same machine: suggestions in batches of "
                             "--max-concurrent, each from finished batches only, and no early stopping (ASHA off) "
                             "(default: the preset's, else off)")
    tuning.add_argument("--objectives", metavar="val_loss,OBJ",
                        help="what the search minimises: val_loss, then any of params, flops, latency (ms per pair "
                             "on the CPU, batch 1); several make a multi-objective search (TPE's multi-objective "
                             "mode, or --searcher nsga2), ASHA still judging by val loss "
                             f"({preset_default('objectives')})")
    tuning.add_argument("--max-failures", type=int, default=DEFAULTS.max_failures, metavar="N",
                        help="restarts of a failing trial before it errors (default: %(default)s)")

    resources = p.add_argument_group("resources and cluster")
    resources.add_argument("--cpus-per-trial", type=float, default=DEFAULTS.cpus_per_trial, metavar="X",
                           help="CPUs per trial, also its torch threads (default: %(default)s)")
    resources.add_argument("--gpus-per-trial", type=float, default=DEFAULTS.gpus_per_trial, metavar="X",
                           help="GPUs per trial; fractions that divide one GPU (0.5, 0.25, ...) share it "
                                "(default: %(default)s)")
    resources.add_argument("--max-concurrent", type=int, metavar="N",
                           help="trials running at once (default: as many as the resources allow)")
    resources.add_argument("--address",
                           help="Ray cluster to join: 'auto' (the one running on this node) or HEAD_IP:6379 "
                                "(default: $RAY_ADDRESS when set, as in a Ray job; else a new local Ray)")
    resources.add_argument("--connect-timeout", type=float, default=DEFAULTS.connect_timeout, metavar="SECONDS",
                           help="give up joining a cluster after this long (default: %(default)s)")
    resources.add_argument("--wait-for-resources", type=float, default=DEFAULTS.wait_for_resources,
                           metavar="SECONDS",
                           help="let trials wait up to this long for nodes that fit them (nodes you add by hand); "
                                "with an autoscaler they always wait for the nodes it can add (default: %(default)s, "
                                "refuse at once)")
    resources.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (bound to 127.0.0.1)")

    results = p.add_argument_group("where results go")
    results.add_argument("--storage-path", default=DEFAULTS.storage_path, metavar="PATH",
                         help="where experiments go: a local folder, a shared filesystem or a URI (s3://bucket/path, "
                              "gs://..., file:///...; S3 options in the query, e.g. ?endpoint_override=HOST:PORT) "
                              "(default: %(default)s)")
    results.add_argument("--study-storage", metavar="URL",
                         help="where the Optuna study lives: an SQLAlchemy URL (postgresql://..., sqlite:///...) or "
                              "a journal file path, used as given (default: sqlite EXPERIMENT/optuna.db for a local "
                              "storage path, found in the experiment folder wherever it moves; in memory for a URI)")
    results.add_argument("--mlflow", metavar="URI",
                         help="also log the search to MLflow, an MLflow experiment named like the search: a "
                              "tracking URI (http://HOST:5000, sqlite:///PATH/mlflow.db, file:///PATH/mlruns) or a "
                              "folder (made an absolute file:// URI, so a resume or a Ray job logs to the same "
                              'store). Needs pip install "tune-siamese[mlflow]" (default: none)')
    results.add_argument("--resume", metavar="EXPERIMENT",
                         help="continue an interrupted experiment folder; finished trials are not run again")

    after = p.add_argument_group("after the search: the model handed back")
    after.add_argument("--final", choices=FINAL_POLICIES,
                       help="what the search hands back, built from the best configuration: retrain (one model on "
                            "train + val, the best trial's epochs), trial (the best trial's own model), seeds (K "
                            "retrains with seeds seed..seed+K-1, averaged), folds (K identity-disjoint folds of "
                            "train + val, each model stopped early on its own fold, averaged) (default: the "
                            f"preset's, else {FALLBACKS['final']}); `tune-siamese finalize` builds another later")
    after.add_argument("--final-size", type=int, metavar="K",
                       help="models in a seeds or folds final model, fitted side by side as Ray tasks sharing one "
                            f"retrain's CPUs and GPUs ({preset_default('final_size')})")
    after.add_argument("--pick", default=DEFAULTS.pick, metavar="RULE",
                       help="which trial's configuration the final model is built from: best (lowest val loss) or "
                            "smallest-within=D (the lowest second objective among the trials within D of the "
                            "lowest val loss) (default: %(default)s)")
    after.add_argument("--finalists", type=int, metavar="K",
                       help="before that, train the top K configurations again with --finalist-seeds fresh seeds "
                            "each (Ray trials under EXPERIMENT/finalists) and hand back the one with the lowest mean "
                            f"best val loss ({preset_default('finalists')}: off)")
    after.add_argument("--finalist-seeds", type=int, metavar="S",
                       help=f"seeds per finalist, >= 1 with --finalists ({preset_default('finalist_seeds')})")
    after.add_argument("--ensemble", type=int, default=DEFAULTS.ensemble, metavar="K",
                       help="also test and export the mean of the top K trials' own models (K >= 2; exported to "
                            "EXPERIMENT/export-ensemble, or EXPORT_DIR-ensemble) (default: %(default)s, off)")
    after.add_argument("--retrain-cpus", type=float, default=DEFAULTS.retrain_cpus, metavar="X",
                       help="CPUs of the final model's fits (default: what the search used at once, up to one "
                            "node's)")
    after.add_argument("--retrain-gpus", type=float, metavar="X",
                       help="GPUs of the final model's fits, which run on a worker node (default: --gpus-per-trial)")
    after.add_argument("--export-dir", metavar="PATH",
                       help="also copy the export (EXPERIMENT/export) to this local folder (default: none)")
    after.add_argument("--no-retrain", action="store_true",
                       help="stop after the search: no finalists, final model, test or export")

    console = p.add_argument_group("console")
    console.add_argument("-v", "--verbose", action="count", default=DEFAULTS.verbose,
                         help="more console: -v each trial's results and Optuna's log, -vv everything Tune prints")
    console.add_argument("-q", "--quiet", action="store_true",
                         help="no live table: only the progress lines and the summary")
    return p


def run(options: SearchOptions, stop: SigtermAsCtrlC | None = None,
        begun: float | None = None) -> tuple[dict[str, Any], Any]:
    """The recipe; returns (summary as written to final.json, retrained model). Interrupted (Ctrl-C or SIGTERM:
    see `stop`), it prints the command that resumes it and raises SearchInterrupted. `begun`: when the run began
    (when the command began, so that the summary's wall times add up to the whole; default now)."""
    from . import cluster, storage
    from .data import load_data
    from .finalists import run_finalists
    from .finish import finish_search
    from .preflight import check_search, check_targets
    from .settings import settings_for
    from .tuning import fit_tuner, interrupted, tuner_for

    begun = begun or time.time()
    ray_console_environment()
    settings, preset = settings_for(options)  # every option and every value the space can give a trial
    check_search(options, settings, preset)
    print(f"Reading the data ({settings.base['data']}) ...", flush=True)  # a cache hit is quick, a first read not
    data = load_data(Config.from_dict(settings.base, source="search settings"))  # the data are input too
    print(data.summary(), flush=True)
    check_targets(settings, options.export_dir, new=not options.resume)  # the first thing written
    own, stop = stop is None, stop or SigtermAsCtrlC()
    with storage.experiment_lock(settings.experiment_path):
        print(cluster.connecting_line(options.address), flush=True)  # Ray takes seconds to start
        address = cluster.connect(options.address, options.connect_timeout, options.dashboard)
        stop.install()  # after ray.init, which replaces it

        def stopped(what: str) -> SearchInterrupted:
            message = f"{what}. Continue it with: {command_to_rerun(options.prog)} --resume {settings.experiment_path}"
            print(f"\n{message}", flush=True)
            return SearchInterrupted(message, settings.experiment_path)

        stage = "Search interrupted{}; nothing was retrained or exported"
        mlflow_run = ""
        try:
            settings = cluster.fit_resources(settings, options.wait_for_resources)
            verbose = tune_verbosity(options)
            if settings.mlflow:  # the search's parent run; the trials' runs are its children
                from .mlflow_record import search_run

                mlflow_run = search_run(settings, resumed=bool(options.resume))
            tuner = tuner_for(settings, preset, data, resume=bool(options.resume), verbose=verbose,
                              mlflow_parent=mlflow_run)
            print_start(settings, on_cluster=address not in ("local", "existing"))
            started = time.time()
            results, watch = fit_tuner(tuner)
            search_seconds = time.time() - started
            if interrupted(results, settings.num_samples, watch):
                # Tune saved its state; finishing now would retrain the best of a half-searched space.
                raise stopped(stage.format(stop.how()))
            finalists = None
            if settings.finalists and not options.no_retrain:
                stage = "Finalist stage interrupted{}; nothing was retrained or exported"
                finalists = run_finalists(settings, results, data, verbose)
                if finalists is None:  # a winner from some of the runs would be the luck this stage removes
                    raise stopped(stage.format(stop.how()))
            stage = ("Interrupted{} during the retrain, test and export; final.json is not written and no export is "
                     "left half-written")
            summary, model = finish_search(settings, results, data, options.export_dir, retrain=not options.no_retrain,
                                           ensemble=options.ensemble, search_seconds=search_seconds,
                                           resumed=bool(options.resume), finalists=finalists)
            if mlflow_run:
                from .mlflow_record import finish_run

                finish_run(settings, mlflow_run, summary)
        except SearchInterrupted:
            raise
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside a Tune run
            raise stopped(stage.format(stop.how())) from None
        finally:
            if own:
                stop.uninstall()
    print_summary(summary, preset, settings, mlflow_run, total_seconds=time.time() - begun)
    return summary, model


def tune_verbosity(options: SearchOptions) -> int:
    """Tune's verbose level from -q/-v; Optuna logs only warnings unless -v."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if options.verbose else optuna.logging.WARNING)
    return 0 if options.quiet else min(3, 1 + options.verbose)


def main(argv: Sequence[str] | None = None, prog: str = "run_search.py") -> int:
    """Exit 0; 2 bad input; 3 no usable trial; 130 Ctrl-C, 143 SIGTERM (each then prints the resume command)."""
    begun = time.time()  # before the heavy imports (Ray, torch), which run makes
    stop = SigtermAsCtrlC()
    stop.install()  # until run installs it again after ray.init: SIGTERM while reading the data stops too
    # Ctrl-C is Python's KeyboardInterrupt for the command's run, whatever handler the process had (one that a
    # Ray session left behind only sets a flag: the export went on and the run exited 0); restored after.
    on_main_thread = threading.current_thread() is threading.main_thread()
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler) if on_main_thread else None
    try:
        summary, _ = run(parse_args(argv, prog), stop, begun=begun)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except SearchInterrupted:  # run printed how to resume it
        return EXIT_SIGTERM if stop.received else EXIT_CTRL_C
    except KeyboardInterrupt:  # before the experiment began: nothing to resume
        print(f"{prog}: interrupted{stop.how()} before the search started", file=sys.stderr)
        return EXIT_SIGTERM if stop.received else EXIT_CTRL_C
    finally:
        stop.uninstall()
        if on_main_thread:
            signal.signal(signal.SIGINT, inherited)
    return EXIT_NO_USABLE_TRIAL if "no_usable_trial" in summary else 0

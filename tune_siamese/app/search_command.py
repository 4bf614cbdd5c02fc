"""The search command, shared by `python run_search.py` and `tune-siamese search`: options → recipe → summary."""
from __future__ import annotations

import argparse
import ast
import importlib.util
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from tune_siamese.app.console import print_start, print_summary
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError, OneLineParser, SearchInterrupted
from tune_siamese.core.names import EXIT_CTRL_C, EXIT_NO_USABLE_TRIAL, EXIT_SIGTERM
from tune_siamese.core.progress import report
from tune_siamese.searching.cluster import ray_console_environment
from tune_siamese.searching.options import (
    SearchOptions,
    command_to_rerun,
    declared,
    flag,
    from_namespace,
    how_to_resume,
    option_fields,
    value_type,
)

DESCRIPTION = """\
Run a hyperparameter search: Ray Tune + OptunaSearch (TPE by default) + ASHA, then build the final model from the
best configuration (--final), test it and export it.

    {prog}                        # small search on the offline synthetic data
    {prog} --data ../shared/data/lfw-a --space default --num-samples 16
    {prog} --address auto --gpus-per-trial 0.25 --storage-path /shared/ray_results
    {prog} --resume ray_results/siamese-quick-20261128-170000
    {prog} --resume ray_results/siamese-quick-20261128-170000 --num-samples 16   # grow it to 16 trials

Exit status: 0 done; 2 bad input, or a write after the search that failed (a full disk: nothing half-written;
--resume finishes it); 3 no usable trial (every one diverged or errored) or a final model that diverged (final.json
says why, nothing is exported); 130 Ctrl-C, 143 SIGTERM (both print the command that resumes the search).
"""

# final.finish.FINAL_DIVERGED, spelt here: importing final.finish would import Ray and torch before --help
FINAL_DIVERGED = "final_diverged"


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


def parse_args(argv: Sequence[str] | None = None, prog: str = "run_search.py") -> SearchOptions:
    """The options of a command line (None: sys.argv's)."""
    args = build_parser(prog).parse_args(argv)
    # What the words give, also at an option's default (`--resume X --space quick`): what a parser without
    # defaults sets. --resume refuses every search-shaping one.
    given = frozenset(vars(build_parser(prog, defaults=False).parse_args(argv)))
    return from_namespace(args, prog, argv, given)


class SearchParser(OneLineParser):
    """Lists the presets under the help, read from search_spaces' source rather than imported: importing it
    imports Ray Tune (a second), which --help need not wait for."""

    def format_help(self) -> str:
        self.epilog = "presets (--space):\n" + preset_lines()
        return super().format_help()


def preset_lines() -> str:
    """What search_spaces.describe() says (the presets' names and docs, one line each), from the PRESETS literal
    in its source; a test holds the two equal."""
    spec = importlib.util.find_spec("search_spaces")
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    table = next(node.value for node in tree.body if isinstance(node, ast.AnnAssign)
                 and isinstance(node.target, ast.Name) and node.target.id == "PRESETS")
    assert isinstance(table, ast.Dict)
    lines = []
    for key, preset in zip(table.keys, table.values):
        assert isinstance(key, ast.Constant) and isinstance(preset, ast.Call)
        doc = next(keyword.value for keyword in preset.keywords if keyword.arg == "doc")
        lines.append(f"  {str(key.value):11s} {ast.literal_eval(doc)}")
    return "\n".join(lines)


# How argparse reads each kind of option (options.Kind)
ACTIONS: dict[str, Any] = {"value": "store", "repeatable": "append", "flag": "store_true", "count": "count",
                           "boolean-optional": argparse.BooleanOptionalAction}


def build_parser(prog: str = "run_search.py", defaults: bool = True) -> OneLineParser:
    """The search's options as options.SearchOptions declares them, in their groups; `ts.search` takes the same
    ones as keyword arguments. defaults=False: an option not given is left out of the parsed namespace."""
    p = SearchParser(prog=prog, description=DESCRIPTION.format(prog=command_to_rerun(prog)),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    groups: dict[str, Any] = {}
    for f in option_fields():
        option = declared(f)
        if option.group not in groups:
            groups[option.group] = p.add_argument_group(option.group)
        flags = [option.short, flag(f.name)] if option.short else [flag(f.name)]
        takes_value = option.kind in ("value", "repeatable")
        typed = {"type": value_type(f), "metavar": option.metavar, "choices": option.choices} if takes_value else {}
        default = [] if option.kind == "repeatable" else f.default  # argparse appends to the default's copy
        if not defaults:
            default = argparse.SUPPRESS
        groups[option.group].add_argument(*flags, action=ACTIONS[option.kind], default=default, help=option.help,
                                          **typed)
    return p


def run(options: SearchOptions, stop: SigtermAsCtrlC | None = None, begun: float | None = None,
        ray_logs: bool = True) -> tuple[dict[str, Any], Any]:
    """The recipe; returns (summary as final.json records it, with absolute paths; retrained model).

    Interrupted (Ctrl-C or SIGTERM: see `stop`), it prints the command that resumes it and raises
    SearchInterrupted. `begun`: when the run began (when the command began, so that the summary's wall times add up
    to the whole; default now). `ray_logs`: Ray's INFO lines and the workers' output on this console
    (cluster.connect). A Ray this run started (or joined) is shut down (or left) when it returns, so the next run in
    this process starts from its options; one the process had started before is left as it is."""
    from tune_siamese.core import storage
    from tune_siamese.data import load_data
    from tune_siamese.final.earlier import keep_earlier_final
    from tune_siamese.final.finalists import run_finalists
    from tune_siamese.final.finish import finish_search
    from tune_siamese.final.publishing import WriteFailed
    from tune_siamese.searching import cluster
    from tune_siamese.searching.preflight import check_search, check_targets
    from tune_siamese.searching.settings import settings_for
    from tune_siamese.searching.tuner import fit_tuner, interrupted, tuner_for

    begun = begun or time.time()
    ray_console_environment()
    settings, preset = settings_for(options)  # every option and every value the space can give a trial
    check_search(options, settings, preset)
    report(f"Reading the data ({settings.base['data']}) ...")  # a cache hit is quick, a first read not
    data = load_data(Config.from_dict(settings.base, source="search settings"))  # the data are input too
    print(data.summary(), flush=True)
    check_targets(settings, options.export_dir, new=not options.resume)  # the first thing written
    own, stop = stop is None, stop or SigtermAsCtrlC()
    with storage.experiment_lock(settings.experiment_path):
        report(cluster.connecting_line(options.address))  # Ray takes seconds to start
        address = cluster.connect(options.address, options.connect_timeout, options.dashboard, ray_logs)
        stop.install()  # after ray.init, which replaces it

        def stopped(what: str) -> SearchInterrupted:
            message = f"{what}. Continue it with: {how_to_resume(options.prog, settings.experiment_path)}"
            print(f"\n{message}", flush=True)
            return SearchInterrupted(message, settings.experiment_path)

        stage = "Search interrupted{}; nothing was retrained or exported"
        mlflow_run = ""
        try:
            settings = cluster.fit_resources(settings, options.wait_for_resources)
            verbose = tune_verbosity(options)
            if settings.mlflow:  # the search's parent run; the trials' runs are its children
                from tune_siamese.final.mlflow_record import search_run

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
            kept = keep_earlier_final(settings.experiment_path, len(results))  # a grown search's earlier one
            if kept:
                print(f"The final model of the search before it grew is kept: {kept}", flush=True)
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
                from tune_siamese.final.mlflow_record import finish_run

                finish_run(settings, mlflow_run, summary)
        except SearchInterrupted:
            raise
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside a Tune run
            raise stopped(stage.format(stop.how())) from None
        except WriteFailed as exc:
            # After the search (a full disk at the export or final.json, nothing half-written): the search is
            # saved, and a resume does only what is left.
            raise InputError(f"{exc}. Then continue it with: {how_to_resume(options.prog, settings.experiment_path)}"
                             ) from None
        finally:
            if own:
                stop.uninstall()
            if address != "existing":
                cluster.disconnect()
    print_summary(summary, preset, settings, mlflow_run, total_seconds=time.time() - begun)
    if FINAL_DIVERGED in summary:  # one line: what diverged, and how to build another model from the search
        print(f"The final model diverged: {summary[FINAL_DIVERGED]}; nothing was exported (exit "
              f"{EXIT_NO_USABLE_TRIAL}). Another from this search: tune-siamese finalize {settings.experiment_path} "
              "--final trial", flush=True)
    return summary, model


def tune_verbosity(options: SearchOptions) -> int:
    """Tune's verbose level from -q/-v; Optuna logs only warnings unless -v."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if options.verbose else optuna.logging.WARNING)
    return 0 if options.quiet else min(3, 1 + options.verbose)


def main(argv: Sequence[str] | None = None, prog: str = "run_search.py") -> int:
    """Exit 0; 2 bad input (or a failed write after the search); 3 no usable trial or a diverged final model; 130
    Ctrl-C, 143 SIGTERM (each then prints the resume command)."""
    begun = time.time()  # before the heavy imports (Ray, torch), which run makes
    stop = SigtermAsCtrlC()
    stop.install()  # until run installs it again after ray.init: SIGTERM while reading the data stops too
    # Ctrl-C is Python's KeyboardInterrupt for the command's run, whatever handler the process had (one that a
    # Ray session left behind only sets a flag: the export went on and the run exited 0); restored after.
    on_main_thread = threading.current_thread() is threading.main_thread()
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler) if on_main_thread else None
    try:
        options = parse_args(argv, prog)
        options.check()  # each value on its own, before the heavy imports (Ray, torch) that run makes
        summary, _ = run(options, stop, begun=begun)
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
    return EXIT_NO_USABLE_TRIAL if "no_usable_trial" in summary or FINAL_DIVERGED in summary else 0

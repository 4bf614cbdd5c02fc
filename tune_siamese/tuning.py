"""The thin Ray layer: a function trainable around `engine.fit`, and the Tuner (OptunaSearch + ASHA).

The trainable reads only its config; the dataset reaches every trial once through Ray's object store.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

from . import storage
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config
from .data import PairData
from .engine import Diverged, fit
from .model import build_model
from .names import BEST_VAL_LOSS, DIVERGED_LOSS, MODE, RUNG_METRICS, SETTINGS_FILE, STATE_FILE, VAL_LOSS, VAL_LOSS_AVG3
from .objectives import REPORTED, model_costs
from .settings import SearchSettings
from .study import ExperimentStudyStorage, open_study_storage
from .study_search import SavableNSGAIISampler, StudyRecordingSearch

LIVE_TABLE_METRICS = (VAL_LOSS, BEST_VAL_LOSS, "val_auc", "val_accuracy")


def train_siamese(config: dict[str, Any], data: PairData, objectives: tuple[str, ...] = ()) -> None:
    """Ray Tune function trainable: fit one configuration, report every epoch, resume from a checkpoint.
    `objectives`: the costs a multi-objective search also minimises (objectives.py), reported with every epoch."""
    cfg = Config.from_dict(config, source="trial config")
    costs = model_costs(build_model(cfg), cfg, list(objectives)) if objectives else {}
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / STATE_FILE)

    # The val losses so far (a resumed trial's from its checkpoint), for the moving average ASHA may judge by.
    val_losses = [epoch[VAL_LOSS] for epoch in resume["history"]] if resume is not None else []
    node = ray.get_runtime_context().get_node_id()
    # One line per trial per epoch saying a checkpoint was written buries the console; failures still log.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)

    def on_epoch(metrics: dict[str, Any], state: Any) -> None:
        # A checkpoint every epoch (Tune keeps only the newest), so a killed worker loses one epoch at most.
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state(), Path(folder) / STATE_FILE)
            # Tune's live table shows the first few metrics of a report: the ones the search ranks by first.
            shown = {key: metrics[key] for key in LIVE_TABLE_METRICS if key in metrics}
            val_losses.append(metrics[VAL_LOSS])
            average = sum(val_losses[-3:]) / len(val_losses[-3:])
            tune.report({**shown, **metrics, VAL_LOSS_AVG3: average, "node_id": node, **costs},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        fit(cfg, data, on_epoch=on_epoch, resume=resume)
    except Diverged as exc:
        # End cleanly with a bad-but-finite loss so the searcher learns "this region diverges".
        tune.report({VAL_LOSS: DIVERGED_LOSS, BEST_VAL_LOSS: DIVERGED_LOSS, VAL_LOSS_AVG3: DIVERGED_LOSS,
                     "val_accuracy": 0.5, "val_auc": 0.5, "diverged": 1,
                     "diverged_reason": str(exc), **costs})


class CompletionWatch(tune.Callback):
    """Tells a search that ended from one that was interrupted (Ctrl-C, SIGUSR1).

    After an interrupt Tune stops the trials still running and marks them TERMINATED, like finished ones, but
    without the on_trial_complete / on_trial_error calls that every real ending (the trial returning, ASHA
    stopping it, an error) makes. `latest` is the instance that ran last, also after Tuner.restore (which
    unpickles its own copy, out of reach otherwise); fit_tuner alone reads it and returns it with the results."""

    latest: "CompletionWatch | None" = None

    def __init__(self) -> None:
        self.ended: set[str] = set()
        self.cut_short: set[str] = set()
        self.started = False

    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any) -> None:
        self.ended, self.cut_short, self.started = set(), set(), False
        CompletionWatch.latest = self

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.started:  # a resumed search does not run again the trials that ended before
            self.ended |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
            self.started = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if not self.started:  # no step ran: a resumed search (or finalist stage) whose trials had all ended before
            self.ended |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        self.cut_short = {t.trial_id for t in trials if t.trial_id not in self.ended}


class SearchProgress(tune.Callback):
    """One line each time a trial ends: how many of N have ended (errored ones counted), how many run, the
    elapsed time and a rough time left (elapsed per ended trial, times the trials left). `label` and `unit` name
    the stage: "[search] ... trials", or "[finalists] ... runs" for finish.py's finalist stage."""

    def __init__(self, num_samples: int, label: str = "search", unit: str = "trials") -> None:
        self.num_samples, self.label, self.unit = num_samples, label, unit
        self.started = time.monotonic()
        self.ended = self.errored = self.ended_before = 0
        self.counted = False

    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any) -> None:
        self.started, self.ended, self.errored, self.ended_before, self.counted = time.monotonic(), 0, 0, 0, False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.counted:  # a resumed search: the trials that ended before count, not their time
            self.ended_before = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            self.counted = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._report(trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.errored += 1
        self._report(trials, trial)

    def _report(self, trials: list, ending: Any) -> None:
        self.ended += 1
        elapsed = time.monotonic() - self.started
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        left = self.num_samples - self.ended_before - self.ended
        eta = f", about {_minutes(elapsed / self.ended * left)} left" if left > 0 else ""
        errored = f" ({self.errored} errored)" if self.errored else ""
        print(f"[{self.label}] {self.ended_before + self.ended}/{self.num_samples} {self.unit} ended{errored}, "
              f"{running} running; {_minutes(elapsed)} elapsed{eta}", flush=True)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def fit_tuner(tuner: tune.Tuner) -> tuple[tune.ResultGrid, CompletionWatch | None]:
    """tuner.fit() and the run's CompletionWatch (None if none ran), then Ctrl-C back to the handler it had before.
    Tune installs its own SIGINT handler for the run (it ends the run, saving its state) and leaves it behind when
    the run ends without one: a Ctrl-C (or SIGTERM, search_command) during the retrain would only set a flag that
    nothing reads any more."""
    before = signal.getsignal(signal.SIGINT)
    CompletionWatch.latest = None
    try:
        return tuner.fit(), CompletionWatch.latest
    finally:
        if threading.current_thread() is threading.main_thread():  # where Tune installs it, and where we may
            signal.signal(signal.SIGINT, before)


def interrupted(results: tune.ResultGrid, num_samples: int, watch: CompletionWatch | None,
                watched: bool = True) -> bool:
    """True when the search did not run every trial to its own end (see CompletionWatch). `watched=False`: the
    results of a restored experiment that this process did not run, judged by the trials' recorded states."""
    unwatched_or_cut = watched and (watch is None or bool(watch.cut_short))
    return bool(unwatched_or_cut or len(results) < num_samples
                or results.num_terminated + results.num_errors < num_samples)


def build_trainable(settings: SearchSettings, data: PairData) -> Any:
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    trainable = tune.with_parameters(train_siamese, data=data, objectives=tuple(settings.objectives[1:]))
    return tune.with_resources(trainable, resources)


def searched_metrics(settings: SearchSettings) -> tuple[Any, Any]:
    """(metric, mode) for OptunaSearch: the best val loss, and with several objectives the costs beside it
    (every one minimised), which makes the study multi-objective."""
    if len(settings.objectives) == 1:
        return BEST_VAL_LOSS, MODE
    metrics = [BEST_VAL_LOSS, *(REPORTED[name] for name in settings.objectives[1:])]
    return metrics, [MODE] * len(metrics)


def build_tuner(settings: SearchSettings, data: PairData, space: dict[str, Any],
                points: list[dict[str, Any]], verbose: int = 1, mlflow_parent: str = "") -> tune.Tuner:
    """verbose: Tune's console, 0 silent, 1 the live status table, 2 also each trial's results, 3 everything."""
    # Fixed values ride along as constants in the param space, so each trial's config is complete.
    param_space = {**settings.base, **space}
    # The searcher learns from a trial's best val loss whatever the rung metric: the search hands back the trial
    # with the lowest val loss at any epoch (finish.best_trial), and a trial that later overfits still found a
    # good point. The study is named after the experiment; with a storage it can be watched live
    # (optuna-dashboard) and queried later, and a resumed search keeps writing to it (the searcher's saved state
    # holds the storage: restore_tuner).
    metric, mode = searched_metrics(settings)
    optuna_search = StudyRecordingSearch(sampler=build_sampler(settings), points_to_evaluate=points or None,
                                         metric=metric, mode=mode, study_name=settings.study_name,
                                         storage=open_study_storage(settings.study_storage, settings.experiment_path))
    # The concurrency is explicit: OptunaSearch alone keeps one trial pending (ray #46965). In the reproducible
    # mode suggestions come in batches of max_concurrent, each after the whole previous batch has ended, so they
    # depend on finished results only, never on the order in which these arrived.
    searcher: Searcher = optuna_search
    if settings.max_concurrent or settings.reproducible:
        searcher = ConcurrencyLimiter(optuna_search, max_concurrent=max(1, settings.max_concurrent),
                                      batch=settings.reproducible)
    return tune.Tuner(
        build_trainable(settings, data),
        param_space=param_space,
        # Our SearchGenerator, not Tune's plain one: it files the trials a resumed search creates in the
        # experiment's current folder. Given one, Tune leaves the concurrency to the limiter above.
        tune_config=tune.TuneConfig(search_alg=MovableSearchGenerator(searcher), scheduler=build_scheduler(settings),
                                    num_samples=settings.num_samples,
                                    # A new trial takes over a finished trial's process: no worker start-up,
                                    # torch import or data fetch per trial (fit resets seeds and threads).
                                    reuse_actors=True, trial_dirname_creator=trial_folder,
                                    trial_name_creator=trial_name),
        run_config=run_config(settings.name, settings.storage_path, verbose, list(space), settings.max_failures,
                              [SearchProgress(settings.num_samples), *mlflow_logger(settings, mlflow_parent)]),
    )


def trial_folder(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def trial_name(trial: Any) -> str:
    """What the live table and MLflow's run names call a trial: its id (names.trial_id)."""
    return str(trial.trial_id)


def run_config(name: str, storage_path: str, verbose: int, searched: list[str], max_failures: int,
               callbacks: list[tune.Callback]) -> tune.RunConfig:
    """The RunConfig of every Tune run here (the search, the finalist stage): the live table of the searched
    values, the newest checkpoint of each trial kept, and a CompletionWatch (fit_tuner returns it)."""
    return tune.RunConfig(name=name, storage_path=storage_path, verbose=verbose, progress_reporter=live_table(searched),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                          callbacks=[CompletionWatch(), *callbacks],
                          failure_config=tune.FailureConfig(max_failures=max_failures))


class MovableSearchGenerator(SearchGenerator):
    """Tune's wrapper that turns the searcher's suggestions into trials, filed under the experiment its saved
    state holds. On resume Tune moves the restored trials to where the experiment is now, but not this: after a
    move or copy the trials created after a resume would write to the old folder. Restored, this one files them
    in the folder `resuming` names (restore_tuner sets it)."""

    resuming: ClassVar[str] = ""

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if self.resuming and self._experiment is not None:
            # What Tune's controller does for each restored trial (TuneController._restore_trials)
            context = self._experiment.storage  # the same object as the trial spec's "storage"
            parent, name = storage.parent_and_name(self.resuming)
            context.storage_filesystem, context.storage_fs_path = storage.filesystem(parent)
            context.experiment_dir_name = name


def resuming(experiment: str) -> None:
    """Where the state Tune unpickles on resume is to find the experiment now ("" for a new search)."""
    ExperimentStudyStorage.resuming = MovableSearchGenerator.resuming = experiment


def build_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    """--searcher: one of Optuna's samplers, seeded from --seed. TPE and GP start from a quarter of the trials
    (at least 2) drawn at random; CMA-ES keeps Optuna's default (its first generation is its own exploration)."""
    seed, startup = settings.seed, max(2, settings.num_samples // 4)
    samplers = optuna.samplers
    if settings.searcher == "random":
        return samplers.RandomSampler(seed=seed)
    if settings.searcher == "gp":  # needs scipy and torch (checked with the options)
        return samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if settings.searcher == "cmaes":  # needs cmaes; models the ranges only, choices come from a random sampler
        return samplers.CmaEsSampler(seed=seed)
    if settings.searcher == "qmc":  # the seed acts only on a scrambled sequence
        return samplers.QMCSampler(scramble=True, seed=seed)
    if settings.searcher == "nsga2":  # genetic, for several objectives (one works too)
        return SavableNSGAIISampler(seed=seed)
    # Multivariate TPE models the parameters jointly; the constant liar counts the trials still running as bad
    # ones, so that trials suggested side by side spread out rather than repeat each other.
    return samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True)


def build_scheduler(settings: SearchSettings) -> TrialScheduler:
    """ASHA, judging trials at each rung by --rung-metric; in the reproducible mode none (FIFO): ASHA's rung
    cutoffs are taken from the results that have arrived so far, so which trial it stops depends on the order
    in which concurrent trials report."""
    if settings.reproducible:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric=RUNG_METRICS[settings.rung_metric], mode=MODE,
                         max_t=settings.max_epochs, grace_period=settings.grace_period,
                         reduction_factor=settings.reduction_factor)


# What a trial's MLflow run logs of each result: the training's own metrics, not Tune's bookkeeping (pid, done,
# timestamps, ...) or the config again (it is the run's params).
MLFLOW_METRICS = ("train_loss", "lr", "train_pairs", VAL_LOSS, "val_accuracy", "val_auc", BEST_VAL_LOSS, VAL_LOSS_AVG3,
                  "epoch_seconds", "diverged")


def mlflow_logger(settings: SearchSettings, parent_run: str = "") -> list[tune.Callback]:
    """With --mlflow, Ray Tune's own MLflow callback: in the MLflow experiment named after the search, one run per
    trial, a child of the search's run `parent_run` (mlflow_record), with its config as params and every epoch's
    metrics (step = epoch). It runs in the driver, and Tune saves it with the run config, so a resumed search logs
    to the same store and parent."""
    if not settings.mlflow:
        return []
    # Not at the top: it imports mlflow (an optional extra, and a second of start-up in every trial worker).
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflowLogger(MLflowLoggerCallback):
        """A resumed search continues each interrupted trial's MLflow run rather than opening a second one of the
        same name: Tune saves this state (trial id -> run id) with the experiment and, on resume, hands it back
        before setup(), which empties the callback's own map."""

        resumed: dict[str, str] = {}

        def get_state(self) -> dict[str, Any]:
            return {"runs": {trial.trial_id: run for trial, run in getattr(self, "_trial_runs", {}).items()}}

        def set_state(self, state: dict[str, Any]) -> None:
            self.resumed = dict(state["runs"])

        def log_trial_start(self, trial: Any) -> None:
            if trial not in self._trial_runs and trial.trial_id in self.resumed:
                self._trial_runs[trial] = self.resumed.pop(trial.trial_id)
            super().log_trial_start(trial)

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            metrics = {key: result[key] for key in MLFLOW_METRICS if key in result}
            self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=metrics,
                                         step=result["training_iteration"])

    tags = {"tune_siamese.experiment": settings.experiment_path, "tune_siamese.role": "trial"}
    if parent_run:
        tags["mlflow.parentRunId"] = parent_run
    return [MLflowLogger(tracking_uri=settings.mlflow, experiment_name=settings.name, tags=tags)]


# Lines of Tune's legacy status block that mislead here: ASHA's bracket prints the negated loss it maximises,
# `num_stopped` counts finished trials too, and "Result logdir" names Ray's session folder, not the experiment.
MISLEADING_STATUS = ("Using AsyncHyperBand", "Bracket:", "Result logdir:", "Using FIFO scheduling")


class LiveTable(tune.CLIReporter):
    """Tune's table of trials without the misleading status lines."""

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        status = self._progress_str(trials, done, *sys_info)
        self._print("\n".join(line for line in status.splitlines() if not line.strip().startswith(MISLEADING_STATUS)))


def live_table(searched: list[str]) -> tune.CLIReporter:
    """Tune's table of trials: the searched values and what the search ranks by, best trial first, every 30 s.

    Ray's newer console prints each trial's whole config when it starts and cannot be narrowed to columns;
    this reporter is the one RunConfig(progress_reporter=...) takes (console.ray_console_environment)."""
    metrics = {"epoch": "epoch", VAL_LOSS: "val loss", BEST_VAL_LOSS: "best val loss", "val_auc": "val AUC"}
    return LiveTable(metric_columns=metrics, parameter_columns=searched, max_report_frequency=30,
                     metric=BEST_VAL_LOSS, mode=MODE, sort_by_metric=True, max_progress_rows=30)


def restore_tuner(settings: SearchSettings, data: PairData) -> tune.Tuner:
    # The state Tune unpickles holds the study's storage and the folder new trials go to: both are re-pointed
    # to this folder, wherever the experiment was moved or copied to.
    resuming(settings.experiment_path)
    return tune.Tuner.restore(settings.experiment_path, trainable=build_trainable(settings, data),
                              resume_unfinished=True, resume_errored=True)


def tuner_for(settings: SearchSettings, preset: Any, data: PairData, resume: bool, verbose: int = 1,
              mlflow_parent: str = "") -> tune.Tuner:
    """A new search (its settings saved first, for --resume and the analysis) or the interrupted one (which keeps
    the console verbosity it was started with)."""
    if resume:
        return restore_tuner(settings, data)
    resuming("")
    storage.write_text(storage.child(settings.experiment_path, SETTINGS_FILE),
                       json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
    return build_tuner(settings, data, preset.space, preset.points, verbose, mlflow_parent)

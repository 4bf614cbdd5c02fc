"""The Tuner of a search (OptunaSearch with the chosen sampler, and ASHA; batches for --reproducible), restoring it
on --resume wherever the experiment moved, and telling an interrupted run from a finished one."""
from __future__ import annotations

import dataclasses
import json
import signal
import threading
from contextvars import ContextVar
from typing import Any

from ray import tune
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

from tune_siamese.core import storage
from tune_siamese.core.names import (
    BEST_VAL_LOSS,
    MODE,
    RUNG_METRICS,
    SETTINGS_FILE,
    SPACE_IN_EXPERIMENT,
)
from tune_siamese.data import PairData
from tune_siamese.searching.callbacks import CompletionWatch, SearchProgress, mlflow_logger, running_watch
from tune_siamese.searching.live_table import live_table
from tune_siamese.searching.objectives import REPORTED
from tune_siamese.searching.rung_rules import ParetoASHA, ProgressiveASHA
from tune_siamese.searching.samplers import build_sampler
from tune_siamese.searching.settings import SearchSettings, record_growth
from tune_siamese.searching.spaces import write_space_data
from tune_siamese.searching.study import open_study_storage, restoring_into
from tune_siamese.searching.study_search import StudyRecordingSearch
from tune_siamese.searching.trainable import build_trainable
from tune_siamese.searching.warm_start import WarmStart, warm_start_for


def fit_tuner(tuner: tune.Tuner) -> tuple[tune.ResultGrid, CompletionWatch | None]:
    """tuner.fit() and the run's CompletionWatch (None if none ran), then Ctrl-C back to the handler it had before.
    Tune installs its own SIGINT handler for the run (it ends the run, saving its state) and leaves it behind when
    the run ends without one: a Ctrl-C (or SIGTERM, search_command) during the retrain would only set a flag that
    nothing reads any more."""
    before = signal.getsignal(signal.SIGINT)
    running_watch.set(None)
    try:
        return tuner.fit(), running_watch.get()
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


def searched_metrics(settings: SearchSettings) -> tuple[Any, Any]:
    """(metric, mode) for OptunaSearch: the best val loss, and with several objectives the costs beside it
    (every one minimised), which makes the study multi-objective."""
    if len(settings.objectives) == 1:
        return BEST_VAL_LOSS, MODE
    metrics = [BEST_VAL_LOSS, *(REPORTED[name] for name in settings.objectives[1:])]
    return metrics, [MODE] * len(metrics)


def build_tuner(settings: SearchSettings, data: PairData, space: dict[str, Any],
                points: list[dict[str, Any]], verbose: int = 1, mlflow_parent: str = "",
                warm: WarmStart | None = None) -> tune.Tuner:
    """verbose: Tune's console, 0 silent, 1 the live status table, 2 also each trial's results, 3 everything.
    `warm`: what a warm-started search takes from earlier experiments (its trials join the study; its points
    follow the preset's)."""
    warm = warm or WarmStart()
    points = [*points, *(point for point in warm.points if point not in points)]
    # Fixed values ride along as constants in the param space, so each trial's config is complete.
    param_space = {**settings.base, **space}
    # The searcher learns from a trial's best val loss whatever the rung metric: the search hands back the trial
    # with the lowest val loss at any epoch (ranking.best_trial), and a trial that later overfits still found a
    # good point. The study is named after the experiment; with a storage it can be watched live
    # (optuna-dashboard) and queried later, and a resumed search keeps writing to it (the searcher's saved state
    # holds the storage: restore_tuner).
    metric, mode = searched_metrics(settings)
    optuna_search = StudyRecordingSearch(sampler=build_sampler(settings), points_to_evaluate=points or None,
                                         metric=metric, mode=mode, study_name=settings.study_name,
                                         warm_trials=warm.trials,
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
                              [SearchProgress(settings.num_samples, max_epochs=settings.max_epochs),
                               *mlflow_logger(settings, mlflow_parent)]),
    )


def trial_folder(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def trial_name(trial: Any) -> str:
    """What the live table and MLflow's run names call a trial: its id (names.trial_id_of)."""
    return str(trial.trial_id)


def run_config(name: str, storage_path: str, verbose: int, searched: list[str], max_failures: int,
               callbacks: list[tune.Callback]) -> tune.RunConfig:
    """The RunConfig of every Tune run here (the search, the finalist stage): the live table of the searched
    values, the newest checkpoint of each trial kept, and a CompletionWatch (fit_tuner returns it)."""
    return tune.RunConfig(name=name, storage_path=storage_path, verbose=verbose, progress_reporter=live_table(searched),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                          callbacks=[CompletionWatch(), *callbacks],
                          failure_config=tune.FailureConfig(max_failures=max_failures))


# The trials a restored search runs in all (restore_tuner sets it from the settings): above the count its saved state
# holds, the search was grown (settings.grown). Ray's restore keeps the old count (ray-project/ray#42221).
restoring_total: ContextVar[int] = ContextVar("restoring_total", default=0)


class MovableSearchGenerator(SearchGenerator):
    """Tune's wrapper that turns the searcher's suggestions into trials, filed under the experiment its saved
    state holds. On resume Tune moves the restored trials to where the experiment is now, but not this: after a
    move or copy the trials created after a resume would write to the old folder. Restored, this one files them
    in the folder study.restoring_into names (restore_tuner sets it), and creates trials up to restoring_total."""

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        total = restoring_total.get()
        if total > self._total_samples:
            # Grown: Tune's run goes on while the generator has trials to create (TuneController.is_finished), and
            # the restored searcher suggests them from the study that holds every earlier trial.
            self._total_samples, self._finished = total, False
        moved_to = restoring_into.get()
        if moved_to and self._experiment is not None:
            # What Tune's controller does for each restored trial (TuneController._restore_trials)
            context = self._experiment.storage  # the same object as the trial spec's "storage"
            parent, name = storage.parent_and_name(moved_to)
            context.storage_filesystem, context.storage_fs_path = storage.filesystem(parent)
            context.experiment_dir_name = name


def build_scheduler(settings: SearchSettings) -> TrialScheduler:
    """What stops trials early (--scheduler): ASHA judging each rung by --rung-metric, PASHA (the same, its top rung
    rising only while the ranking changes), the Pareto rule (each rung by every objective) or nothing (FIFO). The
    reproducible mode runs FIFO: ASHA's rung cutoffs are taken from the results that have arrived so far, so which
    trial it stops depends on the order in which concurrent trials report."""
    if settings.reproducible or settings.scheduler == "fifo":
        return FIFOScheduler()
    rungs: dict[str, Any] = {"time_attr": TRAINING_ITERATION, "max_t": settings.max_epochs,
                             "grace_period": settings.grace_period, "reduction_factor": settings.reduction_factor}
    if settings.scheduler == "pareto":
        return ParetoASHA(objectives=[RUNG_METRICS[settings.rung_metric],
                                     *(REPORTED[name] for name in settings.objectives[1:])], **rungs)
    if settings.scheduler == "pasha":
        return ProgressiveASHA(metric=RUNG_METRICS[settings.rung_metric], mode=MODE, **rungs)
    return ASHAScheduler(metric=RUNG_METRICS[settings.rung_metric], mode=MODE, **rungs)


def restore_tuner(settings: SearchSettings, data: PairData) -> tune.Tuner:
    # The state Tune unpickles holds the study's storage and the folder new trials go to: both are re-pointed
    # to this folder, wherever the experiment was moved or copied to.
    restoring_into.set(settings.experiment_path)
    restoring_total.set(settings.num_samples)
    return tune.Tuner.restore(settings.experiment_path, trainable=build_trainable(settings, data),
                              resume_unfinished=True, resume_errored=True)


def tuner_for(settings: SearchSettings, preset: Any, data: PairData, resume: bool, verbose: int = 1,
              mlflow_parent: str = "") -> tune.Tuner:
    """A new search (its settings saved first, for --resume and the analysis) or the interrupted one (which keeps
    the console verbosity it was started with; grown, the new total is saved first)."""
    if resume:
        record_growth(settings)
        return restore_tuner(settings, data)
    restoring_into.set("")
    if settings.space == SPACE_IN_EXPERIMENT:  # given as a Python object: recorded as data, for --resume
        write_space_data(preset, settings.experiment_path)
    storage.write_text(storage.child(settings.experiment_path, SETTINGS_FILE),
                       json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
    warm = warm_start_for(settings, preset.space) if settings.warm_start else None
    return build_tuner(settings, data, preset.space, preset.points, verbose, mlflow_parent, warm)

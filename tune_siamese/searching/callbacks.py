"""Tune callbacks of every run: telling an ended search from an interrupted one, a line each time a trial ends, and
the trials' runs in MLflow."""
from __future__ import annotations

import math
import time
from contextvars import ContextVar
from typing import Any

from ray import tune

from tune_siamese.core.names import (
    BEST_VAL_LOSS,
    VAL_LOSS,
    VAL_LOSS_AVG3,
)
from tune_siamese.core.progress import report
from tune_siamese.searching.settings import SearchSettings
from tune_siamese.searching.study_search import trial_outcome


class CompletionWatch(tune.Callback):
    """Tells a search that ended from one that was interrupted (Ctrl-C, SIGUSR1).

    After an interrupt Tune stops the trials still running and marks them TERMINATED, like finished ones, but
    without the on_trial_complete / on_trial_error calls that every real ending (the trial returning, ASHA
    stopping it, an error) makes. The instance that runs says so in `running_watch`, also after Tuner.restore
    (which unpickles its own copy, out of reach otherwise); fit_tuner alone reads it and returns it with the
    results."""

    def __init__(self) -> None:
        self.ended: set[str] = set()
        self.cut_short: set[str] = set()
        self.started = False

    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any) -> None:
        self.ended, self.cut_short, self.started = set(), set(), False
        running_watch.set(self)

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


# The CompletionWatch of the Tune run in progress in this context (fit_tuner resets it before each run)
running_watch: ContextVar[CompletionWatch | None] = ContextVar("running_watch", default=None)


class SearchProgress(tune.Callback):
    """The search's progress line (core.progress): how many of N trials have ended (errored ones counted, and how
    many stopped before their last epoch), how many run, the best val loss so far, the elapsed time and a rough
    time left (elapsed per ended trial, times the trials left). A line each time a trial ends; a display also
    gets each new result. `label` and `unit` name the stage: "[search] ... trials", or "[finalists] ... runs" for
    the finalist stage (final.finalists)."""

    def __init__(self, num_samples: int, label: str = "search", unit: str = "trials", max_epochs: int = 0) -> None:
        self.num_samples, self.label, self.unit, self.max_epochs = num_samples, label, unit, max_epochs
        self.setup()

    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any) -> None:
        # Also what an instance unpickled from an older experiment gets its newer attributes from.
        self.started, self.ended, self.errored, self.ended_before, self.counted = time.monotonic(), 0, 0, 0, False
        if isinstance(total_num_samples, int) and total_num_samples > 0:  # Tune's count: a grown search's new total
            self.num_samples = total_num_samples
        self.stopped_early, self.best = 0, math.inf

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.counted:  # a resumed search: the trials that ended before count, not their time
            self.ended_before = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            self.best = min([self.best, *(_best_of(t.last_result) for t in trials)])
            self.counted = True

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.best = min(self.best, _best_of(result))
        report(self._line(trials, None), live=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = (trial.last_result or {}).get("training_iteration", 0)
        self.stopped_early += bool(getattr(self, "max_epochs", 0) and epochs < self.max_epochs)
        self._ended(trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.errored += 1
        self._ended(trials, trial)

    def _ended(self, trials: list, ending: Any) -> None:
        self.ended += 1
        report(self._line(trials, ending))

    def _line(self, trials: list, ending: Any) -> str:
        elapsed = time.monotonic() - self.started
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        left = self.num_samples - self.ended_before - self.ended
        eta = f", about {_minutes(elapsed / self.ended * left)} left" if left > 0 and self.ended else ""
        notes = [f"{self.stopped_early} stopped early"] * bool(self.stopped_early) + [
            f"{self.errored} errored"] * bool(self.errored)
        best = f"; best val loss {self.best:.4f}" if math.isfinite(self.best) else ""
        return (f"[{self.label}] {self.ended_before + self.ended}/{self.num_samples} {self.unit} ended"
                f"{' (' + ', '.join(notes) + ')' if notes else ''}, {running} running{best}; "
                f"{_minutes(elapsed)} elapsed{eta}")


def _best_of(result: dict[str, Any] | None) -> float:
    value = (result or {}).get(BEST_VAL_LOSS)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.inf


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# What a trial's MLflow run logs of each result: the training's own metrics, not Tune's bookkeeping (pid, done,
# timestamps, ...) or the config again (it is the run's params).
MLFLOW_METRICS = ("train_loss", "lr", "train_pairs", VAL_LOSS, "val_accuracy", "val_auc", BEST_VAL_LOSS, VAL_LOSS_AVG3,
                  "epoch_seconds", "diverged")
OUTCOME_TAG = "tune_siamese.outcome"  # beside the runs' tune_siamese.role and tune_siamese.experiment
# (parent run id, experiment folder) of the search running now (final.mlflow_record.search_run sets it): the
# callback Tune restores names the run and folder it was pickled with, which a resumed copy must not log into.
mlflow_parent_now: ContextVar[tuple[str, str] | None] = ContextVar("tune_siamese_mlflow_parent", default=None)


def _mlflow_parent() -> tuple[str, str] | None:
    # A module function, which cloudpickle stores by name: the callback's class (pickled by value with the
    # experiment) must not hold the ContextVar itself, which cannot be pickled.
    return mlflow_parent_now.get()


def mlflow_logger(settings: SearchSettings, parent_run: str = "") -> list[tune.Callback]:
    """With --mlflow, Ray Tune's own MLflow callback: in the MLflow experiment named after the search, one run per
    trial, a child of the search's run `parent_run` (mlflow_record), with its config as params, every epoch's
    metrics (step = epoch) and, once it ended, the tag tune_siamese.outcome (finished, asha_stopped, diverged or
    errored: study_search.trial_outcome). It runs in the driver, and Tune saves it with the run config, so a
    resumed search logs to the same store and parent."""
    if not settings.mlflow:
        return []
    # Not at the top: it imports mlflow (an optional extra, and a second of start-up in every trial worker).
    from mlflow.tracking import MlflowClient
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

        def setup(self, *args: Any, **kwargs: Any) -> None:
            now = _mlflow_parent()
            tags = dict(self.tags or {})
            if now is not None and "mlflow.parentRunId" in tags:
                if tags["mlflow.parentRunId"] != now[0]:
                    # A copy of the experiment resumed under a run of its own: its trials' runs are new children
                    # of that run, never the original's runs continued.
                    self.resumed = {}
                self.tags = {**tags, "mlflow.parentRunId": now[0], "tune_siamese.experiment": now[1]}
            super().setup(*args, **kwargs)

        def log_trial_start(self, trial: Any) -> None:
            if trial not in self._trial_runs and trial.trial_id in self.resumed:
                self._trial_runs[trial] = self.resumed.pop(trial.trial_id)
            super().log_trial_start(trial)

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            metrics = {key: result[key] for key in MLFLOW_METRICS if key in result}
            self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=metrics,
                                         step=result["training_iteration"])

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            # Called on a trial's real ends only (not for the trials an interrupt stops): its outcome, by the rule
            # that sets the Optuna trial's user attr `outcome`.
            MlflowClient(tracking_uri=self.tracking_uri).set_tag(self._trial_runs[trial], OUTCOME_TAG,
                                                                 trial_outcome(trial.last_result, failed))
            super().log_trial_end(trial, failed)

    tags = {"tune_siamese.experiment": settings.experiment_path, "tune_siamese.role": "trial"}
    if parent_run:
        tags["mlflow.parentRunId"] = parent_run
    return [MLflowLogger(tracking_uri=settings.mlflow, experiment_name=settings.name, tags=tags)]

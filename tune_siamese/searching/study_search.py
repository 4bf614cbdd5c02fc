"""Ray Tune's OptunaSearch, telling the Optuna study what Tune did, so that optuna-dashboard and
`optuna.load_study` show the search as it ran:

- every epoch's val loss is an intermediate value (OptunaSearch reports the searched metric, the best val loss
  so far, and misses the last epoch: Tune hands that result to on_trial_complete, not on_trial_result);
- a trial ASHA stopped is PRUNED (OptunaSearch tells COMPLETE with its loss so far), so the sampler ranks it as
  Optuna ranks trials its own pruners stop: below every finished one, by how far it got. So too in a
  multi-objective study, which keeps no intermediate values (Trial.report is single-objective, optuna#3450) but
  takes tell(state=PRUNED): TPE then ranks it below every finished trial, NSGA-II leaves it out of its
  generations, as it leaves trials Optuna's pruners stop;
- a diverged trial stays COMPLETE at names.DIVERGED_LOSS, above every usable loss (the sampler learns that the
  region diverges, and ranks it below every usable trial), with the user attr `outcome` = "diverged"; an errored
  one is FAIL. Every trial has the user attrs `outcome` (the analysis's status: finished, asha_stopped, diverged,
  errored) and `tune_trial_id` (the id of the trial's folder and of the analysis's DataFrames). trial_outcome is
  the rule; the trials' MLflow runs are tagged by it too.
"""
from __future__ import annotations

import threading
from typing import Any

from optuna.samplers import NSGAIISampler
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from tune_siamese.core.names import (
    ASHA_STOPPED,
    BEST_VAL_LOSS,
    DIVERGED,
    DIVERGED_LOSS,
    ERRORED,
    FINISHED,
    VAL_LOSS,
)
from tune_siamese.searching.warm_start import add_warm_trials


def trial_outcome(result: dict[str, Any] | None, error: bool = False, metric: str = BEST_VAL_LOSS) -> str:
    """How a trial ended, from the last result Tune handed on: errored (an error, or no `metric`), diverged,
    finished (max_epochs or its own early stopping, which the training reports as stops_here) or asha_stopped. It
    agrees with names.trial_status, which reads the same from the trial's recorded history afterwards."""
    if error or not result or result.get(metric) is None:
        return ERRORED
    if result.get("diverged"):
        return DIVERGED
    return FINISHED if result.get("stops_here", 1) else ASHA_STOPPED  # 1: results from before it


class StudyRecordingSearch(OptunaSearch):
    def __init__(self, *args: Any, warm_trials: list[Any] | None = None, **kwargs: Any) -> None:
        self._warm_trials = list(warm_trials or [])  # earlier experiments' trials (warm_start.warm_start_for)
        super().__init__(*args, **kwargs)
        self._last_step: dict[str, int] = {}  # saved with the searcher's state: a resumed trial reports on
        self._ended_in_study: set[str] = set()  # restore() finds them

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # The study (a database) may hold a trial's end that this saved state missed: the driver died after
        # telling the study and before Tune saved its own state. The resumed search then runs that trial again from
        # its last checkpoint and completes it again, which Optuna refuses for a finished trial; Tune would count
        # the refusal as the trial's failure and retry it until --max-failures. The study keeps what it recorded.
        assert self._ot_study is not None  # the saved state holds the study
        ended = {trial.number for trial in self._ot_study.get_trials(deepcopy=False) if trial.state.is_finished()}
        self._ended_in_study = {trial_id for trial_id, trial in self._ot_trials.items()
                                if trial_id not in self._completed_trials and trial.number in ended}

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        if self._warm_trials and self._ot_study is not None:  # once: a study that holds them takes none again
            add_warm_trials(self._ot_study, self._warm_trials)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._ended_in_study:
            return
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return super().on_trial_result(trial_id, result)  # no intermediate values for several objectives
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        step, value = result.get(TRAINING_ITERATION), result.get(VAL_LOSS)
        if step is None or value is None or step <= self._last_step.get(trial_id, 0):
            return  # a resumed trial repeats no epoch it had reported
        self._ot_trials[trial_id].report(float(value), step)
        self._last_step[trial_id] = step

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._ended_in_study:
            self._completed_trials.add(trial_id)
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        if result and not isinstance(self.metric, list):
            self._report(trial_id, result)  # the last epoch, which on_trial_result never saw
        primary = self.metric[0] if isinstance(self.metric, list) else self.metric
        outcome = trial_outcome(result, error, primary)
        ot_trial.set_user_attr("outcome", outcome)
        if outcome == DIVERGED and result is not None:
            # The study records names.DIVERGED_LOSS, above every usable val loss, whatever the trial reported (one
            # resumed from an older version reported 10.0, below a usable trial's loss).
            result = {**result, primary: DIVERGED_LOSS}
        if outcome != ASHA_STOPPED:
            return super().on_trial_complete(trial_id, result, error)
        assert self._ot_study is not None  # set up by the time a trial completes
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


class SavableNSGAIISampler(NSGAIISampler):
    """NSGA-II as Tune can save it with the searcher (and --resume restore it): Optuna's holds a thread lock, which
    does not pickle; it is made anew on loading."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()

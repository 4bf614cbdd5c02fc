"""The rules that stop trials early at ASHA's rungs besides ASHA itself (--scheduler), as Ray Tune schedulers:

- `ProgressiveASHA` (pasha): PASHA (Bohdal et al., ICLR 2023). ASHA with its top rung lowered to the second rung
  at first: a trial that gets there is stopped, and the top rung rises one level only when the trials that reached
  it are ranked differently there than one rung below (beyond the noise of the learning curves). A search whose
  ranking settles early never pays for max_epochs; one whose ranking keeps changing ends up as ASHA.
- `ParetoASHA` (pareto): ASHA's rungs judged by every objective of a multi-objective search. At each rung the
  trials recorded there are ordered by non-dominated sorting (the Pareto front first, then the front of what is
  left, ...; within a front by NSGA-II's crowding distance, the extremes first) and a trial goes on only in the top
  1 / reduction factor of that order, as ASHA keeps the top 1 / reduction factor by val loss (Syne Tune's MOASHA
  ranks rungs the same way; Optuna cannot prune multi-objective studies, optuna#3450).

A trial either rule stops reports no `stops_here`, so the study records it PRUNED (study_search.trial_outcome), as
a trial ASHA stops. Neither rule's state is saved with the experiment (Tune keeps no scheduler state): a resumed
search starts its rungs empty, as ASHA does, and PASHA's top rung low again.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from tune_siamese.searching.pareto import front

# PASHA's noise: the 90th percentile of the gaps between learning curves that crossed and crossed back
NOISE_PERCENTILE = 90


def rung_levels(grace_period: float, max_t: float, reduction_factor: float) -> list[float]:
    """ASHA's rungs below max_t, lowest first: grace_period x reduction_factor^k."""
    levels, level = [], float(grace_period)
    while level < max_t:
        levels.append(level)
        level *= reduction_factor
    return levels


class ProgressiveASHA(AsyncHyperBandScheduler):
    """PASHA on Ray's ASHA (one bracket; minimises `metric` when mode is "min").

    Ray's ASHA stops trials for good (it does not pause and promote them, as Syne Tune's PASHA does), so a trial that
    reaches the current top rung is stopped there; once the top rung rises, later trials go on to the new one.

    Args:
        time_attr, metric, mode, max_t, grace_period, reduction_factor: ASHA's (AsyncHyperBandScheduler).

    Example:
        >>> rule = ProgressiveASHA(metric="val_loss", mode="min", max_t=9, grace_period=1, reduction_factor=3)
        >>> rule.levels, rule.budget
        ([1, 3, 9], 3)
    """

    def __init__(self, *, time_attr: str = "training_iteration", metric: str, mode: str, max_t: int,
                 grace_period: int, reduction_factor: float) -> None:
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=1)
        # the epoch at which a trial is at each rung (ASHA's rungs may fall between epochs), then max_t
        self.levels: list[int] = sorted({math.ceil(level) for level in rung_levels(grace_period, max_t,
                                                                                   reduction_factor)} | {max_t})
        self.top = min(1, len(self.levels) - 1)  # the current top rung: the second, at first
        self.curves: dict[str, dict[int, float]] = {}  # trial id -> epoch -> loss (lower is better)
        self.epsilon = 0.0

    @property
    def budget(self) -> int:
        """The epochs a trial may run now: the current top rung."""
        return self.levels[self.top]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        value = result.get(self._metric or "")
        if self._time_attr not in result or value is None:
            return action
        epoch = int(result[self._time_attr])
        self.curves.setdefault(trial.trial_id, {})[epoch] = -float(self._metric_op or -1.0) * float(value)
        if self.top < len(self.levels) - 1:
            noise = self._noise()
            if noise is not None:  # else the last estimate stands (0.0 is an estimate too)
                self.epsilon = noise
            if self.ranking_changed():
                self.top += 1
        if action == TrialScheduler.CONTINUE and epoch >= self.budget:
            self._num_stopped += 1
            return TrialScheduler.STOP
        return action

    def ranking_changed(self) -> bool:
        """Whether the trials at the top rung are ordered there otherwise than one rung below: the trial in place i
        at the top rung was, one rung below, more than epsilon away from the one in place i there (PASHA's soft
        ranking: trials closer than the curves' noise count as tied)."""
        upper, lower = self.levels[self.top], self.levels[self.top - 1]
        reached = [curve for curve in self.curves.values() if upper in curve and lower in curve]
        if len(reached) < 2:
            return False
        by_upper = sorted(reached, key=lambda curve: curve[upper])
        below = sorted(curve[lower] for curve in reached)
        return any(abs(curve[lower] - below[place]) > self.epsilon for place, curve in enumerate(by_upper))

    def _noise(self) -> float | None:
        """The 90th percentile of the gaps, at the epochs between the top two rungs, between two learning curves
        that had crossed each other earlier and crossed back (so the gap is noise, not a changed ranking); None
        while no pair did."""
        upper, lower = self.levels[self.top], self.levels[self.top - 1]
        late = [curve for curve in self.curves.values() if any(lower < epoch <= upper for epoch in curve)]
        gaps = []
        for first, second in itertools.combinations(late, 2):
            for epoch in range(lower + 1, upper + 1):
                if epoch in first and epoch in second and crossed_back(first, second, epoch):
                    gaps.append(abs(first[epoch] - second[epoch]))
        return float(np.percentile(gaps, NOISE_PERCENTILE)) if gaps else None


def crossed_back(first: dict[int, float], second: dict[int, float], epoch: int) -> bool:
    """Whether, going back from `epoch`, the two curves were once in the other order and before that in this one."""
    now = first[epoch] > second[epoch]
    flipped = False
    for earlier in range(epoch - 1, 0, -1):
        if earlier not in first or earlier not in second:
            continue
        order = first[earlier] > second[earlier]
        if order != now:
            flipped = True
        elif flipped:
            return True
    return False


class ParetoASHA(FIFOScheduler):
    """ASHA's rungs (one bracket) judged by non-dominated sorting over `objectives`, every one minimised.

    Args:
        objectives: the reported names of the objectives, val loss first.
        time_attr, max_t, grace_period, reduction_factor: ASHA's.

    Example:
        >>> rule = ParetoASHA(objectives=["val_loss", "params"], max_t=9, grace_period=1, reduction_factor=3)
        >>> rule.rungs
        {3.0: {}, 1.0: {}}
    """

    def __init__(self, *, objectives: Sequence[str], time_attr: str = "training_iteration", max_t: int,
                 grace_period: int, reduction_factor: float) -> None:
        super().__init__()
        self._metric, self._mode = objectives[0], "min"  # what Tune checks the reported results for
        self.objectives = list(objectives)
        self.time_attr = time_attr
        self.max_t = max_t
        self.reduction_factor = reduction_factor
        # highest rung first, as Ray's ASHA walks them: a result is judged at the highest rung it reached first
        self.rungs: dict[float, dict[str, tuple[float, ...]]] = {
            level: {} for level in reversed(rung_levels(grace_period, max_t, reduction_factor))}
        self.num_stopped = 0

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        point = self._point(result)
        if point is None:
            return TrialScheduler.CONTINUE
        if result[self.time_attr] >= self.max_t:
            return TrialScheduler.STOP  # it ran its epochs (ASHA's max_t)
        if self._record(trial.trial_id, result[self.time_attr], point):
            return TrialScheduler.CONTINUE
        self.num_stopped += 1
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        point = self._point(result)
        if point is not None:  # recorded, so later trials are judged against it too
            self._record(trial.trial_id, result[self.time_attr], point)

    def _point(self, result: dict[str, Any]) -> tuple[float, ...] | None:
        if self.time_attr not in result or any(result.get(name) is None for name in self.objectives):
            return None
        return tuple(float(result[name]) for name in self.objectives)

    def _record(self, trial_id: str, epoch: float, point: tuple[float, ...]) -> bool:
        """Records the trial at the highest rung it reached and was not recorded at; whether it may go on."""
        for level, recorded in self.rungs.items():
            if epoch < level or trial_id in recorded:
                continue
            recorded[trial_id] = point
            order = nondominated_order(list(recorded.values()))
            kept = max(1, math.ceil(len(recorded) / self.reduction_factor))
            return list(recorded).index(trial_id) in order[:kept]
        return True


def nondominated_order(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of `points` (every coordinate minimised), best first: the Pareto front, then the front of the rest,
    and so on; within a front, by crowding distance, largest first (the extremes of each objective first), then by
    the objectives in order."""
    left = list(range(len(points)))
    order: list[int] = []
    while left:
        layer = [left[i] for i in front([points[i] for i in left])]
        distance = crowding_distance([points[i] for i in layer])
        # ties (two extremes are both infinitely far) go to the lower first objective, the val loss
        order += [index for _, index in sorted(zip(distance, layer), key=lambda pair: (-pair[0], points[pair[1]]))]
        left = [i for i in left if i not in layer]
    return order


def crowding_distance(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point of one front: per objective, the gap between its two neighbours
    over the objective's range; the extremes infinite."""
    distance = [0.0] * len(points)
    for axis in range(len(points[0]) if points else 0):
        ranked = sorted(range(len(points)), key=lambda i: points[i][axis])
        low, high = points[ranked[0]][axis], points[ranked[-1]][axis]
        distance[ranked[0]] = distance[ranked[-1]] = math.inf
        if high == low:
            continue
        for place in range(1, len(ranked) - 1):
            gap = points[ranked[place + 1]][axis] - points[ranked[place - 1]][axis]
            distance[ranked[place]] += gap / (high - low)
    return distance

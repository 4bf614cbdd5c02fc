"""The rung rules (--scheduler pasha, pareto) on scripted results: which trial each stops, and when."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune_siamese.app.api import search_settings
from tune_siamese.core.errors import InputError
from tune_siamese.searching.rung_rules import (
    ParetoASHA,
    ProgressiveASHA,
    crossed_back,
    crowding_distance,
    nondominated_order,
    rung_levels,
)
from tune_siamese.searching.tuner import build_scheduler

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


def report(rule, trial_id: str, epoch: int, **metrics: float) -> str:
    trial = SimpleNamespace(trial_id=trial_id)
    if epoch == 1:
        rule.on_trial_add(None, trial)
    return rule.on_trial_result(None, trial, {"training_iteration": epoch, **metrics})


def run_curve(rule, trial_id: str, losses: list[float]) -> int:
    """Reports the losses epoch by epoch until the rule stops the trial; the epochs it ran."""
    for epoch, loss in enumerate(losses, start=1):
        if report(rule, trial_id, epoch, val_loss=loss) == STOP:
            return epoch
    return len(losses)


def pasha() -> ProgressiveASHA:
    return ProgressiveASHA(metric="val_loss", mode="min", max_t=9, grace_period=1, reduction_factor=3)


def test_rung_levels_are_ashas():
    assert rung_levels(1, 9, 3) == [1, 3]
    assert rung_levels(2, 20, 3) == [2, 6, 18]
    assert rung_levels(4, 4, 3) == []


def test_pasha_stops_at_the_second_rung_while_the_ranking_holds():
    rule = pasha()
    assert rule.levels == [1, 3, 9] and rule.budget == 3
    # Each curve below the one before at every epoch: ASHA lets each go on, and the ranking never changes.
    assert run_curve(rule, "a", [0.60, 0.55, 0.50, 0.45, 0.40, 0.35, 0.30, 0.25, 0.20]) == 3
    assert run_curve(rule, "b", [0.50, 0.45, 0.40, 0.35, 0.30, 0.25, 0.20, 0.15, 0.10]) == 3
    # ASHA alone would let this best trial run to max_t (9); PASHA's budget never rose.
    assert run_curve(rule, "c", [0.40, 0.35, 0.30, 0.25, 0.20, 0.15, 0.10, 0.05, 0.01]) == 3
    assert rule.budget == 3


def test_pasha_raises_the_top_rung_when_the_ranking_changes():
    rule = pasha()
    assert run_curve(rule, "a", [0.60, 0.55, 0.50, 0.45, 0.40, 0.35, 0.30, 0.25, 0.20]) == 3
    # b is better than a at epoch 1 and worse at epoch 3: the ranking of the top two rungs changed. ASHA stops b
    # at rung 3 (worse than a there), but the budget rose.
    assert run_curve(rule, "b", [0.58, 0.54, 0.52, 0.50, 0.45, 0.40, 0.35, 0.30, 0.25]) == 3
    assert rule.budget == 9 and rule.top == len(rule.levels) - 1
    # Later trials may now run to max_t; ASHA's rungs still stop the bad ones.
    assert run_curve(rule, "c", [0.30, 0.25, 0.20, 0.15, 0.12, 0.10, 0.08, 0.06, 0.05]) == 9
    assert run_curve(rule, "d", [0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90]) == 1


def test_pasha_counts_a_swap_within_the_noise_as_a_tie():
    rule = pasha()
    rule.curves = {"a": {1: 0.500, 3: 0.40}, "b": {1: 0.501, 3: 0.39}}
    rule.epsilon = 0.0
    assert rule.ranking_changed()
    rule.epsilon = 0.01  # the curves' noise: 0.001 apart one rung below is a tie
    assert not rule.ranking_changed()


def test_pasha_takes_the_noise_from_curves_that_crossed_and_crossed_back():
    first = {1: 0.5, 2: 0.4, 3: 0.30}
    second = {1: 0.6, 2: 0.3, 3: 0.32}  # above, below, above again: crossed back
    assert crossed_back(first, second, 3)
    assert not crossed_back(first, {1: 0.6, 2: 0.5, 3: 0.4}, 3)  # never crossed
    assert not crossed_back(first, {1: 0.4, 2: 0.5, 3: 0.4}, 3)  # crossed once, did not come back
    rule = pasha()
    rule.curves = {"a": first, "b": second}
    assert rule._noise() == pytest.approx(0.02)


def test_nondominated_order_puts_each_front_before_the_next():
    points = [(0.5, 10.0), (0.4, 20.0), (0.6, 30.0), (0.3, 40.0), (0.45, 15.0)]
    order = nondominated_order(points)
    # front 1: 0 (0.5, 10), 4 (0.45, 15), 1 (0.4, 20), 3 (0.3, 40); then 2, dominated by 1
    assert set(order[:4]) == {0, 1, 3, 4} and order[4] == 2
    # within the front the extremes come first (infinite crowding distance)
    assert set(order[:2]) == {0, 3}
    assert crowding_distance([(0.0, 1.0)]) == [math.inf]


def test_pareto_rule_keeps_a_small_model_that_asha_on_val_loss_stops():
    """One rung of four trials: the last one has the worst val loss but the fewest parameters, so it is on the
    Pareto front. ASHA (val loss only) stops it; the Pareto rule lets it go on and stops a dominated one."""
    arrivals = [("big", 0.40, 9e5), ("mid", 0.45, 5e5), ("worse", 0.50, 6e5), ("small", 0.55, 1e5)]
    pareto = ParetoASHA(objectives=["val_loss", "params"], max_t=9, grace_period=1, reduction_factor=2)
    asha = ASHAScheduler(metric="val_loss", mode="min", max_t=9, grace_period=1, reduction_factor=2)
    decided = {name: (report(pareto, name, 1, val_loss=loss, params=params),
                      report(asha, name, 1, val_loss=loss, params=params)) for name, loss, params in arrivals}
    assert decided["small"] == (CONTINUE, STOP)
    assert decided["worse"][0] == STOP  # dominated by "mid": lower loss and fewer parameters
    assert decided["mid"] == (STOP, STOP)  # two on the front, one kept: the lower val loss breaks the tie
    assert pareto.num_stopped == 2


def test_pareto_rule_judges_each_rung_once_and_lets_a_trial_finish():
    rule = ParetoASHA(objectives=["val_loss", "params"], max_t=3, grace_period=1, reduction_factor=3)
    assert report(rule, "a", 1, val_loss=0.5, params=10.0) == CONTINUE
    assert report(rule, "a", 2, val_loss=0.4, params=10.0) == CONTINUE  # between rungs: nothing to judge
    assert report(rule, "a", 3, val_loss=0.3, params=10.0) == STOP  # max_t: it ran its epochs
    assert rule.num_stopped == 0
    assert report(rule, "b", 1, val_loss=0.6, params=20.0) == STOP  # dominated by a at rung 1
    assert report(rule, "c", 1) == CONTINUE  # no objectives reported: not judged


def test_the_scheduler_option_builds_each_rule_and_refuses_what_cannot_work():
    def built(**options):
        settings, _ = search_settings(space="smoke", **options)
        return settings.scheduler, type(build_scheduler(settings)).__name__

    assert built() == ("asha", "AsyncHyperBandScheduler")
    assert built(scheduler="pasha") == ("pasha", "ProgressiveASHA")
    assert built(objectives="val_loss,params") == ("pareto", "ParetoASHA")  # the default with two objectives
    assert built(objectives="val_loss,params", scheduler="asha") == ("asha", "AsyncHyperBandScheduler")
    assert built(scheduler="fifo") == ("fifo", "FIFOScheduler")
    assert built(reproducible=True) == ("fifo", "FIFOScheduler")
    with pytest.raises(InputError, match="--scheduler=pareto ranks trials by several objectives"):
        built(scheduler="pareto")
    with pytest.raises(InputError, match="--reproducible stops no trial early.*--scheduler=pasha"):
        built(scheduler="pasha", reproducible=True)

"""Multi-objective search (--objectives, --pick): the costs, the front, the pick rule, and a smoke search end to end."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from helpers import SMOKE

from tune_siamese.app import search_command
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.searching.objectives import model_costs, parse_objectives
from tune_siamese.searching.pareto import PickRule, front, parse_pick
from tune_siamese.training.model import build_model


def test_the_front_is_every_point_no_other_dominates():
    rng = np.random.default_rng(0)
    for _ in range(20):
        points = rng.integers(0, 6, size=(12, 3)).astype(float).tolist()
        expected = [i for i, p in enumerate(points)
                    if not any(all(q[k] <= p[k] for k in range(3)) and q != p for q in points)]
        assert front(points) == expected
    assert front([[1, 5], [2, 3], [3, 4], [4, 1]]) == [0, 1, 3]  # (3, 4) is dominated by (2, 3)


def test_the_pick_rules():
    points = [[0.50, 900.0], [0.505, 300.0], [0.52, 100.0], [0.509, 300.0]]
    assert PickRule().choose(points) == 0
    assert parse_pick("smallest-within=0.01", ["val_loss", "params"]).choose(points) == 1  # ties: the lower loss
    assert parse_pick("smallest-within=0.05", ["val_loss", "params"]).choose(points) == 2
    assert parse_pick("smallest-within=0", ["val_loss", "params"]).choose(points) == 0
    assert str(parse_pick("smallest-within=0.010", ["val_loss", "params"])) == "smallest-within=0.01"


@pytest.mark.parametrize("text, objectives, message", [
    ("smallest", ["val_loss", "params"], "is not best or smallest-within=D"),
    ("smallest-within=x", ["val_loss", "params"], "D must be a number"),
    ("smallest-within=-1", ["val_loss", "params"], "D must be a finite number >= 0"),
    ("smallest-within=0.01", ["val_loss"], "needs a second objective"),
])
def test_bad_pick_rules_are_refused(text, objectives, message):
    with pytest.raises(InputError, match=message):
        parse_pick(text, objectives)


@pytest.mark.parametrize("text, message", [
    ("params", "must start with val_loss"), ("val_loss,size", "size is not one of params, flops, latency"),
    ("val_loss,params,params", "names an objective twice")])
def test_bad_objectives_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        parse_objectives(text)


def test_costs_count_parameters_and_flops_exactly_and_time_a_pair():
    small, wide = (Config(image_size=72, width=width, embedding=256, init="torch") for width in (0.0625, 0.125))
    costs = [model_costs(build_model(c), c, ["params", "flops", "latency"]) for c in (small, wide)]
    assert costs[0]["params"] == sum(p.numel() for p in build_model(small).parameters())
    assert costs[1]["params"] > costs[0]["params"] and costs[1]["flops"] > costs[0]["flops"] > 0
    again = model_costs(build_model(small), small, ["flops"])
    assert again["flops"] == costs[0]["flops"]  # counted, not timed: the same every time
    assert 0 < costs[0]["latency_ms"] < 1000


def test_the_options_reach_the_settings_and_bad_combinations_exit_2(tmp_path, capsys):
    from tune_siamese.searching.settings import settings_for

    settings, _ = settings_for(search_command.parse_args([*SMOKE, "--storage-path", str(tmp_path), "--objectives",
                                                      "val_loss,params", "--pick", "smallest-within=0.01"]))
    assert settings.objectives == ["val_loss", "params"] and settings.pick == "smallest-within=0.01"
    plain, _ = settings_for(search_command.parse_args([*SMOKE, "--storage-path", str(tmp_path)]))
    assert plain.objectives == ["val_loss"] and plain.pick == "best"
    for argv, message in ((["--pick", "smallest-within=0.01"], "needs a second objective"),
                          (["--objectives", "val_loss,params", "--searcher", "cmaes"], "CMA-ES optimises one"),
                          (["--objectives", "loss"], "must start with val_loss")):
        assert search_command.main([*SMOKE, "--storage-path", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("objectives, searcher", [(["val_loss"], "tpe"), (["val_loss", "params"], "tpe"),
                                                  (["val_loss", "params"], "nsga2")])
def test_a_trial_asha_stopped_is_pruned_in_the_study_with_one_objective_or_several(objectives, searcher):
    """The searcher as build_tuner makes it, told what Tune tells it of a trial ASHA stopped (its last result says
    the training would have gone on) and of one that finished: PRUNED and COMPLETE, as the user attr `outcome`
    says; the sampler goes on suggesting from such a study."""
    from types import SimpleNamespace

    import optuna

    from tune_siamese.searching.samplers import build_sampler
    from tune_siamese.searching.study_search import StudyRecordingSearch
    from tune_siamese.searching.tuner import searched_metrics

    settings = SimpleNamespace(objectives=objectives, searcher=searcher, seed=0, num_samples=4)
    metric, mode = searched_metrics(settings)
    storage = optuna.storages.InMemoryStorage()
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}
    search = StudyRecordingSearch(space=space, metric=metric, mode=mode, sampler=build_sampler(settings),
                                  study_name="mo", storage=storage)
    for trial_id, stops_here in (("stopped", 0), ("finished", 1), ("stopped2", 0)):
        assert search.suggest(trial_id) is not None
        first = {"training_iteration": 1, "val_loss": 0.7, "best_val_loss": 0.7, "params": 1000.0, "stops_here": 0}
        search.on_trial_result(trial_id, first)
        last = {**first, "training_iteration": 2, "val_loss": 0.6, "best_val_loss": 0.6, "stops_here": stops_here}
        search.on_trial_complete(trial_id, last)  # Tune hands the last result to on_trial_complete only
    assert search.suggest("next") is not None  # TPE and NSGA-II take a study with pruned trials

    study = optuna.load_study(study_name="mo", storage=storage)
    assert len(study.directions) == len(objectives)
    trials = {t.user_attrs["tune_trial_id"]: t for t in study.trials if t.state != optuna.trial.TrialState.RUNNING}
    assert {name: (t.state.name, t.user_attrs["outcome"]) for name, t in trials.items()} == {
        "stopped": ("PRUNED", "asha_stopped"), "finished": ("COMPLETE", "finished"),
        "stopped2": ("PRUNED", "asha_stopped")}
    assert trials["finished"].values == ([0.6] if len(objectives) == 1 else [0.6, 1000.0])
    if len(objectives) == 1:
        assert trials["stopped"].intermediate_values == {1: 0.7, 2: 0.6}  # how far it got, as TPE ranks it
    else:  # Optuna keeps neither values nor intermediate values of a pruned multi-objective trial
        assert trials["stopped"].values is None and not trials["stopped"].intermediate_values


WIDTHS_SPACE = '''
from ray import tune
from search_spaces import Preset

SPACE = Preset(space={"width": tune.choice([0.0625, 0.125]), "lr": tune.loguniform(1e-3, 1e-2)},
               fixed={"image_size": 72, "embedding": 256, "init": "torch", "batchnorm": True,
                      "drawn_pairs": 800})
'''


@pytest.mark.slow
def test_a_multi_objective_search_end_to_end(ray_session, tmp_path):
    """--objectives val_loss,params: every trial reports its size, the study is multi-objective and its rungs judged by
    both objectives (what the Pareto rule stops is PRUNED), final.json holds
    the objectives, the front and the rule; the picked trial is the rule's choice; the report draws the front;
    finalize --pick takes another point later, beside the first."""
    import optuna

    import analysis
    from tune_siamese.final.finalize import finalize

    space = tmp_path / "widths.py"
    space.write_text(WIDTHS_SPACE)
    summary, _ = search_command.run(search_command.parse_args([
        "--space", f"{space}:SPACE", "--num-samples", "4", "--max-epochs", "2", "--grace-period", "1",
        "--objectives", "val_loss,params", "--searcher", "nsga2", "--storage-path", str(tmp_path), "--name", "mo",
        "--max-concurrent", "1", "-q"]))  # 1 at once: each trial actor started costs more than its epochs here
    experiment = tmp_path / "mo"
    final = json.loads((experiment / "final.json").read_text())
    assert final["objectives"] == ["val_loss", "params"] and final["pick"] == "best"
    exp = analysis.load(experiment)
    pareto = exp.pareto()
    assert set(pareto["trial_id"]) == {entry["trial_id"] for entry in final["front"]}
    points = exp.best(len(exp.trials))
    params = exp.history.groupby("trial_id")["params"].last()
    for a, b in itertools.permutations(pareto["trial_id"], 2):  # no front member dominates another
        pa, pb = params[a], params[b]
        la, lb = (points.set_index("trial_id").at[t, "best_val_loss"] for t in (a, b))
        assert not (la <= lb and pa <= pb and (la < lb or pa < pb))
    assert summary["best_trial"] == exp.best(1).iloc[0]["trial_id"]  # --pick best: the lowest val loss
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert len(study.directions) == 2
    # The Pareto rung rule (the default with two objectives) judged rung 1; what it stopped is PRUNED.
    assert json.loads((experiment / "search_settings.json").read_text())["scheduler"] == "pareto"
    status = exp.trials.set_index("trial_id")["status"]
    assert {t.user_attrs["tune_trial_id"]: t.state.name for t in study.trials} == {
        trial_id: "PRUNED" if status[trial_id] == "asha_stopped" else "COMPLETE" for trial_id in status.index}
    report = analysis.report(experiment, tmp_path / "report")
    assert (report / "pareto.png").stat().st_size > 10_000 and "## Pareto front" in (report / "report.md").read_text()
    later = finalize(str(experiment), "trial", None, pick="smallest-within=1")  # the smallest trial of all
    smallest = min(params[t] for t in exp.best(len(exp.trials))["trial_id"])
    assert params[later["best_trial"]] == smallest and later["pick"] == "smallest-within=1"
    assert (experiment / "final-trial-smallest-within-1.json").exists() and (experiment / "final.json").exists()

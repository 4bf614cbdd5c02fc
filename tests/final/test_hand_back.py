"""The one path after a search (final.finish.hand_back_final), taken by run_search.py's finish_search and by
`tune-siamese finalize`; and the one scoring task, whose threshold is an explicit choice."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tune_siamese.core.config import Config
from tune_siamese.final import finish
from tune_siamese.final.finalists import Finalists
from tune_siamese.final.policies import FinalModel
from tune_siamese.searching.pareto import PickRule

PICK_KEYS = {"best_trial", "best_config", "best_epoch", "best_val_loss", "trials"}
SCORE_KEYS = {"test", "epochs", "final", "export", "retrain_node", "chance"}


def trial(name: str, losses: list[float], lr: float, diverged: bool = False) -> SimpleNamespace:
    """A trial as a ResultGrid holds it: folder, config, reported rows (val AUC too), checkpoint."""
    rows = [{"epoch": epoch, "val_loss": loss, "val_auc": 0.6} for epoch, loss in enumerate(losses, start=1)]
    if diverged:
        rows.append({"val_loss": 10.0, "diverged": 1})
    return SimpleNamespace(path=f"/exp/trial_{name}", error=None, config={"lr": lr, "data": "synthetic"},
                           metrics_dataframe=pd.DataFrame(rows), checkpoint=f"checkpoint of {name}")


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """finish.py without Ray: what it builds and exports is recorded, not done."""
    from tune_siamese.app.search_command import parse_args
    from tune_siamese.searching.settings import settings_for

    built: list[dict] = []

    def build(policy, size, config, epochs, data, checkpoint, options, member_options):
        built.append({"policy": policy, "size": size, "lr": config.lr, "epochs": epochs, "checkpoint": checkpoint})
        return FinalModel("model", [config], 0.5, {"test": {"auc": 0.7, "threshold_logit": 0.5}},
                          {"policy": policy, "size": size, "members": [{}]})

    def export(final, settings, data, export_dir, epochs, suffix=""):
        return {**final.scores, "epochs": epochs, "final": final.record, "export": f"export{suffix}",
                "retrain_node": None, "chance": {"scored_on": "test"}}

    monkeypatch.setattr(finish, "build_final_model", build)
    monkeypatch.setattr(finish, "export_final", export)
    monkeypatch.setattr(finish, "task_options", lambda settings: {"num_cpus": 1, "num_gpus": 0, "max_retries": 1})
    settings, _ = settings_for(parse_args(["--space", "smoke", "--storage-path", str(tmp_path), "--name", "exp"]))
    (tmp_path / "exp").mkdir()
    return SimpleNamespace(settings=settings, built=built, experiment=tmp_path / "exp")


RESULTS = [trial("b", [0.7, 0.6], lr=2e-3), trial("a", [0.65], lr=1e-3), trial("c", [0.3], lr=3e-3, diverged=True)]


def test_the_search_and_finalize_pick_build_and_record_through_one_path(stand_ins, synthetic_small):
    settings, experiment = stand_ins.settings, stand_ins.experiment
    summary, model = finish.finish_search(settings, RESULTS, synthetic_small, None, search_seconds=12.34)
    assert model == "model" and json.loads((experiment / "final.json").read_text()) == summary
    assert summary["best_trial"] == "b" and summary["best_epoch"] == 2 and summary["best_val_loss"] == 0.6
    assert PICK_KEYS | SCORE_KEYS | {"experiment", "errored_trials", "trial_statuses"} <= set(summary)
    assert set(summary["wall_seconds"]) == {"search", "resumed", "retrain_test_export"}
    assert summary["wall_seconds"]["search"] == 12.3 and summary["export"] == "export"

    plan = finish.FinalPlan("trial", 1, PickRule(), str(experiment / "final-trial.json"), export_suffix="-trial",
                            seconds_as="final_model")
    record, _ = finish.hand_back_final(settings, RESULTS, synthetic_small, plan)
    assert json.loads((experiment / "final-trial.json").read_text()) == record
    assert set(record) == PICK_KEYS | SCORE_KEYS | {"wall_seconds"} and set(record["wall_seconds"]) == {"final_model"}
    assert {key: record[key] for key in PICK_KEYS} == {key: summary[key] for key in PICK_KEYS}
    assert record["export"] == "export-trial"
    assert stand_ins.built == [{"policy": settings.final, "size": settings.final_size, "lr": 2e-3, "epochs": 2,
                                "checkpoint": "checkpoint of b"},
                               {"policy": "trial", "size": 1, "lr": 2e-3, "epochs": 2, "checkpoint": "checkpoint of b"}]


def test_the_finalists_winner_is_built_and_the_search_records_the_stage(stand_ins, synthetic_small):
    winner = Finalists({"winner": "a", "wall_seconds": 3.0}, Config(lr=1e-3), 5, "winning run's checkpoint")
    summary, _ = finish.finish_search(stand_ins.settings, RESULTS, synthetic_small, None, finalists=winner)
    assert summary["best_trial"] == "b" and summary["finalists"] == winner.record  # the search's best, recorded
    assert summary["wall_seconds"]["finalists"] == 3.0
    assert stand_ins.built[-1] == {"policy": stand_ins.settings.final, "size": stand_ins.settings.final_size,
                                   "lr": 1e-3, "epochs": 5, "checkpoint": "winning run's checkpoint"}


def test_no_retrain_records_the_pick_and_the_val_verdict_only(stand_ins, synthetic_small):
    summary, model = finish.finish_search(stand_ins.settings, RESULTS, synthetic_small, None, retrain=False)
    assert model is None and not stand_ins.built and "test" not in summary and "export" not in summary
    assert summary["chance"]["scored_on"] == "val" and summary["chance"]["auc"] == 0.6


def test_without_a_usable_trial_nothing_is_built_and_only_the_search_writes_why(stand_ins, synthetic_small):
    unusable = [trial("c", [0.3], lr=3e-3, diverged=True)]
    plan = finish.FinalPlan("trial", 1, PickRule(), str(stand_ins.experiment / "final-trial.json"))
    assert finish.hand_back_final(stand_ins.settings, unusable, synthetic_small, plan) is None
    assert not (stand_ins.experiment / "final-trial.json").exists()
    summary, model = finish.finish_search(stand_ins.settings, unusable, synthetic_small, None)
    assert model is None and "no_usable_trial" in summary and not stand_ins.built
    assert json.loads((stand_ins.experiment / "final.json").read_text()) == summary


def test_one_scoring_task_for_every_threshold_choice(ray_session, synthetic_small, tiny_config):
    """An average of models choosing its threshold on the val pairs (--ensemble's) is val_and_test's; a given
    threshold is kept, with each member's own score at it."""
    from tune_siamese.final.policies import ChooseOnVal, GivenThreshold, cpu_state, score_members
    from tune_siamese.training.device import resolve_device
    from tune_siamese.training.engine import fit
    from tune_siamese.training.model import EnsembleNet
    from tune_siamese.training.scoring import evaluate, images_on, val_and_test

    data = synthetic_small
    configs = [tiny_config(max_epochs=1, seed=seed) for seed in (0, 1)]
    models = [fit(config, data, validate=False, epochs=1).model for config in configs]
    members = [(config, cpu_state(model)) for config, model in zip(configs, models)]
    ensemble = EnsembleNet(models, configs)
    images = images_on(resolve_device(ensemble.config), data.images)
    expected = val_and_test(ensemble, images, data, ensemble.config)

    on_val, node = score_members(members, data, ChooseOnVal(), {"num_cpus": 1})
    assert set(on_val) == {"test", "val"} and isinstance(node, str) and node
    assert on_val["val"]["threshold_logit"] == pytest.approx(expected["val"]["threshold_logit"], abs=1e-6)
    assert on_val["test"]["auc"] == pytest.approx(expected["test"]["auc"], abs=1e-6)

    given, _ = score_members(members, data, GivenThreshold(0.25), {"num_cpus": 1})
    assert given["test"]["threshold_logit"] == 0.25 and "val" not in given
    for member, config, alone in zip(models, configs, given["members_test"]):
        own = evaluate(member, images, data.test, config, threshold=0.25)
        assert alone["accuracy_at_threshold"] == pytest.approx(own["accuracy_at_threshold"], abs=1e-4)
    assert np.isclose(given["test"]["auc"], on_val["test"]["auc"])  # the threshold moves no ranking

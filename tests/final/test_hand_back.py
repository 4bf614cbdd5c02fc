"""The one path after a search (final.finish.hand_back_final), taken by run_search.py's finish_search and by
`tune-siamese finalize`; and the one scoring task, whose threshold is an explicit choice."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tune_siamese.core import storage
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
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
    monkeypatch.setattr(finish, "check_checkpoint", lambda checkpoint, config: None)  # stand-in checkpoints
    settings, _ = settings_for(parse_args(["--space", "smoke", "--storage-path", str(tmp_path), "--name", "exp"]))
    (tmp_path / "exp").mkdir()
    return SimpleNamespace(settings=settings, built=built, experiment=tmp_path / "exp")


RESULTS = [trial("b", [0.7, 0.6], lr=2e-3), trial("a", [0.65], lr=1e-3), trial("c", [0.3], lr=3e-3, diverged=True)]


def test_the_search_and_finalize_pick_build_and_record_through_one_path(stand_ins, synthetic_small):
    settings, experiment = stand_ins.settings, stand_ins.experiment
    summary, model = finish.finish_search(settings, RESULTS, synthetic_small, None, search_seconds=12.34)
    written = storage.record_as_written(summary, settings.experiment_path)  # the experiment's paths relative to it
    assert model == "model" and json.loads((experiment / "final.json").read_text()) == written
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
    assert json.loads((stand_ins.experiment / "final.json").read_text()) == storage.record_as_written(
        summary, stand_ins.settings.experiment_path)


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


def test_a_final_model_that_diverges_is_recorded_without_an_export_and_exits_3(stand_ins, synthetic_small,
                                                                                monkeypatch, capsys):
    """A retrain that diverged inside its Ray task ended the command with RayTaskError(Diverged), exit 1 and no
    final.json; now the record names it, nothing is exported, and the search exits 3 as without a usable trial."""
    from tune_siamese.app import search_command
    from tune_siamese.training.engine import Diverged

    def diverging(*args, **kwargs):
        raise Diverged("seed 2/3: training loss is nan at epoch 1")

    monkeypatch.setattr(finish, "build_final_model", diverging)
    summary, model = finish.finish_search(stand_ins.settings, RESULTS, synthetic_small, None)
    assert model is None and "export" not in summary and "test" not in summary
    settings = stand_ins.settings
    assert summary[finish.FINAL_DIVERGED] == (f"--final {settings.final} (size {settings.final_size}): seed 2/3: "
                                              "training loss is nan at epoch 1")
    assert summary["best_trial"] == "b"  # the pick stays on record
    assert json.loads((stand_ins.experiment / "final.json").read_text()) == storage.record_as_written(
        summary, stand_ins.settings.experiment_path)
    assert not list(stand_ins.experiment.glob("export*"))

    assert search_command.FINAL_DIVERGED == finish.FINAL_DIVERGED  # spelt twice: search_command stays Ray-free
    monkeypatch.setattr(search_command, "run", lambda options, stop, begun: (summary, None))
    assert search_command.main(["--space", "smoke"]) == 3


def test_a_record_cut_short_by_a_full_disk_takes_its_export_along(stand_ins, synthetic_small, monkeypatch):
    """finalize's JSON on a full disk: exit 1, a traceback, export-trial/ without its final-trial.json, and a rerun
    refused until that was deleted by hand. Now one line, neither is left, and a rerun may go ahead."""
    from helpers import enospc_open, leftovers

    from tune_siamese.core import storage
    from tune_siamese.final.finalize import check_not_finalized
    from tune_siamese.final.publishing import WriteFailed, publish_export

    def export(final, settings, data, export_dir, epochs, suffix=""):
        target = str(stand_ins.experiment / f"export{suffix}")
        publish_export(lambda folder: (folder / "SHA256SUMS").write_text("sums\n"), target, None)
        return {**final.scores, "export": target}

    monkeypatch.setattr(finish, "export_final", export)
    monkeypatch.setattr(storage, "open", enospc_open(10), raising=False)  # the record's write hits a full disk
    record_path, export_path = stand_ins.experiment / "final-trial.json", stand_ins.experiment / "export-trial"
    plan = finish.FinalPlan("trial", 1, PickRule(), str(record_path), export_suffix="-trial")
    with pytest.raises(WriteFailed) as failed:
        finish.hand_back_final(stand_ins.settings, RESULTS, synthetic_small, plan)
    message = str(failed.value)
    assert message.startswith(f"{record_path}: cannot write the record (No space left on device); its export")
    assert "\n" not in message and "run it again" in message
    assert not record_path.exists() and not export_path.exists() and leftovers(stand_ins.experiment) == []
    check_not_finalized(str(record_path), str(export_path))  # a rerun goes ahead

    export_path.mkdir()  # what a finalize killed between its export and its record leaves: built again
    check_not_finalized(str(record_path), str(export_path))
    record_path.write_text("{}")
    with pytest.raises(InputError, match="never writes over an earlier one"):
        check_not_finalized(str(record_path), str(export_path))


def test_a_killed_runs_temporaries_are_removed_by_the_next_final_stage(stand_ins, synthetic_small):
    """SIGKILL during an export left .export.<pid>.tmp, which no resume or rerun removed. The next final stage
    removes those of processes that are gone, puts an old export set aside mid-swap back, and keeps a live one's."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead, alive = int(gone.stdout), os.getppid()  # pytest's parent (the shell) outlives the test
    experiment = stand_ins.experiment
    (experiment / f".export.{dead}.tmp").mkdir()
    (experiment / f".export.{dead}.tmp" / "model.safetensors").write_bytes(b"half")
    (experiment / f".final.{dead}.tmp.json").write_text('{"best')
    (experiment / f".export-seeds3.{dead}.old.tmp").mkdir()  # killed between the swap's two renames
    (experiment / f".export-seeds3.{dead}.old.tmp" / "SHA256SUMS").write_text("sums\n")
    (experiment / f".export-trial.{alive}.tmp").mkdir()  # a live process's: not ours to remove
    plan = finish.FinalPlan("trial", 1, PickRule(), str(experiment / "final-trial.json"), build=False)
    finish.hand_back_final(stand_ins.settings, RESULTS, synthetic_small, plan)
    assert sorted(p.name for p in experiment.iterdir()) == [f".export-trial.{alive}.tmp", "export-seeds3",
                                                            "final-trial.json"]
    assert (experiment / "export-seeds3" / "SHA256SUMS").read_text() == "sums\n"


def test_a_checkpoint_that_does_not_load_is_refused_before_any_retrain(stand_ins, synthetic_small, monkeypatch,
                                                                       tmp_path):
    """A truncated checkpoint of the best trial was found only after the whole final stage (three retrains on
    `best`), as a Ray traceback. Now one line naming the file, before anything is built."""
    import torch
    from ray import tune

    from tune_siamese.final import policies

    folder = tmp_path / "trial_b" / "checkpoint_000001"
    folder.mkdir(parents=True)
    torch.save({"best_model": {"weight": torch.zeros(1000)}}, folder / "state.pt")
    (folder / "state.pt").write_bytes((folder / "state.pt").read_bytes()[:500])  # cut short
    best = trial("b", [0.7, 0.6], lr=2e-3)
    best.checkpoint = tune.Checkpoint.from_directory(str(folder))
    monkeypatch.setattr(finish, "check_checkpoint", policies.check_checkpoint)
    plan = finish.FinalPlan("seeds", 3, PickRule(), str(stand_ins.experiment / "final-seeds3.json"))
    with pytest.raises(InputError) as refused:
        finish.hand_back_final(stand_ins.settings, [best, *RESULTS[1:]], synthetic_small, plan)
    message = str(refused.value)
    assert message.startswith(f"{folder}/state.pt: the picked trial's checkpoint cannot be loaded (not a loadable "
                              "checkpoint")
    assert "\n" not in message and "\x1b" not in message and message.endswith("nothing was built")
    assert stand_ins.built == [] and not (stand_ins.experiment / "final-seeds3.json").exists()

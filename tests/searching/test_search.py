"""The Ray layer end to end: search, ASHA, concurrency, fractional GPUs, export round trip, resume, two nodes."""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import SMOKE, cli_json, reap, spawn, trial_frames

from tune_siamese.app import search_command
from tune_siamese.artifacts.checkpoint import load, load_model
from tune_siamese.core.config import Config
from tune_siamese.core.names import FINAL_FILE
from tune_siamese.data import load_data
from tune_siamese.searching.settings import settings_for


def max_overlap(frames: dict[str, pd.DataFrame]) -> int:
    """Most trials training at one instant: each trial spans its first epoch's start to its last report."""
    events = []
    for frame in frames.values():
        start = frame["timestamp"].iloc[0] - frame["time_this_iter_s"].iloc[0]
        events += [(start, 1), (frame["timestamp"].iloc[-1], -1)]
    running = best = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        best = max(best, running)
    return best


def test_search_runs_every_trial_and_asha_stops_some(smoke_search):
    frames = trial_frames(smoke_search["experiment"])
    assert len(frames) == 6
    epochs = [int(f["training_iteration"].max()) for f in frames.values()]
    assert max(epochs) == 3
    # patience (5) cannot end a 3-epoch trial, so a shorter one was stopped by ASHA
    assert min(epochs) < 3, epochs
    for frame in frames.values():
        assert {"val_loss", "val_accuracy", "val_auc", "train_loss", "epoch"} <= set(frame.columns)
        assert list(frame["epoch"]) == list(range(1, len(frame) + 1))  # reported every epoch


def test_the_optuna_study_says_what_tune_did(smoke_search):
    """optuna.load_study (what optuna-dashboard reads): ASHA-stopped trials PRUNED, finished ones COMPLETE at their
    best val loss, every epoch's val loss an intermediate value, each trial linked to its Tune trial id."""
    import optuna

    import analysis

    exp = analysis.load(smoke_search["experiment"])
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{smoke_search['experiment'] / 'optuna.db'}")
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert set(by_id) == set(exp.trials["trial_id"])
    state = {"finished": optuna.trial.TrialState.COMPLETE, "asha_stopped": optuna.trial.TrialState.PRUNED}
    assert {"finished", "asha_stopped"} <= set(exp.trials["status"])
    for row in exp.trials.itertuples():
        trial = by_id[row.trial_id]
        assert trial.state == state[row.status] and trial.user_attrs["outcome"] == row.status
        losses = exp.history[exp.history.trial_id == row.trial_id].set_index("epoch")["val_loss"]
        assert trial.intermediate_values == pytest.approx(losses.to_dict())  # every epoch, the last one too
        if row.status == "finished":
            assert trial.value == pytest.approx(losses.min())


def test_one_trial_one_id(smoke_search):
    """final.json, the DataFrames, the folders and the Optuna study name each trial by Tune's id; the analysis reads
    any form a trial has been shown in."""
    import analysis

    exp = analysis.load(smoke_search["experiment"])
    best = exp.summary["best_trial"]
    assert (exp.trials.trial_id == best).sum() == 1 and (smoke_search["experiment"] / f"trial_{best}").is_dir()
    assert {m["trial_id"] for m in exp.summary["ensemble"]["members"]} <= set(exp.trials.trial_id)
    for shown in (best, f"trial_{best}", f"train_siamese_{best}", str(smoke_search["experiment"] / f"trial_{best}")):
        assert exp.trial(shown).trial_id == best
    with pytest.raises(KeyError):
        exp.trial("nope")


def test_trials_run_side_by_side_on_a_shared_gpu(smoke_search):
    # The session's Ray node declares 4 CPUs and 1 GPU; at 0.5 GPU per trial two share it. Without an explicit
    # concurrency limit OptunaSearch would keep only one trial pending (ray #46965). (Two, not four at 0.25: each
    # trial at once is one more process to start, and the suite's time is the CPU its processes use.)
    assert max_overlap(trial_frames(smoke_search["experiment"])) >= 2


def test_best_trial_retrained_tested_and_exported(smoke_search):
    summary = smoke_search["summary"]
    frames = trial_frames(smoke_search["experiment"])
    best_loss = min(float(f["val_loss"].min()) for f in frames.values())
    assert summary["best_val_loss"] == pytest.approx(best_loss)
    final = json.loads((smoke_search["experiment"] / FINAL_FILE).read_text())
    assert final["best_config"] == summary["best_config"]
    assert final["wall_seconds"]["search"] > 0 and final["wall_seconds"]["resumed"] is False
    settings = json.loads((smoke_search["experiment"] / "search_settings.json").read_text())
    # the command that reruns it: the options ts.search was given (those left at their default are not written)
    prog, _, words = settings["command"].partition(" run_search.py ")
    assert prog == "python"
    rerun = search_command.parse_args(shlex.split(words))
    assert (rerun.space, rerun.seed, rerun.num_samples, rerun.max_epochs, rerun.ensemble) == ("smoke", 0, 6, 3, 2)
    test = final["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and 0.0 <= test["auc"] <= 1.0
    assert len(test["roc_fpr"]) == len(test["roc_tpr"]) > 2
    export = Path(summary["export"])
    assert {"model.safetensors", "config.json", "metrics.json", "model.pt2", "SHA256SUMS", "identities.json"} <= {
        p.name for p in export.iterdir()}
    # whom it trained on, for evaluate's check: the train and val people of the search's data
    data = load_data(Config.from_dict(summary["best_config"]))
    people = load(export).trained_people
    assert people is not None and people.among(data.names) == data.training_people
    chance = final["chance"]  # the retrained model's test AUC against what a model without signal reaches
    assert chance["scored_on"] == "test" and chance["auc"] == test["auc"]
    assert chance["no_better_than_chance"] == (test["auc"] <= chance["chance_bound"])


def test_export_round_trip_matches_in_memory_model(smoke_search, tmp_path):
    from PIL import Image

    from tune_siamese.app import cli
    from tune_siamese.data import decode_image
    from tune_siamese.training.preprocess import to_input
    from tune_siamese.training.scoring import predict

    model = smoke_search["model"].cpu().eval()
    export = Path(smoke_search["summary"]["export"])
    loaded, config, _ = load_model(export)
    rng = np.random.default_rng(0)
    files = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (120, 100), dtype=np.uint8)).save(tmp_path / name)
        files.append(tmp_path / name)
    images = torch.from_numpy(np.stack([decode_image(f, config.image_size, config.crop) for f in files]))
    a, b = (to_input(images, torch.tensor([i]), config) for i in (0, 1))
    with torch.no_grad():
        expected = torch.sigmoid(model(a, b)).item()
        assert torch.sigmoid(loaded(a, b)).item() == pytest.approx(expected, abs=1e-6)
        graph = torch.export.load(str(export / "model.pt2")).module()
        assert torch.sigmoid(graph(a, b)).item() == pytest.approx(expected, abs=1e-5)
    printed = cli_json(cli.main, ["verify", str(export), str(files[0]), str(files[1])])
    # verify scores in float32, like the in-memory model here and like the exported pair pipeline
    assert printed["probability_same"] == pytest.approx(expected, abs=1e-5)
    verifier = torch.export.load(str(export / "verifier.pt2")).module()
    with torch.no_grad():
        assert verifier(images[:1], images[1:]).item() == pytest.approx(expected, abs=1e-5)
    # batch scoring uses the config's precision (bf16 autocast on CPUs with native bf16): close, not equal
    logit = predict(model, images, np.array([[0, 1, 0]]), config.replace(device="cpu"))[0]
    assert printed["probability_same"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=2e-2)


def test_top_trials_ensembled_tested_and_exported(smoke_search):
    from tune_siamese.app import cli

    ensemble = smoke_search["summary"]["ensemble"]
    frames = trial_frames(smoke_search["experiment"])
    ranked = sorted(float(f["val_loss"].min()) for f in frames.values())
    assert [m["val_loss"] for m in ensemble["members"]] == pytest.approx(ranked[:2])  # chosen by val loss only
    assert len({m["trial_id"] for m in ensemble["members"]}) == 2
    assert 0.0 <= ensemble["test"]["accuracy_at_threshold"] <= 1.0 and 0.0 <= ensemble["test"]["auc"] <= 1.0
    export = Path(ensemble["export"])
    assert export == smoke_search["experiment"] / "export-ensemble"
    printed = cli_json(cli.main, ["evaluate", str(export), "--data", "synthetic"])
    assert "identity_overlap" not in printed and load(export).trained_people is not None
    assert printed["auc"] == pytest.approx(ensemble["test"]["auc"], abs=1e-6)
    assert printed["accuracy_at_threshold"] == pytest.approx(ensemble["test"]["accuracy_at_threshold"])




def test_the_summary_says_when_the_model_is_no_better_than_chance_and_its_threshold_rejects_every_pair(capsys):
    """A chance-level model used to be retrained, exported and summarised like any other (exit 0), and a val set
    with no signal stored threshold 1e6 ("reject everything") without a word."""
    from types import SimpleNamespace

    from tune_siamese.app.console import print_summary
    from tune_siamese.training.metrics import chance_check, threshold_note

    test = {"accuracy": 0.5, "accuracy_at_threshold": 0.5, "auc": 0.51, "threshold_logit": 1e6}
    summary = {"best_val_loss": 0.69, "best_epoch": 1, "best_config": {"lr": 1.0}, "test": test, "epochs": 1,
               "retrain_node": "node", "export": "EXP/export", "trial_statuses": {"finished": 1}, "trials": 1,
               "best_trial": "trial_1", "wall_seconds": {"search": 1.0, "retrain_test_export": 1.0},
               "chance": chance_check(0.51, np.array([1] * 500 + [0] * 500), "test"),
               "threshold_note": threshold_note(1e6), "final": {"policy": "retrain", "members": [{"node": "node"}]}}
    print_summary(summary, SimpleNamespace(space={"lr": None}), SimpleNamespace(experiment_path="EXP",
                                                                                base={"data": "synthetic"}))
    out = capsys.readouterr().out
    assert "trained on the synthetic faces: a demonstration" in out and "--data ../shared/data/lfw-a" in out
    assert ("WARNING: the final model is no better than chance: test AUC 0.5100 is at most 0.5300, which a model "
            "without any signal exceeds one time in 20 on 500 same- and 500 different-person pairs") in out
    assert f"WARNING: the final model: {threshold_note(1e6)}" in out and "rejects every pair" in out


@pytest.mark.parametrize("argv, message", [
    (["--space", "nope"], "unknown preset 'nope'"),
    (["--gpus-per-trial", "0.3"], "does not divide a GPU"),
    (["--gpus-per-trial", "2"], "the cluster has 1 GPU"),
    (["--cpus-per-trial", "64"], "the cluster has 4 CPUs"),
    (["--storage-path", "/proc/forbidden"], "--storage-path is not writable"),
    (["--set", "optimizer=rmsprop"], "optimizer='rmsprop'"),
    (["--num-samples", "0"], "--num-samples=0"),
    (["--ensemble", "1"], "--ensemble=1"),
    # nonsense that used to pass validation and fail (or misbehave) inside every trial
    (["--set", "lr_decay=-1"], "lr_decay=-1.0 must be in (0, 1]"),
    (["--set", "weight_decay=nan"], "weight_decay=nan must be a finite number"),
    (["--set", "width=inf"], "width=inf must be a finite number"),
    (["--cpus-per-trial", "nan"], "--cpus-per-trial=nan must be a finite number"),
    (["--gpus-per-trial", "nan"], "--gpus-per-trial=nan must be a finite number"),
    (["--reduction-factor", "nan"], "--reduction-factor=nan must be a finite number"),
    (["--set", "device=cuda"], "device='cuda' needs --gpus-per-trial > 0"),
    (["--set", "device=gpu"], "device='gpu' is not auto, cpu, mps, cuda or cuda:N"),
    (["--set", "compile=no-such-backend"], "compile='no-such-backend' is not a torch.compile backend"),
    # options that were ignored or bent silently
    (["--grace-period", "5", "--max-epochs", "3"], "--grace-period=5 exceeds the 3 epochs"),
    (["--max-failures", "-1"], "--max-failures=-1 must be >= 0"),
    (["--set", "data=/elsewhere"], "--set data=...: use --data instead"),
    (["--set", "seed=3"], "--set seed=...: use --seed instead"),
    (["--max-epochs", "4", "--set", "max_epochs=5"], "--max-epochs and --set max_epochs disagree"),
])
def test_bad_options_exit_2_with_one_message(ray_session, argv, message, capsys, tmp_path):
    storage = [] if "--storage-path" in argv else ["--storage-path", str(tmp_path)]
    assert search_command.main([*SMOKE, *storage, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*/trial_*"))  # no trial ever started


BAD_SPACE = """
from ray import tune
SPACE = {"width": tune.choice([0.25, 0.0]), "lr": tune.loguniform(1e-4, 1e-2)}
UNKNOWN_OPTIMIZER = {"optimizer": tune.choice(["adam", "lion"])}
NEGATIVE_END = {"weight_decay": tune.uniform(-1e-3, 1e-3)}
"""


@pytest.mark.parametrize("attr, message", [
    ("SPACE", "width=0.0 (a choice): option width=0.0 must be > 0"),
    ("UNKNOWN_OPTIMIZER", "optimizer='lion' (a choice): option optimizer='lion' is not one of"),
    ("NEGATIVE_END", "weight_decay=-0.001 (the range's lower end): option weight_decay=-0.001 must be >= 0"),
])
def test_every_value_a_space_can_produce_is_checked_first(tmp_path, capsys, attr, message):
    space = tmp_path / "bad_space.py"
    space.write_text(BAD_SPACE)
    assert search_command.main(["--space", f"{space}:{attr}", "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_set_max_epochs_is_not_overridden_by_the_preset(tmp_path):
    settings, _ = settings_for(search_command.parse_args([*SMOKE, "--set", "max_epochs=7",
                                                                   "--storage-path", str(tmp_path)]))
    assert settings.max_epochs == 7 and settings.base["max_epochs"] == 7


def test_set_takes_a_searched_key_out_of_the_space(tmp_path, capsys):
    """--set lr=... on a space that searches lr: every trial gets the fixed value (lr leaves the space and the
    starting points), the settings record it, the console says so, and a resume rebuilds the same space."""
    from tune_siamese.app.console import print_start
    from tune_siamese.searching.settings import load_resume_settings

    args = search_command.parse_args(["--space", "quick", "--set", "lr=0.002", "--set", "augment=true",
                                  "--storage-path", str(tmp_path), "--name", "fixed"])
    settings, preset = settings_for(args)
    assert settings.not_searched == ["lr", "augment"] and settings.base["lr"] == 0.002
    assert "lr" not in preset.space and "augment" not in preset.space and "optimizer" in preset.space
    assert all("lr" not in point and "augment" not in point for point in preset.points)
    print_start(settings)
    out = capsys.readouterr().out
    assert "--set lr=0.002 fixes lr, which the space searches: not searched" in out
    assert "--set augment=true fixes augment" in out
    experiment = tmp_path / "fixed"
    experiment.mkdir()
    (experiment / "search_settings.json").write_text(json.dumps(dataclasses.asdict(settings)))
    resumed, resumed_preset = settings_for(search_command.parse_args(["--resume", str(experiment)]))
    assert load_resume_settings(str(experiment)).not_searched == ["lr", "augment"]
    assert resumed_preset.space.keys() == preset.space.keys() and resumed_preset.points == preset.points
    # fixing every key the space searches leaves nothing to search
    assert search_command.main([*SMOKE, "--storage-path", str(tmp_path), "--set", "optimizer=sgd", "--set", "lr=1",
                            "--set", "batch_size=32", "--set", "batchnorm=false"]) == 2
    assert "nothing left to search" in capsys.readouterr().err


def test_gpu_trials_use_cuda_graphs_unless_told_not_to(tmp_path):
    from tune_siamese.core.config import Config

    def trial_config(*options: str) -> Config:
        args = search_command.parse_args([*SMOKE, "--storage-path", str(tmp_path), *options])
        return Config.from_dict(settings_for(args)[0].base)

    assert trial_config().cuda_graphs is False  # CPU trials: the Config default
    assert trial_config("--gpus-per-trial", "0.25").cuda_graphs is True
    assert trial_config("--gpus-per-trial", "0.25", "--set", "cuda_graphs=false").cuda_graphs is False


def experiment_with_settings(storage_path: Path) -> Path:
    """An experiment folder holding only the search settings of a smoke search (what --resume reads first)."""
    experiment = storage_path / "exp"
    experiment.mkdir()
    settings, _ = settings_for(search_command.parse_args([*SMOKE, "--storage-path", str(storage_path),
                                                                   "--name", "exp"]))
    (experiment / "search_settings.json").write_text(json.dumps(dataclasses.asdict(settings)))
    return experiment


def test_resume_refuses_options_it_would_ignore_and_a_second_holder(tmp_path, capsys):
    from tune_siamese.core import storage

    experiment = experiment_with_settings(tmp_path)
    assert search_command.main(["--resume", str(experiment), "--num-samples", "9", "--space", "paper"]) == 2
    err = capsys.readouterr().err
    assert "--space would be ignored" in err and "--num-samples" not in err  # --num-samples 9 would grow it
    # the same name again as a new search
    assert search_command.main([*SMOKE, "--storage-path", str(tmp_path), "--name", "exp"]) == 2
    assert "an experiment of this name exists already" in capsys.readouterr().err
    # a resume while another process holds the experiment
    with storage.experiment_lock(str(experiment)):
        assert search_command.main(["--resume", str(experiment)]) == 2
    assert "another search holds this experiment" in capsys.readouterr().err
    assert not (experiment / ".lock").exists()  # released


def test_resume_refuses_what_others_may_write_or_a_corrupt_settings_file(tmp_path, capsys):
    experiment = experiment_with_settings(tmp_path)
    (experiment / "tuner.pkl").write_bytes(b"not pickle")
    (experiment / "tuner.pkl").chmod(0o666)  # anyone could have replaced it with code
    assert search_command.main(["--resume", str(experiment)]) == 2
    assert "others may write to this experiment" in capsys.readouterr().err
    (experiment / "tuner.pkl").chmod(0o644)
    (experiment / "search_settings.json").write_text('{"base": {}, "space": "smoke",\n "extra": 1}')
    assert search_command.main(["--resume", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "search_settings.json: not this project's search settings" in err and "Traceback" not in err
    (experiment / "search_settings.json").write_text('{"base": {},\n oops')
    assert search_command.main(["--resume", str(experiment)]) == 2
    assert "search_settings.json:2: not valid JSON" in capsys.readouterr().err


# What --resume unpickles (Ray's state, also the cloudpickle blobs in its .json files) or imports (the space)
RESUME_READS = ["tuner.pkl", "experiment_state-2026-01-01_00-00-00.json", "search_gen_state-2026-01-01_00-00-00.json",
                "searcher-state-2026-01-01_00-00-00.pkl", "callback-states-2026-01-01_00-00-00.pkl",
                "trial_0001/error.pkl", "search_settings.json", "space.py"]


@pytest.mark.parametrize("name", RESUME_READS)
def test_resume_refuses_a_state_file_others_may_write(tmp_path, capsys, name):
    from tune_siamese.core.errors import InputError
    from tune_siamese.searching.owners import check_owner

    experiment = experiment_with_settings(tmp_path)
    space = tmp_path / "space.py"
    space.write_text("from search_spaces import PRESETS\nSPACE = PRESETS['smoke']\n")
    settings = json.loads((experiment / "search_settings.json").read_text())
    (experiment / "search_settings.json").write_text(json.dumps({**settings, "space": f"{space}:SPACE"}))
    target = space if name == "space.py" else experiment / name
    if not target.exists():
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(b"not pickle")
    target.chmod(0o666)  # anyone could have put code in it
    assert search_command.main(["--resume", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert f"{target}: option --resume: others may write to this experiment" in err and len(err.splitlines()) == 1
    if name != "space.py":  # the finalist stage's sub-experiment is checked the same way before it is restored
        finalists = tmp_path / "finalists"
        (finalists / target.relative_to(experiment)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(target, finalists / target.relative_to(experiment))
        with pytest.raises(InputError, match="others may write"):
            check_owner(str(finalists))


def test_resume_refuses_a_study_that_lacks_the_experiments_trials(tmp_path, capsys):
    """The study must be where the search left it: a missing database, or one without the trials Tune recorded,
    is refused before Ray starts (a resume would otherwise start an empty study and suggest blind)."""
    import optuna

    experiment = experiment_with_settings(tmp_path)
    state = {"trial_data": [["{}", "{}"], ["{}", "{}"]]}  # Tune recorded two trials
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    assert search_command.main(["--resume", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "no Optuna study database" in err and str(experiment / "optuna.db") in err and len(err.splitlines()) == 1
    assert not (experiment / "optuna.db").exists()  # the check creates none
    optuna.create_study(study_name="exp", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert search_command.main(["--resume", str(experiment)]) == 2
    assert "the Optuna study 'exp'" in (err := capsys.readouterr().err) and "holds 0 trials" in err
    assert "Tune recorded 2" in err and len(err.splitlines()) == 1


def test_a_resume_completes_no_trial_again_that_the_study_had_ended(tmp_path):
    """The driver died after telling the study that trials ended and before Tune saved its state (the searcher's
    with it). The resumed search runs those trials on from their last checkpoints and completes them again: the
    study keeps what it recorded, and refuses nothing (a refusal became the trial's failure, and Tune retried the
    trial until --max-failures: a chaos test's resume ran 10 minutes). The trial it had not ended goes on as ever."""
    import optuna

    from tune_siamese.searching.study_search import StudyRecordingSearch

    def searcher() -> StudyRecordingSearch:
        return StudyRecordingSearch(space={"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)},
                                    metric="best_val_loss", mode="min", study_name="s", storage=storage)

    def epoch(step: int, loss: float, **more) -> dict:
        return {"training_iteration": step, "val_loss": loss, "best_val_loss": loss, **more}

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    before = searcher()
    for trial_id in ("finished", "stopped", "running"):
        before.suggest(trial_id)
        before.on_trial_result(trial_id, epoch(1, 0.7))
    before.save(str(tmp_path / "searcher-state.pkl"))  # Tune's last save before the driver was killed
    before.on_trial_complete("finished", epoch(2, 0.6, stops_here=1))
    before.on_trial_complete("stopped", epoch(1, 0.7, stops_here=0))  # ASHA stopped it
    resumed = searcher()
    resumed.restore(str(tmp_path / "searcher-state.pkl"))
    resumed.on_trial_complete("finished", epoch(2, 0.6, stops_here=1))  # from its last checkpoint: no new epoch
    resumed.on_trial_result("stopped", epoch(2, 0.65))  # ASHA's decision was not saved either
    resumed.on_trial_complete("stopped", epoch(2, 0.65, stops_here=1))
    resumed.on_trial_result("running", epoch(2, 0.5))
    resumed.on_trial_complete("running", epoch(2, 0.5, stops_here=1))
    study = optuna.load_study(study_name="s", storage=storage)
    recorded = {trial.user_attrs["tune_trial_id"]: (trial.state.name, trial.value, trial.intermediate_values,
                                                    trial.user_attrs["outcome"]) for trial in study.trials}
    assert recorded == {"finished": ("COMPLETE", 0.6, {1: 0.7, 2: 0.6}, "finished"),
                        "stopped": ("PRUNED", 0.7, {1: 0.7}, "asha_stopped"),  # its last value, as Optuna keeps
                        "running": ("COMPLETE", 0.5, {1: 0.7, 2: 0.5}, "finished")}


def test_default_study_storage_is_recorded_inside_the_experiment(tmp_path):
    settings, _ = settings_for(search_command.parse_args([*SMOKE, "--storage-path", str(tmp_path),
                                                                   "--name", "exp"]))
    assert settings.study_storage == "sqlite:///{experiment}/optuna.db" and settings.study_name == "exp"
    assert settings.study_location == f"sqlite:///{tmp_path / 'exp' / 'optuna.db'}"
    given, _ = settings_for(search_command.parse_args([*SMOKE, "--storage-path", str(tmp_path),
                                                                "--study-storage", "journal.log"]))
    assert given.study_storage == given.study_location == "journal.log"  # as the user gave it


def test_resume_of_a_folder_without_experiment(tmp_path, capsys):
    assert search_command.main(["--resume", str(tmp_path)]) == 2
    assert "no experiment here" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_after_every_trial_started_is_still_an_interrupt(tmp_path):
    """Tune marks the trials it stops on Ctrl-C TERMINATED; with every trial started, counting them looked like
    a finished search (exit 0, the best of half a search retrained and exported). Run as the installed console
    script `tune-siamese search`, which records itself as the command and prints what run_search.py does."""
    experiment = tmp_path / "late"
    argv = ["search", *SMOKE, "--num-samples", "3", "--max-epochs", "3", "--grace-period", "3",
            "--max-concurrent", "1", "--storage-path", str(tmp_path), "--name", "late"]  # the 3rd starts last
    log = tmp_path / "late.log"
    proc = spawn(argv, log, program="tune-siamese")
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            frames = trial_frames(experiment) if experiment.exists() else {}
            if len(frames) == 3 and any(f["epoch"].max() < 3 for f in frames.values()):
                break  # every trial has started and one is still training
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        reap(proc)
    output = log.read_text()
    assert "Search interrupted" in output and f"--resume {experiment}" in output
    assert not (experiment / FINAL_FILE).exists() and not (experiment / "export").exists()
    settings = json.loads((experiment / "search_settings.json").read_text())
    assert settings["command"].startswith("tune-siamese search --space smoke")
    # the console: what is happening, said as it starts; the live table with what the search ranks by; none of the
    # per-epoch checkpoint lines or per-trial config boxes that used to bury it, nor Tune's legacy lines that
    # mislead (a negated loss, Ray's session folder as the result folder, finished trials counted as stopped)
    assert "Reading the data (synthetic) ..." in output and "Starting a local Ray ..." in output
    assert "[search] 1/3 trials ended" in output and "best val loss" in output
    assert "Checkpoint successfully created" not in output and "started with configuration" not in output
    assert "Bracket:" not in output and "Result logdir" not in output and "num_stopped" not in output

"""--mlflow: a search logged through Ray Tune's MLflow callback, read back with MLflow's own client; the option's
checks, which run before any Ray work."""
from __future__ import annotations

import contextlib
import io
import json
import sys

import pytest
from helpers import SMOKE, trial_frames

from tune_siamese.app import search_command
from tune_siamese.core.errors import InputError
from tune_siamese.searching.preflight import check_mlflow_store
from tune_siamese.searching.settings import SearchSettings, mlflow_uri


def test_each_trial_is_an_mlflow_run_with_its_params_and_epochs(smoke_search):
    from mlflow.tracking import MlflowClient

    experiment = smoke_search["experiment"]
    uri = (experiment.parent / "mlruns").as_uri()
    assert json.loads((experiment / "search_settings.json").read_text())["mlflow"] == uri  # what a resume keeps

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name("smoke")
    assert found is not None
    everything = client.search_runs([found.experiment_id])
    [search] = [run for run in everything if run.data.tags.get("tune_siamese.role") == "search"]
    runs = [run for run in everything if run is not search]
    frames = trial_frames(experiment)
    assert len(runs) == len(frames) == 6
    for run in runs:
        assert run.data.tags["mlflow.parentRunId"] == search.info.run_id  # the trials are the search's children
        assert not {"pid", "done", "timestamp", "time_total_s", "training_iteration"} & set(run.data.metrics)
        assert not [key for key in run.data.metrics if key.startswith("config")]  # the config is the params
        assert run.info.status == "FINISHED"
        assert {"lr", "batch_size", "optimizer", "batchnorm"} <= set(run.data.params)  # the searched values
        assert run.data.params["image_size"] == "72"  # and the fixed ones
        history = client.get_metric_history(run.info.run_id, "val_loss")
        trial = frames[f"trial_{run.info.run_name}"]  # the run is named by the trial's id, its folder trial_<id>
        assert [m.step for m in history] == list(trial["training_iteration"])  # one value per epoch reported
        assert [m.value for m in history] == pytest.approx(list(trial["val_loss"]))
        assert float(run.data.params["lr"]) == pytest.approx(trial["config"].iloc[0]["lr"])
    # the search's run: its settings, the final test scores, final.json and the export, as a model that scores pairs
    summary = smoke_search["summary"]
    assert search.info.status == "FINISHED" and search.info.run_name == "smoke"
    assert search.data.params["space"] == "smoke" and search.data.params["base.image_size"] == "72"
    assert search.data.metrics["test/auc"] == pytest.approx(summary["test"]["auc"])
    assert search.data.metrics["test/auc_ci_low"] == pytest.approx(summary["test"]["auc_ci"][0])
    assert {a.path for a in client.list_artifacts(search.info.run_id)} >= {"export", "final.json"}
    import mlflow.pyfunc
    import pandas as pd

    import tune_siamese as ts

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{search.info.run_id}/pair_scorer")
    images = smoke_images(experiment.parent)
    with pytest.warns(UserWarning):  # a model of the synthetic faces says so
        expected = ts.load(summary["export"]).score(*images)
    assert model.predict(pd.DataFrame({"image_a": [str(images[0])], "image_b": [str(images[1])]})) == \
        pytest.approx([expected])


def smoke_images(folder):
    import numpy as np
    from PIL import Image

    paths = [folder / f"face{i}.png" for i in range(2)]
    for i, path in enumerate(paths):
        Image.fromarray((np.random.default_rng(i).random((80, 80)) * 255).astype("uint8")).save(path)
    return paths


class Trial:
    """What Ray's MLflow callback reads of a Tune trial."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id, self.config = trial_id, {"lr": 0.01, "batch_size": 32}

    def __str__(self) -> str:
        return f"train_siamese_{self.trial_id}"


def test_a_resumed_trial_goes_on_in_its_own_run(tmp_path, monkeypatch):
    """Tune's order on --resume: the callback comes back from tuner.pkl (pickled before setup), gets the state saved
    with the experiment, then setup(); the trial is a new object with the same id."""
    import ray.cloudpickle as pickle
    from mlflow.tracking import MlflowClient

    from tune_siamese.searching.callbacks import mlflow_logger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what check_mlflow_store does for a folder store
    uri = (tmp_path / "mlruns").as_uri()
    settings = SearchSettings(base={}, space="smoke", num_samples=2, max_epochs=2, grace_period=1,
                              reduction_factor=2, cpus_per_trial=1, gpus_per_trial=0, max_concurrent=1, seed=0,
                              storage_path=str(tmp_path), name="resumed", mlflow=uri)
    first = mlflow_logger(settings)[0]
    saved = pickle.dumps(first)
    first.setup()
    first.log_trial_start(Trial("a"))
    interrupted = Trial("b")
    first.log_trial_start(interrupted)
    first.log_trial_result(1, interrupted, {"training_iteration": 1, "val_loss": 0.7})

    second = pickle.loads(saved)
    second.set_state(first.get_state())  # the interrupted search never ended its runs
    second.setup()
    for trial_id, loss in (("b", 0.6), ("c", 0.5)):  # b resumed at epoch 2, c new
        trial = Trial(trial_id)
        second.log_trial_start(trial)
        second.log_trial_result(2, trial, {"training_iteration": 2, "val_loss": loss})
        second.log_trial_end(trial)

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name("resumed")
    assert found is not None
    found_runs = client.search_runs([found.experiment_id])
    names = sorted(run.info.run_name for run in found_runs)
    assert names == ["train_siamese_a", "train_siamese_b", "train_siamese_c"]  # no second run of b
    runs = {run.info.run_name: run for run in found_runs}
    history = client.get_metric_history(runs["train_siamese_b"].info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.7), (2, 0.6)]
    assert runs["train_siamese_b"].info.status == "FINISHED" and runs["train_siamese_a"].info.status == "RUNNING"
    assert runs["train_siamese_b"].data.params == {"lr": "0.01", "batch_size": "32"}


def test_mlflow_without_mlflow_installed_exits_2_before_any_ray_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what importlib sees when the package is absent
    assert search_command.main([*SMOKE, "--storage-path", str(tmp_path), "--mlflow", str(tmp_path / "mlruns")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['run_search.py: error: option --mlflow needs MLflow, which is not installed: '
                   'pip install "tune-siamese[mlflow]"']
    assert not list(tmp_path.iterdir())  # nothing written, no experiment started


def test_resume_keeps_its_mlflow_store(tmp_path, capsys):
    assert search_command.main(["--resume", str(tmp_path), "--mlflow", "elsewhere"]) == 2
    assert "--mlflow would be ignored" in capsys.readouterr().err


def test_folders_and_relative_files_become_absolute_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mlflow_uri("runs/mlruns") == (tmp_path / "runs" / "mlruns").as_uri()
    assert mlflow_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    for kept in ("sqlite:////abs/mlflow.db", "http://host:5000", "file:///abs/mlruns"):
        assert mlflow_uri(kept) == kept
    with pytest.raises(InputError, match="--mlflow needs a tracking URI"):
        mlflow_uri(" ")


def test_a_store_that_cannot_be_used_is_refused_first(tmp_path):
    from mlflow.tracking import MlflowClient

    with pytest.raises(InputError, match=r"--mlflow=http://127\.0\.0\.1:9: cannot use it"):
        check_mlflow_store("http://127.0.0.1:9", "exp")  # nothing listens on port 9: one quick try
    store = (tmp_path / "mlruns").as_uri()
    check_mlflow_store(store, "gone")  # a usable store (and it lets MLflow 3 open a folder store)
    client = MlflowClient(tracking_uri=store)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(InputError, match="experiment 'gone' was deleted"):
        check_mlflow_store(store, "gone")


def test_help_lists_mlflow_and_every_other_option():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        search_command.parse_args(["--help"])
    assert exit_.value.code == 0
    text = out.getvalue()
    assert "--mlflow URI" in text and "tune-siamese[mlflow]" in text
    for option in ("--study-storage", "--name", "--resume", "--ensemble", "--quiet", "presets (--space):"):
        assert option in text

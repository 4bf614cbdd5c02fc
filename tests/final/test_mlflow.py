"""--mlflow: a search logged through Ray Tune's MLflow callback, read back with MLflow's own client; the option's
checks, which run before any Ray work."""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

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
    # the trials' runs (ts.finalize of a copy, test_api, may have added one of role finalize)
    runs = [run for run in everything if run.data.tags.get("tune_siamese.role") == "trial"]
    frames = trial_frames(experiment)
    assert len(runs) == len(frames) == 6
    import analysis

    statuses = analysis.load(experiment).trials.set_index("trial_id")["status"]
    assert set(statuses) <= {"finished", "asha_stopped"}  # which of the two a trial gets depends on timing
    assert {run.info.run_name: run.data.tags["tune_siamese.outcome"] for run in runs} == statuses.to_dict()
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
    images = smoke_images(experiment.parent)
    with pytest.warns(UserWarning):  # a model of the synthetic faces says so, loaded either way
        model = mlflow.pyfunc.load_model(f"runs:/{search.info.run_id}/pair_scorer")
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


def test_the_pair_model_loads_from_code_unpickles_nothing_and_scores_as_the_export(tmp_path, monkeypatch,
                                                                                   tiny_config):
    """pair_scorer is MLflow's "models from code": the stored mlflow_model_code.py and the export, no pickled
    Python object; its signature says what predict takes, and it scores a pair as the export does."""
    import mlflow.artifacts
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    import tune_siamese as ts
    from tune_siamese.artifacts.checkpoint import export_model
    from tune_siamese.final.mlflow_record import log_pair_model
    from tune_siamese.training.model import build_model

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = tiny_config()
    export = export_model(build_model(config), config, tmp_path / "export", {"auc": 0.5}, trained_people=["x"])
    uri = (tmp_path / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("model")).info.run_id
    log_pair_model(run_id, uri, str(export))

    stored = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/pair_scorer", dst_path=str(tmp_path / "m"),
                                                      tracking_uri=uri))
    files = {path.relative_to(stored).as_posix() for path in stored.rglob("*") if path.is_file()}
    assert "mlflow_model_code.py" in files and "artifacts/export/model.safetensors" in files
    assert not [name for name in files if name.endswith((".pkl", ".pickle"))]  # no python_model.pkl
    flavor = Model.load(str(stored)).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    assert Path(flavor["model_code_path"]).name == "mlflow_model_code.py"

    mlflow.set_tracking_uri(uri)
    with pytest.warns(UserWarning):  # the untrained model of synthetic faces says so, loaded either way
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/pair_scorer")
        verifier = ts.load(export)
    signature = model.metadata.signature
    assert signature.inputs.input_names() == ["image_a", "image_b"]
    assert [spec.type.name for spec in signature.inputs.inputs] == ["string", "string"]
    assert [spec.type.name for spec in signature.outputs.inputs] == ["double"]
    a, b = smoke_images(tmp_path)
    pairs = pd.DataFrame({"image_a": [str(a), str(b)], "image_b": [str(b), str(b)]})
    assert model.predict(pairs) == pytest.approx([verifier.score(a, b), verifier.score(b, b)], abs=1e-6)
    with pytest.raises(MlflowException, match="image_b"):  # the signature is checked
        model.predict(pd.DataFrame({"image_a": [str(a)]}))


class Trial:
    """What Ray's MLflow callback reads of a Tune trial."""

    def __init__(self, trial_id: str, last_result: dict | None = None) -> None:
        self.trial_id, self.config = trial_id, {"lr": 0.01, "batch_size": 32}
        self.last_result = last_result or {}

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


def test_each_ended_trial_run_is_tagged_with_its_outcome(tmp_path, monkeypatch):
    """tune_siamese.outcome, by the rule of the Optuna trials' user attr `outcome` (study_search.trial_outcome);
    a run whose trial has not ended (an interrupted search) has none."""
    from mlflow.tracking import MlflowClient

    from tune_siamese.searching.callbacks import mlflow_logger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    settings = SearchSettings(base={}, space="smoke", num_samples=5, max_epochs=4, grace_period=1,
                              reduction_factor=2, cpus_per_trial=1, gpus_per_trial=0, max_concurrent=1, seed=0,
                              storage_path=str(tmp_path), name="outcomes", mlflow=uri)
    logger = mlflow_logger(settings)[0]
    logger.setup()
    epoch = {"training_iteration": 2, "val_loss": 0.6, "best_val_loss": 0.6}
    ends = {"finished": ({**epoch, "stops_here": 1}, False), "asha_stopped": ({**epoch, "stops_here": 0}, False),
            "diverged": ({**epoch, "diverged": 1}, False), "errored": (epoch, True), "running": (epoch, None)}
    for name, (result, failed) in ends.items():
        trial = Trial(name, result)
        logger.log_trial_start(trial)
        logger.log_trial_result(2, trial, result)
        if failed is not None:
            logger.on_trial_error(0, [], trial) if failed else logger.on_trial_complete(0, [], trial)

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name("outcomes")
    assert found is not None
    tags = {run.info.run_name: run.data.tags.get("tune_siamese.outcome") for run in client.search_runs(
        [found.experiment_id])}
    assert tags == {f"train_siamese_{name}": None if name == "running" else name for name in ends}


def _settings(storage_path: Path, name: str, uri: str) -> SearchSettings:
    return SearchSettings(base={}, space="smoke", num_samples=2, max_epochs=2, grace_period=1, reduction_factor=2,
                          cpus_per_trial=1, gpus_per_trial=0, max_concurrent=1, seed=0,
                          storage_path=str(storage_path), name=name, mlflow=uri)


def test_a_copied_experiment_resumes_into_its_own_parent_run_and_a_moved_one_keeps_its_own(tmp_path, monkeypatch):
    """`cp -a A B; --resume B` logged into A's parent run (and its trials' runs) and marked it FINISHED. The run
    is tied to the folder it was made for: a copy (A still records the run) gets its own, beside A's, and its
    trials' runs are its children; a moved folder keeps its run, whose tag follows it."""
    import shutil

    from mlflow.tracking import MlflowClient

    from tune_siamese.final.mlflow_record import EXPERIMENT_TAG, search_run
    from tune_siamese.searching.callbacks import mlflow_logger, mlflow_parent_now

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=uri)
    try:
        a = _settings(tmp_path / "results", "A", uri)
        Path(a.experiment_path).mkdir(parents=True)
        original = search_run(a, resumed=False)
        interrupted = mlflow_logger(a, original)[0]  # as Tune pickles it with the experiment
        interrupted.set_state({"runs": {"b": "the original's run of trial b"}})

        shutil.copytree(a.experiment_path, tmp_path / "results" / "B")  # cp -a A B
        b = _settings(tmp_path / "results", "B", uri)
        copied = search_run(b, resumed=True)
        assert copied != original and search_run(b, resumed=True) == copied  # the copy's own, every time
        run = client.get_run(copied)
        assert run.data.tags[EXPERIMENT_TAG] == b.experiment_path
        assert run.data.tags["tune_siamese.copied_from_run"] == original
        assert run.info.experiment_id == client.get_run(original).info.experiment_id  # beside A's
        assert client.get_run(original).info.status == "RUNNING"  # A's is A's, to resume

        interrupted.setup()  # the copy's restored callback: its trials are children of the copy's run
        trial = Trial("b")
        interrupted.log_trial_start(trial)
        child = client.get_run(interrupted._trial_runs[trial])
        assert child.data.tags["mlflow.parentRunId"] == copied
        assert child.data.tags[EXPERIMENT_TAG] == b.experiment_path

        (tmp_path / "moved").mkdir()
        shutil.move(a.experiment_path, tmp_path / "moved" / "A")  # mv: the run goes along
        moved = _settings(tmp_path / "moved", "A", uri)
        assert search_run(moved, resumed=True) == original
        assert client.get_run(original).data.tags[EXPERIMENT_TAG] == moved.experiment_path
    finally:
        mlflow_parent_now.set(None)


def test_finalize_logs_its_model_as_a_run_under_the_search(tmp_path, monkeypatch):
    """`tune-siamese finalize` logged nothing to MLflow; now its final model is a child run of the search's, with
    its options, test scores and record, closed FINISHED (FAILED when it diverged)."""
    from mlflow.tracking import MlflowClient

    from tune_siamese.final.mlflow_record import finalize_run, search_run
    from tune_siamese.searching.callbacks import mlflow_parent_now

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    settings = _settings(tmp_path, "fin", uri)
    Path(settings.experiment_path).mkdir()
    try:
        parent = search_run(settings, resumed=False)
    finally:
        mlflow_parent_now.set(None)
    record = {"best_trial": "b", "test": {"auc": 0.8, "auc_ci": [0.7, 0.9]}, "wall_seconds": {"final_model": 3.0}}
    run_id = finalize_run(settings, "seeds3", {"final": "seeds", "final_size": 3, "pick": "best"}, record)
    diverged = finalize_run(settings, "retrain", {"final": "retrain", "final_size": 1, "pick": "best"},
                            {"best_trial": "b", "final_diverged": "--final retrain (size 1): retrain: ..."})
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "fin final-seeds3" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["tune_siamese.role"] == "finalize"
    assert run.data.params == {"final": "seeds", "final_size": "3", "pick": "best", "best_trial": "b"}
    assert run.data.metrics == {"test/auc": 0.8, "test/auc_ci_low": 0.7, "test/auc_ci_high": 0.9,
                                "wall_seconds/final_model": 3.0}
    assert [f.path for f in client.list_artifacts(run_id)] == ["final-seeds3.json"]
    assert client.get_run(diverged).info.status == "FAILED"


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

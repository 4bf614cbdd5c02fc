"""The search in MLflow (--mlflow), as MLflow users read a tuning job: one parent run for the search (its
settings as params; after it, the final model's test metrics, final.json and the export, as an MLflow model from
code whose predict scores image pairs) with the trials as child runs (Ray Tune's MLflow callback,
searching.callbacks.mlflow_logger); `tune-siamese finalize` adds a run of its own under the search's.

The parent run's id is kept in the experiment folder (MLFLOW_RUN_FILE), so a resumed search goes on in the same
run wherever the folder was moved; a copy resumes into a run of its own (search_run). MLflow is an optional extra:
this module is imported only with --mlflow.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from tune_siamese.core import storage
from tune_siamese.core.names import FINAL_FILE
from tune_siamese.final.finish import FINAL_DIVERGED
from tune_siamese.searching.callbacks import mlflow_parent_now
from tune_siamese.searching.preflight import MLFLOW_QUICK, allow_file_store, temporary_environment

MLFLOW_RUN_FILE = "mlflow_run.json"
EXPERIMENT_TAG = "tune_siamese.experiment"  # the experiment folder a run was made for
# The settings logged as the parent run's params (the fixed config values follow as base.<name>)
SEARCH_PARAMS = ("space", "num_samples", "max_epochs", "grace_period", "reduction_factor", "searcher", "scheduler",
                 "rung_metric", "reproducible", "seed", "cpus_per_trial", "gpus_per_trial", "max_concurrent", "final",
                 "final_size", "finalists", "finalist_seeds", "command")


def _client(uri: str) -> MlflowClient:
    allow_file_store(uri)
    return MlflowClient(tracking_uri=uri)


def search_run(settings: Any, resumed: bool) -> str:
    """The id of the search's parent run: the one this experiment recorded, else a new one with the settings.

    The run is tied to the folder it was made for (its tag tune_siamese.experiment). A resumed experiment found
    elsewhere is a copy while that folder still records the same run (`cp -a A B`: B gets a run of its own, and
    A's is left as it was), else a move (the run follows it, its tag updated). The trials' runs follow the
    parent (callbacks.mlflow_parent_now)."""
    where = storage.child(settings.experiment_path, MLFLOW_RUN_FILE)
    recorded = storage.read_text(where)
    client = _client(settings.mlflow)
    if resumed and recorded:
        run_id = str(json.loads(recorded)["run_id"])
        if _follows_this_folder(client, run_id, settings.experiment_path):
            mlflow_parent_now.set((run_id, settings.experiment_path))
            return run_id
    with temporary_environment(MLFLOW_QUICK):
        experiment_id = _experiment_id(client, settings, recorded)  # a copy's run: beside the original's
        tags = {"tune_siamese.role": "search", EXPERIMENT_TAG: settings.experiment_path}
        if resumed and recorded:
            tags["tune_siamese.copied_from_run"] = str(json.loads(recorded)["run_id"])
        run = client.create_run(experiment_id, run_name=settings.name, tags=tags)
        params = {name: getattr(settings, name) for name in SEARCH_PARAMS}
        params.update({f"base.{key}": value for key, value in settings.base.items()})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, str(value)[:6000])
    storage.write_text(where, json.dumps({"run_id": run.info.run_id, "experiment_id": experiment_id}) + "\n")
    mlflow_parent_now.set((str(run.info.run_id), settings.experiment_path))
    return str(run.info.run_id)


def _follows_this_folder(client: MlflowClient, run_id: str, experiment_path: str) -> bool:
    """Whether the run recorded in `experiment_path` is this folder's: made for it, or for a folder the experiment
    was moved from (then its tag is moved along). False for a copy, whose original still records the run, and for
    a run the store no longer has."""
    with temporary_environment(MLFLOW_QUICK):
        try:
            origin = client.get_run(run_id).data.tags.get(EXPERIMENT_TAG, "")
        except Exception:  # noqa: BLE001 - deleted or never in this store: the folder gets a run of its own
            return False
        if origin in ("", experiment_path):
            return True
        left = storage.read_text(storage.child(origin, MLFLOW_RUN_FILE)) if _readable(origin) else None
        if left and str(json.loads(left).get("run_id")) == run_id:  # the original is still there: a copy
            return False
        client.set_tag(run_id, EXPERIMENT_TAG, experiment_path)  # moved: the run goes along
    return True


def _experiment_id(client: MlflowClient, settings: Any, recorded: str | None) -> str:
    """The MLflow experiment of the search's runs: the one the experiment folder records (a copied or renamed
    folder keeps its original's), else the one named like the search, made if need be."""
    if recorded and json.loads(recorded).get("experiment_id"):
        return str(json.loads(recorded)["experiment_id"])
    experiment = client.get_experiment_by_name(settings.name)
    return str(experiment.experiment_id if experiment else client.create_experiment(settings.name))


def _readable(path: str) -> bool:
    try:
        return storage.exists(path)
    except Exception:  # noqa: BLE001 - a bucket out of reach counts as gone
        return False


def test_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """What the parent run logs: the handed-back model's test scores (test/...), with each 95 % interval's ends
    (test/auc_ci_low, ...), the best trial's val loss, and the wall times (wall_seconds/...)."""
    metrics: dict[str, float] = {}
    for key, value in (summary.get("test") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[f"test/{key}"] = float(value)
        elif key.endswith("_ci") and isinstance(value, list) and len(value) == 2:
            metrics[f"test/{key}_low"], metrics[f"test/{key}_high"] = float(value[0]), float(value[1])
    if isinstance(summary.get("best_val_loss"), (int, float)):
        metrics["best_val_loss"] = float(summary["best_val_loss"])
    for key, value in (summary.get("wall_seconds") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[f"wall_seconds/{key}"] = float(value)
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


def finish_run(settings: Any, run_id: str, summary: dict[str, Any], record_name: str = FINAL_FILE) -> None:
    """Log the search's outcome (or finalize's) to its run and close it: FAILED without a usable trial or when the
    final model diverged."""
    client = _client(settings.mlflow)
    with temporary_environment(MLFLOW_QUICK):
        for key, value in test_metrics(summary).items():
            client.log_metric(run_id, key, value)
        client.log_dict(run_id, summary, record_name)
        export = summary.get("export")
        if export and not storage.is_uri(export):
            client.log_artifacts(run_id, export, "export")
            log_pair_model(run_id, settings.mlflow, export)
        failed = "no_usable_trial" in summary or FINAL_DIVERGED in summary
        client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def finalize_run(settings: Any, name: str, params: dict[str, Any], record: dict[str, Any]) -> str:
    """`tune-siamese finalize`'s final model as a run of the search's MLflow experiment, a child of the search's
    run where the experiment records one: `params` (finalize's options), its test metrics, final-NAME.json and the
    export as the model `pair_scorer`, as the search logs its own. Returns the run's id."""
    client = _client(settings.mlflow)
    recorded = storage.read_text(storage.child(settings.experiment_path, MLFLOW_RUN_FILE))
    tags = {"tune_siamese.role": "finalize", EXPERIMENT_TAG: settings.experiment_path}
    if recorded:
        tags["mlflow.parentRunId"] = str(json.loads(recorded)["run_id"])
    with temporary_environment(MLFLOW_QUICK):
        experiment_id = _experiment_id(client, settings, recorded)
        run_id = str(client.create_run(experiment_id, run_name=f"{settings.name} final-{name}", tags=tags).info.run_id)
        for key, value in {**params, "best_trial": record.get("best_trial")}.items():
            client.log_param(run_id, key, str(value))
    finish_run(settings, run_id, record, f"final-{name}.json")
    return run_id


# What pair_scorer's predict takes and returns (mlflow_model_code.PairScorer): MLflow checks each input against it.
PAIR_SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "image_a"), ColSpec("string", "image_b")]),
                                outputs=Schema([ColSpec("double")]))
MODEL_CODE = str(Path(__file__).with_name("mlflow_model_code.py"))


def log_pair_model(run_id: str, uri: str, export: str) -> None:
    """The export as the run's MLflow model `pair_scorer`: MLflow's "models from code" (mlflow_model_code.py, stored
    with the model) with the export as an artifact, so loading unpickles nothing; it needs tune-siamese where it is
    loaded. No input example: its image paths would exist on this machine only."""
    mlflow.set_tracking_uri(uri)
    # MLflow remarks that no input example was given: nothing about the search's result, which the summary reports.
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pyfunc.log_model(name="pair_scorer", python_model=MODEL_CODE, artifacts={"export": export},
                                signature=PAIR_SIGNATURE, pip_requirements=["tune-siamese"])


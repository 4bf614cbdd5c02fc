"""The thin Ray layer: a function trainable around `engine.fit`, and the Tuner (OptunaSearch + ASHA).

The trainable reads only its config; the dataset reaches every trial once through Ray's object store.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow.fs
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from .checkpoint import as_trained, export_ensemble, export_model, load_checkpoint, save_checkpoint
from .config import Config
from .data import PairData
from .engine import Diverged, best_threshold, evaluate, fit, images_on, pair_metrics, predict, resolve_device
from .model import EnsembleNet, build_model
from .errors import InputError

METRIC, MODE = "val_loss", "min"
SEARCH_METRIC = "best_val_loss"
DIVERGED_LOSS = 10.0  # reported for a diverged trial: finite, so TPE ranks it as bad instead of failing
SETTINGS_FILE = "search_settings.json"
FINAL_FILE = "final.json"
STATE_FILE = "state.pt"


def train_siamese(config: dict[str, Any], data: PairData) -> None:
    """Ray Tune function trainable: fit one configuration, report every epoch, resume from a checkpoint."""
    cfg = Config.from_dict(config, source="trial config")
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / STATE_FILE)

    node = ray.get_runtime_context().get_node_id()

    def on_epoch(metrics: dict[str, Any], state: Any) -> None:
        # A checkpoint every epoch (Tune keeps only the newest), so a killed worker loses one epoch at most.
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state(), Path(folder) / STATE_FILE)
            tune.report({**metrics, "node_id": node}, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        fit(cfg, data, on_epoch=on_epoch, resume=resume)
    except Diverged as exc:
        # End cleanly with a bad-but-finite loss so the searcher learns "this region diverges".
        tune.report({METRIC: DIVERGED_LOSS, SEARCH_METRIC: DIVERGED_LOSS, "val_accuracy": 0.5, "val_auc": 0.5,
                     "diverged": 1,
                     "diverged_reason": str(exc)})


@dataclass
class SearchSettings:
    """Everything the driver needs to run, resume and finish a search; saved in the experiment folder."""

    base: dict[str, Any]  # fixed Config values shared by every trial (data settings, max_epochs, threads)
    space: str
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    seed: int
    storage_path: str
    name: str
    max_failures: int = 3
    command: str = ""  # the command line that started the search, for the record

    @property
    def experiment_path(self) -> str:
        return join(self.storage_path, self.name)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _fs(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem for a local path or a URI such as s3://bucket/path (as Ray's storage uses)."""
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())


def write_text(path: str, text: str) -> None:
    fs, where = _fs(path)
    fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(where) as out:
        out.write(text.encode())


def read_text(path: str) -> str | None:
    fs, where = _fs(path)
    if fs.get_file_info(where).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(where) as stream:
        return stream.read().decode()


def build_trainable(settings: SearchSettings, data: PairData) -> Any:
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_siamese, data=data), resources)


def build_tuner(settings: SearchSettings, data: PairData, space: dict[str, Any],
                points: list[dict[str, Any]]) -> tune.Tuner:
    # Fixed values ride along as constants in the param space, so each trial's config is complete.
    param_space = {**settings.base, **space}
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=max(2, settings.num_samples // 4))
    # TPE learns from a trial's best val loss (a trial that later overfits still found a good point);
    # ASHA compares trials at the same epoch, by that epoch's val loss.
    searcher = OptunaSearch(sampler=sampler, points_to_evaluate=points or None, metric=SEARCH_METRIC, mode=MODE)
    scheduler = ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode=MODE, max_t=settings.max_epochs,
                              grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)
    return tune.Tuner(
        build_trainable(settings, data),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=settings.num_samples,
                                    # Explicit: OptunaSearch alone keeps one trial pending (ray #46965).
                                    max_concurrent_trials=settings.max_concurrent,
                                    # A new trial takes over a finished trial's process: no worker start-up,
                                    # torch import or data fetch per trial (fit resets seeds and threads).
                                    reuse_actors=True,
                                    trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(
            name=settings.name, storage_path=settings.storage_path,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        ),
    )


def restore_tuner(settings: SearchSettings, data: PairData) -> tune.Tuner:
    return tune.Tuner.restore(settings.experiment_path, trainable=build_trainable(settings, data),
                              resume_unfinished=True, resume_errored=True)


# ------------------------------------------------------------------------------------------------------
# After the search: pick, retrain, test, export

def best_trial(results: tune.ResultGrid) -> tuple[tune.Result, int, float]:
    """(result, epoch of its best val loss, that loss) of the trial with the lowest val loss at any epoch."""
    best = results.get_best_result(metric=METRIC, mode=MODE, scope="all")
    frame = best.metrics_dataframe
    frame = frame[frame[METRIC].notna()]
    row = frame.loc[frame[METRIC].idxmin()]
    return best, int(row["epoch"]), float(row[METRIC])


def searched_model(result: tune.Result, config: Config) -> Any:
    """The best trial's own model at its best epoch, from its last checkpoint (trained on the train part only)."""
    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(Path(folder) / STATE_FILE)
    model = build_model(config)
    model.load_state_dict(state["best_model"])
    return as_trained(model, config)


def retrain_and_test(config: Config, data: PairData, epochs: int, searched: Any = None) -> tuple[Any, dict[str, Any]]:
    """Retrain on train + val pairs for `epochs` epochs, then score the test pairs.

    The decision threshold is chosen on the validation pairs by the searched model (trained on the train part
    only, so it never saw them) and applied to the retrained model's logits. Without that model, a train-only
    model is fitted for the same epochs to choose it.
    """
    # The search is over, so the retrain may use every core torch sees, not one trial's share (threads=0).
    cfg = config.replace(threads=0)
    if searched is None:
        searched = fit(cfg, data, validate=False, epochs=epochs).model
    device = resolve_device(cfg)
    searched = searched.to(device)
    images = images_on(device, data.images)
    threshold = best_threshold(data.val[:, 2], predict(searched, images, data.val, cfg))
    full = replace(data, train=np.concatenate([data.train, data.val]))
    model = fit(cfg, full, validate=False, epochs=epochs).model
    test = evaluate(model, images, data.test, cfg, threshold=threshold, with_roc=True)
    searched_test = pair_metrics(data.test[:, 2], predict(searched, images, data.test, cfg), threshold)
    return model, {"test": test, "searched_model_test": searched_test, "epochs": epochs}


def top_trials(results: tune.ResultGrid, k: int) -> list[tuple[tune.Result, float]]:
    """The k trials with the lowest val loss at any epoch (errored, diverged and unreported trials left out)."""
    ranked = []
    for result in results:
        frame = result.metrics_dataframe
        if result.error is not None or frame is None or METRIC not in frame or frame[METRIC].isna().all():
            continue
        if "diverged" in frame and frame["diverged"].fillna(0).max() > 0:
            continue
        ranked.append((result, float(frame[METRIC].min())))
    ranked.sort(key=lambda pair: pair[1])
    return ranked[:k]


def ensemble_and_test(results: tune.ResultGrid, data: PairData, k: int) -> tuple[EnsembleNet, dict[str, Any]]:
    """Average the logits of the top-k trials' own models (best epochs, trained on the train part only).

    Members are chosen by val loss alone; the threshold is chosen on the val pairs, which no member trained on.
    """
    members, configs, chosen = [], [], []
    for result, loss in top_trials(results, k):
        config = Config.from_dict(dict(result.config), source="ensemble member")
        model = searched_model(result, config)
        if model is not None:
            members.append(model)
            configs.append(config)
            chosen.append({"trial_id": Path(result.path).name, "val_loss": loss})
    if len(members) < 2:
        raise InputError(f"option --ensemble={k}: only {len(members)} trial(s) have a usable checkpoint")
    model = EnsembleNet(members, configs)
    config = model.config
    device = resolve_device(config)
    model = model.to(device)
    images = images_on(device, data.images)
    val_logits = predict(model, images, data.val, config)
    threshold = best_threshold(data.val[:, 2], val_logits)
    report = {"members": chosen, "val": pair_metrics(data.val[:, 2], val_logits, threshold),
              "test": evaluate(model, images, data.test, config, threshold=threshold, with_roc=True)}
    return model, report


def export_target(settings: SearchSettings, export_dir: str | None, suffix: str = "") -> str:
    """EXPORT_DIR + suffix, or EXPERIMENT/export + suffix; always a local folder."""
    target = f"{export_dir.rstrip('/')}{suffix}" if export_dir else join(settings.experiment_path, f"export{suffix}")
    if "://" in target:
        raise InputError("option --export-dir must be a local folder", target)
    return target


def _scalars(test: dict[str, Any]) -> dict[str, Any]:
    """Test metrics without the ROC points, for an export's metrics.json."""
    return {k: v for k, v in test.items() if not k.startswith("roc_")}


def finish(settings: SearchSettings, results: tune.ResultGrid, data: PairData, export_dir: str | None,
           retrain: bool = True, ensemble: int = 0, search_seconds: float = 0.0,
           resumed: bool = False) -> tuple[dict[str, Any], Any]:
    """Pick the best trial, retrain, test, export; optionally also ensemble the top trials; write final.json
    (with the wall time of the search as the caller measured it, and of this step).

    Returns (summary, retrained model)."""
    started = time.time()
    best, epoch, loss = best_trial(results)
    config = Config.from_dict(dict(best.config), source="best trial")
    summary: dict[str, Any] = {"best_config": config.to_dict(), "best_epoch": epoch, "best_val_loss": loss,
                               "experiment": settings.experiment_path,
                               "trials": len(results), "errored_trials": len(results.errors)}
    model = None
    if retrain:
        model, scores = retrain_and_test(config, data, epoch, searched_model(best, config))
        summary.update(scores)
        target = export_target(settings, export_dir)
        export_model(model, config, target, metrics={"epochs_trained": epoch, **_scalars(scores["test"])},
                     threshold_logit=scores["test"]["threshold_logit"])
        summary["export"] = str(Path(target).resolve())
    if ensemble >= 2:
        members, report = ensemble_and_test(results, data, ensemble)
        target = export_target(settings, export_dir, "-ensemble")
        export_ensemble(members, target, metrics=_scalars(report["test"]),
                        threshold_logit=report["test"]["threshold_logit"])
        summary["ensemble"] = {**report, "export": str(Path(target).resolve())}
    summary["wall_seconds"] = {"search": round(search_seconds, 1),  # of this invocation (a resume: its part only)
                               "retrain_test_export": round(time.time() - started, 1), "resumed": resumed}
    write_text(join(settings.experiment_path, FINAL_FILE), json.dumps(summary, indent=2) + "\n")
    return summary, model

"""The thin Ray layer: a function trainable around `engine.fit`, and the Tuner (OptunaSearch + ASHA).

The trainable reads only its config; the dataset reaches every trial once through Ray's object store.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from . import storage
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config
from .data import PairData
from .engine import Diverged, fit
from .errors import InputError
from .names import BEST_VAL_LOSS, DIVERGED_LOSS, MODE, STATE_FILE, STUDY_FILE, VAL_LOSS



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
        tune.report({VAL_LOSS: DIVERGED_LOSS, BEST_VAL_LOSS: DIVERGED_LOSS, "val_accuracy": 0.5, "val_auc": 0.5,
                     "diverged": 1,
                     "diverged_reason": str(exc)})


class CompletionWatch(tune.Callback):
    """Tells a search that ended from one that was interrupted (Ctrl-C, SIGUSR1).

    After an interrupt Tune stops the trials still running and marks them TERMINATED, like finished ones, but
    without the on_trial_complete / on_trial_error calls that every real ending (the trial returning, ASHA
    stopping it, an error) makes. `latest` is the instance of the newest search in this process, also after
    Tuner.restore (which unpickles its own copy)."""

    latest: "CompletionWatch | None" = None

    def __init__(self) -> None:
        self.ended: set[str] = set()
        self.cut_short: set[str] = set()
        self.started = False

    def setup(self, **info: Any) -> None:
        self.ended, self.cut_short, self.started = set(), set(), False
        CompletionWatch.latest = self

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.started:  # a resumed search does not run again the trials that ended before
            self.ended |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
            self.started = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.cut_short = {t.trial_id for t in trials if t.trial_id not in self.ended}


def interrupted(results: tune.ResultGrid, num_samples: int) -> bool:
    """True when the search did not run every trial to its own end (see CompletionWatch)."""
    watch = CompletionWatch.latest
    return bool(watch is None or watch.cut_short or len(results) < num_samples
                or results.num_terminated + results.num_errors < num_samples)


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
    study_storage: str = ""  # where the Optuna study lives: an SQLAlchemy URL, a journal file, "" = in memory
    retrain_cpus: float = 0.0  # 0: what the search used at once, up to one node's CPUs
    retrain_gpus: float | None = None  # None: a trial's share

    @property
    def experiment_path(self) -> str:
        return storage.child(self.storage_path, self.name)


def default_study_storage(storage_path: str, name: str) -> str:
    """An SQLite file in a local experiment folder (optuna-dashboard reads it live); in memory for a remote URI."""
    folder = storage_path.removeprefix("file://")
    if storage.is_uri(folder):
        return ""
    return f"sqlite:///{Path(folder, name, STUDY_FILE)}"


def open_study_storage(location: str) -> optuna.storages.BaseStorage | None:
    """An Optuna storage for an SQLAlchemy URL (sqlite:///..., postgresql://...) or a journal file path."""
    if not location:
        return None
    try:
        if location.startswith("sqlite:///"):
            Path(location.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if "://" in location:
            return optuna.storages.RDBStorage(location)
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(location))
    except Exception as exc:  # noqa: BLE001 - driver, URL, network or permission: all mean "cannot use it"
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
        raise InputError(f"option --study-storage={redact(location)}: cannot open it ({reason})") from None


def redact(url: str) -> str:
    """A database URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def check_new_study(location: str, name: str) -> None:
    """A new search must not silently continue someone's study of the same name in a shared database."""
    study_storage = open_study_storage(location)
    if study_storage is None:
        return
    if any(study.study_name == name for study in study_storage.get_all_studies()):
        raise InputError(f"option --study-storage={redact(location)} already holds a study named {name!r}; "
                         "choose another --name, or --resume that experiment")


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
    # The study is named after the experiment; with a storage it can be watched live (optuna-dashboard) and
    # queried later, and a resumed search keeps writing to it (the searcher's saved state holds the storage).
    searcher = OptunaSearch(sampler=sampler, points_to_evaluate=points or None, metric=BEST_VAL_LOSS, mode=MODE,
                            study_name=settings.name, storage=open_study_storage(settings.study_storage))
    scheduler = ASHAScheduler(time_attr="training_iteration", metric=VAL_LOSS, mode=MODE, max_t=settings.max_epochs,
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
            callbacks=[CompletionWatch()],
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        ),
    )


def restore_tuner(settings: SearchSettings, data: PairData) -> tune.Tuner:
    return tune.Tuner.restore(settings.experiment_path, trainable=build_trainable(settings, data),
                              resume_unfinished=True, resume_errored=True)

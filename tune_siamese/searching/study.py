"""Where the Optuna study lives: a database (any SQLAlchemy URL Optuna takes) or a journal file.

The study is named after the experiment, so optuna-dashboard and optuna.load_study find it by that name. The
default, an SQLite file inside a local experiment folder, is recorded relative to that folder (IN_EXPERIMENT), so
that a moved or copied experiment finds its own study.
"""
from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend

from tune_siamese.core import storage
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import STUDY_FILE

IN_EXPERIMENT = "sqlite:///{experiment}/"  # an SQLite study inside the experiment folder, wherever that is now


def default_study_storage(storage_path: str) -> str:
    """An SQLite file in a local experiment folder (optuna-dashboard reads it live); in memory for a remote URI."""
    if storage.is_uri(storage_path.removeprefix("file://")):
        return ""
    return IN_EXPERIMENT + STUDY_FILE


def study_location(stored: str, experiment: str) -> str:
    """Where a recorded study storage is now: one inside the experiment in the experiment's current folder; any
    other as the user gave it."""
    if not stored.startswith(IN_EXPERIMENT):
        return stored
    return f"sqlite:///{Path(experiment.removeprefix('file://'), stored.removeprefix(IN_EXPERIMENT))}"


# Where the state Tune unpickles on resume (this storage, the searcher's trial folders) is to find the experiment
# now, wherever it was moved or copied: set for the restore and the run after it (tuner.restore_tuner), "" for a new
# search. A context variable, so that it belongs to the call that restores, not to a class.
restoring_into: ContextVar[str] = ContextVar("restoring_into", default="")


class ExperimentStudyStorage(optuna.storages.RDBStorage):
    """The SQLite study inside the experiment folder.

    Tune pickles the searcher, and with it this storage, into tuner.pkl and the searcher's state file. A plain
    RDBStorage unpickles by opening the path it was built with: after a move or copy, the old place (an empty
    database created there, or a failure), while the study in the folder being resumed keeps its trials RUNNING.
    This one is pickled as its place inside the experiment and unpickles into the folder `restoring_into` names
    (tuner.restore_tuner sets it before Tune restores), else into the one it was built for."""

    def __init__(self, stored: str, experiment: str) -> None:
        self.stored, self.experiment = stored, experiment
        super().__init__(study_location(stored, experiment))

    def __setstate__(self, state: dict[str, Any]) -> None:
        experiment = restoring_into.get() or state["experiment"]
        super().__setstate__({**state, "experiment": experiment,
                              "url": study_location(state["stored"], experiment)})


def open_study_storage(stored: str, experiment: str = "") -> optuna.storages.BaseStorage | None:
    """An Optuna storage for an SQLAlchemy URL (sqlite:///..., postgresql://...) or a journal file path; one
    inside the experiment (IN_EXPERIMENT) in `experiment`."""
    if not stored:
        return None
    location = study_location(stored, experiment)
    try:
        if location.startswith("sqlite:///"):
            Path(location.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if stored.startswith(IN_EXPERIMENT):
            return ExperimentStudyStorage(stored, experiment)
        if "://" in location:
            return optuna.storages.RDBStorage(location)
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(location))
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


def check_resumed_study(location: str, name: str, trials: int) -> None:
    """A resumed search must find its study where it left it: the study of its name, holding at least the
    `trials` Tune recorded (each was suggested by it). Otherwise the searcher would start an empty study, and
    suggest as if nothing had been tried. Nothing is created here."""
    if not location or trials == 0:  # in memory, or nothing suggested yet: nothing the study must hold
        open_study_storage(location)
        return
    file = location.removeprefix("sqlite:///") if location.startswith("sqlite:///") else (
        location if "://" not in location else None)
    if file is not None and not Path(file).is_file():
        raise InputError(f"option --resume: no Optuna study database here, but Tune recorded {trials} trials the "
                         "study suggested (was the database moved or deleted?)", file)
    study_storage = open_study_storage(location)
    assert study_storage is not None
    try:
        held = study_storage.get_n_trials(study_storage.get_study_id_from_name(name))
    except KeyError:
        held = 0
    if held < trials:
        raise InputError(f"option --resume: the Optuna study {name!r} in {redact(location)} holds {held} trials, "
                         f"but Tune recorded {trials}: this is not the study the search wrote to (a moved or "
                         "replaced database, or a relative --study-storage read from another folder?)")

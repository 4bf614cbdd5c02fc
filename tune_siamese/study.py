"""Where the Optuna study lives: a database (any SQLAlchemy URL Optuna takes) or a journal file.

The study is named after the experiment, so optuna-dashboard and optuna.load_study find it by that name.
"""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend

from . import storage
from .errors import InputError
from .names import STUDY_FILE


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

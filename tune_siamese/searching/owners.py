"""Resuming unpickles what an experiment folder holds, and imports the space file its settings name: only from
folders and files this user owns and nobody else may write. A space file is read as source, never as Python's
cached bytecode, and only from a folder nobody else may write (space_source)."""
from __future__ import annotations

import os
from pathlib import Path

from tune_siamese.core import storage
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import SETTINGS_FILE

# What --resume (and the finalist stage's restore) unpickles from an experiment folder: Ray's state in pickle
# (tuner.pkl, the searcher's and the callbacks' state) or with cloudpickle blobs inside JSON (the experiment's,
# the search generator's and the grid generator's state), and an errored trial's pickled error; and
# search_settings.json, which names the space file that is imported.
RESUME_READS = ("*.pkl", "experiment_state-*.json", "search_gen_state-*.json", "basic-variant-state-*.json",
                "*/error.pkl", SETTINGS_FILE)


def check_owner(experiment: str) -> None:
    """Resuming runs code that the experiment's state files may hold (RESUME_READS): resume only a local folder
    this user owns and nobody else may write, with each of those files so. (A storage URI cannot be checked
    here: whoever can write to the bucket can run code in a resumed search.)"""
    if storage.is_uri(experiment) and not experiment.startswith("file://"):
        return
    folder = Path(experiment.removeprefix("file://"))
    check_owner_of([folder, *sorted({path for pattern in RESUME_READS for path in folder.glob(pattern)})])


def check_owner_of(paths: list[Path]) -> None:
    """Each path must belong to this user, and neither group nor others may write to it."""
    for path in paths:
        info = path.stat()
        if info.st_uid != os.getuid():
            raise InputError("option --resume: this experiment belongs to another user; resuming it would run "
                             "code this file may hold", path)
        if info.st_mode & 0o022:
            raise InputError("option --resume: others may write to this experiment (group/world-writable); "
                             "resuming it would run code this file may hold", path)


def space_source(path: Path, option: str) -> bytes:
    """The source of a `file.py:SPACE` space, which runs as code in every search and resume of it: the file and the
    folder holding it (the folder of the name given and, for a link, of the file it points to) must belong to this
    user and be writable by no one else. Read from the file that was checked (fstat of the open file), so that it
    cannot be swapped in between; Python's import would run a `__pycache__/*.pyc` beside it instead, which whoever
    may write to the folder can plant."""
    try:
        with open(path, "rb") as fh:
            _check_mine(os.fstat(fh.fileno()), "space file", path, option)
            for folder in dict.fromkeys([path.absolute().parent, path.resolve().parent]):
                _check_mine(folder.stat(), "folder of the space file", folder, option)
            return fh.read()
    except OSError as exc:
        raise InputError(f"option {option}: cannot read the space file ({exc.strerror or exc})", path) from None


def _check_mine(info: os.stat_result, what: str, path: Path, option: str) -> None:
    if info.st_uid != os.getuid():
        raise InputError(f"option {option}: this {what} belongs to another user; the space would run code they "
                         "control", path)
    if info.st_mode & 0o022:
        raise InputError(f"option {option}: others may write to this {what} (group/world-writable); the space "
                         "would run code they put there (chmod go-w it)", path)

"""Resuming unpickles what an experiment folder holds, and imports the space file its settings name: only from
folders and files this user owns and nobody else may write."""
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

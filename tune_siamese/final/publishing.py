"""Where an export goes (EXPERIMENT/export<suffix>, and a copy in --export-dir) and how it is written whole."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from tune_siamese.artifacts.checksums import CHECKSUMS
from tune_siamese.core import storage
from tune_siamese.searching.settings import SearchSettings

# ------------------------------------------------------------------------------------------------------
# Exports: written next to the experiment (local folder or storage URI), optionally copied to a local folder

def export_targets(settings: SearchSettings, export_dir: str | None, suffix: str = "") -> tuple[str, str | None]:
    """(EXPERIMENT/export<suffix> in the experiment's storage, EXPORT_DIR<suffix> or None)."""
    copy = storage.resolve(f"{export_dir.rstrip('/')}{suffix}") if export_dir else None
    return storage.child(settings.experiment_path, f"export{suffix}"), copy


def publish_export(write: Callable[[Path], Any], target: str, copy: str | None) -> None:
    """Run `write(folder)` into the target, then copy it. A local target is written into a temporary folder that
    takes its place once whole (storage.replacing_folder): a full disk or Ctrl-C leaves the old export or none,
    never half of one. A URI is written to a local temporary folder and uploaded file by file, each whole, the
    checksums last (storage.upload_folder): one cut short lacks them, and loading refuses it."""
    if storage.is_uri(target):
        with tempfile.TemporaryDirectory(prefix="tune-siamese-export-") as folder:
            write(Path(folder))
            storage.upload_folder(folder, target, last=CHECKSUMS)
            if copy:
                storage.upload_folder(folder, copy, last=CHECKSUMS)
        return
    with storage.replacing_folder(target) as folder:
        write(folder)
    if copy:
        storage.upload_folder(target, copy, last=CHECKSUMS)

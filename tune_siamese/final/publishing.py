"""Where an export goes (EXPERIMENT/export<suffix>, and a copy in --export-dir) and how it is written whole: room
checked first, a failed write one line, and what a killed run left behind removed by the next one."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from tune_siamese.artifacts.checksums import CHECKSUMS
from tune_siamese.core import storage
from tune_siamese.core.errors import InputError
from tune_siamese.searching.settings import SearchSettings


class WriteFailed(InputError):
    """A write after the work that failed (a full disk, a lost mount) and left nothing half-written: one line,
    exit 2, and the work can be done again (a search: --resume does only what is left)."""


# ------------------------------------------------------------------------------------------------------
# Exports: written next to the experiment (local folder or storage URI), optionally copied to a local folder

def export_targets(settings: SearchSettings, export_dir: str | None, suffix: str = "") -> tuple[str, str | None]:
    """(EXPERIMENT/export<suffix> in the experiment's storage, EXPORT_DIR<suffix> or None)."""
    copy = storage.resolve(f"{export_dir.rstrip('/')}{suffix}") if export_dir else None
    return storage.child(settings.experiment_path, f"export{suffix}"), copy


def export_size(model: torch.nn.Module) -> int:
    """A lower bound on an export's bytes: its weights three times (model.safetensors, model.pt2 and verifier.pt2
    each hold them; an ensemble's verifier.pt2 holds every member's again)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    members = getattr(model, "members", None)
    return 3 * weights + (weights if members is not None else 0)


def check_room(target: str, need: int) -> None:
    """Refuse, before anything is written, an export that cannot fit where it goes (a URI: the local temporary
    folder it is written to first). An estimate: a write that fails anyway is caught in publish_export."""
    where = Path(tempfile.gettempdir()) if storage.is_uri(target) else Path(target)
    while not where.exists() and where != where.parent:  # the nearest folder there is: the disk it lands on
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise WriteFailed(f"no room for the export: it needs about {_mb(need)}, {_mb(free)} free there; nothing was "
                         "exported", target)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def publish_export(write: Callable[[Path], Any], target: str, copy: str | None, size: int = 0) -> None:
    """Run `write(folder)` into the target, then copy it. A local target is written into a temporary folder that
    takes its place once whole (storage.replacing_folder): a full disk or Ctrl-C leaves the old export or none,
    never half of one. A URI is written to a local temporary folder and uploaded file by file, each whole, the
    checksums last (storage.upload_folder): one cut short lacks them, and loading refuses it. `size`: the bytes
    it needs at least (export_size), checked first. A failed write (a full disk, a lost mount) is one line."""
    for destination in (target, copy):
        if destination is not None:
            check_room(destination, size)
    if copy is not None:
        remove_stale_temporaries(copy, deep=True)  # upload_folder's, of a copy a killed run left
    try:
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
    except OSError as exc:
        raise WriteFailed(f"cannot write the export ({write_failure(exc)}); no export or temporary of it is left",
                         target) from None


def write_failure(exc: OSError) -> str:
    """What a failed write says in one line: the system's words (No space left on device), else the message's
    first 200 characters."""
    return exc.strerror or " ".join(str(exc).split())[:200] or exc.__class__.__name__


def remove_export(target: str) -> None:
    """Delete an export this run wrote (local or at a storage URI), when its record could not follow it."""
    if storage.is_uri(target):
        fs, where = storage.filesystem(target)
        fs.delete_dir(where)
    else:
        shutil.rmtree(target, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------
# What a killed run leaves: storage.replacing's `.NAME.PID.tmp.SUFFIX` files and replacing_folder's
# `.NAME.PID.tmp` and `.NAME.PID.old.tmp` folders (SIGKILL runs no cleanup).

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<kind>old\.tmp|tmp)(?P<suffix>\.[^.]+)?")


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine is alive. This process counts as gone: it removes stale temporaries
    before it writes any (a container may give a rerun the killed run's pid)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed process its parent has not reaped yet writes nothing more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def remove_stale_temporaries(folder: str, deep: bool = False) -> list[str]:
    """Remove the temporaries of processes of this machine that are gone from a local `folder` (and its
    sub-folders with `deep`); an old export set aside (`.export.PID.old.tmp`) whose swap was cut short between
    its two renames goes back in place. Returns the names handled. A URI: nothing (a storage URI gets whole
    objects only)."""
    if storage.is_uri(folder) or not Path(folder).is_dir():
        return []
    entries = sorted(Path(folder).rglob(".*") if deep else Path(folder).glob(".*"))
    handled = []
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or not entry.exists() or process_alive(int(match["pid"])):
            continue
        original = entry.with_name(match["name"] + (match["suffix"] or ""))
        if match["kind"] == "old.tmp" and not original.exists():
            os.replace(entry, original)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        handled.append(entry.name)
    return handled

"""Where experiments and exports live: a local folder or a storage URI, through pyarrow.fs as Ray Tune does.

A URI is anything with "://": `s3://bucket/prefix`, `gs://bucket/prefix`, `file:///shared/results`. Options of
the filesystem ride in the query string and stay on every path derived from it, e.g.
`s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http` for an S3-compatible server; pyarrow and
Ray read them the same way. This module is torch-free: the analysis uses it too.

Every file the project writes goes through `replacing` (or `write_text`, which uses it): written to a temporary
file beside it and renamed over it once whole, so a full disk, a lost mount or a signal never leaves a half-written
file, nor a temporary one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs

import pyarrow.fs

from tune_siamese.core.errors import InputError


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def _split_query(uri: str) -> tuple[str, str]:
    """("s3://bucket/a", "?endpoint_override=...") from "s3://bucket/a?endpoint_override=..."."""
    location, mark, query = uri.partition("?")
    return location.rstrip("/"), mark + query


def resolve(path: str | Path) -> str:
    """A local path made absolute (so it means the same on every node of a shared filesystem); a URI as is."""
    return str(path).rstrip("/") if is_uri(path) else str(Path(path).expanduser().resolve())


def child(base: str | Path, *parts: str) -> str:
    """base/part/..., keeping a URI's query string at the end."""
    location, query = _split_query(str(base))
    return "/".join([location, *parts]) + query


def parent_and_name(path: str | Path) -> tuple[str, str]:
    """("s3://b/results?q", "exp") from "s3://b/results/exp?q"; the same for local paths."""
    location, query = _split_query(resolve(path))
    parent, _, name = location.rpartition("/")
    return parent + query, name


# Keys of a final record (final.json, final-NAME.json) that hold paths, at its top level or in a part of it (the
# ensemble's export, the finalists' experiment). One inside the experiment is recorded relative to it ("export",
# "." for the experiment itself), so that a moved or copied experiment's record names its own files.
RECORD_PATH_KEYS = ("experiment", "export", "export_copy")


def _location(path: str) -> str:
    return path.partition("?")[0].rstrip("/")


def _inside(path: str, root: str) -> str | None:
    """`path` relative to `root` ("." for root itself), or None when it is not inside."""
    location, top = _location(path), _location(root)
    if location == top:
        return "."
    return location[len(top) + 1:] if location.startswith(top + "/") else None


def _each_path(record: dict[str, Any], change: Any) -> dict[str, Any]:
    """A copy of `record` with change(value) for each path it holds, also one level down (ensemble, finalists)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in RECORD_PATH_KEYS and isinstance(value, str):
            out[key] = change(value)
        elif isinstance(value, dict):
            out[key] = {k: change(v) if k in RECORD_PATH_KEYS and isinstance(v, str) else v for k, v in value.items()}
        else:
            out[key] = value
    return out


def record_as_written(record: dict[str, Any], experiment: str) -> dict[str, Any]:
    """The record as it is written into `experiment`: paths inside it relative to it, others (an --export-dir copy)
    as they are."""
    return _each_path(record, lambda value: _inside(value, experiment) or value)


def record_as_read(record: dict[str, Any], experiment: str) -> dict[str, Any]:
    """A record read from `experiment` with its paths where they are now: relative ones inside `experiment`; in an
    older record (absolute paths), those inside the experiment it names moved with it; others as recorded."""
    old_root = record.get("experiment") if isinstance(record.get("experiment"), str) else None

    def now(value: str) -> str:
        if not is_uri(value) and not value.startswith("/"):
            return experiment if value == "." else child(experiment, value)
        inside = _inside(value, old_root) if old_root and old_root != "." else None
        if inside is None:
            return value
        return experiment if inside == "." else child(experiment, inside)
    return {**_each_path(record, now), "experiment": experiment}


def record_renamed(record: dict[str, Any], experiment: str, renames: dict[str, str]) -> dict[str, Any]:
    """A record written in `experiment` after folders of it were renamed (old name -> new name), as written."""
    moved = {child(experiment, old): child(experiment, new) for old, new in renames.items()}
    now = _each_path(record_as_read(record, experiment), lambda value: moved.get(value, value))
    return record_as_written(now, experiment)


def check_name(name: str, source: str) -> None:
    """A name that becomes a folder (an experiment inside its storage path or bucket) must be exactly one path
    component there: not empty, '.' or '..', without a separator, without '?' or '#' (a URI's query and fragment,
    which child() keeps at the end), without control characters, and not starting with '-' (it would read as an
    option wherever the bare name is typed)."""
    if name in ("", ".", "..") or name.startswith("-") or any(
            ch in "/\\?#" or ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InputError(f"{source}={name!r} must be one folder name: not empty, '.' or '..', without / \\ ? # or "
                         "control characters, and not starting with '-'")


# How long pyarrow's GCS client retries a request before it gives up. Its own default retries for about 15 minutes,
# so an unreachable endpoint or missing credentials (offline, no such bucket) hung `ts.load("gs://...")` for longer
# than anyone waits; S3's client gives up within seconds. A URI's own `retry_limit_seconds` wins.
GCS_RETRY_SECONDS = 10
GCS_SCHEMES = ("gs", "gcs")


def bounded_uri(uri: str) -> str:
    """`uri` with GCS's retry time limit in its query (other schemes, and a limit already given, as they are)."""
    location, mark, query = uri.partition("?")
    if location.partition("://")[0].lower() not in GCS_SCHEMES or "retry_limit_seconds" in parse_qs(query):
        return uri
    return f"{location}?{query + '&' if query else ''}retry_limit_seconds={GCS_RETRY_SECONDS}"


def filesystem(path: str | Path) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem and the path on it for a local path or a URI (GCS with a bounded retry time)."""
    if is_uri(path):
        try:
            return pyarrow.fs.FileSystem.from_uri(bounded_uri(str(path)))
        except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, OSError) as exc:
            raise InputError(f"not a storage URI pyarrow can open ({str(exc).splitlines()[0]})", path) from None
    return pyarrow.fs.LocalFileSystem(), resolve(path)


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """A failed read of a storage URI (offline, no such bucket, no credentials) as one line naming it; a local
    path's errors as they are."""
    try:
        yield
    except OSError as exc:
        if not is_uri(path):
            raise
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
        raise InputError(f"cannot read this storage URI ({reason})", path) from None


def exists(path: str | Path) -> bool:
    fs, where = filesystem(path)
    with reading(path):
        return fs.get_file_info(where).type != pyarrow.fs.FileType.NotFound


def move(path: str | Path, target: str | Path) -> None:
    """Rename a file or folder within its storage: locally in one step; at a URI (object stores rename nothing) a
    copy, then the original deleted, so a move cut short leaves both."""
    fs, where = filesystem(path)
    _, to = filesystem(target)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        os.replace(where, to)
        return
    folder = fs.get_file_info(where).type == pyarrow.fs.FileType.Directory
    pyarrow.fs.copy_files(where, to, source_filesystem=fs, destination_filesystem=fs)
    if folder:
        fs.delete_dir(where)
    else:
        fs.delete_file(where)


def read_text(path: str | Path) -> str | None:
    """The file's text, or None when there is no such file."""
    fs, where = filesystem(path)
    with reading(path):
        if fs.get_file_info(where).type != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(where) as stream:
            return stream.read().decode()


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside the local file `path` to write its new contents to. When the block ends without an
    error the temporary replaces `path` in one step (os.replace, atomic on POSIX); on any error (a full disk,
    Ctrl-C) it is removed and `path` stays as it was. Readers see the old file or the new one, never a part. The
    temporary keeps the suffix, for writers that take the format from it (matplotlib, numpy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        # No fsync: a full disk or a lost mount fails the write or the close, inside the block. (An fsync would
        # also survive a power cut, at its cost on every epoch's checkpoint.)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def replacing_folder(path: str | Path) -> Iterator[Path]:
    """`replacing` for a whole local folder (an export): the block fills a temporary folder beside `path`, which
    then takes its place (the old folder renamed aside and removed); on any error it is removed and `path` stays
    as it was. Between the two renames `path` is briefly absent, never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (path.with_name(f".{path.name}.{os.getpid()}.{kind}") for kind in ("tmp", "old.tmp"))
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process of the same id
        tmp.mkdir()
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)  # a failed swap puts the old folder back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _local(path: str | Path) -> Path | None:
    """The local path of a plain path or a file:// URI; None for remote storage."""
    fs, where = filesystem(path)
    return Path(where) if isinstance(fs, pyarrow.fs.LocalFileSystem) else None


def write_text(path: str | Path, text: str) -> None:
    """Write a whole file: locally through `replacing`. On S3 and GCS an object appears only once its upload
    completes, whole, so the object store's own write is already all-or-nothing."""
    data = text.encode()
    local = _local(path)
    if local is not None:
        with replacing(local) as tmp, open(tmp, "wb") as out:
            out.write(data)
        return
    fs, where = filesystem(path)
    fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(where) as out:
        out.write(data)


def missing_folders(path: str | Path) -> list[Path]:
    """The local folders that writing into `path` would create, deepest first ([] for a URI)."""
    if is_uri(path):
        return []
    folder, missing = Path(resolve(path)), []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove these folders, deepest first, as far as they are empty (a check's or a refused run's leftovers)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (someone wrote into it meanwhile), or gone already
            return


def check_writable(path: str | Path, option: str) -> None:
    """Write and delete a probe file under `path`, so a run fails before its search rather than after it. The
    folders the probe needed are removed again: a check writes nothing, also when a later one refuses the run."""
    probe = child(path, f".write-test-{os.getpid()}")
    created = missing_folders(path)
    try:
        write_text(probe, "ok")
        fs, where = filesystem(probe)
        fs.delete_file(where)
    except (OSError, pyarrow.ArrowException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:300]
        raise InputError(f"option {option} is not writable ({reason})", resolve(path)) from None
    finally:
        remove_empty(created)


def upload_folder(local: str | Path, target: str | Path, last: str = "") -> None:
    """Copy a local folder's files to `target` (a local folder or a URI), replacing files of the same name and
    leaving others. Each file arrives whole (`replacing`; an object upload is whole); the files named `last` (an
    export's checksums) are removed from the target first and copied after everything else, deepest first, so a
    copy cut short lacks them rather than vouching for a mix of old and new files."""
    source = Path(local).resolve()
    files = sorted((p for p in source.rglob("*") if p.is_file()),
                   key=lambda p: (p.name == last, -len(p.parts), str(p)))
    names = [p.relative_to(source).as_posix() for p in files]
    fs, where = filesystem(target)
    destination = _local(target)
    for name in names:
        if Path(name).name == last:  # pyarrow's delete_file refuses a missing file
            if fs.get_file_info(f"{where}/{name}").type == pyarrow.fs.FileType.File:
                fs.delete_file(f"{where}/{name}")
    for file, name in zip(files, names):
        if destination is not None:
            with replacing(destination / name) as tmp:
                shutil.copyfile(file, tmp)
        else:
            fs.create_dir(f"{where}/{name}".rsplit("/", 1)[0], recursive=True)
            pyarrow.fs.copy_files(str(file), f"{where}/{name}", source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=fs)


@contextlib.contextmanager
def local_copy(path: str | Path) -> Iterator[Path]:
    """A local folder with the contents of `path`: the folder itself when local, else a temporary download."""
    if not is_uri(path):
        yield Path(path)
        return
    fs, where = filesystem(path)
    if fs.get_file_info(where).type != pyarrow.fs.FileType.Directory:
        raise InputError("no folder at this storage URI", path)
    with tempfile.TemporaryDirectory(prefix="tune-siamese-") as folder:
        pyarrow.fs.copy_files(where, folder, source_filesystem=fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield Path(folder)


LOCK_FILE = ".lock"


def _lock_is_stale(holder: str) -> bool:
    """A lock left by a process of this machine that is gone (killed, crashed) may be taken over."""
    host, _, pid = holder.strip().rpartition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's process: we cannot tell, so it holds
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no such process (or no /proc: then only a live process can answer)
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return state in ("Z", "X")  # a killed process its parent has not reaped yet holds nothing


@contextlib.contextmanager
def experiment_lock(experiment: str) -> Iterator[None]:
    """One search or resume per experiment at a time: a lock file naming this host and process.

    Local folders get it atomically (O_EXCL); on a storage URI it is a check-then-write, which is enough to
    stop the usual mistake (the same --name twice, a resume while the search still runs)."""
    lock = child(experiment, LOCK_FILE)
    me = f"{socket.gethostname()} {os.getpid()}\n"
    created = missing_folders(experiment)  # removed again if the run is refused before it writes anything
    holder = read_text(lock)
    if holder is not None and not _lock_is_stale(holder):
        raise InputError(f"another search holds this experiment (process {holder.strip()}); wait for it, or "
                         f"delete {LOCK_FILE} if that process is gone", resolve(experiment))
    if is_uri(lock):
        write_text(lock, me)
    else:
        Path(lock).parent.mkdir(parents=True, exist_ok=True)
        if holder is not None:
            Path(lock).unlink(missing_ok=True)  # stale: its process is gone
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise InputError("another search took this experiment just now", resolve(experiment)) from None
        try:
            with os.fdopen(fd, "w") as out:
                out.write(me)
        except BaseException:  # an empty lock (a full disk) would hold the experiment forever
            Path(lock).unlink(missing_ok=True)
            raise
    try:
        yield
    finally:
        if read_text(lock) == me:
            fs, where = filesystem(lock)
            fs.delete_file(where)
        remove_empty(created)

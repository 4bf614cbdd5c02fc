"""Remote storage end to end against a real S3-compatible server on 127.0.0.1 (moto over HTTP): the search,
final.json, the export, the analysis and `tune-siamese verify` all work on an s3:// URI; bad targets fail first."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.fs
import pytest
from helpers import REPO, SMOKE, cli_json, enospc_open, fill_up, leftovers
from services import S3_ENV, s3_server

import analysis
from tune_siamese.app import cli, search_command
from tune_siamese.core import storage
from tune_siamese.core.errors import InputError


@pytest.fixture(scope="module")
def s3_query():
    with s3_server("results") as query:
        yield query


@pytest.fixture
def s3_env(monkeypatch):
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)


def run_search(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **S3_ENV}
    return subprocess.run([sys.executable, "run_search.py", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, start_new_session=True)


def test_uri_paths_keep_their_query_at_the_end():
    base = "s3://bucket/searches?endpoint_override=127.0.0.1:9000&scheme=http"
    experiment = storage.child(base, "exp")
    assert experiment == "s3://bucket/searches/exp?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.child(experiment, "export", "model.pt2").startswith("s3://bucket/searches/exp/export/model.pt2?")
    assert storage.parent_and_name(experiment) == (base, "exp")
    assert storage.parent_and_name("relative/exp") == (str(Path("relative").resolve()), "exp")
    assert storage.filesystem(experiment)[1] == "bucket/searches/exp"


def test_local_storage_round_trip_and_unwritable_folder(tmp_path):
    target = storage.child(str(tmp_path), "a", "b.txt")
    assert storage.read_text(target) is None
    storage.write_text(target, "hello")
    assert storage.read_text(target) == "hello" and storage.exists(target)
    storage.check_writable(tmp_path / "new", "--storage-path")  # leaves neither the probe nor the folder behind
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="option --storage-path is not writable"):
        storage.check_writable(tmp_path / "file" / "below", "--storage-path")


@pytest.mark.cluster
def test_search_export_analysis_and_verify_on_s3(s3_query, s3_env, tmp_path, make_image):
    uri = f"s3://results/searches?{s3_query}"
    done = run_search([*SMOKE, "--num-samples", "2", "--max-epochs", "2", "--grace-period", "2",
                       "--max-concurrent", "1",  # one trial actor, reused: a process start fewer
                       "--storage-path", uri, "--name", "on-s3", "--export-dir", str(tmp_path / "copy")])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    experiment = f"s3://results/searches/on-s3?{s3_query}"
    # the query stays at the end of every URI derived from the storage path
    assert f"Exported to s3://results/searches/on-s3/export?{s3_query} and {tmp_path / 'copy'}" in done.stdout

    # final.json and the export are in the bucket, the export also in the local copy
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
    final = json.loads(storage.read_text(storage.child(experiment, "final.json")))
    assert final["export"] == "export" and final["trials"] == 2  # inside the experiment: relative to it
    exported = {info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/export"))}
    assert {"model.safetensors", "config.json", "model.pt2", "metrics.json", "SHA256SUMS"} <= exported
    assert exported == {p.name for p in (tmp_path / "copy").iterdir()}

    exp = analysis.load(experiment)
    assert exp.name == "on-s3" and len(exp.trials) == 2 and exp.summary["trials"] == 2
    out = analysis.report(experiment, tmp_path / "report")
    assert (out / "report.md").is_file() and (out / "learning_curves.png").is_file()

    a, b = make_image(tmp_path / "a.png", seed=1), make_image(tmp_path / "b.png", seed=2)
    remote = cli_json(cli.main, ["verify", storage.child(experiment, "export"), str(a), str(b)])
    local = cli_json(cli.main, ["verify", str(tmp_path / "copy"), str(a), str(b)])
    assert remote == local


@pytest.mark.cluster
def test_unwritable_targets_fail_before_the_search(s3_query, s3_env, tmp_path, capsys, monkeypatch):
    """The search command's own main (its exit status and messages), in this process: it must fail before it
    connects to Ray, which is made to fail the test."""
    from tune_siamese.searching import cluster

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("the search reached Ray")

    monkeypatch.setattr(cluster, "connect", no_ray)
    missing_bucket = f"s3://no-such-bucket/x?{s3_query}"
    assert search_command.main([*SMOKE, "--storage-path", missing_bucket, "--name", "never"]) == 2
    out, err = capsys.readouterr()
    assert "option --storage-path is not writable" in err and "Traceback" not in err
    assert "Ray" not in out

    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    assert search_command.main([*SMOKE, "--storage-path", f"s3://results/ok?{s3_query}", "--name", "never",
                                "--export-dir", str(not_a_folder / "export")]) == 2
    out, err = capsys.readouterr()
    assert "option --export-dir is not writable" in err and "Traceback" not in err and "Ray" not in out


OLD, NEW = '{"old": true}\n', '{"new": "' + "x" * 5000 + '"}\n'


def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """On a full disk final.json was left at 0 bytes (the analysis then refused the experiment)."""
    final = tmp_path / "exp" / "final.json"
    storage.write_text(final, OLD)
    monkeypatch.setattr(storage, "open", enospc_open(after=10), raising=False)
    with pytest.raises(OSError) as caught:
        storage.write_text(final, NEW)
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        storage.write_text(tmp_path / "exp" / "new.json", NEW)
    assert final.read_text() == OLD and leftovers(tmp_path) == []
    assert sorted(p.name for p in final.parent.iterdir()) == ["final.json"]


def test_a_cache_write_that_fails_leaves_no_temporary(tmp_path, monkeypatch):
    """The data cache left a KEY.PID.tmp file behind on every failed write."""
    from tune_siamese.data import images

    monkeypatch.setenv("TUNE_SIAMESE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(images, "open", enospc_open(after=100), raising=False)
    arrays = images.cached("key", lambda: {"a": np.arange(10_000)})
    assert int(arrays["a"].sum()) == 49_995_000  # still handed back: a cache that takes no writes only costs time
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_export_cut_short_leaves_no_export(tmp_path):
    """publish writes an export into a temporary folder and puts it in place whole, or not at all."""
    from tune_siamese.final.publishing import WriteFailed, publish_export

    target = tmp_path / "exp" / "export"

    def half_an_export(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteFailed, match="cannot write the export"):
        publish_export(half_an_export, str(target), None)
    assert not target.exists() and list((tmp_path / "exp").iterdir()) == []
    target.mkdir()
    (target / "SHA256SUMS").write_text("the old export's\n")
    with pytest.raises(WriteFailed, match="cannot write the export"):
        publish_export(half_an_export, str(target), None)
    assert [p.name for p in target.iterdir()] == ["SHA256SUMS"] and leftovers(tmp_path) == []

    def whole(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"new weights")
        (folder / "SHA256SUMS").write_text("the new export's\n")

    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "notes.txt").write_text("the user's own file")  # --export-dir may hold other files: they stay
    publish_export(whole, str(target), str(copy))
    assert sorted(p.name for p in target.iterdir()) == ["SHA256SUMS", "model.safetensors"]
    assert (target / "SHA256SUMS").read_text() == (copy / "SHA256SUMS").read_text() == "the new export's\n"
    assert sorted(p.name for p in copy.iterdir()) == ["SHA256SUMS", "model.safetensors", "notes.txt"]
    assert leftovers(tmp_path) == []


def test_a_full_disk_leaves_every_file_whole(full_disk, monkeypatch, tiny_config):
    """A really full filesystem (a 1 MiB tmpfs): final.json, the data cache, a checkpoint, a plot and an export
    each fail with one error, keep what was there and leave no temporary or empty file behind."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from analysis.plots import save_figure
    from tune_siamese.artifacts.checkpoint import export_model, save_checkpoint
    from tune_siamese.data import images
    from tune_siamese.final.publishing import WriteFailed, publish_export
    from tune_siamese.training.model import build_model

    final = full_disk / "exp" / "final.json"
    storage.write_text(final, OLD)
    monkeypatch.setenv("TUNE_SIAMESE_CACHE", str(full_disk / "cache"))
    fill_up(full_disk)
    with pytest.raises(OSError) as caught:
        storage.write_text(final, NEW)
    assert caught.value.errno == errno.ENOSPC and final.read_text() == OLD
    assert int(images.cached("key", lambda: {"a": np.arange(10_000)})["a"][-1]) == 9_999
    with pytest.raises(InputError, match="cannot write the checkpoint"):
        save_checkpoint({"weights": np.zeros(100_000)}, full_disk / "trial" / "state.pt")
    with pytest.raises(OSError):
        save_figure(Figure(), full_disk / "report" / "roc.png")
    config = tiny_config()
    with pytest.raises(WriteFailed, match="cannot write the export"):
        publish_export(lambda folder: export_model(build_model(config), config, folder),
                       str(full_disk / "exp" / "export"), None)
    assert not (full_disk / "exp" / "export").exists()
    (full_disk / "filler").unlink()
    assert leftovers(full_disk) == []
    assert sorted(str(p.relative_to(full_disk)) for p in full_disk.rglob("*") if p.is_file()) == ["exp/final.json"]


def test_study_storages_open_and_a_taken_study_name_is_refused(tmp_path):
    import optuna

    from tune_siamese.searching.study import (
        check_new_study,
        default_study_storage,
        open_study_storage,
        redact,
        study_location,
    )

    # the default is recorded relative to the experiment and found wherever the experiment is now
    assert default_study_storage(str(tmp_path)) == default_study_storage(f"file://{tmp_path}") == (
        "sqlite:///{experiment}/optuna.db")
    assert study_location(default_study_storage(str(tmp_path)), f"{tmp_path}/exp") == (
        f"sqlite:///{tmp_path}/exp/optuna.db")
    assert study_location(default_study_storage(str(tmp_path)), f"file://{tmp_path}/exp") == (
        f"sqlite:///{tmp_path}/exp/optuna.db")
    assert study_location("sqlite:///elsewhere.db", f"{tmp_path}/exp") == "sqlite:///elsewhere.db"  # as given
    assert default_study_storage("s3://bucket/x?scheme=http") == ""
    assert open_study_storage("") is None
    journal = open_study_storage(str(tmp_path / "journal" / "study.log"))
    assert isinstance(journal, optuna.storages.JournalStorage)
    sqlite = f"sqlite:///{tmp_path}/db/optuna.db"
    optuna.create_study(study_name="taken", storage=open_study_storage(sqlite))  # creates its folder too
    check_new_study(sqlite, "free")
    with pytest.raises(InputError, match="already holds a study named 'taken'"):
        check_new_study(sqlite, "taken")
    with pytest.raises(InputError, match=r"--study-storage=postgresql\+psycopg2://me:\*\*\*@127.0.0.1:1/x"):
        open_study_storage("postgresql+psycopg2://me:secret@127.0.0.1:1/x")
    assert redact("sqlite:///a.db") == "sqlite:///a.db"


def test_a_study_inside_the_experiment_unpickles_at_the_experiments_new_place(tmp_path, monkeypatch):
    """Tune pickles the searcher, and with it the study's storage, into the experiment (tuner.pkl, the searcher's
    state); a resumed copy or a moved folder must open its own database, not the one it was built with."""
    import pickle
    import shutil

    import optuna

    from tune_siamese.searching.study import default_study_storage, open_study_storage, restoring_into

    old, new = tmp_path / "old" / "exp", tmp_path / "new" / "exp"
    study = optuna.create_study(study_name="exp", storage=open_study_storage(default_study_storage(str(tmp_path)),
                                                                             str(old)))
    study.ask()
    saved = pickle.dumps(study)
    new.parent.mkdir()
    shutil.move(old, new)
    token = restoring_into.set(str(new))  # what tuner.restore_tuner sets
    try:
        restored = pickle.loads(saved)
    finally:
        restoring_into.reset(token)
    restored.tell(restored.ask(), 0.5)
    states = [t.state.name for t in optuna.load_study(study_name="exp", storage=f"sqlite:///{new}/optuna.db").trials]
    assert states == ["RUNNING", "COMPLETE"]
    assert not old.exists()  # nothing at the old place

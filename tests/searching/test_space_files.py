"""A `file.py:SPACE` space runs as code in a search and in every --resume of it: it is run from its source only
(never from a `__pycache__/*.pyc` that whoever may write to its folder can plant), writes no bytecode, and is
refused, in one line, when it or its folder belongs to another user or is writable by group or others."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import marshal
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SMOKE

from tune_siamese.app import search_command
from tune_siamese.core.errors import InputError
from tune_siamese.searching.settings import settings_for
from tune_siamese.searching.spaces import get_preset

SOURCE = "from search_spaces import PRESETS\nSPACE = PRESETS['smoke']\n"
PLANTED = ("import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"
           "from search_spaces import PRESETS\nSPACE = PRESETS['quick']\n")


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """Files and folders made here are writable by their owner only, whatever umask the test runner has."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def space_with_planted_bytecode(folder: Path) -> tuple[Path, Path]:
    """(space.py, the file its planted bytecode writes when run): a world-writable .pyc in __pycache__ whose
    header matches the source's mtime and size, as Python's import checks it."""
    folder.mkdir(mode=0o755)
    space = folder / "space.py"
    space.write_text(SOURCE)
    marker = folder.parent / "planted-code-ran"
    code = compile(PLANTED.format(marker=str(marker)), str(space), "exec")
    info = space.stat()
    cached = Path(importlib.util.cache_from_source(str(space)))
    cached.parent.mkdir(mode=0o777)
    header = [0, int(info.st_mtime), info.st_size]  # flags 0: checked by the source's mtime and size
    cached.write_bytes(importlib.util.MAGIC_NUMBER + b"".join((n & 0xFFFFFFFF).to_bytes(4, "little") for n in header)
                       + marshal.dumps(code))
    cached.chmod(0o666)
    return space, marker


def test_a_space_file_runs_from_its_source_never_from_planted_bytecode(tmp_path):
    space, marker = space_with_planted_bytecode(tmp_path / "spaces")
    preset = get_preset(f"{space}:SPACE")
    assert not marker.exists()  # the planted code did not run
    assert preset.space.keys() == get_preset("smoke").space.keys()  # the source's space, not the .pyc's
    clean = tmp_path / "clean"
    clean.mkdir(mode=0o755)
    (clean / "space.py").write_text(SOURCE)
    get_preset(f"{clean / 'space.py'}:SPACE")
    assert os.listdir(clean) == ["space.py"]  # no __pycache__ written beside it


def experiment_naming(space: Path, storage_path: Path) -> Path:
    experiment = storage_path / "exp"
    experiment.mkdir(mode=0o755, parents=True)
    settings, _ = settings_for(search_command.parse_args([*SMOKE, "--storage-path", str(storage_path),
                                                          "--name", "exp"]))
    saved = {**dataclasses.asdict(settings), "space": f"{space}:SPACE"}
    (experiment / "search_settings.json").write_text(json.dumps(saved))
    return experiment


def test_resume_runs_the_space_from_its_source(tmp_path, capsys, monkeypatch):
    """--resume checked the space file's owner, then imported the planted .pyc beside it: its code ran."""
    space, marker = space_with_planted_bytecode(tmp_path / "spaces")
    experiment = experiment_naming(space, tmp_path / "results")
    resumed, preset = settings_for(search_command.parse_args(["--resume", str(experiment)]))
    assert not marker.exists() and resumed.space == f"{space}:SPACE"
    assert preset.space.keys() == get_preset("smoke").space.keys()


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_a_space_file_in_a_folder_others_may_write_is_refused(tmp_path, capsys, mode):
    """Whoever may write to the folder may replace the file (or, before, plant its bytecode): refused at --resume
    and, since every resume would refuse it, at a new search too: one line naming the folder, exit 2, nothing
    written."""
    folder = tmp_path / "spaces"
    folder.mkdir()
    space = folder / "space.py"
    space.write_text(SOURCE)
    folder.chmod(mode)
    experiment = experiment_naming(space, tmp_path / "results")
    assert search_command.main(["--resume", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert err == (f"run_search.py: error: {folder}: option --resume: others may write to this folder of the space "
                   "file (group/world-writable); the space would run code they put there (chmod go-w it)\n")
    assert search_command.main(["--space", f"{space}:SPACE", "--storage-path", str(tmp_path / "new")]) == 2
    assert f"{folder}: option --space: others may write to this folder of the space file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    folder.chmod(0o755)
    space.chmod(0o664)
    with pytest.raises(InputError, match="others may write to this space file"):
        get_preset(f"{space}:SPACE")


def test_a_link_to_a_space_file_checks_the_folder_it_points_into(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "space.py").write_text(SOURCE)
    shared.chmod(0o777)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    (mine / "space.py").symlink_to(shared / "space.py")
    with pytest.raises(InputError, match=f"{shared}: option --space: others may write to this folder"):
        get_preset(f"{mine / 'space.py'}:SPACE")


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to give a folder away")
def test_a_space_file_in_a_folder_of_another_user_is_refused(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o755)
    (folder / "space.py").write_text(SOURCE)
    os.chown(folder, 65534, 65534)
    with pytest.raises(InputError, match=f"{folder}: option --space: this folder of the space file belongs to "
                                         "another user"):
        get_preset(f"{folder / 'space.py'}:SPACE")

"""A refused search leaves no experiment folder (issue 34, case 15): an unwritable --export-dir or --study-storage
was refused with exit 2, after the storage check had made an empty experiment folder."""
from __future__ import annotations

import pytest
from helpers import SMOKE

from tune_siamese.app import search_command
from tune_siamese.core import storage
from tune_siamese.core.errors import InputError


def test_a_writability_check_leaves_no_folder_behind(tmp_path):
    storage.check_writable(tmp_path / "runs" / "exp", "--storage-path")
    assert list(tmp_path.iterdir()) == []


def test_the_lock_removes_the_folder_it_made_when_the_run_is_refused(tmp_path):
    experiment = tmp_path / "runs" / "exp"
    with pytest.raises(InputError, match="no node fits"), storage.experiment_lock(str(experiment)):
        assert (experiment / storage.LOCK_FILE).is_file()
        raise InputError("option --cpus-per-trial=64 but no node fits one trial")  # as cluster.fit_resources
    assert list(tmp_path.iterdir()) == []
    experiment.mkdir(parents=True)  # a folder that was there before stays, as does one the run wrote into
    with storage.experiment_lock(str(experiment)):
        pass
    assert experiment.is_dir()


@pytest.mark.parametrize("option", ["--export-dir", "--study-storage"])
def test_an_unwritable_target_is_refused_before_the_experiment_folder_exists(tmp_path, capsys, option):
    a_file = tmp_path / "a-file"  # a folder below a file: unwritable also for root, unlike chmod
    a_file.write_text("")
    target = str(a_file / "copy") if option == "--export-dir" else f"sqlite:///{a_file}/optuna.db"
    argv = [*SMOKE, "--storage-path", str(tmp_path / "runs"), "--name", "exp", option, target]
    assert search_command.main(argv) == 2
    err = capsys.readouterr().err
    assert option in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "exp").exists() and not (tmp_path / "runs").exists()

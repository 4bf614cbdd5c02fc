"""Every option of run_search.py and of `tune-siamese`, and the files they read, fed malformed values: each
ends with exit 2 and one line on stderr naming the option or file, no traceback, and nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SMOKE

from tune_siamese.app import cli, search_command

# (argv after the smoke preset, words the one line must hold)
RUN_SEARCH_CASES = [
    (["--num-samples", "abc"], "--num-samples: invalid int value"),
    (["--num-samples", "-1"], "--num-samples=-1 must be >= 1"),
    (["--max-epochs", "1.5"], "--max-epochs: invalid int value"),
    (["--grace-period", "0"], "--grace-period=0 must be >= 1"),
    (["--max-concurrent", "0"], "--max-concurrent=0 must be >= 1"),
    (["--cpus-per-trial", "abc"], "--cpus-per-trial: invalid float value"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial=0.0 must be > 0"),
    (["--cpus-per-trial", "inf"], "--cpus-per-trial=inf must be a finite number"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial=-1.0 must be >= 0"),
    (["--gpus-per-trial", "1.5"], "above 1 it must be a whole number"),
    (["--reduction-factor", "1"], "--reduction-factor=1.0 must be > 1"),
    (["--seed", "x"], "--seed: invalid int value"),
    (["--set", "lr"], "--set 'lr' must look like KEY=VALUE"),
    (["--set", "nope=1"], "unknown option(s) nope"),
    (["--set", "lr=fast"], "lr='fast' is not a valid float"),
    (["--set", "batchnorm=maybe"], "batchnorm='maybe' is not a valid bool"),
    (["--set", "batch_size=0"], "batch_size=0 must be > 0"),
    (["--space", "missing.py:SPACE"], "search-space file not found"),
    (["--space", "no_such_module:SPACE"], "cannot import 'no_such_module'"),
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--ensemble", "-2"], "--ensemble=-2 must be 0 (off) or at least 2"),
    (["--connect-timeout", "0"], "--connect-timeout=0.0 must be > 0"),
    (["--wait-for-resources", "-1"], "--wait-for-resources=-1.0 must be >= 0"),
    (["--retrain-cpus", "-1"], "--retrain-cpus=-1.0 must be >= 0"),
    (["--retrain-gpus", "0.3"], "--retrain-gpus=0.3 does not divide a GPU"),
    (["--address", "ray://head:10001"], "Ray Client addresses are not supported"),
    (["--address", "no-port"], "is not HOST:PORT"),
    (["--export-dir", "s3://bucket/export"], "--export-dir must be a local folder"),
    (["--study-storage", "nosuchdialect://x"], "--study-storage=nosuchdialect://x: cannot open it"),
    (["--unknown-option"], "unrecognized arguments: --unknown-option"),
]


def one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.mark.parametrize("argv, words", RUN_SEARCH_CASES, ids=[" ".join(a) for a, _ in RUN_SEARCH_CASES])
def test_run_search_options(tmp_path, capsys, argv, words):
    storage = tmp_path / "results"
    assert search_command.main([*SMOKE, "--storage-path", str(storage), "--name", "x", *argv]) == 2
    line = one_line(capsys)
    assert line.startswith("run_search.py: error: ") and words in line
    assert not (storage / "x").exists() or not any((storage / "x").iterdir())  # nothing half-written


# --name becomes a folder (and the study's and the MLflow experiment's name): one path component, no more
BAD_NAMES = ["", ".", "..", "../escape", "a/b", "/abs", "a\\b", "-x", "a?b", "a#b", "new\nline"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_run_search_names_that_are_not_one_folder(tmp_path, capsys, name):
    storage = tmp_path / "results"
    assert search_command.main([*SMOKE, "--storage-path", str(storage), f"--name={name}"]) == 2
    line = one_line(capsys)
    assert f"option --name={name!r} must be one folder name" in line
    assert list(tmp_path.iterdir()) == [] and not Path("/abs").exists()  # nothing written anywhere


def test_run_search_resume_targets(tmp_path, capsys):
    assert search_command.main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "no experiment here" in one_line(capsys)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "search_settings.json").write_text("[1, 2]")
    assert search_command.main(["--resume", str(tmp_path / "exp")]) == 2
    assert "search_settings.json: not this project's search settings" in one_line(capsys)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cli_cases(tmp: Path) -> list[tuple[list[str], str]]:
    image = tmp / "a.png"
    from PIL import Image

    Image.new("L", (40, 40), 128).save(image)
    not_an_image = write(tmp / "b.png", "not a png")
    folder_config = tmp / "config_folder"
    folder_config.mkdir()
    return [
        (["train", "--data", "synthetic", "--config", str(folder_config)],
         "config_folder: a config file must be a JSON file"),
        (["train", "--data", "synthetic", "--config", str(write(tmp / "c1.json", "{oops"))],
         "c1.json:1: not valid JSON"),
        (["train", "--data", "synthetic", "--config", str(write(tmp / "c2.json", "[1]"))], "must hold one JSON object"),
        (["train", "--data", "synthetic", "--config", str(write(tmp / "c3.json", '{"lr": "x"}'))], "lr='x'"),
        (["train", "--data", "synthetic", "--set", "width=-1"], "width=-1.0 must be > 0"),
        (["train", "--data", "synthetic", "--set", "device=cuda:0"], "CUDA is not available"),
        (["train", "--data", str(tmp / "missing")], "missing"),
        (["train"], "the following arguments are required: --data"),
        (["evaluate", str(tmp / "missing.pt")], "missing.pt"),
        (["evaluate", str(write(tmp / "junk.pt", "junk"))], "junk.pt: not a loadable checkpoint"),
        (["verify", str(tmp / "no-export"), str(image), str(image)], "no-export"),
        (["evaluate", str(tmp), "--ways", "1"], "--ways: 1 is less than 2"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["verify", str(tmp / "no-export"), str(not_an_image)], "the following arguments are required: B"),
    ]


def test_tune_siamese_commands(tmp_path, capsys):
    for argv, words in cli_cases(tmp_path):
        assert cli.main(argv) == 2, argv
        line = one_line(capsys)
        assert line.startswith("tune-siamese: error: ") and words in line, (argv, line)
    assert not (Path("runs").exists() and any(p.name.startswith("train-") and not any(p.iterdir())
                                              for p in Path("runs").iterdir()))


def test_a_full_disk_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    import errno

    import torch

    from tune_siamese.artifacts import checkpoint
    from tune_siamese.core.errors import InputError

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")  # what a full disk leaves: part of the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(InputError, match="cannot write the checkpoint .No space left on device"):
        checkpoint.save_checkpoint({"x": 1}, tmp_path / "run" / "checkpoint.pt")
    assert list((tmp_path / "run").iterdir()) == []

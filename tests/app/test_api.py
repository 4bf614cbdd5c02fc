"""The Python API: ts.search takes run_search.py's options as keyword arguments (same checks, same errors, no
stdout), returns what the search hands back; ts.load scores image pairs exactly as `tune-siamese verify` does."""
from __future__ import annotations

import json

import pytest

import tune_siamese as ts
from tune_siamese.app.api import search_options
from tune_siamese.core.errors import InputError


def test_keyword_options_record_the_command_line():
    """Keywords are options as they are (no command line is parsed); the command line that gives them is recorded,
    in --help's order."""
    options = search_options({"num_samples": 4, "gpus_per_trial": 0.25, "reproducible": False, "no_retrain": True,
                              "set": {"image_size": 96, "batchnorm": True}, "verbose": 2, "name": None})
    assert options.num_samples == 4 and options.reproducible is False and options.set == ("image_size=96",
                                                                                           "batchnorm=true")
    assert options.argv == ("--set", "image_size=96", "--set", "batchnorm=true", "--num-samples", "4",
                            "--no-reproducible", "--gpus-per-trial", "0.25", "--no-retrain", "--verbose", "--verbose")
    with pytest.raises(InputError, match="no option 'num_sample'.*did you mean num_samples"):
        search_options({"num_sample": 4})
    with pytest.raises(InputError, match="no_retrain=1 must be True or False"):
        search_options({"no_retrain": 1})


def test_bad_values_raise_the_commands_one_line_error_before_ray(capsys, tmp_path):
    """The same message run_search.py prints after `error:`, and nothing started (no experiment folder)."""
    import ray

    import run_search

    assert run_search.main(["--num-samples", "0", "--storage-path", str(tmp_path)]) == 2
    command_error = capsys.readouterr().err.split("error: ", 1)[1].strip()
    was_running = ray.is_initialized()
    with pytest.raises(InputError) as raised:
        ts.search(num_samples=0, storage_path=str(tmp_path))
    assert str(raised.value) == command_error
    assert ray.is_initialized() == was_running and not any(tmp_path.iterdir())
    with pytest.raises(InputError, match="num_samples='many' must be a whole number"):
        ts.search(num_samples="many")


def test_search_returns_what_it_hands_back_and_load_scores_like_verify(smoke_search, tmp_path, make_image,
                                                                       capsys):
    """smoke_search runs through ts.search (conftest)."""
    from analysis import load as load_experiment
    from tune_siamese.app.cli import main as cli_main

    result, experiment = smoke_search["result"], smoke_search["experiment"]
    assert smoke_search["printed"] == ""  # nothing printed unless console=True
    final = json.loads((experiment / "final.json").read_text())
    assert result.summary == final and result.experiment == str(experiment)
    assert result.best_config == final["best_config"] and result.test == final["test"]
    assert 0 <= result.test["auc"] <= 1 and result.export == final["export"] and result.usable
    assert result.model is not None and "--name smoke" in result.command
    assert result.command.startswith("python run_search.py")
    # each warning the command would print (a smoke model is often no better than chance) is a Python warning
    assert smoke_search["warned"] == [line.removeprefix("WARNING: ") for line in result.warnings]
    assert load_experiment(result.experiment).summary["best_trial"] == final["best_trial"]

    a, b = make_image(tmp_path / "a.jpg", seed=1, size=60), make_image(tmp_path / "b.png", seed=2, size=90, mode="RGB")
    verifier = ts.load(result.export)
    assert cli_main(["verify", result.export, str(a), str(b)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert verifier.verify(a, b) == printed
    assert verifier.score(str(a), str(b)) == pytest.approx(printed["probability_same"], abs=1e-12)
    with pytest.raises(InputError, match="image not found"):
        verifier.score(tmp_path / "missing.jpg", b)

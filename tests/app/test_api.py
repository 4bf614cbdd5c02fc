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
    from tune_siamese.core.storage import record_as_read

    result, experiment = smoke_search["result"], smoke_search["experiment"]
    assert smoke_search["printed"] == ""  # nothing printed unless console=True
    final = json.loads((experiment / "final.json").read_text())
    # the file names the experiment's own files relative to it; the result, absolute where they are
    assert result.summary == record_as_read(final, str(experiment)) and result.experiment == str(experiment)
    assert result.best_config == final["best_config"] and result.test == final["test"]
    assert 0 <= result.test["auc"] <= 1 and final["export"] == "export" and result.usable
    assert result.export == str(experiment / "export")
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


def test_the_signature_lists_every_option_with_its_default_and_a_line_of_help():
    """Made from the options' declaration, so inspect.signature, help() and Jupyter's completion show them."""
    import inspect

    from tune_siamese.searching.options import declared, option_fields

    params = inspect.signature(ts.search).parameters
    fields = option_fields()
    assert list(params) == [f.name for f in fields] + ["progress", "console"]
    assert all(params[f.name].default == f.default and params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
               for f in fields)
    assert params["num_samples"].annotation == int | None and params["progress"].default is True
    doc = ts.search.__doc__
    assert all(f"\n    {f.name}: " in doc for f in fields) and "%(default)s" not in doc
    for section in ("Args:", "Returns:", "Raises:", "Example:"):
        assert section in doc
    resumed = inspect.signature(ts.resume).parameters
    assert list(resumed)[0] == "experiment"
    assert set(resumed) - {"experiment", "progress", "console"} == {
        f.name for f in fields if (declared(f).per_run or declared(f).grows) and f.name != "resume"}
    assert "num_samples" in resumed  # it grows a search (searching.settings.grown)


def test_public_names_are_exported_and_documented():
    import inspect

    assert issubclass(ts.SearchInterrupted, KeyboardInterrupt) and issubclass(ts.InputError, ValueError)
    for name in ts.__all__:
        doc = inspect.getdoc(getattr(ts, name)) or ""
        assert len(doc) > 40, name
    for function in (ts.search, ts.resume, ts.finalize, ts.load):
        doc = inspect.getdoc(function)
        assert all(section in doc for section in ("Args:", "Returns:", "Raises:", "Example:")), function
        assert inspect.signature(function).return_annotation not in (inspect.Signature.empty, "Any")


def test_a_space_given_as_an_object_is_recorded_as_data_and_resumes_from_it(ray_session, tmp_path):
    """A dict of Ray Tune distributions (or a Preset): checked like a preset, written to EXPERIMENT/space.json
    when the search starts (no pickle), and read from there by a resume, also of a moved experiment."""
    import shutil

    from ray import tune

    from search_spaces import Preset
    from tune_siamese.core.names import SPACE_IN_EXPERIMENT
    from tune_siamese.data import load_data
    from tune_siamese.searching.settings import settings_for
    from tune_siamese.searching.spaces import preset_data
    from tune_siamese.searching.tuner import tuner_for

    space = {"lr": tune.loguniform(1e-4, 1e-2), "batch_size": tune.choice([32, 64]),
             "dropout": tune.quniform(0, .5, .1)}
    options = search_options({"space": space, "set": {"image_size": 72, "width": 0.0625}, "storage_path": str(tmp_path),
                              "name": "given"})
    settings, preset = settings_for(options)
    assert settings.space == SPACE_IN_EXPERIMENT
    assert settings.command.startswith(f"python run_search.py --space {tmp_path / 'given' / 'space.json'} ")
    tuner_for(settings, preset, load_data(ts.Config.from_dict(settings.base)), resume=False)  # writes, runs nothing
    recorded = json.loads((tmp_path / "given" / "space.json").read_text())
    assert recorded["space"] == {"lr": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [32, 64]},
                                 "dropout": {"quniform": [0, 0.5, 0.1]}}
    shutil.move(tmp_path / "given", tmp_path / "moved")
    _, resumed = settings_for(search_options({"resume": str(tmp_path / "moved")}))
    assert preset_data(resumed) == preset_data(preset) == preset_data(Preset(space=space))
    # the same data is a space file on the command line
    from tune_siamese.app import search_command

    again, _ = settings_for(search_command.parse_args(["--space", str(tmp_path / "moved" / "space.json"),
                                                      "--storage-path", str(tmp_path), "--name", "file"]))
    assert again.space == str(tmp_path / "moved" / "space.json")
    with pytest.raises(InputError, match=r"space entry lr: a Function cannot be recorded as data"):
        settings_for(search_options({"space": {"lr": tune.sample_from(lambda _: 0.1)}}))
    with pytest.raises(InputError, match=r"a dict of Ray Tune distributions or a search_spaces.Preset, not int"):
        settings_for(search_options({"space": 3}))


def test_progress_is_one_line_per_ended_trial_in_a_log_and_each_result_on_a_display(capsys):
    """core.progress: a display (the API's LiveLine) gets the passing updates too; printed, only trials ending."""
    from types import SimpleNamespace

    from tune_siamese.app.live_line import LiveLine
    from tune_siamese.core import progress
    from tune_siamese.searching.callbacks import SearchProgress

    def trial(status: str, epochs: int, best: float) -> SimpleNamespace:
        return SimpleNamespace(status=status, last_result={"training_iteration": epochs, "best_val_loss": best})

    watch = SearchProgress(3, max_epochs=4)
    a, b = trial("RUNNING", 1, 0.7), trial("RUNNING", 1, 0.6)
    shown: list[str] = []
    token = progress.display.set(shown.append)
    try:
        watch.on_trial_result(1, [a, b], a, {"best_val_loss": 0.7})
        watch.on_trial_result(1, [a, b], b, {"best_val_loss": 0.6})
        watch.on_trial_complete(1, [a, b], a)  # stopped at epoch 1 of 4
    finally:
        progress.display.reset(token)
    assert shown[0].startswith("[search] 0/3 trials ended, 2 running; best val loss 0.7000;")
    assert shown[-1].startswith("[search] 1/3 trials ended (1 stopped early), 1 running; best val loss 0.6000;")
    a.status = "TERMINATED"
    watch.on_trial_result(1, [a, b], b, {"best_val_loss": 0.5})  # no display: nothing printed
    watch.on_trial_error(1, [a, b], b)
    assert capsys.readouterr().out.startswith("[search] 2/3 trials ended (1 stopped early, 1 errored), 0 running; "
                                              "best val loss 0.5000;")
    import io

    log = io.StringIO()  # not a terminal: a line per change of the count, no passing updates
    line = LiveLine(log)
    for text in ("[search] 0/3 trials ended, 1 running; a", "[search] 0/3 trials ended, 2 running; b",
                 "[search] 1/3 trials ended, 1 running; c"):
        line(text)
    assert log.getvalue().splitlines() == ["[search] 0/3 trials ended, 1 running; a",
                                           "[search] 1/3 trials ended, 1 running; c"]


def test_finalize_from_python_beside_the_search(smoke_search, tmp_path):
    import shutil

    experiment = tmp_path / "copy"
    shutil.copytree(smoke_search["experiment"], experiment)
    settings = json.loads((experiment / "search_settings.json").read_text())  # not into the shared search's MLflow
    (experiment / "search_settings.json").write_text(json.dumps({**settings, "mlflow": ""}))
    other = ts.finalize(experiment, "trial", progress=False)
    record = json.loads((experiment / "final-trial.json").read_text())
    assert other.test == record["test"] and 0 <= other.test["auc"] <= 1
    assert other.command == f"tune-siamese finalize {experiment} --final trial"
    assert repr(other).startswith("SearchResult(experiment=") and len(repr(other)) < 300
    with pytest.raises(InputError, match="final='best' must be one of"):
        ts.finalize(experiment, "best")

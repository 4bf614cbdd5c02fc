"""--searcher (Optuna's samplers), --rung-metric (what ASHA judges by) and --reproducible (the same trials run to
run); everything but the last test runs without Ray."""
from __future__ import annotations

import dataclasses
import importlib.util
import json

import optuna
import pandas as pd
import pytest
from helpers import SMOKE
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from search_spaces import PRESETS
from tune_siamese.app import search_command
from tune_siamese.core.names import BEST_VAL_LOSS, SEARCHERS, VAL_LOSS, VAL_LOSS_AVG3
from tune_siamese.searching import preflight as preflight_module
from tune_siamese.searching.samplers import build_sampler
from tune_siamese.searching.settings import load_resume_settings, settings_for
from tune_siamese.searching.spaces import get_preset
from tune_siamese.searching.study_search import SavableNSGAIISampler
from tune_siamese.searching.tuner import build_scheduler, build_tuner

SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "gp": optuna.samplers.GPSampler, "cmaes": optuna.samplers.CmaEsSampler,
            "qmc": optuna.samplers.QMCSampler, "nsga2": SavableNSGAIISampler}


def smoke_settings(tmp_path, *options: str):
    return settings_for(search_command.parse_args([*SMOKE, "--storage-path", str(tmp_path), *options]))


def first_draws(sampler: optuna.samplers.BaseSampler, trials: int = 3) -> list[dict]:
    """The parameters a sampler gives the smoke space's first trials (each told a loss), without Ray."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # CMA-ES warns that it draws the choices at random
    study = optuna.create_study(sampler=sampler)
    space = OptunaSearch.convert_search_space(get_preset("smoke").space)
    draws = []
    for _ in range(trials):
        trial = study.ask(fixed_distributions=space)
        study.tell(trial, trial.params["lr"] * 100 + trial.params["batch_size"] / 64)
        draws.append(trial.params)
    return draws


@pytest.mark.parametrize("name", SEARCHERS)
def test_each_searcher_builds_its_optuna_sampler_seeded_from_the_seed_option(tmp_path, name):
    settings, _ = smoke_settings(tmp_path, "--searcher", name, "--seed", "7")
    assert settings.searcher == name
    sampler = build_sampler(settings)
    assert type(sampler) is SAMPLERS[name]
    again = build_sampler(dataclasses.replace(settings))
    other = build_sampler(dataclasses.replace(settings, seed=8))
    assert first_draws(sampler) == first_draws(again) != first_draws(other)


def test_tpe_is_configured_for_parallel_trials(tmp_path):
    settings, _ = smoke_settings(tmp_path, "--num-samples", "12")
    assert settings.searcher == "tpe"  # the default
    sampler = build_sampler(settings)
    assert sampler._multivariate is True and sampler._constant_liar is True
    assert sampler._n_startup_trials == 3  # a quarter of the trials, at least 2


@pytest.mark.parametrize("searcher, missing", [("cmaes", "cmaes"), ("gp", "scipy")])
def test_a_searcher_without_its_package_is_refused_before_ray(tmp_path, monkeypatch, capsys, searcher, missing):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(preflight_module.importlib.util, "find_spec",
                        lambda name, *args: None if name == missing else find_spec(name, *args))
    assert search_command.main([*SMOKE, "--searcher", searcher, "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"option --searcher={searcher} needs {missing}" in err and f"pip install {missing}" in err
    assert not any(tmp_path.iterdir())  # nothing written: no experiment, no Ray session folder


@pytest.mark.parametrize("choice, metric", [("last", VAL_LOSS), ("best", BEST_VAL_LOSS), ("avg3", VAL_LOSS_AVG3)])
def test_rung_metric_is_what_asha_compares(tmp_path, choice, metric):
    settings, _ = smoke_settings(tmp_path, "--rung-metric", choice)
    scheduler = build_scheduler(settings)
    assert isinstance(scheduler, ASHAScheduler) and scheduler.metric == metric
    assert smoke_settings(tmp_path)[0].rung_metric == "last"  # the default: today's behaviour


def test_reproducible_mode_stops_no_trial_early_and_refuses_asha_options(tmp_path, capsys):
    settings, _ = smoke_settings(tmp_path, "--reproducible")
    assert settings.reproducible and type(build_scheduler(settings)) is FIFOScheduler
    for option in (["--grace-period", "1"], ["--rung-metric", "best"], ["--reduction-factor", "2"]):
        assert search_command.main([*SMOKE, "--reproducible", *option, "--storage-path", str(tmp_path)]) == 2
        assert f"{option[0]} would be ignored" in capsys.readouterr().err


def test_presets_choose_the_defaults_and_their_values_are_checked(tmp_path, capsys):
    assert all(preset.option_defaults.get("searcher", "tpe") in SEARCHERS for preset in PRESETS.values())
    space = tmp_path / "space.py"
    space.write_text("from ray import tune\nfrom search_spaces import Preset\n"
                     "LR = {'lr': tune.loguniform(1e-4, 1e-2)}\n"
                     "GOOD = Preset(space=LR, option_defaults={'searcher': 'random', 'rung_metric': 'avg3',\n"
                     "                                         'reproducible': True})\n"
                     "BAD = Preset(space=LR, option_defaults={'searcher': 'annealing'})\n"
                     "FLAT = Preset(space=LR, option_defaults={'reduction_factor': 1})\n")
    good = settings_for(search_command.parse_args(["--space", f"{space}:GOOD", "--storage-path",
                                                            str(tmp_path)]))[0]
    assert (good.searcher, good.rung_metric, good.reproducible) == ("random", "avg3", True)
    given = settings_for(search_command.parse_args(["--space", f"{space}:GOOD", "--searcher", "qmc",
                                                             "--no-reproducible", "--storage-path", str(tmp_path)]))[0]
    assert (given.searcher, given.reproducible) == ("qmc", False)  # an option given beats the preset
    assert search_command.main(["--space", f"{space}:BAD", "--storage-path", str(tmp_path)]) == 2
    assert "option_defaults searcher='annealing' is not one of tpe, random" in capsys.readouterr().err
    assert search_command.main(["--space", f"{space}:FLAT", "--storage-path", str(tmp_path)]) == 2
    assert "option_defaults reduction_factor=1.0 must be > 1" in capsys.readouterr().err


def test_resume_keeps_searcher_rung_metric_and_mode(tmp_path, capsys):
    settings, _ = smoke_settings(tmp_path, "--name", "exp", "--searcher", "random", "--rung-metric", "avg3")
    experiment = tmp_path / "exp"
    experiment.mkdir()
    saved = dataclasses.asdict(settings)
    (experiment / "search_settings.json").write_text(json.dumps(saved))
    resumed = load_resume_settings(str(experiment))
    assert (resumed.searcher, resumed.rung_metric, resumed.reproducible) == ("random", "avg3", False)
    for option in (["--searcher", "tpe"], ["--rung-metric", "last"], ["--reproducible"]):
        assert search_command.main(["--resume", str(experiment), *option]) == 2
        assert f"{option[0]} would be ignored" in capsys.readouterr().err
    # settings saved before these options existed resume as the search ran then: TPE, ASHA on the last epoch
    old = {key: value for key, value in saved.items() if key not in ("searcher", "rung_metric", "reproducible")}
    (experiment / "search_settings.json").write_text(json.dumps(old))
    resumed = load_resume_settings(str(experiment))
    assert (resumed.searcher, resumed.rung_metric, resumed.reproducible) == ("tpe", "last", False)


def reproducible_search(tmp_path, data, name: str) -> tuple[list[dict], list[list[float]], optuna.Study]:
    """A small concurrent search in the reproducible mode: 4 trials, 2 at a time, 2 epochs each."""
    settings, preset = smoke_settings(tmp_path, "--num-samples", "4", "--max-epochs", "2", "--max-concurrent", "2",
                                    "--reproducible", "--name", name)
    results = build_tuner(settings, data, preset.space, preset.points, verbose=0).fit()
    assert results.num_errors == 0 and len(results) == 4
    # Tune's trial ids are random: take the trials in the order the searcher suggested them (Optuna's numbers).
    study = optuna.load_study(study_name=settings.study_name, storage=settings.study_location)
    configs = [trial.params for trial in study.trials]
    by_config = {json.dumps({key: result.config[key] for key in preset.space}, sort_keys=True): result
                 for result in results}
    frames: list[pd.DataFrame] = [by_config[json.dumps(config, sort_keys=True)].metrics_dataframe
                                  for config in configs]
    for frame in frames:  # the moving average a rung may judge by, from the epochs so far
        assert frame[VAL_LOSS_AVG3].tolist() == pytest.approx(frame[VAL_LOSS].rolling(3, min_periods=1).mean())
    return configs, [frame[VAL_LOSS].tolist() for frame in frames], study


@pytest.mark.slow
def test_reproducible_mode_gives_the_same_trials_run_to_run(ray_session, synthetic_small, tmp_path):
    configs, losses, study = reproducible_search(tmp_path, synthetic_small, "first")
    again_configs, again_losses, _ = reproducible_search(tmp_path, synthetic_small, "second")
    assert configs == again_configs and losses == again_losses  # exactly: same suggestions, bit-identical training
    assert all(len(trial) == 2 for trial in losses)  # no trial stopped early
    # The second batch was suggested only once the whole first batch had ended (and been told to the searcher).
    first_batch, second_batch = study.trials[:2], study.trials[2:]
    assert min(t.datetime_start for t in second_batch) >= max(t.datetime_complete for t in first_batch)

"""--warm-start: a new search's study holds the earlier smoke search's trials that fit its space (and suggests
otherwise than a cold start); another space gets the earlier best configurations as starting points; an
experiment of other test data, or none, is refused in one line naming it. No search of their own: the smoke
search (conftest) is the earlier experiment."""
from __future__ import annotations

import json
import shutil

import optuna
import pytest
from helpers import SMALL_DATA
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search_spaces import PRESETS
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import SETTINGS_FILE
from tune_siamese.searching.options import SearchOptions
from tune_siamese.searching.samplers import build_sampler
from tune_siamese.searching.settings import resolve
from tune_siamese.searching.study_search import StudyRecordingSearch
from tune_siamese.searching.warm_start import (
    WARM_START_ATTR,
    add_warm_trials,
    earlier_settings,
    warm_start_for,
)

SMOKE = PRESETS["smoke"].space


def new_settings(tmp_path, *experiments):
    """The settings of a new search of the smoke space on the same data, warm-started from `experiments`."""
    options = SearchOptions(space="smoke", num_samples=8, storage_path=str(tmp_path / "results"), name="new",
                            warm_start=",".join(str(e) for e in experiments), set=SMALL_DATA)
    settings, _ = resolve(options, PRESETS["smoke"], "now")
    return settings


def earlier_trials(experiment):
    earlier = earlier_settings(str(experiment))
    study = optuna.load_study(study_name=earlier.study_name, storage=earlier.study_location)
    return [t for t in study.get_trials() if t.state in (optuna.trial.TrialState.COMPLETE,
                                                         optuna.trial.TrialState.PRUNED)]


def test_the_option_records_the_experiments_made_absolute(tmp_path):
    settings = new_settings(tmp_path, "a", "b")
    assert [p.rsplit("/", 1)[-1] for p in settings.warm_start] == ["a", "b"]
    assert all(p.startswith("/") for p in settings.warm_start)
    with pytest.raises(InputError, match="separated by commas"):
        new_settings(tmp_path, "a", "")


def test_a_warm_started_study_holds_the_earlier_trials_and_suggests_otherwise(smoke_search, tmp_path):
    experiment = smoke_search["experiment"]
    earlier = earlier_trials(experiment)
    assert earlier
    settings = new_settings(tmp_path, experiment)
    warm = warm_start_for(settings, SMOKE)
    assert warm.points == []  # the same space: trials, not points
    assert [(t.params, t.state, t.values) for t in warm.trials] == [(t.params, t.state, t.values) for t in earlier]
    assert all(t.user_attrs[WARM_START_ATTR] == str(experiment) for t in warm.trials)

    def first_suggestion(trials):
        study = optuna.create_study(sampler=build_sampler(settings))
        assert add_warm_trials(study, trials) == len(trials)
        trial = study.ask(OptunaSearch.convert_search_space(SMOKE))
        return study, trial.params

    warm_study, warm_first = first_suggestion(warm.trials)
    _, cold_first = first_suggestion([])
    assert len(warm_study.trials) == len(earlier) + 1
    assert warm_first != cold_first
    assert add_warm_trials(warm_study, warm.trials) == 0  # once only


def test_ray_searcher_sets_up_its_study_with_the_trials_once(smoke_search, tmp_path):
    settings = new_settings(tmp_path, smoke_search["experiment"])
    warm = warm_start_for(settings, SMOKE)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    for _ in range(2):  # a restored searcher sets its study up again: nothing added twice
        search = StudyRecordingSearch(sampler=build_sampler(settings), metric="best_val_loss", mode="min",
                                      study_name="new", storage=storage, warm_trials=warm.trials)
        search.set_search_properties("best_val_loss", "min", SMOKE)
        assert len(search._ot_study.trials) == len(warm.trials)
    assert set(search.suggest("t1")) == set(SMOKE)


def test_another_space_starts_from_the_earlier_best_configurations(smoke_search, tmp_path):
    experiment = smoke_search["experiment"]
    space = {"lr": tune.loguniform(1e-5, 1e-1), "dropout": tune.uniform(0.0, 0.5)}
    warm = warm_start_for(new_settings(tmp_path, experiment), space)
    assert warm.trials == []
    finished = sorted((t for t in earlier_trials(experiment) if t.values), key=lambda t: t.values[0])
    assert warm.points == [{"lr": t.params["lr"], "dropout": 0.0} for t in finished[:3]]  # dropout: as it ran


@pytest.mark.parametrize("change", [{"data": "lfw"}, {"data_seed": 7}, {"drawn_pairs": 400}])
def test_an_experiment_of_other_test_data_is_refused_naming_it(smoke_search, tmp_path, change):
    other = tmp_path / "other"
    other.mkdir()
    saved = json.loads((smoke_search["experiment"] / SETTINGS_FILE).read_text())
    saved["base"].update(change)
    (other / SETTINGS_FILE).write_text(json.dumps(saved))
    with pytest.raises(InputError) as refused:
        warm_start_for(new_settings(tmp_path, other), SMOKE)
    message = str(refused.value)
    assert str(other) in message and "other data" in message and "\n" not in message


def test_a_missing_experiment_is_refused_naming_it(tmp_path):
    with pytest.raises(InputError, match="no experiment here") as refused:
        warm_start_for(new_settings(tmp_path, tmp_path / "nothing"), SMOKE)
    assert str(tmp_path / "nothing") in str(refused.value)


def test_a_copied_experiment_warm_starts_from_its_own_study(smoke_search, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smoke_search["experiment"], copy)
    warm = warm_start_for(new_settings(tmp_path, copy), SMOKE)
    assert len(warm.trials) == len(earlier_trials(smoke_search["experiment"]))

"""A new search warm-started from earlier experiments (--warm-start EXP[,EXP...]).

The earlier experiments' Optuna studies are read: each trial whose searched values all fit the new space (the same
keys, every value inside the new search's distribution) joins the new study as the trial it was there (finished,
with its values, or pruned with its intermediate values), so the sampler conditions on it as on its own trials;
only when both searches minimise the same objectives, so that the values mean the same. For a space the earlier
trials do not fit, the earlier best configurations (TOP_POINTS per experiment, cut to the new space's keys whose
values fit it) are the new search's first suggestions instead.

An experiment of other test data (another data set, test list or, where the test pairs are drawn, data seed) is
refused: its trials would choose configurations with knowledge from elsewhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_siamese.core import storage
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import SETTINGS_FILE

if TYPE_CHECKING:
    import optuna

    from tune_siamese.searching.settings import SearchSettings

OPTION = "option --warm-start"
TOP_POINTS = 3  # the earlier best configurations taken as starting points, per experiment, for another space
WARM_START_ATTR = "warm_start"  # user attr of a trial added to the new study: the experiment it ran in


@dataclass
class WarmStart:
    trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)  # to add to the new study
    points: list[dict[str, Any]] = field(default_factory=list)  # first suggestions, for a space they do not fit


def earlier_settings(path: str) -> SearchSettings:
    """The settings of the earlier experiment at `path`, in its current folder (where its study is found)."""
    import dataclasses

    from tune_siamese.searching.settings import SearchSettings

    experiment = storage.resolve(path)
    text = storage.read_text(storage.child(experiment, SETTINGS_FILE))
    if text is None:
        raise InputError(f"{OPTION}: no experiment here ({SETTINGS_FILE} missing)", path)
    try:
        settings = SearchSettings(**json.loads(text))
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{OPTION}: not this project's search settings ({exc})", path) from None
    storage_path, name = storage.parent_and_name(experiment)
    return dataclasses.replace(settings, storage_path=storage_path, name=name)


def test_data(base: dict[str, Any]) -> tuple[str, Any]:
    """What fixes a search's test pairs: the data (a folder as its absolute path) and, where the test pairs are
    drawn from the data rather than read from a test list (synthetic faces, an identity folder, one pair list), the
    data seed and the number of pairs that draw them."""
    from tune_siamese.data.lfw import find_pair_lists

    drawn = f"data_seed {base.get('data_seed', 0)}, drawn_pairs {base.get('drawn_pairs', 0)}"
    data = str(base.get("data", "synthetic"))
    if data in ("synthetic", "lfw"):
        return data, drawn if data == "synthetic" else None
    root = Path(data).expanduser().resolve()
    lists = find_pair_lists(root) if root.is_dir() else None
    return str(root), None if lists is not None and lists[1] is not None else drawn


def check_same_test_data(path: str, earlier: SearchSettings, settings: SearchSettings) -> None:
    theirs, ours = test_data(earlier.base), test_data(settings.base)
    if theirs != ours:
        def said(key: tuple[str, Any]) -> str:
            return key[0] if key[1] is None else f"{key[0]}, {key[1]}"

        raise InputError(f"{OPTION}: experiment {path} tested on other data ({said(theirs)}, not {said(ours)}); its "
                         "trials would choose configurations with knowledge from elsewhere")


def fits(params: dict[str, Any], distributions: dict[str, Any]) -> bool:
    """Whether a trial's searched values are a point of the new space: the same keys, each value inside."""
    return set(params) == set(distributions) and all(contains(distributions[k], v) for k, v in params.items())


def contains(distribution: Any, value: Any) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def warm_start_for(settings: SearchSettings, space: dict[str, Any]) -> WarmStart:
    """What the new search (its settings and searched Ray Tune space) takes from the experiments it warm-starts
    from; every one is checked first (missing, other test data, no study): InputError naming it."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from tune_siamese.searching.study import open_study_storage

    distributions = OptunaSearch.convert_search_space(space) if space else {}
    warm = WarmStart()
    for path in settings.warm_start:
        earlier = earlier_settings(path)
        check_same_test_data(path, earlier, settings)
        study_storage = open_study_storage(earlier.study_location)
        if study_storage is None:
            raise InputError(f"{OPTION}: experiment {path} kept its Optuna study in memory; nothing to start from")
        try:
            study = optuna.load_study(study_name=earlier.study_name, storage=study_storage)
        except KeyError:
            raise InputError(f"{OPTION}: experiment {path} holds no Optuna study {earlier.study_name!r}") from None
        done = [t for t in study.get_trials(deepcopy=False)
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
        same_objectives = earlier.objectives == settings.objectives
        fitting = [t for t in done if same_objectives and fits(t.params, distributions)]
        warm.trials += [copied(t, distributions, path) for t in fitting]
        if not fitting:
            ran = earlier_configs(earlier.base)
            warm.points += [p for p in best_points(done, distributions, ran) if p not in warm.points]
    return warm


def copied(trial: optuna.trial.FrozenTrial, distributions: dict[str, Any], source: str) -> optuna.trial.FrozenTrial:
    """The earlier trial as a trial of the new study: its values in the new space's distributions."""
    import optuna

    return optuna.trial.create_trial(
        state=trial.state, params=trial.params, distributions={k: distributions[k] for k in trial.params},
        values=trial.values,  # a pruned one's: its last intermediate value, as Optuna's tell records it
        intermediate_values=trial.intermediate_values,
        user_attrs={**trial.user_attrs, WARM_START_ATTR: source}, system_attrs={})


def earlier_configs(base: dict[str, Any]) -> dict[str, Any]:
    """What every trial of an earlier search ran with besides its searched values: Config's defaults and the
    search's fixed values."""
    import dataclasses

    from tune_siamese.core.config import Config

    return {**dataclasses.asdict(Config()), **base}


def best_points(trials: list[optuna.trial.FrozenTrial], distributions: dict[str, Any],
                ran: dict[str, Any]) -> list[dict[str, Any]]:
    """The configurations of the TOP_POINTS finished trials of lowest (first) value, as starting points: each
    key of the new space as the trial ran it (searched, else fixed: `ran`), a configuration with a value outside
    the new space left out."""
    from tune_siamese.core.names import DIVERGED

    finished = [t for t in trials if t.values and t.user_attrs.get("outcome") != DIVERGED]
    points: list[dict[str, Any]] = []
    for trial in sorted(finished, key=lambda t: t.values[0]):
        config = {**ran, **trial.params}
        point = {k: config[k] for k in distributions if k in config}
        if distributions and fits(point, distributions) and point not in points:
            points.append(point)
        if len(points) == TOP_POINTS:
            break
    return points


def add_warm_trials(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> int:
    """Add the warm-start trials to the new study, once: none if it already holds some (a restored searcher sets
    up its study again). Returns how many were added."""
    if not trials or any(WARM_START_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False)):
        return 0
    study.add_trials(trials)
    return len(trials)

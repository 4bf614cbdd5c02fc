"""Hyperparameter importances by Optuna's own evaluators, on a study rebuilt from the trials' results.

The study gets one finished trial per Tune trial: its hyperparameters, their distributions (the preset's Ray
Tune space converted by OptunaSearch's own converter, or inferred from the values seen), and as value the
best val loss the trial reached, or DIVERGED_LOSS for a trial that diverged (what the searcher and the Optuna study
got for it: above every usable loss, whatever it reached before it diverged).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Protocol

import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tune_siamese.core.errors import InputError
from tune_siamese.core.names import DIVERGED, DIVERGED_LOSS

FEW_TRIALS = 20  # below this, importances move a lot from one search to the next: a warning here, a caution in report


class Trials(Protocol):
    """What importances and distributions read of an experiment (analysis.Experiment has it): the trials, their
    configs, the hyperparameters searched and, when known, the space they were drawn from."""

    path: str
    trials: pd.DataFrame
    configs: dict[str, dict[str, Any]]
    hyperparameters: list[str]
    space: dict[str, Any] | None


def ray_to_optuna(space: dict[str, Any]) -> dict[str, BaseDistribution]:
    """Ray Tune distributions -> Optuna ones (choice -> Categorical, loguniform -> Float log, randint -> Int)."""
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch.convert_search_space(space)


def infer_distributions(values: dict[str, list[Any]]) -> dict[str, BaseDistribution]:
    """Distributions spanning the values seen, for a space we cannot import. Numbers spanning two decades or
    more (all positive) are taken as log-uniform; anything not numeric is categorical."""
    out: dict[str, BaseDistribution] = {}
    for name, seen in values.items():
        numbers = [v for v in seen if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) < len(seen) or min(numbers) == max(numbers):  # not all numeric, or only one value
            out[name] = CategoricalDistribution(list(dict.fromkeys(seen)))
        elif all(isinstance(v, int) for v in numbers):
            out[name] = IntDistribution(int(min(numbers)), int(max(numbers)))
        else:
            low, high = float(min(numbers)), float(max(numbers))
            out[name] = FloatDistribution(low, high, log=low > 0 and high / low >= 100)
    return out


def distributions(exp: Trials) -> dict[str, BaseDistribution]:
    """Each hyperparameter's distribution: from the preset's space when the experiment names one, else inferred
    from the trials' values. Also tells the plots which axes are categorical or logarithmic."""
    seen = {h: [c[h] for c in exp.configs.values() if c and h in c] for h in exp.hyperparameters}
    inferred = infer_distributions({h: v for h, v in seen.items() if v})
    if exp.space is None:
        return inferred
    from_space = ray_to_optuna({h: exp.space[h] for h in exp.hyperparameters})
    fits = all(_contains(from_space[h], v) for h, values in seen.items() for v in values)
    return from_space if fits else inferred  # the preset may have changed since the search ran


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return numeric and distribution.low <= value <= distribution.high  # type: ignore[attr-defined]


# fANOVA's random forest ranks differently from one seed to the next on a few dozen trials (one seed put lr first,
# another last): the default is the mean over these seeds, with their spread.
FANOVA_SEEDS = tuple(range(10))
FANOVA, PED_ANOVA = "fANOVA", "PED-ANOVA"


class FewTrialsWarning(UserWarning):
    """Importances that rest on fewer than FEW_TRIALS trials: rough, read them as hints."""


def warn_if_few(trials: int, stacklevel: int = 2) -> None:
    """Warn (FewTrialsWarning) when importances rest on fewer than FEW_TRIALS trials.

    Args:
        trials: how many trials the importances rest on (their `.attrs["trials"]`).
        stacklevel: as warnings.warn's, from the caller of this function (1: that caller, 2: its caller).

    Example:
        >>> warn_if_few(6)   # FewTrialsWarning: importances rest on 6 trials ...
    """
    if trials < FEW_TRIALS:
        warnings.warn(f"importances rest on {trials} trial{'' if trials == 1 else 's'}, fewer than {FEW_TRIALS}: they "
                      "move a lot from one search to the next, so read them as hints; run a search with more "
                      f"trials (--num-samples {FEW_TRIALS} or more) to rank hyperparameters", FewTrialsWarning,
                      stacklevel=stacklevel + 1)


def importances(exp: Trials, evaluator: optuna.importance.BaseImportanceEvaluator | None = None) -> pd.Series:
    """One importance per hyperparameter (0 for one that never varied), largest first, summing to 1.
    `.attrs`: "trials" (how many they rest on), "method" (what computed them) and, for the default, "sd" (each
    share's standard deviation over the seeds). Silent about few trials: `Experiment.importance` warns.

    The default is fANOVA averaged over FANOVA_SEEDS, so a report is reproducible and its ranking does not hang on
    one seed; pass any of optuna.importance's evaluators instead (see `methods` for two side by side)."""
    study, count = _trials_study(exp)
    if evaluator is not None:
        series = pd.Series(_shares(study, evaluator, exp), name="importance")
        series.attrs["method"] = type(evaluator).__name__.removesuffix("ImportanceEvaluator")
    else:
        series = _fanova_mean(study, exp)
    series = series.sort_values(ascending=False)
    series.attrs["trials"] = count
    return series


def _fanova_mean(study: optuna.Study, exp: Trials) -> pd.Series:
    """fANOVA's shares averaged over FANOVA_SEEDS, with their s.d. and the method in `.attrs`."""
    runs = pd.DataFrame([_shares(study, optuna.importance.FanovaImportanceEvaluator(seed=seed), exp)
                         for seed in FANOVA_SEEDS])
    series = runs.mean().rename("importance")
    series.attrs["sd"] = runs.std(ddof=1).to_dict()
    series.attrs["method"] = f"{FANOVA}, mean of {len(FANOVA_SEEDS)} seeds"
    return series


def methods(exp: Trials) -> pd.DataFrame:
    """Two evaluators side by side, one row per hyperparameter (fANOVA's order): fANOVA's mean share over the
    seeds and its s.d., and PED-ANOVA (Optuna's default, what optuna-dashboard shows). `.attrs["trials"]`.

    Args:
        exp: a loaded experiment (`analysis.load`).

    Returns:
        Columns "fanova", "fanova_sd", "ped_anova", index the hyperparameters.

    Raises:
        InputError: fewer than two trials with different val losses, or no hyperparameters.

    Warns:
        FewTrialsWarning: the shares rest on fewer than FEW_TRIALS trials.

    Example:
        >>> analysis.importance.methods(exp)
    """
    study, count = _trials_study(exp)  # one study for both evaluators
    warn_if_few(count, stacklevel=2)
    fanova = _fanova_mean(study, exp).sort_values(ascending=False)
    ped = _shares(study, optuna.importance.PedAnovaImportanceEvaluator(), exp)
    table = pd.DataFrame({"fanova": fanova, "fanova_sd": pd.Series(fanova.attrs["sd"]), "ped_anova": pd.Series(ped)},
                         index=fanova.index)
    table.index.name = "hyperparameter"
    table.attrs["trials"] = count
    return table


def _trials_study(exp: Trials) -> tuple[optuna.Study, int]:
    """A study of the trials that reached a val loss (or diverged), and how many they are."""
    params, values = [], []
    for _, row in exp.trials.iterrows():
        value = DIVERGED_LOSS if row["status"] == DIVERGED else row["best_val_loss"]
        config = exp.configs.get(row["trial_id"]) or {}
        if math.isfinite(value) and all(h in config for h in exp.hyperparameters):
            params.append({h: config[h] for h in exp.hyperparameters})
            values.append(float(value))
    if len(params) < 2 or len(set(values)) < 2 or not exp.hyperparameters:
        raise InputError("cannot rank hyperparameters: it takes at least two trials with different val losses",
                         exp.path)
    return _study(params, values, distributions(exp)), len(params)


def _shares(study: optuna.Study, evaluator: optuna.importance.BaseImportanceEvaluator,
            exp: Trials) -> dict[str, float]:
    try:
        scores = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except RuntimeError as exc:  # fANOVA: "zero total variance" when no hyperparameter ever varied
        raise InputError(f"cannot rank hyperparameters ({exc})", exp.path) from None
    return {h: float(scores.get(h, 0.0)) for h in exp.hyperparameters}


def _study(params: list[dict[str, Any]], values: list[float],
           distributions: dict[str, BaseDistribution]) -> optuna.Study:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line in a report run
    try:
        study = optuna.create_study(direction="minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for p, value in zip(params, values):
        study.add_trial(optuna.trial.create_trial(params=p, distributions=distributions, value=value))
    return study

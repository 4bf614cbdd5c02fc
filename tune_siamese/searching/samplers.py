"""--searcher: which of Optuna's samplers proposes the configurations, seeded from --seed."""
from __future__ import annotations

import optuna

from tune_siamese.searching.settings import SearchSettings
from tune_siamese.searching.study_search import SavableNSGAIISampler


def build_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    """--searcher: one of Optuna's samplers, seeded from --seed. TPE and GP start from a quarter of the trials
    (at least 2) drawn at random; CMA-ES keeps Optuna's default (its first generation is its own exploration)."""
    seed, startup = settings.seed, max(2, settings.num_samples // 4)
    samplers = optuna.samplers
    if settings.searcher == "random":
        return samplers.RandomSampler(seed=seed)
    if settings.searcher == "gp":  # needs scipy and torch (checked with the options)
        return samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if settings.searcher == "cmaes":  # needs cmaes; models the ranges only, choices come from a random sampler
        return samplers.CmaEsSampler(seed=seed)
    if settings.searcher == "qmc":  # the seed acts only on a scrambled sequence
        return samplers.QMCSampler(scramble=True, seed=seed)
    if settings.searcher == "nsga2":  # genetic, for several objectives (one works too)
        return SavableNSGAIISampler(seed=seed)
    # Multivariate TPE models the parameters jointly; the constant liar counts the trials still running as bad
    # ones, so that trials suggested side by side spread out rather than repeat each other.
    return samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True)

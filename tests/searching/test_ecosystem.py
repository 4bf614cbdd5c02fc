"""What docs/analysis.md promises about tools around an experiment: TensorBoard event files, and Ray's own ways
of loading a finished search (ExperimentAnalysis, Tuner.restore(...).get_results())."""
from __future__ import annotations

import pytest
from ray import tune

from tune_siamese.core.names import VAL_LOSS
from tune_siamese.searching.trainable import train_siamese


def test_every_trial_writes_tensorboard_events_with_the_val_loss(smoke_search):
    trials = sorted(smoke_search["experiment"].glob("trial_*"))
    assert trials
    for trial in trials:
        events = list(trial.glob("events.out.tfevents.*"))
        assert len(events) == 1, trial
        assert f"ray/tune/{VAL_LOSS}".encode() in events[0].read_bytes()  # the scalar's tag, as TensorBoard lists it


def test_ray_loads_the_experiment_as_the_readme_shows(smoke_search):
    experiment = smoke_search["experiment"]
    trial_count = len(list(experiment.glob("trial_*")))
    analysis = tune.ExperimentAnalysis(str(experiment))
    assert len(analysis.dataframe(metric=VAL_LOSS, mode="min")) == trial_count
    best_config = analysis.get_best_config(metric=VAL_LOSS, mode="min", scope="all")
    # Tune's config holds the searched and fixed values; the summary's is the whole Config
    assert best_config.items() <= smoke_search["summary"]["best_config"].items()

    grid = tune.Tuner.restore(str(experiment), trainable=train_siamese).get_results()
    assert len(grid) == trial_count
    best = grid.get_best_result(VAL_LOSS, "min", scope="all")
    assert best.metrics_dataframe[VAL_LOSS].min() == pytest.approx(smoke_search["summary"]["best_val_loss"])

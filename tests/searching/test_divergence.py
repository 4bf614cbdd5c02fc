"""Diverged trials: a diverged trial is recorded with names.DIVERGED_LOSS, above every loss a usable trial can
report (it was 10.0, below a usable but awful 23.1, issue 34 case 18), by the trainable, the study and the
analysis; a NaN-diverged trial never outranks exploded ones, and a search whose every trial diverged ends with
exit 3 and a final.json that says why (nothing retrained or exported)."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tune_siamese.app import search_command
from tune_siamese.core.names import DIVERGED_ABOVE, DIVERGED_LOSS, FINAL_FILE

EXPLODING_SPACE = '''
from ray import tune
from search_spaces import PRESETS, Preset

SPACE = Preset(
    space={"lr": tune.choice([1e10, 1e30])},
    fixed={**PRESETS["smoke"].fixed, "optimizer": "sgd", "batchnorm": False, "drawn_pairs": 800},
    # 1e30 turns the weights to NaN (diverged, then reported as loss 10); 1e10 explodes to finite losses of ~1e9,
    # which ranked below 10, so the diverged trial used to win and the search crashed (KeyError: 'epoch').
    points=[{"lr": 1e30}, {"lr": 1e10}],
)
'''


@pytest.mark.slow
def test_a_search_without_a_usable_trial_ends_with_exit_3_and_says_why(ray_session, tmp_path, capsys):
    """With --no-retrain; without it, tests/searching/test_faults.py's search without a usable trial (the same
    learning rates) checks the same record, message and exit status."""
    space = tmp_path / "exploding.py"
    space.write_text(EXPLODING_SPACE)
    argv = ["--space", f"{space}:SPACE", "--num-samples", "2", "--max-epochs", "1", "--storage-path", str(tmp_path),
            "--name", "exploding", "--no-retrain"]
    assert search_command.main(argv) == 3
    final = json.loads((tmp_path / "exploding" / FINAL_FILE).read_text())
    assert final["no_usable_trial"] == "none of the 2 trials has a usable val loss (2 diverged)"
    assert final["trial_statuses"] == {"diverged": 2}
    assert "test" not in final and not (tmp_path / "exploding" / "export").exists()
    assert "No usable trial: none of the 2 trials has a usable val loss (2 diverged); nothing was retrained" in \
        capsys.readouterr().out


def test_a_diverged_trials_loss_ranks_below_every_usable_trials():
    """A usable trial reports at most DIVERGED_ABOVE (above it the training ends the run as diverged)."""
    from tune_siamese.training.engine import Diverged, check_loss

    check_loss("validation", DIVERGED_ABOVE, 1)  # the worst loss a usable trial can report
    with pytest.raises(Diverged):
        check_loss("validation", DIVERGED_LOSS, 1)
    assert math.isfinite(DIVERGED_LOSS) and sorted([DIVERGED_LOSS, 23.1, DIVERGED_ABOVE])[-1] == DIVERGED_LOSS


def test_the_study_records_a_diverged_trial_below_an_awful_usable_one():
    """Also one that reported the old stand-in 10.0 (a trial resumed from an earlier version)."""
    import optuna

    from tune_siamese.searching.study_search import StudyRecordingSearch

    storage = optuna.storages.InMemoryStorage()
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}
    search = StudyRecordingSearch(space=space, metric="best_val_loss", mode="min", study_name="div", storage=storage)
    for trial_id, last in (("awful", {"val_loss": 23.1, "best_val_loss": 23.1}),
                           ("diverged", {"val_loss": 10.0, "best_val_loss": 10.0, "diverged": 1})):
        search.suggest(trial_id)
        search.on_trial_complete(trial_id, {"training_iteration": 1, "stops_here": 1, **last})
    study = optuna.load_study(study_name="div", storage=storage)
    values = {t.user_attrs["tune_trial_id"]: t.value for t in study.trials}
    assert values == {"awful": 23.1, "diverged": DIVERGED_LOSS}
    assert study.best_trial.user_attrs["tune_trial_id"] == "awful"


def test_importance_rates_every_diverged_trial_as_the_study_does():
    """A trial that diverged after good epochs counted with its best val loss there, not what the searcher saw."""
    from types import SimpleNamespace

    from analysis.importance import _trials_study

    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": ["finished", "finished", "diverged"],
                           "best_val_loss": [0.6, 23.1, 0.4]})
    exp = SimpleNamespace(path="exp", trials=trials, hyperparameters=["lr"], space=None,
                          configs={"a": {"lr": 1e-3}, "b": {"lr": 1e-2}, "c": {"lr": 1.0}})
    study, count = _trials_study(exp)
    assert count == 3 and sorted(t.value for t in study.trials) == [0.6, 23.1, DIVERGED_LOSS]

"""Diverged trials: a NaN-diverged trial (stand-in loss 10) never outranks exploded ones, and a search
whose every trial diverged ends with exit 3 and a final.json that says why (nothing retrained or exported)."""
from __future__ import annotations

import json

import pytest

from tune_siamese.app import search_command
from tune_siamese.core.names import FINAL_FILE

EXPLODING_SPACE = '''
from ray import tune
from search_spaces import PRESETS, Preset

SPACE = Preset(
    space={"lr": tune.choice([1e10, 1e30])},
    fixed={**PRESETS["smoke"].fixed, "optimizer": "sgd", "batchnorm": False},
    # 1e30 turns the weights to NaN (diverged, reported as loss 10); 1e10 explodes to finite losses of ~1e9,
    # which ranked below 10, so the diverged trial used to win and the search crashed (KeyError: 'epoch').
    points=[{"lr": 1e30}, {"lr": 1e10}],
)
'''


@pytest.mark.slow
@pytest.mark.parametrize("no_retrain", [False, True])
def test_a_search_without_a_usable_trial_ends_with_exit_3_and_says_why(ray_session, tmp_path, capsys, no_retrain):
    space = tmp_path / "exploding.py"
    space.write_text(EXPLODING_SPACE)
    argv = ["--space", f"{space}:SPACE", "--num-samples", "2", "--max-epochs", "1", "--storage-path", str(tmp_path),
            "--name", "exploding", *(["--no-retrain"] if no_retrain else [])]
    assert search_command.main(argv) == 3
    final = json.loads((tmp_path / "exploding" / FINAL_FILE).read_text())
    assert final["no_usable_trial"] == "none of the 2 trials has a usable val loss (2 diverged)"
    assert final["trial_statuses"] == {"diverged": 2}
    assert "test" not in final and not (tmp_path / "exploding" / "export").exists()
    assert "No usable trial: none of the 2 trials has a usable val loss (2 diverged); nothing was retrained" in \
        capsys.readouterr().out

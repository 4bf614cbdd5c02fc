"""An experiment written by tune-siamese 0.1.0 (tests/fixtures/experiment-0.1.0: a smoke search of 3 trials cut
short after one, its Tune state pickled under the old flat module paths) resumes with this version: the old paths
resolve through tune_siamese._legacy's table, each with a DeprecationWarning, and no finished epoch runs again."""
from __future__ import annotations

import shutil
import warnings

import pytest
from helpers import REPO, trial_frames

from tune_siamese.app import search_command

FIXTURE = REPO / "tests" / "fixtures" / "experiment-0.1.0"


@pytest.mark.slow
def test_an_experiment_of_version_0_1_0_resumes(ray_session, tmp_path):
    """Resumed by the search command's main in this process (on the session's Ray), where the warnings are caught
    as they are raised."""
    experiment = tmp_path / "old-smoke"
    shutil.copytree(FIXTURE, experiment)
    for path in [experiment, *experiment.rglob("*")]:  # a checkout may leave group-writable modes
        path.chmod(0o755 if path.is_dir() else 0o644)
    before = {name: len(frame) for name, frame in trial_frames(experiment).items()}
    assert before == {"trial_1590bcf7": 3, "trial_8da26ec9": 1}  # one trial ended, one cut short, one to come
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", DeprecationWarning)
        assert search_command.main(["--resume", str(experiment), "--no-retrain", "-q"]) == 0
    said = [str(w.message) for w in warned if w.category is DeprecationWarning]
    for old in ("tune_siamese.tuning.MovableSearchGenerator", "tune_siamese.study.ExperimentStudyStorage",
                "tune_siamese.study_search.StudyRecordingSearch"):
        assert any(message.startswith(f"{old} (saved by an earlier tune-siamese) is now") for message in said), said
    after = trial_frames(experiment)
    assert len(after) == 3
    assert len(after["trial_1590bcf7"]) == 3  # ended before: not run again
    for frame in after.values():
        assert list(frame["epoch"]) == list(range(1, len(frame) + 1))  # each epoch once

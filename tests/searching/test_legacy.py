"""An experiment written by tune-siamese 0.1.0 (tests/fixtures/experiment-0.1.0: a smoke search of 3 trials cut
short after one, its Tune state pickled under the old flat module paths) resumes with this version: the old paths
resolve through tune_siamese._legacy's table, each with a DeprecationWarning, and no finished epoch runs again."""
from __future__ import annotations

import shutil

import pytest
from helpers import REPO, reap, spawn, trial_frames

FIXTURE = REPO / "tests" / "fixtures" / "experiment-0.1.0"


@pytest.mark.slow
def test_an_experiment_of_version_0_1_0_resumes(tmp_path):
    experiment = tmp_path / "old-smoke"
    shutil.copytree(FIXTURE, experiment)
    for path in [experiment, *experiment.rglob("*")]:  # a checkout may leave group-writable modes
        path.chmod(0o755 if path.is_dir() else 0o644)
    before = {name: len(frame) for name, frame in trial_frames(experiment).items()}
    assert before == {"trial_1590bcf7": 3, "trial_8da26ec9": 1}  # one trial ended, one cut short, one to come
    log = tmp_path / "log.txt"
    proc = spawn(["-W", "always::DeprecationWarning", "run_search.py", "--resume", str(experiment), "--no-retrain"],
                 log)
    try:
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        reap(proc)
    printed = log.read_text()
    for old in ("tune_siamese.tuning.MovableSearchGenerator", "tune_siamese.study.ExperimentStudyStorage",
                "tune_siamese.study_search.StudyRecordingSearch"):
        assert f"{old} (saved by an earlier tune-siamese) is now" in printed
    after = trial_frames(experiment)
    assert len(after) == 3
    assert len(after["trial_1590bcf7"]) == 3  # ended before: not run again
    for frame in after.values():
        assert list(frame["epoch"]) == list(range(1, len(frame) + 1))  # each epoch once

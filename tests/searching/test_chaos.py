"""A chaos search: a search on a local multi-node Ray cluster (separate `ray start` processes) while a killer ends a
running trial's worker every few seconds and the driver once (SIGKILL, then --resume). In the reproducible mode it
must hand back what an undisturbed search on the same cluster hands back."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from helpers import REPO, SMOKE, reap, trial_frames
from services import RayNodes

pytestmark = pytest.mark.cluster

TRIALS, EPOCHS = 3, 3  # two at once: the third starts after the first two end


def search(argv: list[str], nodes: RayNodes, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "run_search.py", *argv], cwd=REPO, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env={**nodes.env, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True)


class Killer:
    """Every `every` seconds, SIGKILL the worker of a random trial that is still training and has reported an epoch
    since the last kill (so that the search moves on between kills); `killed` holds (trial, epochs, pid)."""

    def __init__(self, experiment: Path, every: float = 3.0, seed: int = 0) -> None:
        self.experiment, self.every, self.rng = experiment, every, random.Random(seed)
        self.killed: list[tuple[str, int, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.seen: dict[str, int] = {}

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            frames = trial_frames(self.experiment) if self.experiment.exists() else {}
            moved = [(name, len(frame), int(frame["pid"].iloc[-1])) for name, frame in frames.items()
                     if "pid" in frame and len(frame) < EPOCHS and len(frame) > self.seen.get(name, 0)]
            alive = [entry for entry in moved if _alive(entry[2])]
            if alive:
                name, epochs, pid = self.rng.choice(alive)
                os.kill(pid, signal.SIGKILL)
                self.seen[name] = epochs
                self.killed.append((name, epochs, pid))

    def __enter__(self) -> Killer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_a_chaos_search_loses_no_epoch_and_hands_back_what_a_calm_one_does(tmp_path):
    nodes = RayNodes(tmp_path / "logs")
    try:
        nodes.start_head(num_cpus=0)
        nodes.add_worker(num_cpus=1)
        nodes.add_worker(num_cpus=1)
        common = [*SMOKE, "--num-samples", str(TRIALS), "--max-epochs", str(EPOCHS), "--reproducible",
                  "--max-concurrent", "2", "--max-failures", "100", "--address", nodes.address,
                  "--storage-path", str(tmp_path)]
        calm = search([*common, "--name", "calm"], nodes, tmp_path / "calm.log")
        assert calm.wait(timeout=600) == 0, (tmp_path / "calm.log").read_text()[-3000:]

        experiment = tmp_path / "chaos"
        with Killer(experiment) as killer:
            driver = search([*common, "--name", "chaos"], nodes, tmp_path / "chaos.log")
            try:  # the driver too, once: after a trial has finished and a worker was killed
                deadline = time.monotonic() + 600
                while not (killer.killed and any(len(f) == EPOCHS for f in trial_frames(experiment).values())
                           if experiment.exists() else False):
                    assert driver.poll() is None, (tmp_path / "chaos.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "no trial finished"
                    time.sleep(0.5)
            finally:
                reap(driver)  # SIGKILL: nothing gets to save or clean up
            driver.wait()
            resumed = search(["--resume", str(experiment), "--address", nodes.address], nodes,
                             tmp_path / "resumed.log")
            assert resumed.wait(timeout=900) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
        assert len(killer.killed) >= 2, killer.killed

        frames = trial_frames(experiment)
        assert len(frames) == TRIALS
        for name, frame in frames.items():  # each reached its last epoch (no ASHA here), each epoch once
            assert list(frame["epoch"]) == list(range(1, EPOCHS + 1)), (name, list(frame["epoch"]))
        study = optuna.load_study(study_name="chaos", storage=f"sqlite:///{experiment / 'optuna.db'}")
        assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
        assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == TRIALS

        calm_final = json.loads((tmp_path / "calm" / "final.json").read_text())
        chaos_final = json.loads((experiment / "final.json").read_text())
        assert chaos_final["best_config"] == calm_final["best_config"]
        assert chaos_final["test"] == calm_final["test"]
    finally:
        nodes.stop()

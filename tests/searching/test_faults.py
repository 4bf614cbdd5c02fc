"""Faults during a search: errored and diverged trials, a killed worker, a killed driver, SIGTERM.
(A lost node: tests/searching/test_cluster.py, on real `ray start` nodes.)

Every test checks that the search finishes and that no finished trial is lost or run again.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import SMOKE, leftovers, reap, resume_and_check, spawn_until_a_trial_finished, trial_frames

from tune_siamese.app import search_command
from tune_siamese.core.names import DIVERGED_LOSS, FINAL_FILE

pytestmark = pytest.mark.slow  # every test here runs a real search through a fault (15 s to 90 s each)

FAULTY_SPACE = '''
from ray import tune
from search_spaces import PRESETS, Preset

smoke = PRESETS["smoke"]
SPACE = Preset(
    space={"device": tune.choice(["cpu", "cuda:7"]), "lr": tune.choice([1e-3, 1e30]),
           "optimizer": tune.choice(["sgd"])},
    fixed={**smoke.fixed, "drawn_pairs": 800},  # tests/helpers.py SMALL_DATA
    # cuda:7 does not exist on a CPU worker with a (declared) GPU share (the trial raises);
    # lr=1e30 with SGD turns the weights to NaN in the first epoch.
    points=[{"device": "cuda:7", "lr": 1e-3, "optimizer": "sgd"}, {"device": "cpu", "lr": 1e30, "optimizer": "sgd"},
            {"device": "cpu", "lr": 1e-3, "optimizer": "sgd"}],
)
'''


def test_errored_and_diverged_trials_leave_the_search_standing(ray_session, tmp_path):
    space = tmp_path / "faulty.py"
    space.write_text(FAULTY_SPACE)
    summary, _ = search_command.run(search_command.parse_args([
        "--space", f"{space}:SPACE", "--num-samples", "3", "--max-epochs", "2", "--grace-period", "2",
        "--max-failures", "0", "--gpus-per-trial", "0.25", "--max-concurrent", "2", "--storage-path", str(tmp_path),
        "--name", "faulty", "--no-retrain"]))
    frames = trial_frames(tmp_path / "faulty")
    by_config = {}
    for frame in frames.values():
        by_config[(frame["config"].iloc[0]["device"] if "config" in frame else None,
                   frame["config"].iloc[0]["lr"] if "config" in frame else None)] = frame
    assert summary["trials"] == 3 and summary["errored_trials"] == 1
    assert summary["trial_statuses"] == {"errored": 1, "diverged": 1, "finished": 1}
    diverged = by_config[("cpu", 1e30)]
    assert diverged["diverged"].iloc[-1] == 1 and diverged["val_loss"].iloc[-1] == DIVERGED_LOSS
    good = by_config[("cpu", 1e-3)]
    assert list(good["epoch"]) == [1, 2]  # the healthy trial ran to the end
    assert summary["best_config"]["lr"] == 1e-3 and summary["best_config"]["device"] == "cpu"
    chance = summary["chance"]  # without a retrain: the best trial's val AUC at its best epoch
    assert chance["scored_on"] == "val" and chance["auc"] == good["val_auc"].iloc[-1]
    assert chance["no_better_than_chance"] == (chance["auc"] <= chance["chance_bound"])
    assert json.loads((tmp_path / "faulty" / FINAL_FILE).read_text())["errored_trials"] == 1
    import analysis  # the report lists both casualties

    out = analysis.report(tmp_path / "faulty", tmp_path / "report")
    statuses = sorted(pd.read_csv(out / "trials.csv")["status"])
    assert statuses == ["diverged", "errored", "finished"]
    # the Optuna study keeps them apart: diverged COMPLETE at the diverged loss (the sampler learns the region
    # diverges), errored FAIL; each says which it was
    import optuna

    study = optuna.load_study(study_name="faulty", storage=f"sqlite:///{tmp_path / 'faulty' / 'optuna.db'}")
    outcomes = {t.user_attrs["outcome"]: t for t in study.trials}
    assert sorted(outcomes) == ["diverged", "errored", "finished"]
    assert outcomes["errored"].state == optuna.trial.TrialState.FAIL
    assert outcomes["diverged"].state == optuna.trial.TrialState.COMPLETE
    assert outcomes["diverged"].value == DIVERGED_LOSS


DIVERGING_SPACE = '''
from ray import tune
from search_spaces import PRESETS, Preset

# SGD at lr 1e30 turns the weights to NaN in the first epoch; at 1e10 the losses stay finite but explode (1e9 and
# more, AUC 0.5): before the loss ceiling, the NaN trial's stand-in loss 10 ranked first and crashed the end.
SPACE = Preset(space={"lr": tune.choice([1e10, 1e30])},
               fixed={**PRESETS["smoke"].fixed, "optimizer": "sgd", "drawn_pairs": 800},
               points=[{"lr": 1e10}, {"lr": 1e30}])
'''


def test_a_search_without_a_usable_trial_says_so_and_exports_nothing(ray_session, tmp_path, capsys):
    space = tmp_path / "diverging.py"
    space.write_text(DIVERGING_SPACE)
    code = search_command.main(["--space", f"{space}:SPACE", "--num-samples", "2", "--max-epochs", "2",
                            "--grace-period", "2", "--storage-path", str(tmp_path), "--name", "diverging", "-q"])
    out = capsys.readouterr().out
    experiment = tmp_path / "diverging"
    assert code == 3, out[-3000:]
    final = json.loads((experiment / FINAL_FILE).read_text())
    assert final["no_usable_trial"] == "none of the 2 trials has a usable val loss (2 diverged)"
    assert final["trial_statuses"] == {"diverged": 2} and "best_config" not in final
    assert not (experiment / "export").exists()
    assert out.strip().splitlines()[-1] == (f"No usable trial: {final['no_usable_trial']}; nothing was retrained or "
                                            f"exported (exit 3). Analyse it: python -m analysis {experiment}")
    import analysis

    report = (analysis.report(experiment, tmp_path / "report") / "report.md").read_text()
    assert f"No usable trial: {final['no_usable_trial']}" in report


def test_a_search_preempted_copied_and_killed_resumes_with_no_finished_trial_repeated(ray_session, tmp_path):
    """One search through three faults a long search meets, one after another (one interrupted search shared, as
    three separate ones cost three times the Ray starts):
    - SIGTERM, what Kubernetes, Slurm and most schedulers send on preemption: exit 143 and the resume line (Ray's
      own handler aborted the driver: exit 134, a C++ stack dump, no resume line);
    - the experiment copied under another name: the copy resumes into its own Optuna study, the original's is
      left as it was;
    - SIGKILL of that resumed driver and its Ray: nothing gets to save or clean up.
    The last resume (in this process) finishes: no trial finished before any fault runs again, and --set's value
    held in every trial before and after."""
    import hashlib

    import optuna

    import analysis

    TRIALS = 3  # one at a time: the first fault comes after one, the second after two
    first = tmp_path / "first" / "interrupted"
    argv = ["run_search.py", *SMOKE, "--num-samples", str(TRIALS), "--max-epochs", "2", "--grace-period", "2",
            "--max-concurrent", "1", "--storage-path", str(first.parent), "--name", "interrupted", "--no-retrain",
            "--set", "lr=0.002"]
    log = tmp_path / "first.log"
    proc = spawn_until_a_trial_finished(argv, first, log, epochs=2)
    try:
        proc.send_signal(signal.SIGTERM)  # the driver alone, as Kubernetes signals a container's main process
        assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    finally:
        reap(proc)
    output = log.read_text()
    assert "Search interrupted (SIGTERM)" in output and f"--resume {first}" in output
    assert "--set lr=0.002 fixes lr, which the space searches: not searched" in output
    assert not (first / FINAL_FILE).exists()
    before = {n: len(f) for n, f in trial_frames(first).items()}
    finished_before = [n for n, rows in before.items() if rows >= 2]
    assert finished_before and (len(before) < TRIALS or any(rows < 2 for rows in before.values()))

    experiment = tmp_path / "copied" / "renamed"
    shutil.copytree(first, experiment)
    original = hashlib.sha256((first / "optuna.db").read_bytes()).hexdigest()
    proc = spawn_until_a_trial_finished(["run_search.py", "--resume", str(experiment), "--no-retrain"], experiment,
                                        tmp_path / "second.log", epochs=2, finished=len(finished_before) + 1)
    reap(proc)  # SIGKILL the resumed driver and the Ray it started
    killed = {n: len(f) for n, f in trial_frames(experiment).items()}
    assert all(killed[name] == before[name] for name in finished_before)
    assert len(killed) < TRIALS or any(rows < 2 for rows in killed.values())  # really cut short again

    resume_and_check(experiment, killed, trials=TRIALS, epochs=2)  # in this process, on the session's Ray
    assert json.loads((experiment / FINAL_FILE).read_text())["trials"] == TRIALS
    # The resumes wrote to the study in the copy (named as the search began); the original is untouched.
    study = optuna.load_study(study_name="interrupted", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * TRIALS
    assert hashlib.sha256((first / "optuna.db").read_bytes()).hexdigest() == original
    assert not (tmp_path / "copied" / "interrupted").exists()
    configs = [json.loads(params.read_text()) for params in experiment.glob("trial_*/params.json")]
    assert len(configs) == TRIALS and {float(config["lr"]) for config in configs} == {0.002}
    assert "lr" not in analysis.load(experiment).hyperparameters


def test_ctrl_c_or_sigterm_during_the_export_leaves_no_export_and_a_resume_finishes(ray_session, tmp_path, capsys,
                                                                                   monkeypatch):
    """After the search Tune's SIGINT handler stayed installed: Ctrl-C during the retrain or export only set a
    flag nobody read (the export went on, exit 0), and SIGTERM met Ray's handler (sys.exit, a half-written export
    folder). Now both end the run there, with the resume command, and no export or temporary folder is left."""
    from tune_siamese.artifacts import checkpoint

    real = checkpoint._export_verifier
    signals: list[int] = []

    def export_cut_short(*args, **kwargs):  # weights, config and metrics are written by now
        if signals:
            os.kill(os.getpid(), signals.pop())
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "_export_verifier", export_cut_short)
    experiment = tmp_path / "stopped"
    inherited = signal.getsignal(signal.SIGINT)
    for signum, code, argv in [
            (signal.SIGINT, 130, [*SMOKE, "--num-samples", "1", "--max-epochs", "1", "--grace-period", "1",
                                  "--storage-path", str(tmp_path), "--name", "stopped", "-q"]),
            (signal.SIGTERM, 143, ["--resume", str(experiment), "-q"])]:
        signals.append(signum)
        assert search_command.main(argv) == code
        out = capsys.readouterr().out
        assert "during the retrain, test and export" in out and f"--resume {experiment}" in out
        assert not (experiment / FINAL_FILE).exists() and leftovers(experiment) == []
        assert not [p.name for p in experiment.iterdir() if "export" in p.name]
        assert signal.getsignal(signal.SIGINT) is inherited  # what the process had (SIG_IGN in a background job)
    assert search_command.main(["--resume", str(experiment), "-q"]) == 0
    assert json.loads((experiment / FINAL_FILE).read_text())["trials"] == 1
    assert (experiment / "export" / "SHA256SUMS").is_file()


def _kill_worker_after_first_epoch(experiment: Path, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        for frame in trial_frames(experiment).values() if experiment.exists() else []:
            if "pid" in frame and not killed:
                pid = int(frame["pid"].iloc[-1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.2)


def test_killed_worker_restarts_from_its_last_checkpoint(ray_session, tmp_path):
    experiment = tmp_path / "killed"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_worker_after_first_epoch, args=(experiment, killed, stop), daemon=True)
    killer.start()
    try:
        summary, _ = search_command.run(search_command.parse_args([
            *SMOKE, "--num-samples", "1", "--max-epochs", "3", "--grace-period", "3",
            "--storage-path", str(tmp_path), "--name", "killed", "--no-retrain"]))
    finally:
        stop.set()
        killer.join()
    assert killed, "the worker was never killed"
    (frame,) = trial_frames(experiment).values()
    assert list(frame["epoch"]) == [1, 2, 3]  # continued at epoch 2, not from zero
    assert killed[0] in set(frame["pid"]) and len(set(frame["pid"])) == 2  # a new worker took over
    assert summary["errored_trials"] == 0

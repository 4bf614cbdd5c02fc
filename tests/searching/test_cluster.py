"""The cluster path with real processes: a head and two workers from `ray start`, run_search.py submitted with
`ray job submit` (its driver joins through the RAY_ADDRESS Ray gives it) and joining through --address, the Optuna
study in a real PostgreSQL, a chaos search and a lost node."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from helpers import REPO, SMOKE, trial_frames
from services import RayNodes, free_port, ray_cli, stop_group, throwaway_postgres, wait_for

import analysis

pytestmark = pytest.mark.cluster

HEAD_RESOURCE = "node:__internal_head__"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head with no CPUs (nothing can run there). The first test here uses it alone; `cluster` then adds the
    workers: one head start for the module."""
    nodes = RayNodes(tmp_path_factory.mktemp("cluster-logs"))
    try:
        nodes.start_head(num_cpus=0)
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def cluster(head):
    """The head, a 1-CPU worker (the one test_wait_for_resources added, if it ran) and a 1-CPU worker with one
    (logical) GPU."""
    gpu_worker = {"num_cpus": 1, "num_gpus": 1}
    head.add_workers(*([] if head.workers else [{"num_cpus": 1}]), gpu_worker)
    nodes = head.nodes()
    head.head_id = next(node["NodeID"] for node in nodes if HEAD_RESOURCE in node["Resources"])
    head.worker_ids = {node["NodeID"] for node in nodes} - {head.head_id}
    assert len(head.worker_ids) == 2
    # The worker without a GPU, which the last test here loses: its node id and its `ray start` process.
    head.plain_worker = (next(node["NodeID"] for node in nodes if node["NodeID"] in head.worker_ids
                              and "GPU" not in node["Resources"]),
                         next(proc for spec, proc in head.workers if not spec.get("num_gpus")))
    return head


@pytest.fixture(scope="module")
def postgres_url():
    with throwaway_postgres() as url:
        yield url


def run_process(argv: list[str], env: dict[str, str], cwd: Path = REPO, timeout: int = 600
                ) -> subprocess.CompletedProcess:
    """A command with the cluster's environment (token auth, loopback-only Ray) and no RAY_ADDRESS of ours."""
    return subprocess.run(argv, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def start_process(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """run_process's command left running (in the repository, its own session), its output in `log`."""
    return subprocess.Popen(argv, cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def check_ran_on_workers(experiment: Path, cluster: RayNodes) -> None:
    exp = analysis.load(experiment)
    nodes = set(exp.history["node_id"].dropna())
    assert nodes == cluster.worker_ids, (nodes, cluster.worker_ids)  # both workers, never the head
    assert json.loads((experiment / "final.json").read_text())["retrain_node"] in cluster.worker_ids


IN_TURN = """
import json, sys
from tune_siamese.app.search_command import main

for argv in json.loads(sys.argv[1]):
    print(f"exit {main(argv)}", flush=True)
"""


def test_wait_for_resources_waits_for_a_node_added_by_hand(head, tmp_path):
    """First in the module: the head alone, which no trial fits. Two runs of the search command's main, one after
    the other in one process (one start of Python, torch and Tune): a short wait that ends in a refusal, then a
    long one that a worker added by hand ends."""
    assert not head.workers, "runs before the tests that add the cluster's workers"
    common = [*SMOKE, "--num-samples", "1", "--max-epochs", "1", "--grace-period", "1", "--storage-path",
              str(tmp_path), "--address", head.address, "--no-retrain"]
    runs = [[*common, "--name", "refused", "--wait-for-resources", "2"],
            [*common, "--name", "waited", "--wait-for-resources", "300"]]
    log = tmp_path / "waiting.log"
    proc = start_process([sys.executable, "-c", IN_TURN, json.dumps(runs)], head.env, log)
    try:
        wait_for(lambda: proc.poll() is not None or "waiting up to 300 s" in log.read_text(), 120, "the wait")
        lines = log.read_text().splitlines()
        assert "exit 2" in lines, log.read_text()[-3000:]
        refusal = lines[lines.index("exit 2") - 1]  # one line, the last before the exit
        assert refusal.startswith("run_search.py: error:") and "no node fits one trial after waiting 2 s" in refusal
        head.add_worker(num_cpus=1)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        ends = [line for line in log.read_text().splitlines() if line.startswith("exit ")]
        assert ends == ["exit 2", "exit 0"], log.read_text()[-3000:]
    finally:
        stop_group(proc)
    assert len(analysis.load(tmp_path / "waited").trials) == 1


# Two at once: the third starts after the first two end. On the suite's small data an epoch takes about a second,
# so the killer looks every half second (Killer's `every`), while a trial is still training.
CHAOS_TRIALS, CHAOS_EPOCHS = 3, 2


def chaos_options(storage: Path) -> list[str]:
    """The search the chaos test disturbs, and its calm twin: reproducible, so the two hand back the same."""
    return [*SMOKE, "--num-samples", str(CHAOS_TRIALS), "--max-epochs", str(CHAOS_EPOCHS), "--reproducible",
            "--max-concurrent", "2", "--max-failures", "100", "--storage-path", str(storage)]


@pytest.fixture(scope="module")
def calm(cluster, postgres_url, tmp_path_factory):
    """The chaos search undisturbed, submitted as a Ray job, its study in PostgreSQL: the job test's search, and
    what the chaos test must hand back."""
    storage = tmp_path_factory.mktemp("calm")
    argv = [ray_cli(), "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO), "--",
            "python", "run_search.py", *chaos_options(storage), "--name", "joined", "--study-storage", postgres_url]
    done = run_process(argv, cluster.env, cwd=storage)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + cluster.logs()
    return storage / "joined", done


def test_search_submitted_as_a_ray_job_joins_the_cluster_through_ray_address(cluster, calm, postgres_url):
    """The job's driver is given RAY_ADDRESS by Ray (no --address): the path of a driver started on the cluster."""
    experiment, done = calm
    assert "succeeded" in done.stdout
    joined = [line for line in done.stdout.splitlines() if "Joined the Ray cluster at " in line]
    assert joined and joined[0].endswith(": 3 node(s), 2 CPUs, 1 GPUs"), done.stdout[-3000:]
    check_ran_on_workers(experiment, cluster)

    # The Optuna study in PostgreSQL holds every trial with the parameters and value Tune recorded.
    exp = analysis.load(experiment)
    study = optuna.load_study(study_name="joined", storage=postgres_url)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) == len(exp.trials) == CHAOS_TRIALS
    tune_side = {}
    for trial_id, config in exp.configs.items():
        last = exp.history[exp.history["trial_id"] == trial_id].iloc[-1]
        tune_side[tuple(config[k] for k in sorted(completed[0].params))] = last["best_val_loss"]
    optuna_side = {tuple(t.params[k] for k in sorted(t.params)): t.value for t in completed}
    assert optuna_side == pytest.approx(tune_side)


def test_autoscaling_cluster_adds_gpu_nodes_for_waiting_trials(tmp_path):
    """Ray's own autoscaler (fake multinode provider): the head has no CPU and no GPU, the GPU worker type
    (2 CPUs, 1 GPU) min_workers 0. Half a GPU per trial is accepted, the trials wait, the autoscaler launches a
    node that takes both and the search finishes; what no node type offers is refused at once."""
    nodes = RayNodes(tmp_path / "logs")
    try:
        nodes.start_head(num_cpus=0, autoscaling_workers={
            "gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "max_workers": 1}})
        before = {node["NodeID"] for node in nodes.nodes()}
        common = [*SMOKE, "--num-samples", "2", "--max-epochs", "2", "--grace-period", "2", "--storage-path",
                  str(tmp_path), "--address", nodes.address]
        runs = [[*common, "--name", "too-big", "--gpus-per-trial", "2"],  # one process, as in the test above
                [*common, "--name", "scaled", "--gpus-per-trial", "0.5"]]
        done = run_process([sys.executable, "-c", IN_TURN, json.dumps(runs)], nodes.env)
        lines = done.stdout.splitlines()
        assert done.returncode == 0 and [line for line in lines if line.startswith("exit ")] == ["exit 2", "exit 0"], \
            done.stdout[-3000:] + done.stderr[-3000:] + nodes.logs()
        errors = [line for line in done.stderr.splitlines() if line.startswith("run_search.py: error:")]
        assert len(errors) == 1 and "no node and no node type of the autoscaler fits one trial" in errors[0], errors
        assert "the autoscaler can add nodes" in done.stderr
        exp = analysis.load(tmp_path / "scaled")
        used = set(exp.history["node_id"].dropna())
        assert used and not used & before  # every trial ran on a node the autoscaler launched
        final = json.loads((tmp_path / "scaled" / "final.json").read_text())
        assert final["retrain_node"] not in before
    finally:
        nodes.stop()


BAD_ADDRESSES = """
import json, os, sys
from tune_siamese.app.search_command import main

for env, argv in json.loads(sys.argv[1]):
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(env)
    print(f"exit {main([*argv, '--connect-timeout', '3'])}", file=sys.stderr, flush=True)
"""


def test_bad_addresses_fail_with_one_line_before_any_ray_work(tmp_path):
    """Each case is the search command's own main, so exit status and message are the command's; all four in
    one process: the checks come before Ray starts, so nothing of one case carries into the next."""
    listener = socket.create_server(("127.0.0.1", 0))  # something listens, but it is no Ray cluster
    try:
        cases = [
            ({}, ["--address", f"127.0.0.1:{free_port()}"], "no Ray cluster answers there"),
            ({}, ["--address", f"127.0.0.1:{listener.getsockname()[1]}"], "it is not a Ray cluster"),
            ({}, ["--address", "ray://127.0.0.1:10001"], "Ray Client addresses are not supported"),
            ({"RAY_ADDRESS": "http://127.0.0.1:8265"}, [], "RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard"),
        ]
        common = [*SMOKE, "--storage-path", str(tmp_path)]
        done = run_process([sys.executable, "-c", BAD_ADDRESSES,
                            json.dumps([(env, [*common, *argv]) for env, argv, _ in cases])],
                           {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, timeout=180)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        lines = done.stderr.splitlines()
        ended = [(lines[i - 1], line) for i, line in enumerate(lines) if line.startswith("exit ")]
        assert [status for _, status in ended] == ["exit 2"] * len(cases), done.stderr[-3000:]
        for (_, argv, message), (error, _) in zip(cases, ended):  # the last line before each exit: one line
            assert message in error and error.startswith("run_search.py: error:"), (argv, error)
        assert not list(tmp_path.glob("*/trial_*"))
    finally:
        listener.close()


LOCAL_RAY = """
import os, sys
from tune_siamese.searching.spaces import get_preset  # imports ray first, as run_search.py does
from tune_siamese.searching import cluster
import ray

cluster.connect(None)
ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker process too
sys.path.insert(0, sys.argv[1])
from services import listening_addresses
print(sorted(set(listening_addresses(os.getsid(0)))))
ray.shutdown()
"""


def test_a_local_search_listens_on_loopback_only(tmp_path):
    done = subprocess.run([sys.executable, "-c", LOCAL_RAY, str(Path(__file__).parents[1])], cwd=REPO,
                          capture_output=True, text=True, timeout=180, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    addresses = eval(done.stdout.strip().splitlines()[-1])
    assert addresses and set(addresses) <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses


class Killer:
    """Every `every` seconds, SIGKILL the worker of a random trial that is still training and has reported an epoch
    since the last kill (so that the search moves on between kills), `most` times at most (each kill costs a
    worker's start); `killed` holds (trial, epochs, pid)."""

    def __init__(self, experiment: Path, epochs: int, every: float = 3.0, most: int = 2, seed: int = 0) -> None:
        self.experiment, self.epochs, self.every, self.rng = experiment, epochs, every, random.Random(seed)
        self.most = most
        self.killed: list[tuple[str, int, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.seen: dict[str, int] = {}

    def _run(self) -> None:
        while len(self.killed) < self.most and not self.stop.wait(self.every):
            frames = trial_frames(self.experiment) if self.experiment.exists() else {}
            moved = [(name, len(frame), int(frame["pid"].iloc[-1])) for name, frame in frames.items()
                     if "pid" in frame and len(frame) < self.epochs and len(frame) > self.seen.get(name, 0)]
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


def test_a_chaos_search_loses_no_epoch_and_hands_back_what_a_calm_one_does(cluster, calm, tmp_path):
    """A search on the cluster while a killer ends a running trial's worker twice (each after a new epoch) and the
    driver once (SIGKILL, then --resume): every trial reaches its last epoch, each epoch trained once, no trial
    RUNNING in the study, and in the reproducible mode what an undisturbed search on the same cluster hands back.
    Next to last here: it kills processes on the cluster's nodes (its trials' only)."""
    common = [*chaos_options(tmp_path), "--address", cluster.address]
    experiment = tmp_path / "chaos"
    with Killer(experiment, CHAOS_EPOCHS, every=0.5) as killer:
        log = tmp_path / "chaos.log"
        driver = start_process([sys.executable, "run_search.py", *common, "--name", "chaos"], cluster.env, log)
        def finished_one() -> bool:
            return experiment.exists() and any(len(f) == CHAOS_EPOCHS for f in trial_frames(experiment).values())

        try:  # the driver too, once: after a trial has finished and a worker was killed
            wait_for(lambda: driver.poll() is not None or (bool(killer.killed) and finished_one()), 600,
                     "a finished trial and a killed worker")
            assert driver.poll() is None, log.read_text()[-3000:]  # the search is still running
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # nothing gets to save or clean up
            driver.wait()
        resumed = run_process([sys.executable, "run_search.py", "--resume", str(experiment), "--address",
                               cluster.address], cluster.env)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert killer.killed, "no worker was killed"

    frames = trial_frames(experiment)
    assert len(frames) == CHAOS_TRIALS
    for name, frame in frames.items():  # each reached its last epoch (no ASHA here), each epoch once
        assert list(frame["epoch"]) == list(range(1, CHAOS_EPOCHS + 1)), (name, list(frame["epoch"]))
    study = optuna.load_study(study_name="chaos", storage=f"sqlite:///{experiment / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * CHAOS_TRIALS, states
    calm_final = json.loads((calm[0] / "final.json").read_text())
    chaos_final = json.loads((experiment / "final.json").read_text())
    assert chaos_final["best_config"] == calm_final["best_config"]
    assert chaos_final["test"] == calm_final["test"]


def test_a_search_survives_losing_a_worker_node(cluster, tmp_path):
    """Last here: it loses the worker without a GPU for good. Two trials, one per worker (1 CPU each, none on the
    head); once the plain worker's trial has reported an epoch, that whole node is killed. The trial goes on from
    its last checkpoint on the other worker: each trial reaches its last epoch, each epoch reported once."""
    lost_id, lost_node = cluster.plain_worker
    experiment = tmp_path / "nodeloss"
    log = tmp_path / "nodeloss.log"
    driver = start_process([sys.executable, "run_search.py", *SMOKE, "--num-samples", "2", "--max-epochs", "4",
                            "--grace-period", "4", "--storage-path", str(tmp_path), "--name", "nodeloss",
                            "--no-retrain", "--address", cluster.address], cluster.env, log)

    def reported_on_the_lost_node() -> bool:
        frames = trial_frames(experiment).values() if experiment.exists() else []
        return driver.poll() is not None or any("node_id" in f and (f["node_id"] == lost_id).any() for f in frames)

    try:
        wait_for(reported_on_the_lost_node, 300, "an epoch on the plain worker")
        assert driver.poll() is None, log.read_text()[-3000:]
        cluster.kill_worker(lost_node)
        assert driver.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        stop_group(driver)
    frames = trial_frames(experiment)
    assert len(frames) == 2
    assert {f["node_id"].iloc[0] for f in frames.values()} == cluster.worker_ids  # one trial started on each
    (moved,) = [f for f in frames.values() if (f["node_id"] == lost_id).any()]
    assert moved["node_id"].iloc[-1] != lost_id  # it finished on the other worker
    for frame in frames.values():
        assert list(frame["epoch"]) == [1, 2, 3, 4]  # every trial finished, none restarted from zero
    study = optuna.load_study(study_name="nodeloss", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2

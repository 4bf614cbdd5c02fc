"""Shared fixtures. Core fixtures first; the Ray section (one Ray instance for the whole session) last."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from helpers import SMALL_DATA
from PIL import Image

from tune_siamese.core.config import Config

# ========================================= Core (no Ray) ==========================================


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) caches decoded data in one temporary folder, never in
    ~/.cache; a test that must see an empty cache points TUNE_SIAMESE_CACHE elsewhere itself."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TUNE_SIAMESE_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


def tiny(**changes) -> Config:
    """A model small enough for 2 CPU cores: width 1/16 of Koch's, 72 px, one thread, a few epochs."""
    values = dict(data="synthetic", image_size=72, width=0.0625, init="torch", batchnorm=True, lr=1e-3,
                  max_epochs=2, patience=10, batch_size=32, device="cpu", threads=1)
    return Config(**{**values, **changes})


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Config]:
    return tiny


def write_image(path: Path, seed: int, size: int = 32, mode: str = "L") -> Path:
    """A small random PIL image (never a copy of real data); the format follows the suffix."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def write_fake_lfw(root: Path, people: int = 12, per_person: int = 3, train_n: int = 6, test_n: int = 2) -> Path:
    """An LFW-a shaped folder: lfw2/<Name>/<Name>_000i.jpg, pairsDevTrain.txt over the first people and
    pairsDevTest.txt over the last 4, in the real tab-separated format."""
    names = [f"Person_{chr(65 + i)}" for i in range(people)]
    for p, name in enumerate(names):
        for i in range(1, per_person + 1):
            write_image(root / "lfw2" / name / f"{name}_{i:04d}.jpg", seed=100 * p + i)

    def pair_list(group: list[str], n: int) -> str:
        same = [f"{group[k % len(group)]}\t{1 + k // len(group) % per_person}\t"
                f"{1 + (1 + k // len(group)) % per_person}" for k in range(n)]
        diff = [f"{group[k % len(group)]}\t{1 + k % per_person}\t{group[(k + 1) % len(group)]}\t"
                f"{1 + (k + 1) % per_person}" for k in range(n)]
        return "\n".join([str(n), *same, *diff]) + "\n"

    (root / "pairsDevTrain.txt").write_text(pair_list(names[:-4], train_n))
    (root / "pairsDevTest.txt").write_text(pair_list(names[-4:], test_n))
    return root


def write_identity_folder(root: Path, people: int = 24, per_person: int = 3) -> Path:
    """One sub-folder per identity, mixing png / pgm / bmp and colour / grayscale files."""
    kinds = [(".png", "RGB"), (".pgm", "L"), (".bmp", "RGB"), (".png", "L")]
    for p in range(people):
        for i in range(per_person):
            suffix, mode = kinds[(p + i) % len(kinds)]
            write_image(root / f"id{p:03d}" / f"img{i}{suffix}", seed=1000 + 10 * p + i, size=24 + p % 5, mode=mode)
    return root


@pytest.fixture(scope="session")
def make_image() -> Callable[..., Path]:
    return write_image


@pytest.fixture
def fake_lfw(tmp_path) -> Path:
    return write_fake_lfw(tmp_path / "lfw")


@pytest.fixture
def identity_folder(tmp_path) -> Path:
    return write_identity_folder(tmp_path / "faces")


@pytest.fixture
def full_disk(tmp_path):
    """A folder on its own 1 MiB tmpfs, for writes on a really full disk (fill it with helpers.fill_up). Mounting
    needs the right to (root in most containers); elsewhere the test is skipped, and the fakes of
    helpers.enospc_open stand in."""
    folder = tmp_path / "disk"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
        refused = mounted.stderr.strip() if mounted.returncode else ""
    except OSError as exc:  # no mount command
        refused = str(exc)
    if refused:
        pytest.skip(f"cannot mount a tmpfs here ({refused[:200]})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


@pytest.fixture(scope="session")
def synthetic_small():
    """Synthetic data at 72 px, cut to 240 train / 100 val / 200 test pairs so an epoch takes a moment."""
    import dataclasses

    from tune_siamese.data import load_data

    data = load_data(tiny())
    return dataclasses.replace(data, train=data.train[:240], val=data.val[:100], test=data.test[:200])


# ======================================= Ray (session-wide) =======================================

@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray for all tests: 4 logical CPUs and one declared GPU, so fractional-GPU scheduling
    (0.25 per trial) is exercised on a CPU-only machine; the trials themselves run on the CPU."""
    import ray

    os.environ.setdefault("TUNE_SIAMESE_CACHE", str(tmp_path_factory.mktemp("ray-cache")))
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_search(ray_session, tmp_path_factory):
    """One real search on synthetic data (6 trials, two at a time on halves of the declared GPU), logged to MLflow, run
    through the Python API (ts.search) and shared by the API, search, analysis and MLflow tests. What it printed
    and warned is kept for the API's tests (it should print nothing)."""
    import contextlib
    import io
    import warnings

    import tune_siamese as ts

    storage = tmp_path_factory.mktemp("ray_results")
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as warned, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        result = ts.search(space="smoke", seed=0, num_samples=6, max_epochs=3, grace_period=1, reduction_factor=2,
                           cpus_per_trial=1, gpus_per_trial=0.5, storage_path=str(storage), name="smoke", ensemble=2,
                           mlflow=str(storage / "mlruns"), set=SMALL_DATA)
    return {"experiment": storage / "smoke", "summary": result.summary, "model": result.model, "result": result,
            "printed": printed.getvalue(), "warned": [str(w.message) for w in warned if w.category is UserWarning]}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that starts real servers is slow too: `-m "not slow"` leaves the cluster tests out. On a worker,
    the groups of what it collected go to the scheduler (below)."""
    for item in items:
        if item.get_closest_marker("cluster") is not None:
            item.add_marker(pytest.mark.slow)
    if hasattr(config, "workerinput"):
        groups = {item.nodeid: group for item in items if (group := shared_work(item))}
        target = Path(os.environ[GROUPS_FILE])
        partial = target.with_name(f"{target.name}.{os.getpid()}")
        partial.write_text(json.dumps(groups))
        partial.replace(target)  # both workers write the same groups; whole files only


# ================================ Two workers (pytest-xdist, pyproject.toml) ================================
# Tests that share what they build run on one worker, so it is built once: every user of the one smoke search (a
# session fixture) is one group, the tests of a module that share a module-scoped fixture (a cluster, a server, a
# search) another; every other test goes wherever a worker is free. The workers know the fixtures, the scheduler
# only test ids: each worker writes the groups of what it collected to a file the scheduler reads. (xdist's own
# `--dist loadgroup` does not group under pytest 9.2: pytest-dev/pytest-xdist#1386.)
GROUPS_FILE = "TUNE_SIAMESE_TEST_GROUPS"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and os.environ.get(GROUPS_FILE) is None:
        os.environ[GROUPS_FILE] = str(Path(tempfile.mkdtemp(prefix="test-groups-")) / "groups.json")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and os.environ.get(GROUPS_FILE):
        shutil.rmtree(Path(os.environ.pop(GROUPS_FILE)).parent, ignore_errors=True)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedWorkScheduling(LoadScopeScheduling):
        """xdist's scope scheduling (largest scopes first) with a scope per group, else per test."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # read once the workers have collected, which is when scopes are asked for
                self.groups = json.loads(Path(os.environ[GROUPS_FILE]).read_text())
            return self.groups.get(nodeid, nodeid)

    return SharedWorkScheduling(config, log)


def shared_work(item: pytest.Item) -> str | None:
    """The group of what `item` shares with other tests: "ray" (the smoke search, and every other test of the
    inner loop on the session's Ray), its module, or None. The slow tests on the session's Ray go wherever a worker
    is free: together they would load one worker for longer than the other's whole share."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    if "smoke_search" in info.names_closure or ("ray_session" in info.names_closure
                                                and item.get_closest_marker("slow") is None):
        return "ray"
    scopes = {definition.scope for definitions in info.name2fixturedefs.values() for definition in definitions}
    return item.module.__name__ if scopes & {"module", "package", "class"} else None

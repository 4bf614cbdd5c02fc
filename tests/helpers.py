"""Plain helpers shared by the test modules (fixtures live in conftest.py; pytest advises against importing it):
the repository root, the smoke-search options, Tune's per-trial results, and run_search.py as a real process."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
# The smoke preset on a quarter of the synthetic pairs (800): every search in the suite trains on it, so an epoch
# takes a moment on 2 cores. SMOKE_SPACE alone is for other data: pair lists refuse drawn_pairs, and a tiny
# identity folder draws its own count.
SMOKE_SPACE = ["--space", "smoke", "--seed", "0"]
SMALL_DATA = ("drawn_pairs=800",)
SMOKE = [*SMOKE_SPACE, "--set", SMALL_DATA[0]]


def trial_frames(experiment: Path) -> dict[str, pd.DataFrame]:
    """Every trial's reported rows, read back from Tune's own result.json files."""
    frames = {}
    for result in sorted(experiment.glob("trial_*/result.json")):
        rows = []
        for line in result.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line Tune is still writing
        if rows:  # a trial that has not reported yet has an empty file
            frames[result.parent.name] = pd.DataFrame(rows)
    return frames


def cli_json(main, argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def spawn(argv: list[str], log: Path, env_extra: dict[str, str] | None = None,
          program: str = sys.executable) -> subprocess.Popen:
    """`program argv` (Python by default) in its own session, its output in `log`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([program, *argv], cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def reap(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its session, and wait until it is gone: a SIGKILLed driver can still be exiting
    for a moment on a busy machine, and a resume right then found its experiment lock held by a live process."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's helper processes live in the same session
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def spawn_until_a_trial_finished(argv: list[str], experiment: Path, log: Path, epochs: int,
                                 finished: int = 1) -> subprocess.Popen:
    """Start run_search.py and return once `finished` trials have run all their epochs and another has begun."""
    proc = spawn(argv, log)
    deadline = time.time() + 240
    while time.time() < deadline:
        frames = trial_frames(experiment) if experiment.exists() else {}
        done = sum(f["epoch"].max() >= epochs for f in frames.values())
        if done >= finished and len(frames) >= finished + 1:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    reap(proc)
    pytest.fail("no trial finished in time:\n" + log.read_text()[-3000:])


def resume_and_check(experiment: Path, before: dict[str, int], trials: int, epochs: int) -> None:
    """`--resume` completes every trial; trials finished before are not run again. The search command's main, in
    this process: on the session's Ray when the test holds `ray_session` (a Ray start and an import of torch and Tune
    fewer than `run_search.py` in a process of its own)."""
    from tune_siamese.app import search_command

    assert search_command.main(["--resume", str(experiment), "--no-retrain", "-q"]) == 0
    after = trial_frames(experiment)
    assert len(after) == trials
    for name, rows in before.items():
        if rows >= epochs:  # finished before: same rows, no new epoch 1
            assert len(after[name]) == rows
    for frame in after.values():
        assert list(frame["epoch"]) == list(range(1, epochs + 1))


def real_lfw_root() -> Path:
    """The real LFW-a beside the repo ($TUNE_SIAMESE_LFW or ../shared/data/lfw-a): missing, the calling test skips,
    or fails under TUNE_SIAMESE_REQUIRE_LFW=1 (CI)."""
    from tune_siamese.data import default_lfw_root

    root = default_lfw_root()
    if not (root / "pairsDevTrain.txt").is_file() or not (root / "pairsDevTest.txt").is_file():
        reason = f"real LFW-a data not found at {root.resolve()} (set TUNE_SIAMESE_LFW)"
        if os.environ.get("TUNE_SIAMESE_REQUIRE_LFW") == "1":
            pytest.fail(reason + " but TUNE_SIAMESE_REQUIRE_LFW=1")
        pytest.skip(reason)
    return root


def enospc_open(after: int) -> Callable[..., Any]:
    """A stand-in for a module's open(): files opened for writing take `after` bytes, then fail as a full disk
    does (OSError ENOSPC). Patch it in with monkeypatch.setattr(module, "open", enospc_open(n), raising=False)."""
    real_open = open

    class FullDiskFile:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def write(self, data: Any) -> int:
            self.handle.write(bytes(data)[:after] if isinstance(data, (bytes, bytearray, memoryview))
                              else data[:after])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def __enter__(self) -> "FullDiskFile":
            return self

        def __exit__(self, *exc: Any) -> None:
            self.handle.close()

    def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return FullDiskFile(handle) if any(m in mode for m in "wax+") else handle
    return full_open


def fill_up(folder: Path) -> None:
    """Write a filler file into `folder` until its filesystem is full (ENOSPC)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders anywhere under `folder` (storage.replacing's): what a write cut short leaves."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name)

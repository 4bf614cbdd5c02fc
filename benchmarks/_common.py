"""Helpers shared by the benchmark scripts: machine description, RESULTS.md recording, memory readings.

Deliberately light: imports nothing beyond the standard library at module level (no torch, ray, optuna or
pandas), so it can be imported by the Ray-free scripts on a machine that has only torch.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"

if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ on sys.path, not the repo root
    sys.path.insert(0, str(REPO))

RESULTS_HEADER = """# Benchmark results

Appended by the scripts in this folder (see README.md); newest last. Every ratio in a section was measured side
by side in that same run; absolute times from different sections (machines, loads) are not comparable.
"""

# The environment as the script was started (a script may point TUNE_SIAMESE_CACHE elsewhere later).
_ENV_AT_START = {k: os.environ[k] for k in ("TUNE_SIAMESE_LFW", "TUNE_SIAMESE_CACHE") if k in os.environ}

_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def machine_info(threads: int | None = None) -> dict[str, Any]:
    import torch  # every script has torch; imported here so this module stays importable without it

    flags = cpu_flags()
    isa = [f for f in _ISA_FLAGS if f in flags]
    missing = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f not in flags]
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {
        "cpu": cpu_model(),
        "isa": " ".join(isa) + (f" (no {', '.join(missing)})" if missing else ""),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gb": round(memory_gb(), 1),
        "loadavg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "torch": torch.__version__,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "gpu": ", ".join(gpus) if gpus else "none",
        "python": platform.python_version(),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (f"{info['cpu']} ({info['isa']}), {info['logical_cores']} logical cores ({info['usable_cores']} usable), "
            f"{info['memory_gb']} GB RAM, load average {info['loadavg_at_start']:.2f} at start; "
            f"torch {info['torch']} ({info['torch_threads']} threads), Python {info['python']}; "
            f"GPU: {info['gpu']}")


def command_line() -> str:
    """The command as it was typed, relative to the repository root when run from there."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    env = [f"{k}={shlex.quote(v)}" for k, v in _ENV_AT_START.items()]
    return " ".join([*env, "python3", shlex.join([str(script), *sys.argv[1:]])])


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def repo_relative(text: str) -> str:
    """Paths of this checkout and of the folder beside it (../shared/data/lfw-a) written relative to the repository
    root: a reader of RESULTS.md has neither this machine nor its folders."""
    return text.replace(f"{REPO}/", "").replace(f"{REPO.parent}/", "../")


def record(title: str, body: str, info: dict[str, Any], started: float, enabled: bool = True) -> None:
    """Print the section and, unless disabled (--no-record), append it to RESULTS.md under a file lock."""
    body = repo_relative(body)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"\n## {title} — {stamp}\n\n"
               f"- machine: {machine_line(info)}\n"
               f"- command (from the repository root): `{command_line()}`\n"
               f"- wall time of the whole script: {time.time() - started:.0f} s\n\n"
               f"{body.strip()}\n")
    print(section)
    if not enabled:
        print("(--no-record: not appended to benchmarks/RESULTS.md)")
        return
    with open(RESULTS, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        if not fh.read(1):
            fh.write(RESULTS_HEADER)
        fh.write(section)
        fcntl.flock(fh, fcntl.LOCK_UN)
    print(f"appended to {RESULTS}")


def default_lfw() -> str:
    """tune_siamese.data.default_lfw_root(), with a relative default resolved against the repository root."""
    from tune_siamese.data import default_lfw_root

    root = default_lfw_root()
    if not root.is_absolute() and "TUNE_SIAMESE_LFW" not in os.environ:
        root = (REPO / root).resolve()
    return str(root)


def proc_memory_mb() -> dict[str, float]:
    """This process's memory from /proc/self/status, in MB: peak RSS (VmHWM), RSS and its anonymous
    (private heap), file-backed and shared-memory parts."""
    wanted = {"VmHWM": "peak_rss_mb", "VmRSS": "rss_mb", "RssAnon": "rss_anon_mb", "RssFile": "rss_file_mb",
              "RssShmem": "rss_shmem_mb"}
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in wanted:
                out[wanted[key]] = int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    return out


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    import statistics

    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def sync(device: Any) -> None:
    """Wait for the work queued on a torch device: CUDA runs asynchronously, so a timer read without this stops
    when the kernels are queued, not when they are done. Nothing to wait for on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------------
# Ray helpers (ray is imported lazily, inside the functions: this module must import without it)


def start_ray(num_cpus: int, num_gpus: int | None = None) -> None:
    """ray.init for a benchmark: workers find the repository and this folder through PYTHONPATH (the
    instrumented trainables below are pickled by reference to this module)."""
    import ray

    paths = [str(REPO), str(REPO / "benchmarks"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # address="local": always a new Ray of our own, never an existing cluster found on this machine.
    kwargs: dict[str, Any] = {"address": "local", "num_cpus": num_cpus, "include_dashboard": False,
                              "log_to_driver": False}
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    ray.init(**kwargs)


def memory_metrics() -> dict[str, float]:
    out = proc_memory_mb()
    try:
        import psutil

        out["uss_mb"] = psutil.Process().memory_full_info().uss / 2**20  # private memory of this process
    except Exception:  # noqa: BLE001 - psutil missing or smaps unreadable: skip that one figure
        pass
    return out


def _instrument_report(memory: bool, extra: dict[str, Any], entered: float | None = None) -> Any:
    """Make ray.tune.report (which tune_siamese.searching.trainable.train_siamese calls every epoch) add a precise
    wall-clock stamp (Tune's own `timestamp` is whole seconds), the time the trainable was entered, and
    optionally this process's memory. Returns the original report to restore."""
    from ray import tune

    original = tune.report
    entered = time.time() if entered is None else entered

    def report(metrics: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        added = {"wall_time": time.time(), "trial_entered": entered, "trial_pid": os.getpid(), **extra}
        if memory:
            added.update(memory_metrics())
        return original({**metrics, **added}, *args, **kwargs)

    tune.report = report
    return original


def add_slot_latency(run: dict[str, Any], slots: int) -> None:
    """Each trial's wait from the moment a slot was free (the run's start, or the end of the trial whose slot
    it took) to its first epoch; trials are taken in the order their first epochs started."""
    free = [run["started"]] * slots
    for trial in sorted(run["trials"], key=lambda t: t["first_start"]):
        free.sort()
        slot_free = free.pop(0)
        trial["slot_latency"] = trial["first_start"] - slot_free
        trial["since_start"] = trial["first_start"] - run["started"]
        free.append(trial["end"])


def subset_train(data: Any, pairs: int) -> Any:
    """The same seeded subset of training pairs in the driver, in plain workers and in trials."""
    import dataclasses

    import numpy as np

    if not pairs or pairs >= len(data.train):
        return data
    keep = np.random.default_rng(0).permutation(len(data.train))[:pairs]
    return dataclasses.replace(data, train=data.train[keep])


def trial_shared(config: dict[str, Any], data: Any, memory: bool = False) -> None:
    """The project's trainable (search.train_siamese, data via tune.with_parameters), instrumented."""
    from ray import tune

    from tune_siamese.searching.trainable import train_siamese

    original = _instrument_report(memory, {})
    try:
        train_siamese(config, data)
    finally:
        tune.report = original


def trial_loading(config: dict[str, Any], memory: bool = False, pairs: int = 0, cold_cache: str = "") -> None:
    """A trainable that loads the dataset itself (load_data from the disk cache, or with `cold_cache` from an
    empty cache folder of its own, i.e. decoding everything) and then runs the project's train_siamese."""
    from ray import tune

    from tune_siamese.core.config import Config
    from tune_siamese.data import load_data
    from tune_siamese.searching.trainable import train_siamese

    started = time.time()
    if cold_cache:
        import tempfile

        os.environ["TUNE_SIAMESE_CACHE"] = tempfile.mkdtemp(prefix="trial-cache-", dir=cold_cache)
    data = subset_train(load_data(Config.from_dict(config, source="trial config")), pairs)
    original = _instrument_report(memory, {"data_load_s": time.time() - started}, entered=started)
    try:
        train_siamese(config, data)
    finally:
        tune.report = original

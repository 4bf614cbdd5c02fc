"""Fractional GPUs without Ray: K trainings sharing one GPU at once, as --gpus-per-trial 1/K makes Ray do.

Ray's fractional GPUs are only bookkeeping: a trial with gpus_per_trial 0.25 is a process that sees the GPU
(CUDA_VISIBLE_DEVICES) while three others use it too. This script does exactly that physically, and needs
neither Ray nor Optuna (the GPU machine may have neither): for each fraction f in --fractions it starts K = 1/f
processes (multiprocessing, spawn), each training the reduced-width Koch net with
tune_siamese.engine.train_one_epoch on the synthetic data (tune_siamese.data.load_data, data="synthetic",
cached on disk, so the children only read it) on the same device, as the project trains on CUDA: images on
the device once, bf16 autocast, channels_last. All K processes warm up, meet at a barrier, then train
--epochs epochs each; the figures are the aggregate pairs/second (all pairs trained ÷ the time from the first
start to the last finish), each process's own rate, and its memory: torch.cuda.max_memory_allocated and
max_memory_reserved per process, plus the device memory in use while all K are alive ÷ K (which includes each
process's CUDA context). With --device cpu (for testing) each process uses --threads threads and the memory
figure is its peak RSS.

Levers (issue 16), each a list so that one run measures them side by side: --steps eager,graphs,tuned (graphs:
Config.cuda_graphs, each full training step one CUDA graph replay; tuned: graphs plus the Config levers of
--levers, e.g. the fastest of benchmarks/gpu_profile.py --variants; eager rows stay today's trial), --batch-sizes
32,128, --mps off,on (on: the script starts NVIDIA's MPS control daemon for those rows, with its own pipe and log
folders, and stops it after; without MPS, processes sharing a GPU are time-sliced). Each row also gives the share of its wall time each
process spent on the CPU (process_time ÷ wall); torch.cuda.synchronize spins, so near 100 % does not by itself
mean launching is the bottleneck (benchmarks/gpu_profile.py's device idle share says that).

Imports: only torch, numpy, PIL, scikit-learn (through the engine), safetensors and tune_siamese's core
modules (config, data, model, engine, augment, cuda_graph, gpu_sharing); the script checks that ray and optuna
were not imported and says whether pandas was (scikit-learn imports it when it is installed).

    python3 benchmarks/fractional_gpu.py --steps eager,graphs --batch-sizes 32,128 --mps off,on   # CUDA machine
    python3 benchmarks/fractional_gpu.py --device cpu --fractions 1,0.5 --width 0.0625 --image-size 72 \\
        --pairs 256 --epochs 1 --no-record                                 # quick check on 2 CPU cores
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tune_siamese import data
from tune_siamese.core.config import Config, parse_overrides  # noqa: E402
from tune_siamese.core.errors import InputError  # noqa: E402
from tune_siamese.searching import gpu_sharing  # noqa: E402,F401  (core modules only)
from tune_siamese.training import engine, scoring
from tune_siamese.training.device import use_bf16  # noqa: E402

FORBIDDEN = ("ray", "optuna")
BARRIER_TIMEOUT_S = 300


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    p.add_argument("--fractions", default="1,0.5,0.25", help="GPU per trial; K = 1/f processes share the device")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=105)
    p.add_argument("--batch-sizes", default="32", help="comma list; every combination is one group of rows")
    p.add_argument("--steps", default="eager", help="comma list of eager, graphs (Config.cuda_graphs), tuned")
    p.add_argument("--levers", default="default", metavar="KEY=VALUE,...",
                   help="Config levers of the tuned rows, e.g. cudnn_benchmark=true,stem_fp32=true (default: none)")
    p.add_argument("--mps", default="off", help="comma list of off, on (start NVIDIA MPS for those rows)")
    p.add_argument("--pairs", type=int, default=0, help="seeded subset of N training pairs (0 = all 1980)")
    p.add_argument("--epochs", type=int, default=0, help="timed epochs per process (0 = 20 on CUDA, 1 on CPU)")
    p.add_argument("--warmup-batches", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def import_check() -> dict[str, bool]:
    return {name: name in sys.modules for name in (*FORBIDDEN, "pandas")}


def trial_config(args: argparse.Namespace, device: str, seed: int, batch_size: int = 32,
                 steps: str = "eager") -> Config:
    base = Config(data="synthetic", image_size=args.image_size, width=args.width, batchnorm=True, optimizer="adam",
                  lr=1e-3, batch_size=batch_size, seed=seed, device=device, precision=args.precision,
                  channels_last=args.channels_last, threads=args.threads, cuda_graphs=steps != "eager")
    levers = parse_overrides(args.levers.split(",")) if steps == "tuned" and args.levers != "default" else {}
    return Config.from_dict({**base.to_dict(), **levers}, source="option --levers")


def worker(rank: int, args: argparse.Namespace, device: str, group: dict[str, Any], barriers: Any,
           queue: Any) -> None:
    """One 'trial': load the cached data, build the model on the shared device, warm up, then train."""
    try:
        cfg = trial_config(args, device, seed=rank, batch_size=group["batch"], steps=group["steps"])
        dev = engine.setup(cfg)  # threads and seeds, as engine.fit does
        pairs = data.load_data(cfg)
        train = pairs.train
        if args.pairs:
            train = train[np.random.default_rng(0).permutation(len(train))[:args.pairs]]
        images = scoring.images_on(dev, pairs.images)
        net, optimizer = engine.model_and_optimizer(cfg, dev)  # as engine.fit builds them
        generator = torch.Generator().manual_seed(rank)
        trainer = engine.compiled(net, cfg)
        graph = engine.graphed_step(trainer, optimizer, images, train, cfg, generator)  # as engine.fit builds it
        engine.train_one_epoch(trainer, optimizer, images, train[:args.warmup_batches * cfg.batch_size], cfg,
                               generator, graph)
        _common.sync(dev)
        barriers[0].wait(BARRIER_TIMEOUT_S)
        started, cpu_started = time.time(), time.process_time()
        losses = [engine.train_one_epoch(trainer, optimizer, images, train, cfg, generator, graph)
                  for _ in range(args.epochs)]
        _common.sync(dev)
        ended = time.time()
        result: dict[str, Any] = {"rank": rank, "started": started, "ended": ended,
                                  "cpu_share": (time.process_time() - cpu_started) / (ended - started),
                                  "pairs": len(train) * args.epochs, "loss": losses[-1], "pid": os.getpid(),
                                  "imports": import_check()}
        if dev.type == "cuda":
            result["max_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
            result["max_reserved_mb"] = torch.cuda.max_memory_reserved(dev) / 2**20
        barriers[1].wait(BARRIER_TIMEOUT_S)  # all K alive: the device's memory in use holds all K contexts
        if dev.type == "cuda":
            free, total = torch.cuda.mem_get_info(dev)
            result["device_used_mb"] = (total - free) / 2**20
            result["device_total_mb"] = total / 2**20
        result.update(_common.proc_memory_mb())
        barriers[2].wait(BARRIER_TIMEOUT_S)
        queue.put(result)
    except BaseException as exc:  # noqa: BLE001 - report to the parent, then release the others
        for barrier in barriers:
            barrier.abort()
        queue.put({"rank": rank, "error": f"{exc.__class__.__name__}: {exc}"})
        raise


def run_fraction(args: argparse.Namespace, device: str, group: dict[str, Any], k: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barriers = [ctx.Barrier(k) for _ in range(3)]
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(rank, args, device, group, barriers, queue)) for rank in range(k)]
    for proc in procs:
        proc.start()
    try:
        results = [queue.get(timeout=3 * BARRIER_TIMEOUT_S) for _ in procs]
    except Exception:  # queue.Empty: a process hung (e.g. a CUDA context that never came up)
        results = [{"rank": -1, "error": f"no result within {3 * BARRIER_TIMEOUT_S} s"}]
        for proc in procs:
            proc.terminate()
    for proc in procs:
        proc.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return {"k": k, "error": errors[0]}
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    pairs = sum(r["pairs"] for r in results)
    return {"k": k, "wall": wall, "aggregate": pairs / wall, "results": sorted(results, key=lambda r: r["rank"])}


class Mps:
    """NVIDIA's MPS control daemon for some rows: started with its own pipe and log folders (the spawned trials
    inherit CUDA_MPS_PIPE_DIRECTORY and so become its clients), stopped with `quit`."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mps-"))
        self.error = ""

    def start(self) -> bool:
        binary = shutil.which("nvidia-cuda-mps-control")
        if binary is None:
            self.error = "nvidia-cuda-mps-control is not on the PATH"
            return False
        os.environ["CUDA_MPS_PIPE_DIRECTORY"] = str(self.folder / "pipe")
        os.environ["CUDA_MPS_LOG_DIRECTORY"] = str(self.folder / "log")
        for name in ("pipe", "log"):
            (self.folder / name).mkdir(exist_ok=True)
        done = subprocess.run([binary, "-d"], capture_output=True, text=True, timeout=60)
        deadline = time.time() + 20
        while not gpu_sharing.mps_running() and time.time() < deadline:
            time.sleep(0.2)
        if not gpu_sharing.mps_running():
            self.error = f"the daemon did not start (exit {done.returncode}: {(done.stderr or done.stdout).strip()})"
            return False
        return True

    def stop(self) -> None:
        binary = shutil.which("nvidia-cuda-mps-control")
        if binary and gpu_sharing.mps_running():
            subprocess.run([binary], input="quit\n", text=True, capture_output=True, timeout=60)
        log = self.folder / "log" / "control.log"
        if log.exists():
            print("  MPS control log (last lines): " + " | ".join(log.read_text().splitlines()[-3:]), flush=True)
        for name in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
            os.environ.pop(name, None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("fractional_gpu: --device cuda but CUDA is not available (use --device cpu to test)")
    if not args.epochs:
        args.epochs = 20 if device.startswith("cuda") else 1
    imports = import_check()
    if any(imports[name] for name in FORBIDDEN):
        raise SystemExit(f"fractional_gpu: the core modules imported {[n for n in FORBIDDEN if imports[n]]}")
    cuda = device.startswith("cuda")
    info = _common.machine_info(args.threads)
    print(_common.machine_line(info), flush=True)
    fractions = [float(f) for f in args.fractions.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    steps = args.steps.split(",")
    mps_states = args.mps.split(",")
    if not set(steps) <= {"eager", "graphs", "tuned"} or not set(mps_states) <= {"off", "on"}:
        raise SystemExit("fractional_gpu: --steps takes eager, graphs and/or tuned, --mps off and/or on")
    try:
        trial_config(args, device, seed=0, steps="tuned")  # refuse an unknown or bad lever before any work
    except InputError as exc:
        raise SystemExit(f"fractional_gpu: {exc}") from None
    if "on" in mps_states and not cuda:
        raise SystemExit("fractional_gpu: --mps on needs a CUDA device")

    cfg = trial_config(args, device, seed=0)
    loaded = data.load_data(cfg)  # renders and caches the synthetic set once; the children only read it
    n_pairs = min(args.pairs, len(loaded.train)) if args.pairs else len(loaded.train)
    print(loaded.summary(), flush=True)

    groups: list[dict[str, Any]] = []
    mps_notes = []
    for mps_state in mps_states:
        mps = Mps() if mps_state == "on" else None
        if mps is not None and not mps.start():
            mps_notes.append(f"MPS rows skipped: {mps.error}")
            print(f"MPS: {mps.error}; its rows are skipped", flush=True)
            continue
        try:
            for step_kind, batch in itertools.product(steps, batches):
                group = {"mps": mps_state, "steps": step_kind, "batch": batch, "runs": []}
                for fraction in fractions:
                    k = max(1, round(1 / fraction))
                    print(f"MPS {mps_state}, {step_kind} steps, batch {batch}: {k} process(es) at {fraction:g} "
                          f"{'GPU' if cuda else 'device'} each ...", flush=True)
                    run = run_fraction(args, device, group, k)
                    run["fraction"] = fraction
                    group["runs"].append(run)
                    print(f"  {run['error']}" if "error" in run else f"  aggregate {run['aggregate']:.0f} pairs/s",
                          flush=True)
                groups.append(group)
        finally:
            if mps is not None:
                mps.stop()

    baseline = {g["batch"]: g["runs"][0].get("aggregate", float("nan")) for g in groups
                if g["mps"] == "off" and g["steps"] == "eager" and g["runs"][0]["k"] == 1}
    table = []
    for group in groups:
        single = group["runs"][0].get("aggregate", float("nan")) if group["runs"][0]["k"] == 1 else float("nan")
        for run in group["runs"]:
            head = [group["mps"], group["steps"], group["batch"], f"{run['fraction']:g}", run["k"]]
            if "error" in run:
                table.append(head + [f"failed: {run['error']}"] + [""] * 8)
                continue
            rs = run["results"]
            per = [r["pairs"] / (r["ended"] - r["started"]) for r in rs]
            mem = (f"{max(r['max_allocated_mb'] for r in rs):.0f} / {max(r['max_reserved_mb'] for r in rs):.0f}"
                   if cuda else f"{max(r['peak_rss_mb'] for r in rs):.0f}")
            per_process = max(r["device_used_mb"] for r in rs) / run["k"] if cuda else float("nan")
            total_mb = rs[0]["device_total_mb"] if cuda else float("nan")  # the parent keeps off the GPU (MPS)
            table.append(head + [
                f"{run['aggregate']:.0f}", f"{run['aggregate'] / single:.2f}×",
                f"{run['aggregate'] / baseline[group['batch']]:.2f}×" if group["batch"] in baseline else "—",
                f"{min(per):.0f} – {max(per):.0f}",
                f"{100 * min(r['cpu_share'] for r in rs):.0f} – {100 * max(r['cpu_share'] for r in rs):.0f} %",
                f"{run['wall']:.1f}", mem, f"{per_process:.0f}" if cuda else "—",
                f"{int(total_mb // per_process)}" if cuda else "—"])
    child_imports = next((g["runs"][0]["results"][0]["imports"] for g in groups if "results" in g["runs"][0]),
                         import_check())
    body = "\n".join([
        f"- data: {loaded.summary()}; {n_pairs} training pairs per epoch, {args.epochs} timed epoch(s) per "
        f"process after {args.warmup_batches} warm-up batches",
        f"- trial: Koch net width {args.width}, {args.image_size} px, BatchNorm, Adam lr 1e-3, precision "
        f"{args.precision} ({'bf16 autocast' if use_bf16(cfg, torch.device(device)) else 'fp32'}), "
        f"channels_last {args.channels_last}, {args.threads} torch thread(s) per process, device {device}",
        "- K processes (multiprocessing spawn) share the device at once, as Ray's gpus_per_trial = 1/K does; "
        "aggregate = all pairs trained ÷ (last finish − first start); 'vs 1 process' compares with the first row "
        "of its group, 'vs eager, no MPS' with one eager process at that batch size without MPS (today's trial)",
        "- steps: eager = one Python-launched kernel after another; graphs = Config.cuda_graphs (each full batch "
        "one CUDA graph replay, tune_siamese.cuda_graph); tuned = graphs with "
        f"{args.levers if args.levers != 'default' else 'no further levers'}; MPS on = NVIDIA's MPS daemon started by the script",
        f"- imports in each process: ray {'yes' if child_imports['ray'] else 'no'}, optuna "
        f"{'yes' if child_imports['optuna'] else 'no'}, pandas "
        f"{'yes (scikit-learn imports it)' if child_imports['pandas'] else 'no'}",
        *(f"- {note}" for note in mps_notes),
        "",
        _common.md_table(["MPS", "steps", "batch", "GPU per trial", "processes", "aggregate pairs/s",
                          "vs 1 process", "vs eager, no MPS", "pairs/s per process", "CPU busy per process",
                          "timed wall s",
                          "max allocated / reserved MB per process" if cuda else "peak RSS MB per process",
                          "device memory in use ÷ K, MB (with CUDA contexts)",
                          "such processes fit in the GPU's memory"], table),
    ])
    _common.record("fractional_gpu", body, info, started, enabled=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

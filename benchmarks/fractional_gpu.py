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

Imports: only torch, numpy, PIL, scikit-learn (through the engine), safetensors and tune_siamese's core
modules (config, data, model, engine, augment); the script checks that ray and optuna were not imported and
says whether pandas was (scikit-learn imports it when it is installed).

    python3 benchmarks/fractional_gpu.py                                   # on a CUDA machine
    python3 benchmarks/fractional_gpu.py --device cpu --fractions 1,0.5 --width 0.0625 --image-size 72 \\
        --pairs 256 --epochs 1 --no-record                                 # quick check on 2 CPU cores
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tune_siamese import augment, config, data, engine, model  # noqa: E402,F401  (the core modules only)
from tune_siamese.config import Config  # noqa: E402

FORBIDDEN = ("ray", "optuna")
BARRIER_TIMEOUT_S = 900


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    p.add_argument("--fractions", default="1,0.5,0.25", help="GPU per trial; K = 1/f processes share the device")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=105)
    p.add_argument("--batch-size", type=int, default=32)
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


def trial_config(args: argparse.Namespace, device: str, seed: int) -> Config:
    return Config(data="synthetic", image_size=args.image_size, width=args.width, batchnorm=True, optimizer="adam",
                  lr=1e-3, batch_size=args.batch_size, seed=seed, device=device, precision=args.precision,
                  channels_last=args.channels_last, threads=args.threads)


def worker(rank: int, args: argparse.Namespace, device: str, barriers: Any, queue: Any) -> None:
    """One 'trial': load the cached data, build the model on the shared device, warm up, then train."""
    try:
        cfg = trial_config(args, device, seed=rank)
        dev = engine.setup(cfg)  # threads and seeds, as engine.fit does
        pairs = data.load_data(cfg)
        train = pairs.train
        if args.pairs:
            train = train[np.random.default_rng(0).permutation(len(train))[:args.pairs]]
        images = engine.images_on(dev, pairs.images)
        net = model.build_model(cfg).to(dev)
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        optimizer = engine.make_optimizer(cfg, net)
        generator = torch.Generator().manual_seed(rank)
        engine.train_one_epoch(net, optimizer, images, train[:args.warmup_batches * cfg.batch_size], cfg, generator)
        sync(dev)
        barriers[0].wait(BARRIER_TIMEOUT_S)
        started = time.time()
        losses = [engine.train_one_epoch(net, optimizer, images, train, cfg, generator) for _ in range(args.epochs)]
        sync(dev)
        ended = time.time()
        result: dict[str, Any] = {"rank": rank, "started": started, "ended": ended,
                                  "pairs": len(train) * args.epochs, "loss": losses[-1], "pid": os.getpid(),
                                  "imports": import_check()}
        if dev.type == "cuda":
            result["max_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
            result["max_reserved_mb"] = torch.cuda.max_memory_reserved(dev) / 2**20
        barriers[1].wait(BARRIER_TIMEOUT_S)  # all K alive: the device's memory in use holds all K contexts
        if dev.type == "cuda":
            free, total = torch.cuda.mem_get_info(dev)
            result["device_used_mb"] = (total - free) / 2**20
        result.update(_common.proc_memory_mb())
        barriers[2].wait(BARRIER_TIMEOUT_S)
        queue.put(result)
    except BaseException as exc:  # noqa: BLE001 - report to the parent, then release the others
        for barrier in barriers:
            barrier.abort()
        queue.put({"rank": rank, "error": f"{exc.__class__.__name__}: {exc}"})
        raise


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_fraction(args: argparse.Namespace, device: str, k: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barriers = [ctx.Barrier(k) for _ in range(3)]
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(rank, args, device, barriers, queue)) for rank in range(k)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=3 * BARRIER_TIMEOUT_S) for _ in procs]
    for proc in procs:
        proc.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise SystemExit(f"fractional_gpu: {k} processes: {errors[0]}")
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    pairs = sum(r["pairs"] for r in results)
    return {"k": k, "wall": wall, "aggregate": pairs / wall, "results": sorted(results, key=lambda r: r["rank"])}


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
    info = _common.machine_info(args.threads)
    print(_common.machine_line(info), flush=True)
    fractions = [float(f) for f in args.fractions.split(",")]
    ks = [max(1, round(1 / f)) for f in fractions]

    cfg = trial_config(args, device, seed=0)
    loaded = data.load_data(cfg)  # renders and caches the synthetic set once; the children only read it
    n_pairs = min(args.pairs, len(loaded.train)) if args.pairs else len(loaded.train)
    print(loaded.summary(), flush=True)

    runs = []
    for fraction, k in zip(fractions, ks):
        print(f"{k} process(es) at {fraction:g} {'GPU' if device.startswith('cuda') else 'device'} each ...",
              flush=True)
        runs.append(run_fraction(args, device, k))
        print(f"  aggregate {runs[-1]['aggregate']:.0f} pairs/s", flush=True)

    cuda = device.startswith("cuda")
    single = runs[0]["aggregate"] if ks[0] == 1 else float("nan")
    table = []
    for fraction, run in zip(fractions, runs):
        rs = run["results"]
        per = [r["pairs"] / (r["ended"] - r["started"]) for r in rs]
        mem = (f"{max(r['max_allocated_mb'] for r in rs):.0f} / {max(r['max_reserved_mb'] for r in rs):.0f}"
               if cuda else f"{max(r['peak_rss_mb'] for r in rs):.0f}")
        shared = f"{max(r['device_used_mb'] for r in rs) / run['k']:.0f}" if cuda else "—"
        table.append([f"{fraction:g}", run["k"], f"{run['aggregate']:.0f}", f"{run['aggregate'] / single:.2f}×",
                      f"{min(per):.0f} – {max(per):.0f}", f"{run['wall']:.1f}", mem, shared])
    child_imports = runs[0]["results"][0]["imports"]
    body = "\n".join([
        f"- data: {loaded.summary()}; {n_pairs} training pairs per epoch, {args.epochs} timed epoch(s) per "
        f"process after {args.warmup_batches} warm-up batches",
        f"- trial: Koch net width {args.width}, {args.image_size} px, BatchNorm, Adam lr 1e-3, batch "
        f"{args.batch_size}, precision {args.precision} ({'bf16 autocast' if engine.use_bf16(cfg, torch.device(device)) else 'fp32'}), "
        f"channels_last {args.channels_last}, {args.threads} torch thread(s) per process, device {device}",
        "- K processes (multiprocessing spawn) share the device at once, as Ray's gpus_per_trial = 1/K does; "
        "aggregate = all pairs trained ÷ (last finish − first start)",
        f"- imports in each process: ray {'yes' if child_imports['ray'] else 'no'}, optuna "
        f"{'yes' if child_imports['optuna'] else 'no'}, pandas {'yes (scikit-learn imports it)' if child_imports['pandas'] else 'no'}",
        "",
        _common.md_table(["GPU per trial", "processes", "aggregate pairs/s", "vs 1 process", "pairs/s per process",
                          "timed wall s",
                          "max allocated / reserved MB per process" if cuda else "peak RSS MB per process",
                          "device memory in use ÷ K, MB (with CUDA contexts)"], table),
    ])
    _common.record("fractional_gpu", body, info, started, enabled=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory one trial needs, by width: peak CPU RSS of a fresh process training the Koch net (and, on CUDA, its
GPU memory), measured in one run side by side.

Each width runs in its own spawned process (a fresh peak-RSS counter): load the data as a trial receives it
(the decoded uint8 arrays), build the model as engine.fit does, train --batches batches with
engine.train_one_epoch (Adam, the project's precision "auto": bf16 autocast on CUDA and on CPUs with native
bf16), then score the validation pairs with scoring.predict. Reported: RSS after imports and data (what every
trial pays regardless of width), peak RSS (VmHWM), parameter + Adam state size, and on CUDA
max_memory_allocated / max_memory_reserved.

    python3 benchmarks/trial_memory.py                  # widths 1.0 and 0.25, real LFW-a if present
    python3 benchmarks/trial_memory.py --widths 1,0.5,0.25,0.125 --batches 5 --no-record
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="LFW-a folder (default: $TUNE_SIAMESE_LFW or ../shared/data/lfw-a) "
                                                "or 'synthetic'")
    p.add_argument("--widths", default="1,0.25", help="comma list of width multipliers (default 1,0.25)")
    p.add_argument("--image-size", type=int, default=105)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=8, help="training batches per width (default 8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, as one trial with 1 CPU (default 1)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def measure(width: float, args: argparse.Namespace, data_arg: str, out: Any) -> None:
    import torch

    from tune_siamese.core.config import Config
    from tune_siamese.data import load_data
    from tune_siamese.training.costs import parameter_count
    from tune_siamese.training.device import use_bf16
    from tune_siamese.training.engine import make_optimizer, setup, train_one_epoch
    from tune_siamese.training.model import build_model
    from tune_siamese.training.scoring import images_on, predict

    cfg = Config(data=data_arg, image_size=args.image_size, width=width, batchnorm=True, init="torch",
                 optimizer="adam", lr=1e-3, batch_size=args.batch_size, threads=args.threads, device=args.device)
    device = setup(cfg)
    data = load_data(cfg)
    images = images_on(device, data.images)
    base = _common.proc_memory_mb()
    model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    started = time.perf_counter()
    pairs = data.train[:args.batches * args.batch_size]
    train_one_epoch(model, optimizer, images, pairs, cfg, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - started
    predict(model, images, data.val, cfg)
    peak = _common.proc_memory_mb()
    params = parameter_count(model)
    row = {"width": width, "params": params, "state_mb": params * 4 * 4 / 2**20,  # weights, grads, Adam m and v
           "base_rss_mb": base["peak_rss_mb"], "peak_rss_mb": peak["peak_rss_mb"],
           "data_mb": data.images.nbytes / 2**20, "s_per_batch": seconds / args.batches,
           "bf16": use_bf16(cfg, device), "device": str(device)}
    if device.type == "cuda":
        row["gpu_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        row["gpu_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    out.put(row)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    info = _common.machine_info(args.threads)
    print(_common.machine_line(info), flush=True)
    data_arg = args.data if args.data == "synthetic" else (args.data or _common.default_lfw())
    ctx = mp.get_context("spawn")
    rows = []
    for width in (float(w) for w in args.widths.split(",")):
        queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(width, args, data_arg, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"width {width}: the measuring process failed (exit code {proc.exitcode})", file=sys.stderr)
            return 1
        rows.append(queue.get(timeout=10))
        print(f"  width {width}: peak RSS {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    cuda = any("gpu_allocated_mb" in r for r in rows)
    headers = ["width", "parameters", "weights + grads + Adam state, MB", "RSS after imports + data, MB",
               "peak RSS, MB", "peak − base, MB", "s/batch"] + (["GPU max allocated / reserved, MB"] if cuda else [])
    table = [[f"{r['width']:g}", f"{r['params']:,}", f"{r['state_mb']:.0f}", f"{r['base_rss_mb']:.0f}",
              f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] - r['base_rss_mb']:.0f}", f"{r['s_per_batch']:.2f}"]
             + ([f"{r.get('gpu_allocated_mb', 0):.0f} / {r.get('gpu_reserved_mb', 0):.0f}"] if cuda else [])
             for r in rows]
    body = "\n".join([
        f"- data: {data_arg}, images {args.image_size} px as uint8 ({rows[0]['data_mb']:.0f} MB in the trial; "
        "shared from Ray's object store in a search)",
        f"- trial: Koch net with BatchNorm, Adam, batch {args.batch_size}, {args.batches} training batches then "
        f"the val pairs scored; {args.threads} torch thread(s); device {rows[0]['device']}; "
        f"bf16 autocast {'on' if rows[0]['bf16'] else 'off'}; each width in a fresh spawned process",
        "",
        _common.md_table(headers, table),
    ])
    _common.record("trial_memory", body, info, started, enabled=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

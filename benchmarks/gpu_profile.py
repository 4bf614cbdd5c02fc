"""Where one training step's time goes on the device: kernels per step, device busy time, idle gaps.

For each --steps variant (eager: Python launches each kernel; graphs: Config.cuda_graphs, each step one CUDA
graph replay) the script builds one trial as benchmarks/fractional_gpu.py does (synthetic data, Koch net of
--width, Adam, BatchNorm, bf16 autocast on CUDA, channels_last), warms it up, then runs --profile-steps steps
under torch.profiler (CPU and CUDA activities). From the trace: device kernels per step, the device's busy time
per step (the union of the kernels' intervals, so overlapping kernels count once), the wall time per step and
the idle share of the device, 1 − busy ÷ wall; the kernels that take most of the time are listed. Wall time per
step is also measured without the profiler (its own overhead would inflate the eager steps).

--variants crosses the steps with Config levers, each a comma list of KEY=VALUE (`default`: none), for example
cudnn_benchmark=true (cuDNN times its algorithms per shape), stem_fp32=true (the one-channel first conv outside
bf16 autocast) and compile=inductor (torch.compile, captured inside the graph); a variant that fails is listed
as failed and the others still run. --best-out writes the fastest variant (of the graphs rows where there are
any) to a file, for a script to hand to fractional_gpu.py --levers.

Needs only torch and the core modules, like fractional_gpu.py. On a CPU (for testing) the "kernels" are the
profiler's CPU operator events of the step and "busy" is their union.

    python3 benchmarks/gpu_profile.py                                  # on a CUDA machine: eager and graphs
    python3 benchmarks/gpu_profile.py --steps graphs --variants "default;cudnn_benchmark=true;stem_fp32=true"
    python3 benchmarks/gpu_profile.py --device cpu --steps eager --width 0.0625 --image-size 72 --no-record
"""
from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)
import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from tune_siamese import data
from tune_siamese.core.config import Config, parse_overrides  # noqa: E402
from tune_siamese.core.errors import InputError  # noqa: E402
from tune_siamese.training import engine, scoring  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    p.add_argument("--steps", default="eager,graphs", help="comma list of eager, graphs (graphs: CUDA only)")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=105)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="auto", help="auto (bf16 autocast on CUDA), fp32 or bf16")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--variants", default="default",
                   help="';'-separated Config levers to compare, each 'default' or a comma list of KEY=VALUE")
    p.add_argument("--best-out", default="", help="write the fastest variant there (fractional_gpu's --levers)")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--profile-steps", type=int, default=20)
    p.add_argument("--timed-steps", type=int, default=200, help="steps timed without the profiler")
    p.add_argument("--top", type=int, default=6, help="kernels listed per variant")
    p.add_argument("--trace-dir", default="", help="also write each variant's Chrome trace there")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals: time during which anything ran."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


class Trial:
    """One trial's model, optimizer and batches; `step()` trains one batch (eager or graph replay)."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        engine.setup(cfg)
        pairs = data.load_data(cfg)
        self.device = device
        self.images = scoring.images_on(device, pairs.images)
        self.net, self.optimizer = engine.model_and_optimizer(cfg, device)  # as engine.fit builds them
        trainer = engine.compiled(self.net, cfg)
        self.eager = engine.training_step(trainer, self.optimizer, self.images, cfg, torch.Generator())
        self.batches = torch.from_numpy(pairs.train).to(device).split(cfg.batch_size)[:-1]  # full batches only
        self.graph = engine.graphed_step(trainer, self.optimizer, self.images, pairs.train, cfg, torch.Generator())
        self.index = 0

    def step(self) -> torch.Tensor:
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return self.graph(batch) if self.graph is not None else self.eager(batch)


def measure(trial: Trial, args: argparse.Namespace, name: str) -> dict[str, Any]:
    for _ in range(args.warmup_steps):
        trial.step()
    _common.sync(trial.device)
    started = time.perf_counter()
    for _ in range(args.timed_steps):
        trial.step()
    _common.sync(trial.device)
    wall_ms = 1e3 * (time.perf_counter() - started) / args.timed_steps

    cuda = trial.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        began = time.perf_counter()
        for _ in range(args.profile_steps):
            trial.step()
        _common.sync(trial.device)
        profiled_ms = 1e3 * (time.perf_counter() - began) / args.profile_steps
    if args.trace_dir:
        Path(args.trace_dir).mkdir(parents=True, exist_ok=True)
        layout = f"{args.precision}-{'nhwc' if args.channels_last else 'nchw'}"
        prof.export_chrome_trace(str(Path(args.trace_dir) / f"trace-{name}-{layout}.json"))
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    events = [e for e in prof.events() if e.device_type == kind and (cuda or e.cpu_parent is None)]
    busy_ms = union_us([(e.time_range.start, e.time_range.end) for e in events]) / 1e3 / args.profile_steps
    totals: dict[str, float] = {}
    for e in events:
        totals[e.name] = totals.get(e.name, 0.0) + e.time_range.elapsed_us()
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:args.top]
    return {"kernels": len(events) / args.profile_steps, "busy_ms": busy_ms, "wall_ms": wall_ms,
            "profiled_ms": profiled_ms, "top": [(k, v / 1e3 / args.profile_steps) for k, v in top]}


def parse_variants(text: str) -> dict[str, dict[str, str]]:
    """{"default": {}, "cudnn_benchmark=true": {"cudnn_benchmark": "true"}, ...}, checked against Config."""
    variants: dict[str, dict[str, str]] = {}
    for item in (v.strip() for v in text.split(";") if v.strip()):
        levers = {} if item == "default" else parse_overrides(item.split(","))
        Config.from_dict(levers, source=f"option --variants {item!r}")  # unknown keys, bad values: refuse now
        variants[item] = levers
    return variants


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                          else args.device)
    steps = args.steps.split(",")
    if "graphs" in steps and device.type != "cuda":
        raise SystemExit("gpu_profile: graphs steps need a CUDA device (use --steps eager on a CPU)")
    try:
        variants = parse_variants(args.variants)
    except InputError as exc:
        raise SystemExit(f"gpu_profile: {exc}") from None
    info = _common.machine_info(1)
    print(_common.machine_line(info), flush=True)
    results: dict[tuple[str, str], dict[str, Any] | None] = {}
    for variant, levers in variants.items():
        for name in steps:
            base = Config(data="synthetic", image_size=args.image_size, width=args.width, batchnorm=True,
                          optimizer="adam", lr=1e-3, batch_size=args.batch_size, device=str(device), threads=1,
                          precision=args.precision, channels_last=args.channels_last, cuda_graphs=name == "graphs")
            cfg = Config.from_dict({**base.to_dict(), **levers}, source=f"option --variants {variant!r}")
            try:
                r = measure(Trial(cfg, device), args, re.sub(r"[^\w.-]+", "_", f"{name}-{variant}"))  # a file name
            except Exception:  # one lever failing (a compile backend, say) must not cost the others' figures
                traceback.print_exc()
                print(f"{variant} / {name}: FAILED", flush=True)
                results[variant, name] = None
                continue
            results[variant, name] = r
            print(f"{variant} / {name}: {r['kernels']:.0f} kernels/step, busy {r['busy_ms']:.3f} ms of "
                  f"{r['wall_ms']:.3f} ms per step", flush=True)
    unit = "kernels" if device.type == "cuda" else "CPU operators"
    table = [[variant, name, "failed", "", "", "", "", ""] if r is None else
             [variant, name, f"{r['kernels']:.0f}", f"{r['wall_ms']:.3f}", f"{r['profiled_ms']:.3f}",
              f"{r['busy_ms']:.3f}", f"{100 * (1 - r['busy_ms'] / r['wall_ms']):.0f} %",
              f"{1e3 * args.batch_size / r['wall_ms']:.0f}"] for (variant, name), r in results.items()]
    tops = [f"- {variant} / {name}: " + "; ".join(f"{k[:70]} {v:.3f} ms" for k, v in r["top"])
            for (variant, name), r in results.items() if r is not None]
    best = fastest(results, "graphs" if "graphs" in steps else steps[0])
    if args.best_out and best:
        Path(args.best_out).write_text(best + "\n")
    body = "\n".join([
        f"- trial: synthetic data, Koch net width {args.width}, {args.image_size} px, BatchNorm, Adam, batch "
        f"{args.batch_size}, precision {args.precision}, channels_last {args.channels_last}, 1 torch thread, "
        f"device {device}; variants: Config levers on top of that",
        f"- {args.warmup_steps} warm-up steps; wall per step timed over {args.timed_steps} steps without the profiler; "
        f"{unit} and busy time from torch.profiler over {args.profile_steps} steps (busy = union of their intervals)",
        "",
        _common.md_table(["variant", "steps", f"{unit} per step", "wall ms per step", "wall ms per step (profiled)",
                          "device busy ms per step", "device idle", "pairs/s"], table),
        "",
        *([f"Fastest variant ({'graphs' if 'graphs' in steps else steps[0]} steps): {best}", ""] if best else []),
        "Longest per step:",
        *tops,
    ])
    _common.record("gpu_profile", body, info, started, enabled=not args.no_record)
    return 0


def fastest(results: dict[tuple[str, str], dict[str, Any] | None], steps: str) -> str | None:
    """The variant with the shortest wall time per step among the `steps` rows that ran."""
    timed = [(r["wall_ms"], variant) for (variant, name), r in results.items() if name == steps and r is not None]
    return min(timed)[1] if timed else None


if __name__ == "__main__":
    sys.exit(main())

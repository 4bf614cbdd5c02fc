"""What a model costs to run, in plain PyTorch: its parameter count, the floating-point operations of one call,
and the time of one call. The project counts FLOPs here only, so every figure it reports counts alike."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

LATENCY_RUNS = 30
LATENCY_WARMUP = 3


def parameter_count(model: nn.Module) -> int:
    """Every weight and bias of the model (BatchNorm's running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def flop_count(run: Callable[..., Any], *inputs: torch.Tensor) -> int:
    """Floating-point operations of `run(*inputs)`, counted by torch's FlopCounterMode from the shapes of the
    matrix products and convolutions it calls: a multiply-add is 2 FLOPs, so a conv or linear layer counts
    2 x inputs per output x outputs. Bias adds, BatchNorm, activations, pooling and resizing count nothing (a
    sliver of the total): the count is exact and the same on every machine, whatever its kernels."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run(*inputs)
    return int(counter.get_total_flops())


def latency_ms(run: Callable[..., Any], *inputs: torch.Tensor, runs: int = LATENCY_RUNS) -> float:
    """Milliseconds of `run(*inputs)` on one torch thread: the minimum over `runs` timed calls after a warm-up.
    Other work on the machine can only slow a call down, never speed it up, so the minimum is the least disturbed
    measure; it is still a measure of this machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(LATENCY_WARMUP):
                run(*inputs)
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                run(*inputs)
                times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return 1000.0 * min(times)

"""What a trial costs besides its val loss, for a multi-objective search (--objectives val_loss,params,...):

- params: the model's parameter count;
- flops: floating-point operations of one pair's forward pass, counted by torch's FlopCounterMode (a multiply-add
  is 2), exact and the same on every machine;
- latency: milliseconds per pair of the verifier as exported (verifier.pt2 runs the same module), on the CPU,
  batch 1, one torch thread, fp32: the minimum over LATENCY_RUNS timed runs after warm-up. Trials that run side
  by side share the cores and can only slow a run down, never speed it up, so the minimum is the least disturbed
  measure; it is still a measure of this machine.

Each is known as soon as the model is built, so it is measured once per trial, before training.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:  # torch loads where a model is measured, not where the options are read
    import torch

    from .config import Config

VAL_LOSS_OBJECTIVE = "val_loss"
OBJECTIVES = ("params", "flops", "latency")
LATENCY_RUNS = 30
# what each objective is reported as in a trial's results
REPORTED = {"params": "params", "flops": "flops", "latency": "latency_ms"}


def parse_objectives(text: str) -> list[str]:
    """["val_loss", OBJ, ...] from "val_loss,OBJ,..."; val_loss first, each OBJ known and given once."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or names[0] != VAL_LOSS_OBJECTIVE:
        raise InputError(f"option --objectives={text!r} must start with {VAL_LOSS_OBJECTIVE} (what ASHA judges "
                         "trials by), e.g. val_loss,params")
    unknown = [name for name in names[1:] if name not in OBJECTIVES]
    if unknown:
        raise InputError(f"option --objectives={text!r}: {', '.join(unknown)} is not one of {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise InputError(f"option --objectives={text!r} names an objective twice")
    return names


def model_costs(model: torch.nn.Module, config: Config, wanted: list[str]) -> dict[str, float]:
    """The `wanted` objectives of a built model (reported names: REPORTED)."""
    import torch

    from .model import Verifier

    costs: dict[str, float] = {}
    model = model.eval()
    if "params" in wanted:
        costs["params"] = float(sum(p.numel() for p in model.parameters()))
    pair = [torch.zeros(1, config.image_size, config.image_size, dtype=torch.uint8) for _ in range(2)]
    verifier = Verifier(model, config)
    if "flops" in wanted:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            verifier(*pair)
        costs["flops"] = float(counter.get_total_flops())
    if "latency" in wanted:
        costs["latency_ms"] = _latency_ms(verifier, pair)
    return costs


def _latency_ms(verifier: Any, pair: list[torch.Tensor]) -> float:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(3):
                verifier(*pair)
            runs = []
            for _ in range(LATENCY_RUNS):
                started = time.perf_counter()
                verifier(*pair)
                runs.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return 1000.0 * min(runs)

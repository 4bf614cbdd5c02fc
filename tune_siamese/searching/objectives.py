"""What a trial costs besides its val loss, for a multi-objective search (--objectives val_loss,params,...):

- params: the model's parameter count;
- flops: floating-point operations of one pair's forward pass, counted by training.costs.flop_count (torch's
  FlopCounterMode: a multiply-add is 2), exact and the same on every machine;
- latency: milliseconds per pair of the verifier as exported (verifier.pt2 runs the same module), on the CPU,
  batch 1, one torch thread, fp32: training.costs.latency_ms, the minimum over LATENCY_RUNS timed runs after
  warm-up. Trials that run side by side share the cores and can only slow a run down, never speed it up, so the
  minimum is the least disturbed measure; it is still a measure of this machine.

Each is known as soon as the model is built, so it is measured once per trial, before training.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tune_siamese.core.errors import InputError

if TYPE_CHECKING:  # torch loads where a model is measured, not where the options are read
    import torch

    from tune_siamese.core.config import Config

VAL_LOSS_OBJECTIVE = "val_loss"
OBJECTIVES = ("params", "flops", "latency")
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
    """The `wanted` objectives of a built model (reported names: REPORTED), measured on the verifier as exported
    with one pair of blank images at the config's image size."""
    import torch

    from tune_siamese.artifacts.pipeline import Verifier
    from tune_siamese.training.costs import flop_count, latency_ms, parameter_count

    costs: dict[str, float] = {}
    model = model.eval()
    if "params" in wanted:
        costs["params"] = float(parameter_count(model))
    pair = [torch.zeros(1, config.image_size, config.image_size, dtype=torch.uint8) for _ in range(2)]
    verifier = Verifier(model, config)
    if "flops" in wanted:
        costs["flops"] = float(flop_count(verifier, *pair))
    if "latency" in wanted:
        costs["latency_ms"] = latency_ms(verifier, *pair)
    return costs

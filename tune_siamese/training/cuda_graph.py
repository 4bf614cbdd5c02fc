"""A whole training step captured once as a CUDA graph and replayed: one launch per step instead of hundreds.

A small Siamese net on a GPU is launch-bound: a step is a few hundred tiny kernels (gather, crop, resize,
augment, twin forward, backward, optimizer), each queued by Python in microseconds while the GPU finishes it
sooner. Replaying a captured graph queues them all at once. This follows PyTorch's whole-network capture
recipe (torch.cuda.graphs): warm up on a side stream, capture on a static input, then copy each batch into
that input and replay. What a step reads must stay at fixed addresses, so the optimizer keeps its learning
rate in a device tensor (engine.make_optimizer with graphed=True) and the batch size is fixed.

The warm-up steps train; their effect on the weights, buffers and optimizer state is undone before capture,
so that graphs change the speed of a run, not the run.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

Step = Callable[[torch.Tensor], torch.Tensor]
WARMUP_STEPS = 3  # PyTorch's recipe warms up for a few iterations (lazy init, cuDNN/cuBLAS workspaces)
# A capturable optimizer warns when it steps outside a capture; warm-up and partial batches do so on purpose.
UNCAPTURED_WARNING = ".*capturable=True.*"


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """Copies of the model's parameters and buffers and of the optimizer's per-parameter state tensors."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": {i: {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
                          for i, p in enumerate(params) if p in optimizer.state}}


@torch.no_grad()
def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, dict]) -> None:
    """Put `snapshot`'s values back in place (the same tensors: a graph captured later keeps their addresses).
    Optimizer state that did not exist at the snapshot is zeroed, which is how Adam and momentum SGD start."""
    for key, value in model.state_dict().items():
        value.copy_(saved["model"][key])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        before = saved["optimizer"].get(index, {})
        for key, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value) and key in before:
                value.copy_(before[key])
            elif torch.is_tensor(value):
                value.zero_()


class GraphedStep:
    """`step(batch)` captured on a batch shaped like `example`; calling it with such a batch replays it."""

    def __init__(self, step: Step, example: torch.Tensor, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, warmup_steps: int = WARMUP_STEPS) -> None:
        if example.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {example.device}")
        self.input = example.clone()
        saved = snapshot(model, optimizer)
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=UNCAPTURED_WARNING)
            for _ in range(warmup_steps):
                step(self.input)
        torch.cuda.current_stream(example.device).wait_stream(side)
        restore(model, optimizer, saved)
        optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's own memory pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = step(self.input)

    @property
    def batch_size(self) -> int:
        return len(self.input)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.input.copy_(batch)
        self.graph.replay()
        return self.output

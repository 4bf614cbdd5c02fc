"""Training and evaluation in plain PyTorch: train_one_epoch, evaluate, fit. Nothing here knows about Ray."""
from __future__ import annotations

import copy
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO, cast

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import DIVERGED_ABOVE
from tune_siamese.data import PairData, PairMiner
from tune_siamese.training.augment import koch_affine
from tune_siamese.training.cuda_graph import UNCAPTURED_WARNING, GraphedStep
from tune_siamese.training.device import resolve_device, use_bf16
from tune_siamese.training.metrics import pair_metrics
from tune_siamese.training.model import SiameseNet, build_model
from tune_siamese.training.preprocess import in_layout, to_input
from tune_siamese.training.scoring import images_on, val_and_test, validation_logits

EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


class Diverged(RuntimeError):
    """The training or validation loss became NaN, infinite or absurdly large (e.g. a learning rate that is far
    too high)."""


# A constant prediction (probability 0.5) scores BCE ln 2 on any pairs, and label smoothing only raises the floor
# under it, never this ceiling. A mean loss 100 times that (names.DIVERGED_ABOVE) means logits around a hundred on
# the wrong side: no model, just weights blown up that happen to stay finite (SGD at lr 1e10 keeps losses near 1e9
# and AUC at 0.5). Such a run is diverged like a NaN one: never ranked, retrained or exported, and reported with
# names.DIVERGED_LOSS, above this bound.


def check_loss(name: str, value: float, epoch: int) -> None:
    """Raise Diverged when a mean loss is NaN, infinite or above DIVERGED_ABOVE."""
    if not math.isfinite(value):
        raise Diverged(f"{name} loss is {value} at epoch {epoch}")
    if value > DIVERGED_ABOVE:
        raise Diverged(f"{name} loss is {value:.4g} at epoch {epoch}, above {DIVERGED_ABOVE:.1f} (100 × ln 2, a "
                       "constant predictor's loss)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_compile_backend(backend: str) -> None:
    if backend and backend not in torch.compiler.list_backends(exclude_tags=()):
        raise InputError(f"option compile={backend!r} is not a torch.compile backend; use '' (off), "
                         f"{', '.join(torch.compiler.list_backends())} or eager/aot_eager")


def setup(config: Config) -> torch.device:
    check_compile_backend(config.compile)
    if config.threads > 0:
        torch.set_num_threads(config.threads)  # one trial's share of the cores, so trials don't oversubscribe
    seed_everything(config.seed)
    torch.backends.cudnn.benchmark = config.cudnn_benchmark  # process-wide; a trial is one process
    return resolve_device(config)


def make_optimizer(config: Config, model: torch.nn.Module, graphed: bool = False) -> torch.optim.Optimizer:
    """`graphed`: for a step captured as a CUDA graph (cuda_graph.GraphedStep), which replays the optimizer's
    kernels as captured: the learning rate is a device tensor that the scheduler updates in place, and the update
    is the fused kernel, capturable (Adam's `capturable`; fused SGD reads a tensor lr on the device)."""
    params = list(model.parameters())
    lr: float | torch.Tensor = torch.tensor(config.lr, device=params[0].device) if graphed else config.lr
    fused = True if graphed else None  # None: torch's default (foreach)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               fused=fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay, fused=fused, capturable=graphed)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay, fused=fused, capturable=graphed)
    raise InputError(f"unknown optimizer {config.optimizer!r}; use sgd, adam or adamw")


def model_and_optimizer(config: Config, device: torch.device) -> tuple[SiameseNet, torch.optim.Optimizer]:
    """A fresh model on `device` in the config's memory layout, and its optimizer (capturable where cuda_graphs
    applies): what fit trains, and what the GPU benchmarks build to train the same way."""
    model = build_model(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, make_optimizer(config, model, uses_cuda_graphs(config, device))


def uses_cuda_graphs(config: Config, device: torch.device) -> bool:
    """cuda_graphs applies on CUDA only; elsewhere the same steps run eagerly."""
    return config.cuda_graphs and device.type == "cuda"


def compiled(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    """The module training steps call: torch.compile'd with config.compile's backend, else `model` itself.
    Only training is compiled (fixed batch size); evaluation batches vary, so it stays eager. The wrapper shares
    the parameters, so state_dicts are still taken from `model`."""
    return cast(torch.nn.Module, torch.compile(model, backend=config.compile)) if config.compile else model


def make_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.max_epochs)
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, config: Config,
                  generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """step(batch): one optimizer step on (i, j, label) rows of pair indices; returns the mean loss on the device.
    Everything runs on the images' device and nothing waits for it, so the step can be captured as a CUDA graph."""
    device = images.device
    bf16 = use_bf16(config, device)
    augment_rng = generator if device.type == "cpu" else None  # on CUDA torch's own generator, which graphs track

    def step(batch: torch.Tensor) -> torch.Tensor:
        a, b = to_input(images, batch[:, 0], config), to_input(images, batch[:, 1], config)
        if config.augment:
            a = koch_affine(a, augment_rng, config.augment_strength)
            b = koch_affine(b, augment_rng, config.augment_strength)
        target = batch[:, 2].float()
        if config.label_smoothing:
            target = target * (1 - config.label_smoothing) + 0.5 * config.label_smoothing
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(in_layout(a, config), in_layout(b, config))
        loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def graphed_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, pairs: np.ndarray,
                 config: Config, generator: torch.Generator) -> GraphedStep | None:
    """training_step captured as a CUDA graph on the first batch of `pairs`, for train_one_epoch's full batches;
    None where cuda_graphs does not apply (off, not CUDA, fewer pairs than a batch). The optimizer must come from
    make_optimizer(..., graphed=True); build this after a resume has loaded its state."""
    if not uses_cuda_graphs(config, images.device) or len(pairs) < config.batch_size:
        return None
    example = torch.from_numpy(pairs[:config.batch_size]).to(images.device)
    return GraphedStep(training_step(model, optimizer, images, config, generator), example, model, optimizer)


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    pairs: np.ndarray, config: Config, generator: torch.Generator,
                    graph: GraphedStep | None = None) -> float:
    """One pass over `pairs` in a shuffled order. With `graph`, full batches replay the captured step; a last,
    smaller batch runs the same step eagerly, so every pair is trained exactly as without graphs."""
    model.train()
    device = images.device
    pairs_t = torch.from_numpy(pairs).to(device)
    order = torch.randperm(len(pairs_t), generator=generator, device="cpu").to(device)
    step = training_step(model, optimizer, images, config, generator)
    total, count = torch.zeros((), device=device), 0
    for start in range(0, len(order), config.batch_size):
        batch = pairs_t[order[start:start + config.batch_size]]
        if len(batch) < 2 and config.batchnorm:
            continue  # BatchNorm cannot train on a single pair
        if graph is not None and len(batch) == graph.batch_size:
            loss = graph(batch)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=UNCAPTURED_WARNING)
                loss = step(batch)
        total += loss * len(batch)
        count += len(batch)
    return float(total) / max(count, 1)  # one device sync per epoch, not per batch


def epoch_pairs(data: PairData, miner: PairMiner | None, config: Config) -> np.ndarray:
    """One epoch's training pairs: the given ones, freshly mined ones, and augmented copies."""
    pairs = data.train if miner is None else np.concatenate([data.train, miner.sample(config.mined_pairs)])
    if config.augment and config.augment_copies > 1:
        pairs = np.tile(pairs, (config.augment_copies, 1))  # shuffled together, each copy augmented anew
    return pairs


@dataclass
class FitResult:
    model: SiameseNet
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    stopped_early: bool = False


def fit(config: Config, data: PairData, on_epoch: EpochCallback | None = None,
        resume: dict[str, Any] | None = None, validate: bool = True, epochs: int | None = None) -> FitResult:
    """Train with early stopping on val loss; returns the model restored to its best epoch.

    `on_epoch(metrics, state)` is called after every epoch; `state()` builds a resumable training state
    (model, optimizer, scheduler, RNGs, history) that `resume=` accepts. With `validate=False` (retraining on
    train + val) it trains exactly `epochs` epochs (default `max_epochs`) and keeps the last weights; the
    learning-rate schedule is still the config's (a cosine spans `max_epochs`), as in the trial it repeats.
    """
    if (config.val_pairs == "all") != (data.val_all is not None):
        raise InputError(f"option val_pairs={config.val_pairs!r} but the data were loaded with "
                         f"val_pairs={'all' if data.val_all is not None else 'given'!r}; it is a data setting, "
                         "fixed for a whole search")
    device = setup(config)
    model, optimizer = model_and_optimizer(config, device)
    graphed = uses_cuda_graphs(config, device)
    scheduler = make_scheduler(config, optimizer)
    trainer = compiled(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    miner = PairMiner(data, np.random.default_rng(config.seed)) if config.mined_pairs else None
    images = images_on(device, data.images)
    result = FitResult(model)
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs, start_epoch = 0, 1
    if resume is not None:
        best_state, bad_epochs, start_epoch = restore(resume, model, optimizer, scheduler, generator, miner,
                                                      result, device if graphed else None)
    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "miner_rng": miner.rng.bit_generator.state if miner else {},
                "history": result.history, "best_epoch": result.best_epoch,
                "best_val_loss": result.best_val_loss, "best_model": best_state or model.state_dict(),
                "bad_epochs": bad_epochs, "epoch": result.history[-1]["epoch"] if result.history else 0,
                "config": config.to_dict()}

    graph = graphed_step(trainer, optimizer, images, data.train, config, generator)  # after a resume's state
    last_epoch = config.max_epochs if epochs is None else min(epochs, config.max_epochs)
    for epoch in range(start_epoch, last_epoch + 1):
        started = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        pairs = epoch_pairs(data, miner, config)
        train_loss = train_one_epoch(trainer, optimizer, images, pairs, config, generator, graph)
        check_loss("training", train_loss, epoch)
        scheduler.step()
        # The torch thread count this epoch ran with: the same seed scores differently with another count (the
        # order of a reduction's sums), so the record says which one gave these numbers.
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "lr": lr, "train_pairs": len(pairs),
                                   "torch_threads": torch.get_num_threads()}
        if validate:
            labels, logits, balanced = validation_logits(model, images, data, config)
            val = pair_metrics(labels, logits, balanced=balanced)
            metrics.update(val_loss=val["loss"], val_accuracy=val["accuracy"], val_auc=val["auc"])
            check_loss("validation", val["loss"], epoch)
            if val["loss"] < result.best_val_loss:
                result.best_val_loss, result.best_epoch, bad_epochs = val["loss"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
            metrics["best_val_loss"] = result.best_val_loss  # what the searcher ranks a trial by
        metrics["epoch_seconds"] = time.perf_counter() - started
        # 1 when the run ends after this epoch on its own (max epochs, patience): Tune's searcher tells such a
        # trial from one ASHA stopped. Judged by the config alone, so a run cut into parts reports the same.
        metrics["stops_here"] = int(epoch >= config.max_epochs or (validate and bad_epochs >= config.patience))
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, state)
        if validate and bad_epochs >= config.patience:
            result.stopped_early = True
            break
    if validate and best_state is not None:
        model.load_state_dict(best_state)
    elif not validate:
        result.best_epoch = len(result.history)
    return result


def restore(resume: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            generator: torch.Generator, miner: PairMiner | None, result: FitResult, graph_device: torch.device | None
            ) -> tuple[dict[str, torch.Tensor] | None, int, int]:
    """Load fit's resumable state into its objects; returns (best weights, bad epochs, first epoch to run)."""
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    if graph_device is not None:  # a saved tensor lr comes back where it was loaded (the CPU); graphs read it there
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=graph_device)
    scheduler.load_state_dict(resume["scheduler"])
    generator.set_state(resume["generator"])
    torch.set_rng_state(resume["torch_rng"])
    if miner is not None:
        miner.rng.bit_generator.state = resume["miner_rng"]
    result.history = list(resume["history"])
    result.best_epoch, result.best_val_loss = resume["best_epoch"], resume["best_val_loss"]
    return resume["best_model"], resume["bad_epochs"], resume["epoch"] + 1


def epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """One console line for an epoch: losses, validation AUC and time."""
    parts = [f"epoch {metrics['epoch']}/{epochs}", f"train loss {metrics['train_loss']:.4f}"]
    if "val_loss" in metrics:
        parts += [f"val loss {metrics['val_loss']:.4f} (best {metrics['best_val_loss']:.4f})",
                  f"val AUC {metrics['val_auc']:.3f}"]
    return ", ".join(parts) + f", {metrics['epoch_seconds']:.1f} s"


def print_epochs(prefix: str, epochs: int, stream: TextIO | None = None) -> EpochCallback:
    """An on_epoch callback that prints `epoch_line` to stderr (beside the results on stdout); where stderr is a
    terminal, under a progress bar over the epochs with an ETA. Logs, CI and Ray tasks get the plain lines."""
    out = stream or sys.stderr
    if not out.isatty():
        def print_line(metrics: dict[str, Any], state: Any) -> None:
            print(f"{prefix}{epoch_line(metrics, epochs)}", file=out, flush=True)
        return print_line
    bar = tqdm(total=epochs, desc=prefix.strip() or "training", unit="epoch", file=out, dynamic_ncols=True,
               leave=False)  # the lines stay; the bar goes once training ends (early stopping ends it short)

    def bar_and_line(metrics: dict[str, Any], state: Any) -> None:
        bar.write(f"{prefix}{epoch_line(metrics, epochs)}", file=out)
        bar.update(1)
        if metrics["epoch"] >= epochs:
            bar.close()
    return bar_and_line


def train_and_test(config: Config, data: PairData, on_epoch: EpochCallback | None = None) -> tuple[FitResult, dict]:
    """fit, then score val and test pairs; the test threshold is the one chosen on validation."""
    result = fit(config, data, on_epoch)
    images = images_on(next(result.model.parameters()).device, data.images)
    report = {**val_and_test(result.model, images, data, config), "best_epoch": result.best_epoch,
              "epochs": len(result.history)}
    return result, report

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
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from .augment import koch_affine
from .config import Config
from .cuda_graph import UNCAPTURED_WARNING, GraphedStep
from .data import PairData, PairMiner
from .errors import InputError
from .intervals import bootstrap_intervals
from .model import SiameseNet, build_model, center_crop, in_layout, resize

EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


class Diverged(RuntimeError):
    """The training or validation loss became NaN, infinite or absurdly large (e.g. a learning rate that is far
    too high)."""


# A constant prediction (probability 0.5) scores BCE ln 2 on any pairs, and label smoothing only raises the floor
# under it, never this ceiling. A mean loss 100 times that means logits around a hundred on the wrong side: no
# model, just weights blown up that happen to stay finite (SGD at lr 1e10 keeps losses near 1e9 and AUC at 0.5).
# Such a run is diverged like a NaN one: never ranked, retrained or exported.
DIVERGED_ABOVE = 100 * math.log(2)


def check_loss(name: str, value: float, epoch: int) -> None:
    """Raise Diverged when a mean loss is NaN, infinite or above DIVERGED_ABOVE."""
    if not math.isfinite(value):
        raise Diverged(f"{name} loss is {value} at epoch {epoch}")
    if value > DIVERGED_ABOVE:
        raise Diverged(f"{name} loss is {value:.4g} at epoch {epoch}, above {DIVERGED_ABOVE:.1f} (100 × ln 2, a "
                       "constant predictor's loss)")


def resolve_device(config: Config) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(config.device)
    except RuntimeError:  # torch's message lists every device type; ours names the option
        raise InputError(f"option device={config.device!r} is not auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"option device={config.device!r} but CUDA is not available")
    return device


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where oneDNN runs bf16 convs/matmuls faster than fp32.

    Elsewhere (e.g. AVX2-only) bf16 is emulated and several times slower, so "auto" keeps fp32 there.
    """
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(probe()) for probe in probes if probe is not None)


def use_bf16(config: Config, device: torch.device) -> bool:
    if config.precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return config.precision == "bf16"


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


def images_on(device: torch.device, images: np.ndarray) -> torch.Tensor:
    """The uint8 images go to the device once; batches are gathered and converted there.

    On the CPU this is zero-copy: arrays from Ray's object store are read-only shared memory, which torch
    warns about; the tensor is only ever read (gathered into new batches), never written.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(images)).to(device)


def to_input(images: torch.Tensor, index: torch.Tensor, config: Config) -> torch.Tensor:
    """Gather uint8 images, keep the central `zoom` fraction, convert to [0, 1] floats at the model's size."""
    x = center_crop(images[index], config.zoom).unsqueeze(1).float().div_(255.0)  # crop first: fewer to convert
    return resize(x, config.model_input_size)


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


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, pairs: np.ndarray, config: Config) -> np.ndarray:
    """Logits for every pair, in large batches without autograd; optionally averaged with the mirrored pair."""
    model.eval()
    device = images.device
    pairs_t = torch.from_numpy(pairs).to(device)
    bf16 = use_bf16(config, device)
    out = []
    for start in range(0, len(pairs_t), config.eval_batch_size):
        batch = pairs_t[start:start + config.eval_batch_size]
        a, b = to_input(images, batch[:, 0], config), to_input(images, batch[:, 1], config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(in_layout(a, config), in_layout(b, config)).float()
            if config.tta_flip:
                logits = 0.5 * (logits + model(in_layout(a.flip(-1), config), in_layout(b.flip(-1), config)).float())
        out.append(logits)
    return torch.cat(out).cpu().numpy().astype(np.float64)


@torch.no_grad()
def predict_by_image(model: SiameseNet, images: torch.Tensor, pairs: np.ndarray, config: Config) -> np.ndarray:
    """`predict`'s logits with each image embedded once (and its mirror, with tta_flip), then the head over the
    pairs: all pairs among a few hundred validation images cost what those images cost, not twice per pair."""
    model.eval()
    device = images.device
    used, inverse = np.unique(pairs[:, :2], return_inverse=True)
    used_t, where = torch.from_numpy(used).to(device), torch.from_numpy(inverse.reshape(-1, 2)).to(device)
    bf16 = use_bf16(config, device)
    views = (False, True) if config.tta_flip else (False,)
    total = torch.zeros(len(pairs), device=device)
    for flip in views:
        chunks = []
        for start in range(0, len(used_t), config.eval_batch_size):
            x = in_layout(to_input(images, used_t[start:start + config.eval_batch_size], config), config)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                chunks.append(model.embed(x.flip(-1) if flip else x))  # in autocast's dtype, as forward keeps it
        emb = torch.cat(chunks)
        for start in range(0, len(pairs), config.eval_batch_size):
            rows = where[start:start + config.eval_batch_size]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                total[start:start + len(rows)] += model.score(emb[rows[:, 0]], emb[rows[:, 1]]).float()
    return (total / len(views)).cpu().numpy().astype(np.float64)


# best_threshold's bound: roc_curve's first threshold is +inf (accept no pair), kept when nothing does better.
THRESHOLD_LIMIT = 1e6


def best_threshold(labels: np.ndarray, logits: np.ndarray, balanced: bool = False) -> float:
    """The logit threshold that maximises accuracy on these (validation) pairs; `balanced`: the mean of the two
    classes' accuracies, so that ten times more different-person pairs do not pull it towards "different".
    Where no threshold beats rejecting every pair (the pairs carry no signal) it is THRESHOLD_LIMIT."""
    fpr, tpr, thresholds = roc_curve(labels, logits)
    positives = labels.sum()
    if balanced:
        accuracy = (tpr + 1 - fpr) / 2
    else:
        accuracy = (tpr * positives + (1 - fpr) * (len(labels) - positives)) / len(labels)
    return float(np.clip(thresholds[int(np.argmax(accuracy))], -THRESHOLD_LIMIT, THRESHOLD_LIMIT))


def threshold_note(threshold_logit: float) -> str | None:
    """What a decision threshold means when it decides every pair the same way (best_threshold's "reject
    everything"), for the summary and final.json; None for a threshold that separates pairs."""
    if threshold_logit < THRESHOLD_LIMIT:
        return None
    return (f"the decision threshold (logit {threshold_logit:g}) rejects every pair: on the val pairs that chose it "
            "no threshold beat rejecting them all, so the model's scores there carry no signal")


def chance_check(auc: float, labels: np.ndarray, scored_on: str) -> dict[str, Any]:
    """Whether an AUC on pairs with these labels is no better than chance: at most the AUC that a model without
    any signal exceeds one time in 20, 0.5 + 1.645 standard errors of the AUC under that null (the Mann-Whitney
    statistic's variance (n1 + n2 + 1) / (12 n1 n2); 0.530 on DevTest's 500 + 500 pairs, 0.564 on 110 + 110 val
    pairs). An AUC that is not a number counts as no better."""
    same = int((labels > 0.5).sum())
    different = len(labels) - same
    bound = 0.5 + 1.645 * math.sqrt((same + different + 1) / (12 * same * different)) if same and different else 1.0
    return {"scored_on": scored_on, "auc": auc, "chance_bound": bound,
            "no_better_than_chance": not auc > bound, "pairs": {"same": same, "different": different}}


def _mean(values: np.ndarray, same: np.ndarray, balanced: bool) -> float:
    """The mean over pairs, or with `balanced` the mean of the same- and different-person pairs' means."""
    if balanced:
        return float(0.5 * values[same].mean() + 0.5 * values[~same].mean())
    return float(np.mean(values))


def pair_metrics(labels: np.ndarray, logits: np.ndarray, threshold: float | None = None,
                 with_roc: bool = False, balanced: bool = False,
                 people: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Loss, accuracy at logit 0 and AUC (and at `threshold`, with ROC points); `balanced` weighs each class half
    whatever its count (validation over all pairs among its people, where different-person pairs outnumber).
    With ROC points and `people` (each pair's two people), every score but the loss gets `<name>_ci`, its 95 %
    interval from a bootstrap over people (tune_siamese.intervals)."""
    labels = labels.astype(np.float64)
    same = labels > 0.5
    balanced = balanced and bool(same.any() and (~same).any())
    losses = np.logaddexp(0, logits) - labels * logits  # BCE with logits, numerically stable
    metrics: dict[str, Any] = {"loss": _mean(losses, same, balanced),
                               "accuracy": _mean((logits > 0) == same, same, balanced)}
    metrics["auc"] = float(roc_auc_score(labels, logits)) if 0 < labels.sum() < len(labels) else float("nan")
    if threshold is not None:
        metrics["threshold_logit"] = threshold
        metrics["accuracy_at_threshold"] = _mean((logits >= threshold) == same, same, balanced)
    if with_roc:
        fpr, tpr, _ = roc_curve(labels, logits)
        metrics["roc_fpr"], metrics["roc_tpr"] = fpr.tolist(), tpr.tolist()
        for far in TAR_AT_FAR:
            metrics[f"tar_at_far_{far:g}"] = tar_at_far(fpr, tpr, far)
        if threshold is not None:  # where the threshold sits on that curve, by the rule accuracy_at_threshold uses
            accepted = logits >= threshold
            metrics["threshold_fpr"] = float(accepted[~same].mean()) if (~same).any() else float("nan")
            metrics["threshold_tpr"] = float(accepted[same].mean()) if same.any() else float("nan")
        if people is not None and same.any() and (~same).any():
            thresholds = {"accuracy": (0.0, True), **({} if threshold is None else
                                                       {"accuracy_at_threshold": (threshold, False)})}
            fars = {f"tar_at_far_{far:g}": far for far in TAR_AT_FAR}
            intervals = bootstrap_intervals(labels, logits, people[0], people[1], thresholds, fars)
            metrics.update({f"{name}_ci": interval for name, interval in intervals.items()})
    return metrics


# What face verification reports: the share of same-person pairs accepted when at most this share of
# different-person pairs is.
TAR_AT_FAR = (1e-2, 1e-3)


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """The true accept rate at the best threshold whose false accept rate is at most `far` (ROC points; with 500
    different-person pairs a FAR of 1e-3 means no false accept at all)."""
    allowed = fpr <= far
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def evaluate(model: torch.nn.Module, images: torch.Tensor, pairs: np.ndarray, config: Config,
             threshold: float | None = None, with_roc: bool = False,
             identity: np.ndarray | None = None) -> dict[str, Any]:
    """pair_metrics of the model's logits; with `identity` (image -> person) and ROC, 95 % intervals too."""
    people = None if identity is None else (identity[pairs[:, 0]], identity[pairs[:, 1]])
    return pair_metrics(pairs[:, 2], predict(model, images, pairs, config), threshold, with_roc, people=people)


def validation_logits(model: torch.nn.Module, images: torch.Tensor, data: PairData, config: Config
                      ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Labels and logits of the pairs validation scores (`data.val_scored`), and whether the classes are weighed
    half each: with val_pairs="all" they are, and a single net embeds each image once."""
    pairs = data.val_scored
    if data.val_all is None:
        return pairs[:, 2], predict(model, images, pairs, config), False
    if isinstance(model, SiameseNet):
        return pairs[:, 2], predict_by_image(model, images, pairs, config), True
    return pairs[:, 2], predict(model, images, pairs, config), True  # an ensemble: pair by pair


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
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if graphed:  # a saved tensor lr comes back where it was loaded (the CPU); graphs read it on the device
            for group in optimizer.param_groups:
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        if miner is not None:
            miner.rng.bit_generator.state = resume["miner_rng"]
        result.history = list(resume["history"])
        result.best_epoch, result.best_val_loss = resume["best_epoch"], resume["best_val_loss"]
        best_state, bad_epochs, start_epoch = resume["best_model"], resume["bad_epochs"], resume["epoch"] + 1

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
        pairs = data.train if miner is None else np.concatenate([data.train, miner.sample(config.mined_pairs)])
        if config.augment and config.augment_copies > 1:
            pairs = np.tile(pairs, (config.augment_copies, 1))  # shuffled together, each copy augmented anew
        train_loss = train_one_epoch(trainer, optimizer, images, pairs, config, generator, graph)
        check_loss("training", train_loss, epoch)
        scheduler.step()
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "lr": lr, "train_pairs": len(pairs)}
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


def val_and_test(model: torch.nn.Module, images: torch.Tensor, data: PairData, config: Config) -> dict[str, Any]:
    """Choose the decision threshold on the val pairs, then score the test pairs at it (with ROC points).
    Every reported test score of the project comes through here: the threshold never sees a test pair."""
    labels, val_logits, balanced = validation_logits(model, images, data, config)
    threshold = best_threshold(labels, val_logits, balanced)
    return {"val": pair_metrics(labels, val_logits, threshold, balanced=balanced),
            "test": evaluate(model, images, data.test, config, threshold, with_roc=True, identity=data.identity)}


def train_and_test(config: Config, data: PairData, on_epoch: EpochCallback | None = None) -> tuple[FitResult, dict]:
    """fit, then score val and test pairs; the test threshold is the one chosen on validation."""
    result = fit(config, data, on_epoch)
    images = images_on(next(result.model.parameters()).device, data.images)
    report = {**val_and_test(result.model, images, data, config), "best_epoch": result.best_epoch,
              "epochs": len(result.history)}
    return result, report

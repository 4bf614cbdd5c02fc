"""Scoring pairs with a model in plain PyTorch: the images on the device once, logits for every pair (batched, or
each image embedded once), and the scores of val and test pairs."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from tune_siamese.core.config import Config
from tune_siamese.data import PairData
from tune_siamese.training.device import use_bf16
from tune_siamese.training.metrics import best_threshold, pair_metrics
from tune_siamese.training.model import SiameseNet
from tune_siamese.training.preprocess import in_layout, to_input


def images_on(device: torch.device, images: np.ndarray) -> torch.Tensor:
    """The uint8 images go to the device once; batches are gathered and converted there.

    On the CPU this is zero-copy: arrays from Ray's object store are read-only shared memory, which torch
    warns about; the tensor is only ever read (gathered into new batches), never written.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(images)).to(device)


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


def val_and_test(model: torch.nn.Module, images: torch.Tensor, data: PairData, config: Config) -> dict[str, Any]:
    """Choose the decision threshold on the val pairs, then score the test pairs at it (with ROC points).
    Every reported test score of the project comes through here: the threshold never sees a test pair."""
    labels, val_logits, balanced = validation_logits(model, images, data, config)
    threshold = best_threshold(labels, val_logits, balanced)
    return {"val": pair_metrics(labels, val_logits, threshold, balanced=balanced),
            "test": evaluate(model, images, data.test, config, threshold, with_roc=True, identity=data.identity)}

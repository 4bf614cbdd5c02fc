"""The pair pipeline that exports trace (verifier.pt2) and `verify` runs: decoded uint8 images to a logit, or to
the probability an export hands its users."""
from __future__ import annotations

import torch
from torch import nn

from tune_siamese.core.config import Config
from tune_siamese.training.preprocess import center_crop, resize


class Verifier(nn.Module):
    """Two batches of decoded uint8 images [B, H, W] (grayscale, the config's crop and image size) to the logit
    that they show the same person: the model's zoom, scaling to [0, 1], resize and optional flip averaging.

    `tune-siamese verify` scores with it and the export traces it (verifier.pt2), so the plain-torch snippet in
    docs/exports.md and `verify` run the same operations and only PIL decoding sits in front of the graph."""

    def __init__(self, model: nn.Module, config: Config):
        super().__init__()
        self.model, self.zoom, self.size, self.flip = model, config.zoom, config.model_input_size, config.tta_flip

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self._input(a), self._input(b)
        logits = self.model(a, b).float()
        if self.flip:
            logits = 0.5 * (logits + self.model(a.flip(-1), b.flip(-1)).float())
        return logits

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        return resize(center_crop(images, self.zoom).unsqueeze(1).float() / 255.0, self.size)


class ProbabilityVerifier(Verifier):
    """The exported form: probability (sigmoid of the logit) rather than the logit, what a plain user wants."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(a, b))

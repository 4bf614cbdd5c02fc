"""From stored images to the model's input: the central zoom, [0, 1] floats at the model's input size, and the
memory layout the model was built for. Training, scoring and the ensemble's members all prepare input here."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tune_siamese.core.config import Config


def center_crop(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """The central `zoom` fraction of the last two (square) dimensions, as a view."""
    if zoom >= 1.0:
        return x
    side = x.shape[-1]
    keep = max(1, round(side * zoom))
    start = (side - keep) // 2
    return x[..., start:start + keep, start:start + keep]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 1, H, W] floats to size x size (antialiased bilinear); unchanged when already that size."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def in_layout(x: torch.Tensor, config: Config) -> torch.Tensor:
    """A batch in the memory layout the model was built for (channels_last or NCHW)."""
    return x.contiguous(memory_format=torch.channels_last) if config.channels_last else x


def to_input(images: torch.Tensor, index: torch.Tensor, config: Config) -> torch.Tensor:
    """Gather uint8 images, keep the central `zoom` fraction, convert to [0, 1] floats at the model's size."""
    x = center_crop(images[index], config.zoom).unsqueeze(1).float().div_(255.0)  # crop first: fewer to convert
    return resize(x, config.model_input_size)

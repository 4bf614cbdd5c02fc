"""Koch et al.'s affine distortions plus horizontal flip, applied to a whole batch on its device at once."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def koch_affine(x: torch.Tensor, generator: torch.Generator | None = None, strength: float = 1.0) -> torch.Tensor:
    """x: float [B, C, H, W]. Each of rotation (+-10 deg), shear (+-0.3), scale (0.8-1.2) and translation
    (+-2 px) is applied with probability 0.5 per image, then a horizontal flip with probability 0.5."""
    b, _, h, w = x.shape
    dev, dt = x.device, torch.float32

    def uniform(low: float, high: float, size: tuple[int, ...] = (b,)) -> torch.Tensor:
        return torch.rand(size, generator=generator, device=dev, dtype=dt) * (high - low) + low

    def gate(values: torch.Tensor, neutral: float) -> torch.Tensor:
        keep = torch.rand(values.shape, generator=generator, device=dev, dtype=dt) < 0.5
        return torch.where(keep, values, torch.full_like(values, neutral))

    theta = gate(uniform(-10, 10) * strength * math.pi / 180, 0.0)
    shear = gate(uniform(-0.3, 0.3, (b, 2)) * strength, 0.0)
    scale = gate(1 + uniform(-0.2, 0.2, (b, 2)) * strength, 1.0)
    shift = uniform(-2, 2, (b, 2)) * strength * 2  # pixels -> grid units; no host tensor (CUDA graphs)
    shift = gate(torch.stack([shift[:, 0] / w, shift[:, 1] / h], -1), 0.0)
    flip = torch.where(torch.rand(b, generator=generator, device=dev) < 0.5, -1.0, 1.0).to(dt)

    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shr = torch.eye(2, device=dev, dtype=dt).repeat(b, 1, 1)
    shr[:, 0, 1], shr[:, 1, 0] = shear[:, 0], shear[:, 1]
    scl = torch.diag_embed(scale * torch.stack([flip, torch.ones_like(flip)], -1))
    matrix = torch.cat([rot @ shr @ scl, shift.unsqueeze(-1)], dim=-1)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)

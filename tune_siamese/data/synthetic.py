"""The offline default: procedural "faces" (identities rendered under new pose, lighting, contrast and noise),
deterministic from the data seed."""
from __future__ import annotations

import numpy as np

from tune_siamese.core.config import Config
from tune_siamese.data.images import CACHE_VERSION, cached, content_key
from tune_siamese.data.pairs import RawData, pairs_from_identities


def render_synthetic(n_identities: int, per_identity: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Procedural 'faces': each identity is a fixed set of blobs on a shared face template; every image of it
    is rendered under a new pose (rotation, scale, shift), lighting gradient, contrast and noise."""
    rng = np.random.default_rng(seed)
    n_blobs = 10
    # A shared template (head, eyes, nose, mouth) plus identity-specific perturbations keeps identities similar.
    template_xy = np.array([[0, 0], [-0.32, -0.2], [0.32, -0.2], [0, 0.08], [0, 0.38]], dtype=np.float32)
    template_sigma = np.array([0.55, 0.09, 0.09, 0.07, 0.1], dtype=np.float32)
    template_amp = np.array([0.6, -0.7, -0.7, -0.3, -0.5], dtype=np.float32)
    ident_xy = template_xy[None] + rng.normal(0, 0.05, (n_identities, 5, 2)).astype(np.float32)
    ident_sigma = template_sigma[None] * rng.uniform(0.75, 1.3, (n_identities, 5)).astype(np.float32)
    ident_amp = template_amp[None] * rng.uniform(0.6, 1.4, (n_identities, 5)).astype(np.float32)
    extra_xy = rng.uniform(-0.5, 0.5, (n_identities, n_blobs, 2)).astype(np.float32)
    extra_sigma = rng.uniform(0.04, 0.14, (n_identities, n_blobs)).astype(np.float32)
    extra_amp = rng.normal(0, 0.3, (n_identities, n_blobs)).astype(np.float32)
    xy = np.concatenate([ident_xy, extra_xy], 1)
    sigma = np.concatenate([ident_sigma, extra_sigma], 1)
    amp = np.concatenate([ident_amp, extra_amp], 1)

    n = n_identities * per_identity
    identity = np.repeat(np.arange(n_identities, dtype=np.int32), per_identity)
    angle = rng.uniform(-0.3, 0.3, n).astype(np.float32)
    scale = rng.uniform(0.85, 1.15, n).astype(np.float32)
    shift = rng.uniform(-0.08, 0.08, (n, 2)).astype(np.float32)
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    images = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        c, s = np.cos(angle[i]), np.sin(angle[i])
        # inverse pose: image coordinates -> identity coordinates
        u = (c * (gx - shift[i, 0]) + s * (gy - shift[i, 1])) / scale[i]
        v = (-s * (gx - shift[i, 0]) + c * (gy - shift[i, 1])) / scale[i]
        k = identity[i]
        d2 = (u[None] - xy[k, :, 0, None, None]) ** 2 + (v[None] - xy[k, :, 1, None, None]) ** 2
        face = (amp[k, :, None, None] * np.exp(-d2 / (2 * sigma[k, :, None, None] ** 2))).sum(0)
        light = rng.normal(0, 0.35, 2).astype(np.float32)
        img = face + light[0] * gx + light[1] * gy
        img = img * rng.uniform(0.7, 1.3) + rng.normal(0, 0.15) + rng.normal(0, 0.12, img.shape)
        images[i] = np.clip(127.5 + 80 * img, 0, 255).astype(np.uint8)
    return images, identity


def load_synthetic(config: Config, n_identities: int = 500, per_identity: int = 6) -> RawData:
    key = "syn-" + content_key([f"syn v{CACHE_VERSION} {config.image_size} {config.data_seed} "
                                 f"{n_identities} {per_identity}"])
    arrays = cached(key, lambda: dict(zip(("images", "identity"), render_synthetic(
        n_identities, per_identity, config.image_size, config.data_seed))))
    names = [f"synthetic_{i:04d}" for i in range(n_identities)]
    # 3200 pairs unless drawn_pairs says otherwise: the sizes of LFW's DevTrain (2200) and DevTest (1000) lists.
    n_pairs = config.drawn_pairs or 3200
    return pairs_from_identities(arrays["images"], arrays["identity"].astype(np.int32), names, config, n_pairs,
                      test_share=1000 / 3200, info={"source": f"synthetic (seed {config.data_seed})"})

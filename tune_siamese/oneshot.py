"""Koch et al.'s N-way one-shot evaluation on an identity-labelled image set.

Each trial: a query image of identity X and N candidates, exactly one of them another image of X and N-1 of
N-1 other identities; it is correct when the same-identity candidate scores highest. Every image is embedded
once, then only the cheap head runs per (query, candidate) pair, so thousands of trials cost one pass.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .config import Config
from .engine import to_input, use_bf16
from .errors import InputError
from .model import SiameseNet, in_layout


def one_shot_trials(identity: np.ndarray, ways: int, trials: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded trials: (query image [T], candidate images [T, N], position of the true match [T]).

    The true match sits at a random position, so ties in the scores cannot favour it."""
    if ways < 2:
        raise InputError(f"option --ways={ways} must be at least 2")
    if trials < 1:
        raise InputError(f"option --trials={trials} must be at least 1")
    members = [np.flatnonzero(identity == i) for i in np.unique(identity)]
    queryable = [k for k, m in enumerate(members) if len(m) >= 2]
    if not queryable:
        raise InputError("one-shot needs an identity with at least 2 images")
    if len(members) < ways:
        raise InputError(f"option --ways={ways} needs {ways} identities but the data has {len(members)}")
    rng = np.random.default_rng(seed)
    query = np.empty(trials, dtype=np.int64)
    candidates = np.empty((trials, ways), dtype=np.int64)
    target = rng.integers(ways, size=trials)
    for t in range(trials):
        k = queryable[rng.integers(len(queryable))]
        q, match = rng.choice(members[k], size=2, replace=False)
        others = rng.choice(len(members) - 1, size=ways - 1, replace=False)
        others = others + (others >= k)  # skip identity k itself
        row = [rng.choice(members[o]) for o in others]
        row.insert(int(target[t]), match)
        query[t], candidates[t] = q, row
    return query, candidates, target


@torch.no_grad()
def one_shot_scores(model: SiameseNet, images: torch.Tensor, query: np.ndarray, candidates: np.ndarray,
                    config: Config) -> np.ndarray:
    """Logits [T, N] of (query, candidate) pairs: each used image is embedded once, in eval batches."""
    model.eval()
    device = images.device
    used, inverse = np.unique(np.concatenate([query, candidates.ravel()]), return_inverse=True)
    used_t = torch.from_numpy(used).to(device)
    bf16 = use_bf16(config, device)
    views = [False, True] if config.tta_flip else [False]
    logits = torch.zeros(candidates.shape, dtype=torch.float32)
    for flip in views:
        chunks = []
        for start in range(0, len(used_t), config.eval_batch_size):
            x = to_input(images, used_t[start:start + config.eval_batch_size], config)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                chunks.append(model.embed(in_layout(x.flip(-1) if flip else x, config)).float())
        emb = torch.cat(chunks)
        q_pos = torch.from_numpy(inverse[:len(query)]).to(device)
        c_pos = torch.from_numpy(inverse[len(query):]).to(device)
        ea = emb[q_pos].repeat_interleave(candidates.shape[1], dim=0)
        scores = []
        for start in range(0, len(c_pos), config.eval_batch_size):
            stop = start + config.eval_batch_size
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                scores.append(model.score(ea[start:stop], emb[c_pos[start:stop]]).float())
        logits += torch.cat(scores).cpu().view(candidates.shape)
    return (logits / len(views)).numpy().astype(np.float64)


def one_shot_accuracy(model: SiameseNet, images: torch.Tensor, identity: np.ndarray, config: Config,
                      ways: int = 20, trials: int = 400, seed: int = 0) -> dict[str, Any]:
    """Fraction of trials whose true match gets the highest logit (chance = 1 / ways)."""
    query, candidates, target = one_shot_trials(identity, ways, trials, seed)
    scores = one_shot_scores(model, images, query, candidates, config)
    correct = scores.argmax(axis=1) == target
    return {"accuracy": float(correct.mean()), "ways": ways, "trials": trials, "seed": seed,
            "chance": 1.0 / ways}

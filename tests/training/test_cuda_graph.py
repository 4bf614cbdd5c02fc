"""Config.cuda_graphs: a captured training step changes the speed of a run, not the run.

The CPU tests check what makes that true off the GPU (the warm-up's effect on weights and optimizer state is
undone exactly; off CUDA the option is the eager run). The CUDA tests run only where a GPU is (the device check
in benchmarks/RESULTS.md ran them): graphed and eager training agree within the GPU's own run-to-run noise.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tune_siamese.training.cuda_graph import GraphedStep, restore, snapshot
from tune_siamese.training.engine import fit, make_optimizer, training_step
from tune_siamese.training.model import build_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])  # AdamW's state is Adam's
@pytest.mark.parametrize("steps_before", [0, 1])
def test_restore_undoes_steps_exactly(synthetic_small, tiny_config, optimizer, steps_before):
    """Snapshot, train 3 steps (the warm-up), restore, train 2: bit for bit what 2 steps from the snapshot give,
    also where the optimizer had no state yet (restored as zeros, i.e. as Adam and momentum SGD start)."""
    config = tiny_config(optimizer=optimizer, weight_decay=1e-3)
    images = torch.from_numpy(synthetic_small.images)
    batches = torch.from_numpy(synthetic_small.train).split(32)

    def trained(warm_up: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = build_model(config)
        opt = make_optimizer(config, net)
        step = training_step(net, opt, images, config, torch.Generator().manual_seed(0))
        for batch in batches[:steps_before]:
            step(batch)
        if warm_up:
            saved = snapshot(net, opt)
            for batch in batches[4:7]:
                step(batch)
            restore(net, opt, saved)
        for batch in batches[1:3]:
            step(batch)
        return {**net.state_dict(), **{f"opt.{i}.{k}": v for i, state in enumerate(opt.state.values())
                                       for k, v in state.items()}}

    plain, warmed = trained(False), trained(True)
    assert plain.keys() == warmed.keys()
    for key in plain:
        assert torch.equal(plain[key], warmed[key]), key


def test_cuda_graphs_off_cuda_is_the_eager_run(synthetic_small, tiny_config):
    config = tiny_config(max_epochs=1)
    eager, graphed = fit(config, synthetic_small), fit(config.replace(cuda_graphs=True), synthetic_small)
    assert comparable(eager.history) == comparable(graphed.history)


def test_graphed_step_needs_cuda(synthetic_small, tiny_config):
    config = tiny_config()
    net = build_model(config)
    opt = make_optimizer(config, net)
    step = training_step(net, opt, torch.from_numpy(synthetic_small.images), config, torch.Generator())
    with pytest.raises(ValueError, match="CUDA"):
        GraphedStep(step, torch.from_numpy(synthetic_small.train[:32]), net, opt)


@cuda
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_graphed_training_matches_eager_on_cuda(synthetic_small, tiny_config, optimizer):
    """240 pairs in batches of 32: 7 replays and an eager last batch of 16 per epoch. fp32, so that only the GPU's
    own nondeterminism (atomic adds in conv backward) separates the two."""
    config = tiny_config(device="cuda", precision="fp32", optimizer=optimizer, lr=1e-3, max_epochs=3)
    eager, graphed = fit(config, synthetic_small), fit(config.replace(cuda_graphs=True), synthetic_small)
    for name in ("train_loss", "val_loss", "lr"):
        a = np.array([row[name] for row in eager.history])
        b = np.array([row[name] for row in graphed.history])
        np.testing.assert_allclose(b, a, rtol=2e-3, err_msg=name)


@cuda
def test_graphed_training_with_augmentation_and_bf16_learns(synthetic_small, tiny_config):
    config = tiny_config(device="cuda", augment=True, lr=3e-3, max_epochs=4, cuda_graphs=True)
    result = fit(config, synthetic_small)
    losses = [row["train_loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@cuda
def test_graphed_training_resumes(synthetic_small, tiny_config):
    """A checkpoint taken after epoch 1 of a graphed run resumes into the same epoch 2 (within GPU noise)."""
    config = tiny_config(device="cuda", precision="fp32", max_epochs=2, cuda_graphs=True)
    states = []
    whole = fit(config, synthetic_small, on_epoch=lambda metrics, state: states.append(copy.deepcopy(state())))
    resumed = fit(config, synthetic_small, resume=states[0])
    np.testing.assert_allclose(resumed.history[-1]["train_loss"], whole.history[-1]["train_loss"], rtol=2e-3)
    assert resumed.history[-1]["lr"] == pytest.approx(whole.history[-1]["lr"])

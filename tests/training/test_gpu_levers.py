"""The Config levers for GPU speed besides cuda_graphs (issue 16): stem_fp32 and cudnn_benchmark.

They change which kernels run, not what is trained: the CPU tests check that stem_fp32 takes the first conv out
of bf16 autocast and nothing else, and that cudnn_benchmark reaches torch. The CUDA test runs only on a GPU
(benchmarks/gpu_suite.sh runs it).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tune_siamese.core.config import Config
from tune_siamese.training.engine import fit, setup
from tune_siamese.training.model import build_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def layer_dtypes(config: Config, autocast: bool) -> tuple[list[torch.dtype], torch.Tensor]:
    """Output dtypes of each conv and the logits, for the same weights and inputs."""
    torch.manual_seed(0)
    net = build_model(config).eval()
    dtypes: list[torch.dtype] = []
    for layer in net.features:
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    a, b = torch.rand(4, 1, 72, 72, generator=torch.Generator().manual_seed(1)).split(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = net(a, b).float()
    return dtypes, logits


def test_stem_fp32_takes_only_the_first_conv_out_of_autocast(tiny_config):
    plain, plain_logits = layer_dtypes(tiny_config(), autocast=True)
    stem, stem_logits = layer_dtypes(tiny_config(stem_fp32=True), autocast=True)
    assert plain == [torch.bfloat16] * 4
    assert stem == [torch.float32] + [torch.bfloat16] * 3
    torch.testing.assert_close(stem_logits, plain_logits, rtol=0.05, atol=0.05)  # bf16 rounding apart


def test_stem_fp32_without_autocast_is_the_plain_net(tiny_config):
    assert torch.equal(layer_dtypes(tiny_config(stem_fp32=True), autocast=False)[1],
                       layer_dtypes(tiny_config(), autocast=False)[1])


@pytest.mark.parametrize("value", [True, False])
def test_cudnn_benchmark_follows_the_config(tiny_config, value):
    before = torch.backends.cudnn.benchmark
    try:
        setup(tiny_config(cudnn_benchmark=value))
        assert torch.backends.cudnn.benchmark is value
    finally:
        torch.backends.cudnn.benchmark = before


@cuda
def test_graphed_training_with_both_levers_learns(synthetic_small, tiny_config):
    config = tiny_config(device="cuda", lr=3e-3, max_epochs=4, cuda_graphs=True, stem_fp32=True,
                         cudnn_benchmark=True)
    losses = [row["train_loss"] for row in fit(config, synthetic_small).history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]

"""training.costs: the project's one FLOP counter counts a multiply-add as 2, from the layer shapes."""
from __future__ import annotations

import torch
from torch import nn

from tune_siamese.training.costs import flop_count, latency_ms, parameter_count
from tune_siamese.training.model import SiameseNet


def by_hand(model: SiameseNet, size: int) -> int:
    """One image's embedding worked out from the layer shapes: 2 x inputs per output x outputs for every conv,
    the same for the fully connected layer; pooling, BatchNorm, activations and biases count nothing."""
    flops, x = 0, torch.zeros(1, 1, size, size)
    for layer in model.features:
        y = layer(x)
        if isinstance(layer, nn.Conv2d):
            flops += 2 * layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] * y.numel()
        x = y
    return flops + 2 * x.numel() * model.embed_dim


def test_flops_of_an_embedding_and_of_a_pair():
    model = SiameseNet(width=0.0625, input_size=72, batchnorm=True).eval()
    image = torch.zeros(1, 1, 72, 72)
    one = flop_count(model.embed, image)
    assert one == by_hand(model, 72)
    assert flop_count(model, image, image) == 2 * one + 2 * model.embed_dim  # two embeddings, then the head


def test_parameters_and_latency():
    model = SiameseNet(width=0.0625, input_size=72).eval()
    assert parameter_count(model) == sum(p.numel() for p in model.parameters())
    threads = torch.get_num_threads()
    image = torch.zeros(1, 1, 72, 72)
    assert 0 < latency_ms(model, image, image, runs=2) < 1000
    assert torch.get_num_threads() == threads  # timed on one thread, then given back

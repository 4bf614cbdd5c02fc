"""Koch's net (sizes, switches) and its checkpoints and exports (round trips, checksums, no unpickling)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tune_siamese.artifacts.checkpoint import export_model, load_checkpoint, load_model, save_checkpoint
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.training.costs import parameter_count
from tune_siamese.training.model import SiameseNet, build_model


def koch_flatten(size: int, channels: int = 256) -> int:
    """Flatten size worked out by hand: conv 10, pool, conv 7, pool, conv 4, pool, conv 4."""
    size = (size - 9) // 2
    size = (size - 6) // 2
    size = (size - 3) // 2
    size = size - 3
    return channels * size * size


@pytest.mark.parametrize("init", ["koch", "torch"])
def test_koch_parameter_count(init):
    model = build_model(Config(width=1.0, image_size=105, batchnorm=False, init=init))
    assert parameter_count(model) == 38_951_745  # Koch et al.'s 38.95M
    assert model.fc[1].in_features == 9216 == koch_flatten(105)


@pytest.mark.parametrize("size", [72, 80, 96, 128])
def test_flatten_size_follows_the_input(size):
    model = SiameseNet(width=0.25, input_size=size)
    assert model.fc[1].in_features == koch_flatten(size, channels=64)
    x = torch.rand(3, 1, size, size)
    assert model(x, x.flip(0)).shape == (3,)


def test_width_scales_channels_and_embedding():
    model = SiameseNet(width=0.0625, input_size=72)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 8, 16]
    assert [c.in_channels for c in convs] == [1, 4, 8, 8]
    assert model.embed_dim == 256 and model.head.in_features == 256
    assert SiameseNet(width=0.0625, input_size=72, head="l1_sq").head.in_features == 512
    assert SiameseNet(width=0.0625, input_size=72, head="l1_prod").head.in_features == 512


@pytest.mark.parametrize("head", ["l1", "l1_sq", "l1_prod"])
def test_every_head_scores_a_pair_the_same_in_either_order(head):
    torch.manual_seed(0)
    model = SiameseNet(width=0.0625, input_size=72, head=head, init="torch").eval()
    a, b = torch.rand(3, 1, 72, 72), torch.rand(3, 1, 72, 72)
    torch.testing.assert_close(model(a, b), model(b, a))
    assert not torch.allclose(model(a, b), model(a, a))


def test_batchnorm_sits_before_each_pool():
    layers = list(SiameseNet(width=0.125, input_size=72, batchnorm=True).features)
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
    assert len(pools) == 3
    for i in pools:
        between = layers[max(j for j in range(i) if isinstance(layers[j], nn.Conv2d)):i]
        assert any(isinstance(layer, nn.BatchNorm2d) for layer in between)
    assert sum(isinstance(layer, nn.BatchNorm2d) for layer in layers) == 3  # none after the last conv
    assert not any(isinstance(m, nn.BatchNorm2d) for m in SiameseNet(width=0.125, input_size=72).modules())


def test_koch_init_statistics():
    torch.manual_seed(0)
    model = SiameseNet(width=0.25, input_size=80, init="koch")
    conv = model.features[0]
    assert conv.weight.std().item() == pytest.approx(1e-2, rel=0.2)
    assert conv.bias.mean().item() == pytest.approx(0.5, abs=0.01)
    assert model.fc[1].weight.std().item() == pytest.approx(0.2, rel=0.05)


# --------------------------------------------------------------------------------------------------
# checkpoints and exports

@pytest.fixture
def trained_like(tiny_config):
    """A tiny model in eval mode with non-default weights and BatchNorm statistics."""
    config = tiny_config(batchnorm=True)
    torch.manual_seed(1)
    model = build_model(config)
    model.train()
    x = torch.rand(8, 1, 72, 72)
    model(x, x.flip(0))  # moves the BatchNorm running statistics off their defaults
    return model.eval(), config, torch.rand(5, 1, 72, 72), torch.rand(5, 1, 72, 72)


def test_export_round_trip_gives_identical_logits(trained_like, tmp_path):
    model, config, a, b = trained_like
    expected = model(a, b)
    out = export_model(model, config, tmp_path / "export", {"auc": 0.9}, threshold_logit=0.25)
    loaded, loaded_config, threshold = load_model(out)
    assert loaded_config == config and threshold == 0.25
    # Loaded in the layout it trains in; compared in the layout `expected` was computed in (kernels differ).
    assert loaded.features[0].weight.is_contiguous(memory_format=torch.channels_last) == config.channels_last
    assert torch.equal(loaded.to(memory_format=torch.contiguous_format)(a, b), expected)
    assert json.loads((out / "metrics.json").read_text())["auc"] == 0.9


def test_exported_graph_loads_without_the_python_class(trained_like, tmp_path):
    model, config, a, b = trained_like
    expected = model(a, b)
    out = export_model(model, config, tmp_path / "export")
    if (out / "model.pt2").exists():
        graph = torch.export.load(str(out / "model.pt2")).module()
    else:
        graph = torch.jit.load(str(out / "model.ts"))
    torch.testing.assert_close(graph(a, b), expected)
    torch.testing.assert_close(graph(a[:1], b[:1]), expected[:1])  # another batch size than the example


def test_checkpoint_round_trip(trained_like, tmp_path):
    model, config, a, b = trained_like
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint({"model": model.state_dict(), "config": config.to_dict(), "threshold_logit": -0.5}, path)
    loaded, loaded_config, threshold = load_model(path)
    assert loaded_config == config and threshold == -0.5
    assert torch.equal(loaded.to(memory_format=torch.contiguous_format)(a, b), model(a, b))


def test_tampered_export_is_refused(trained_like, tmp_path):
    model, config, _, _ = trained_like
    out = export_model(model, config, tmp_path / "export")
    weights = out / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="checksum mismatch for model.safetensors"):
        load_model(out)


def test_export_without_checksums_or_with_missing_file_is_refused(trained_like, tmp_path):
    model, config, _, _ = trained_like
    out = export_model(model, config, tmp_path / "export")
    (out / "config.json").unlink()
    with pytest.raises(InputError, match="config.json listed in SHA256SUMS is missing"):
        load_model(out)
    (out / "SHA256SUMS").unlink()
    with pytest.raises(InputError, match="no SHA256SUMS"):
        load_model(out)


class _Payload:
    """Unpickling this would write a file: the proof that a loader executed pickled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": Config().to_dict(), "extra": _Payload(marker)}, path)
    with pytest.raises(InputError, match="not a loadable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(InputError, match="not a loadable checkpoint"):
        load_model(path)
    assert not marker.exists()


def test_missing_or_garbage_checkpoint_is_input_error(tmp_path):
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="not a loadable checkpoint"):
        load_checkpoint(junk)
    partial = tmp_path / "partial.pt"
    save_checkpoint({"epoch": 3}, partial)
    with pytest.raises(InputError, match="no config and model"):
        load_model(partial)


def ensemble_members(tiny_config):
    """Two members stored at 96 px that see different views: all of it at 72 px, and its centre at 80 px."""
    configs = [tiny_config(image_size=96, input_size=72, seed=1),
               tiny_config(image_size=96, zoom=0.8, input_size=80, head="l1_prod", channels_last=False, seed=2)]
    members = []
    for config in configs:
        torch.manual_seed(config.seed)
        members.append(build_model(config).eval())
    return members, configs


def test_ensemble_is_the_mean_of_its_members_on_their_own_views(tiny_config):
    from tune_siamese.training.model import EnsembleNet, ensemble_config
    from tune_siamese.training.scoring import predict

    members, configs = ensemble_members(tiny_config)
    images = torch.randint(0, 256, (6, 96, 96), dtype=torch.uint8)
    pairs = np.array([[0, 1, 1], [2, 3, 0], [4, 5, 1]])
    cfg = ensemble_config(configs)
    assert (cfg.zoom, cfg.model_input_size, cfg.image_size) == (1.0, 96, 96)
    own = [predict(m, images, pairs, c.replace(precision="fp32")) for m, c in zip(members, configs)]
    assert not np.allclose(own[0], own[1])
    joint = predict(EnsembleNet(members, configs), images, pairs, cfg.replace(precision="fp32"))
    np.testing.assert_allclose(joint, (own[0] + own[1]) / 2, rtol=1e-5, atol=1e-5)


def test_ensemble_refuses_members_stored_differently(tiny_config):
    from tune_siamese.training.model import EnsembleNet

    members, configs = ensemble_members(tiny_config)
    with pytest.raises(InputError, match="differ in data setting.*crop"):
        EnsembleNet(members, [configs[0], configs[1].replace(crop=0.5)])


def test_ensemble_export_round_trip_and_tamper(tiny_config, tmp_path):
    from tune_siamese.artifacts.checkpoint import export_ensemble
    from tune_siamese.training.model import EnsembleNet

    members, configs = ensemble_members(tiny_config)
    out = export_ensemble(EnsembleNet(members, configs), tmp_path / "ens", {"auc": 0.7}, threshold_logit=-0.1)
    loaded, config, threshold = load_model(out)
    assert isinstance(loaded, EnsembleNet) and threshold == -0.1 and config.image_size == 96
    a, b = torch.rand(4, 1, 96, 96), torch.rand(4, 1, 96, 96)
    torch.testing.assert_close(loaded(a, b), EnsembleNet(members, configs)(a, b))
    member_weights = out / "member_2" / "model.safetensors"
    raw = bytearray(member_weights.read_bytes())
    raw[-3] ^= 0x01
    member_weights.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="checksum mismatch for model.safetensors"):
        load_model(out)


def test_export_of_weights_sharing_one_buffer_is_quiet_and_exact(trained_like, tmp_path):
    """A model that came through Ray's object store holds its tensors as views into one buffer; torch.export.save
    then warns 'No complete tensor found' although it rebuilds the span (CPU weights). The export stays exact,
    and a run's console does not show that warning."""
    model, config, a, b = trained_like
    expected = model(a, b)
    tensors = [*model.parameters(), *model.buffers()]
    floats = [t for t in tensors if t.dtype == torch.float32]
    flat = torch.cat([t.detach().reshape(-1) for t in floats])
    offset = 0
    for t in floats:  # each tensor becomes a view into `flat`, as after deserialization from one buffer
        t.data = flat[offset:offset + t.numel()].view_as(t)
        offset += t.numel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        out = export_model(model, config, tmp_path / "export")
    graph = torch.export.load(str(out / "model.pt2")).module()
    assert torch.equal(graph(a, b), expected)

"""Koch et al. (2015) twin CNN with a weighted-L1 head, with width, BatchNorm and head switches, and the ensemble
of several that a final model may be."""
from __future__ import annotations

import torch
from torch import nn

from tune_siamese.core.config import DATA_FIELDS, Config
from tune_siamese.core.errors import InputError
from tune_siamese.training.preprocess import center_crop, in_layout, resize

# (out_channels, kernel) of Koch's four conv layers at width 1.0; all but the last are followed by max-pool 2.
KOCH_CONVS = ((64, 10), (128, 7), (128, 4), (256, 4))


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class SiameseNet(nn.Module):
    """Twin embedding network; `forward(a, b)` returns one logit per pair (same person > 0)."""

    def __init__(self, width: float = 1.0, input_size: int = 105, batchnorm: bool = False,
                 embedding: int = 4096, head: str = "l1", dropout: float = 0.0, init: str = "koch",
                 stem_fp32: bool = False):
        super().__init__()
        self.stem_fp32 = stem_fp32
        layers: list[nn.Module] = []
        in_ch = 1
        for index, (out_ch, kernel) in enumerate(KOCH_CONVS):
            out_ch = _scaled(out_ch, width)
            last = index == len(KOCH_CONVS) - 1
            layers.append(nn.Conv2d(in_ch, out_ch, kernel))
            if batchnorm and not last:  # BatchNorm before each max-pool, as in the reference study
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            if not last:
                layers.append(nn.MaxPool2d(2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        with torch.no_grad():  # the flatten size follows from the input size; nothing is hard-coded
            flat = self.features(torch.zeros(1, 1, input_size, input_size)).numel()
        self.embed_dim = _scaled(embedding, width)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, self.embed_dim), nn.Sigmoid())
        self.head_kind = head
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(self.embed_dim * (1 if head == "l1" else 2), 1)
        if init == "koch":
            self._koch_init()

    def _koch_init(self) -> None:
        # Koch et al.: conv weights N(0, 1e-2), all biases N(0.5, 1e-2), fully connected weights N(0, 2e-1).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 1e-2)
                if module.bias is not None:
                    nn.init.normal_(module.bias, 0.5, 1e-2)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 2e-1)
                if module.bias is not None:
                    nn.init.normal_(module.bias, 0.5, 1e-2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem_fp32 and torch.is_autocast_enabled(x.device.type):
            # cuDNN's bf16 kernels for a one-channel input are slow (benchmarks/gpu_profile.py); this conv is a
            # sliver of the FLOPs, so fp32 costs little there. The rest of the net stays in autocast's dtype.
            with torch.autocast(x.device.type, enabled=False):
                x = self.features[0](x.float())
            return self.fc(self.features[1:](x))
        return self.fc(self.features(x))

    def score(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        diff = ea - eb
        if self.head_kind == "l1":
            dist = diff.abs()  # Koch's weighted L1
        elif self.head_kind == "l1_sq":
            dist = torch.cat([diff.abs(), diff * diff], dim=1)  # plus a weighted squared distance
        else:
            dist = torch.cat([diff.abs(), ea * eb], dim=1)  # plus a weighted correlation of the two embeddings
        return self.head(self.dropout(dist)).squeeze(1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # One pass over both halves: twice the batch, half the kernel launches.
        emb = self.embed(torch.cat([a, b], dim=0))
        n = a.shape[0]  # slicing, not chunk(2): keeps the batch size dynamic for torch.export
        return self.score(emb[:n], emb[n:])


def build_model(config: Config) -> SiameseNet:
    """The (untrained) net a config describes."""
    return SiameseNet(width=config.width, input_size=config.model_input_size, batchnorm=config.batchnorm,
                      embedding=config.embedding, head=config.head, dropout=config.dropout, init=config.init,
                      stem_fp32=config.stem_fp32)


class EnsembleNet(nn.Module):
    """Mean logit of several SiameseNets (e.g. the top trials of a search) that share their data settings.

    It takes the stored images at full size (its config has zoom 1 and input_size 0, see `ensemble_config`);
    each member then sees its own zoom, input size and memory layout, as in its training.
    """

    def __init__(self, members: list[SiameseNet], configs: list[Config]):
        super().__init__()
        if not members or len(members) != len(configs):
            raise InputError("an ensemble needs one config per member, and at least one member")
        self.config = ensemble_config(configs)  # what scoring.predict feeds it; refuses mixed data settings
        self.configs = list(configs)
        self.members = nn.ModuleList(members)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        logits = []
        for member, config in zip(self.members, self.configs):
            va, vb = (in_layout(resize(center_crop(x, config.zoom), config.model_input_size), config) for x in (a, b))
            logits.append(member(va, vb).float())
        return torch.stack(logits).mean(0)


def ensemble_config(configs: list[Config]) -> Config:
    """The config that feeds an EnsembleNet: the members' shared data settings, full-size NCHW input."""
    first = configs[0]
    for other in configs[1:]:
        differ = [name for name in DATA_FIELDS if getattr(other, name) != getattr(first, name)]
        if differ:
            raise InputError(f"ensemble members differ in data setting(s) {', '.join(differ)}")
    return first.replace(zoom=1.0, input_size=0, channels_last=False, tta_flip=any(c.tta_flip for c in configs))

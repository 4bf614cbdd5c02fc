"""The one configuration object that flows from the command line to the checkpoint and the export.

Every hyperparameter and data setting lives here, so a checkpoint or an export carries everything needed
to rebuild its model and reproduce its data.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError

OPTIMIZERS = ("sgd", "adam", "adamw")
INITS = ("koch", "torch")
HEADS = ("l1", "l1_sq", "l1_prod")
PRECISIONS = ("auto", "fp32", "bf16")
VAL_SPLITS = ("identity", "random")
VAL_PAIRS = ("given", "all")
LR_SCHEDULES = ("exp", "cosine")


@dataclass
class Config:
    # --- data (fixed for a whole search; they shape the cached arrays) ---
    data: str = "synthetic"  # "synthetic", "lfw" (torchvision download), or a folder path
    image_size: int = 105  # side of the stored uint8 images
    crop: float = 1.0  # central fraction of each source image kept before resizing (LFW-a faces are central)
    val_fraction: float = 0.1
    val_split: str = "identity"  # "identity": val identities unseen in training; "random": the reference study's split
    val_pairs: str = "given"  # "all": every pair among the validation people, each class half (its own split)
    data_seed: int = 0
    allow_identity_overlap: bool = False  # score a test list that shares people with training (warned, recorded)
    # --- model ---
    zoom: float = 1.0  # central fraction of the stored image the model sees (a per-trial crop, on the device)
    input_size: int = 0  # 0 = image_size; otherwise batches are resized on the device
    width: float = 1.0  # multiplies every conv's channels and the FC width
    embedding: int = 4096  # FC width at width 1.0
    batchnorm: bool = False
    init: str = "koch"
    head: str = "l1"
    dropout: float = 0.0
    # --- optimisation ---
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "exp"
    lr_decay: float = 0.99  # per epoch, for the "exp" schedule
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 5
    label_smoothing: float = 0.0
    augment: bool = False
    augment_strength: float = 1.0  # scales Koch's affine ranges
    augment_copies: int = 1  # each training pair this many times per epoch, each differently augmented (Koch: 8)
    mined_pairs: int = 0  # extra pairs drawn each epoch from training identities (0 = given pairs only)
    tta_flip: bool = False  # average the score of a pair and of its mirrored pair at evaluation
    # --- run ---
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto" = bf16 autocast on CUDA and on CPUs with native bf16, else fp32
    channels_last: bool = True
    compile: str = ""  # "" = eager; else a torch.compile backend for training steps ("inductor": worth it on CUDA)
    cuda_graphs: bool = False  # on CUDA, each full batch's training step is one CUDA graph replay
    cudnn_benchmark: bool = False  # let cuDNN time its algorithms per shape (faster kernels; not bit-reproducible)
    stem_fp32: bool = False  # the first conv (one input channel) outside bf16 autocast, where its kernel is slow
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"option {name}={value!r} is not one of {', '.join(allowed)}")

        def positive(name: str) -> None:
            if not getattr(self, name) > 0:
                raise InputError(f"option {name}={getattr(self, name)!r} must be > 0")

        for f in fields(self):  # NaN passes every comparison below; inf is no setting either
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"option {f.name}={value!r} must be a finite number")
        choice("optimizer", OPTIMIZERS)
        choice("init", INITS)
        choice("head", HEADS)
        choice("precision", PRECISIONS)
        choice("val_split", VAL_SPLITS)
        choice("val_pairs", VAL_PAIRS)
        if self.val_pairs == "all" and self.val_split != "identity":
            raise InputError("option val_pairs='all' needs val_split='identity' (a random split shares people "
                             "between training and validation)")
        choice("lr_schedule", LR_SCHEDULES)
        for name in ("image_size", "width", "embedding", "lr", "batch_size", "max_epochs", "patience",
                     "eval_batch_size", "crop", "augment_copies"):
            positive(name)
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"option val_fraction={self.val_fraction!r} must be between 0 and 1")
        for name in ("crop", "zoom"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise InputError(f"option {name}={getattr(self, name)!r} must be in (0, 1]")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"option dropout={self.dropout!r} must be in [0, 1)")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise InputError(f"option label_smoothing={self.label_smoothing!r} must be in [0, 0.5)")
        for name in ("weight_decay", "momentum", "mined_pairs", "threads", "input_size", "augment_strength"):
            if getattr(self, name) < 0:
                raise InputError(f"option {name}={getattr(self, name)!r} must be >= 0")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise InputError(f"option device={self.device!r} is not auto, cpu, mps, cuda or cuda:N")
        if not 0.0 < self.lr_decay <= 1.0:
            raise InputError(f"option lr_decay={self.lr_decay!r} must be in (0, 1] (the learning rate's factor per "
                             "epoch)")
        if self.model_input_size < 72:
            raise InputError(f"option input_size={self.model_input_size} is too small for Koch's net (at least 72)")

    @property
    def model_input_size(self) -> int:
        return self.input_size or self.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "Config":
        """Build from a dict, refusing unknown keys and coercing types (Tune hands numpy scalars)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            kwargs[name] = _coerce(name, value, str(known[name].type), source)
        try:
            return cls(**kwargs)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None

    def replace(self, **changes: Any) -> "Config":
        return Config.from_dict({**self.to_dict(), **changes})

    def save(self, path: str | Path) -> None:
        from . import storage  # not at the top: pyarrow stays out of quick commands that only parse a config

        storage.write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError("config file not found", path) from None
        except IsADirectoryError:
            raise InputError("a config file must be a JSON file, not a folder", path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the config file ({getattr(exc, 'strerror', None) or exc})", path) from None
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON: {exc.msg}", path, exc.lineno) from None
        if not isinstance(values, dict):
            raise InputError("a config file must hold one JSON object", path)
        return cls.from_dict(values, source=str(path))


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """{"lr": "3e-4"} from command-line items like "lr=3e-4" (--set); Config.from_dict coerces the strings."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"option --set {item!r} must look like KEY=VALUE")
        values[key.strip()] = value.strip()
    return values


_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(name: str, value: Any, annotation: str, source: str) -> Any:
    kind = _TYPES[annotation]  # annotations are strings under `from __future__ import annotations`
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if value in (0, 1):  # True, False, 0, 1 (numpy bools and ints compare equal too)
                return bool(value)
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise InputError(f"{source}: option {name}={value!r} is not a valid {kind.__name__}") from None

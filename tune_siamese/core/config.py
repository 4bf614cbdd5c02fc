"""The one configuration object that flows from the command line to the checkpoint and the export.

Every hyperparameter and data setting lives here, so a checkpoint or an export carries everything needed
to rebuild its model and reproduce its data.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from tune_siamese.core.errors import InputError


def setting(default: Any, help: str, rule: str = "", choices: tuple[str, ...] = ()) -> Any:
    """A Config field with what it means and the rule its value obeys (`Config.validate` enforces the rule;
    `tune-siamese config-fields` lists both). Rules: "> 0", ">= 0", or an interval such as "(0, 1]"."""
    return field(default=default, metadata={"help": help, "rule": rule, "choices": choices})


# The fields of Config's data section: they shape the data read once for a whole search (and an ensemble's members
# must share them).
DATA_FIELDS = ("data", "image_size", "crop", "val_fraction", "val_split", "val_pairs", "data_seed", "drawn_pairs")


@dataclass
class Config:
    # --- data (fixed for a whole search; they shape the cached arrays) ---
    data: str = setting("synthetic", "'synthetic', 'lfw' (torchvision download), or a folder path")
    image_size: int = setting(105, "side of the stored uint8 images", "> 0")
    crop: float = setting(1.0, "central fraction of each source image kept before resizing (LFW-a faces are "
                          "central)", "(0, 1]")
    val_fraction: float = setting(0.1, "fraction of the training list held out for validation", "(0, 1)")
    val_split: str = setting("identity", "identity: val people unseen in training; random: the reference study's "
                             "split", choices=("identity", "random"))
    val_pairs: str = setting("given", "all: every pair among the validation people, each class half (needs "
                             "val_split=identity)", choices=("given", "all"))
    data_seed: int = setting(0, "seed of the data: the train/val split, the mined pairs, the synthetic faces")
    drawn_pairs: int = setting(0, "pairs drawn from a source without pair lists (the synthetic faces, an identity "
                               "folder); 0 = the source's own count: 3200 for the synthetic faces (DevTrain's and "
                               "DevTest's sizes), twice the images (40 to 6000) for a folder", ">= 0")
    allow_identity_overlap: bool = setting(False, "score a test list that shares people with training (warned, "
                                           "recorded)")
    # --- model ---
    zoom: float = setting(1.0, "central fraction of the stored image the model sees (a per-trial crop, on the "
                          "device)", "(0, 1]")
    input_size: int = setting(0, "side the model sees; 0 = image_size, else batches are resized on the device "
                              "(at least 72)", ">= 0")
    width: float = setting(1.0, "multiplies every conv's channels and the FC width", "> 0")
    embedding: int = setting(4096, "FC width at width 1.0", "> 0")
    batchnorm: bool = setting(False, "BatchNorm before each pool")
    init: str = setting("koch", "weight initialisation", choices=("koch", "torch"))
    head: str = setting("l1", "distance head: Koch's weighted L1, its square, or L1 and product",
                        choices=("l1", "l1_sq", "l1_prod"))
    dropout: float = setting(0.0, "dropout on the distance vector, before the head", "[0, 1)")
    # --- optimisation ---
    optimizer: str = setting("adam", "optimizer", choices=("sgd", "adam", "adamw"))
    lr: float = setting(1e-4, "learning rate", "> 0")
    momentum: float = setting(0.9, "SGD's momentum", ">= 0")
    weight_decay: float = setting(0.0, "weight decay", ">= 0")
    lr_schedule: str = setting("exp", "exp: lr x lr_decay per epoch; cosine: to 0 at max_epochs",
                               choices=("exp", "cosine"))
    lr_decay: float = setting(0.99, "the learning rate's factor per epoch (exp schedule)", "(0, 1]")
    batch_size: int = setting(32, "pairs per training step", "> 0")
    max_epochs: int = setting(100, "epochs at most", "> 0")
    patience: int = setting(5, "epochs without a better val loss before training stops", "> 0")
    label_smoothing: float = setting(0.0, "BCE targets moved this far towards 0.5", "[0, 0.5)")
    augment: bool = setting(False, "Koch's random affine distortions of training images")
    augment_strength: float = setting(1.0, "scales Koch's affine ranges", ">= 0")
    augment_copies: int = setting(1, "each training pair this many times per epoch, each differently augmented "
                                  "(Koch: 8)", "> 0")
    mined_pairs: int = setting(0, "extra pairs drawn each epoch from training people (0 = given pairs only)", ">= 0")
    tta_flip: bool = setting(False, "average the score of a pair and of its mirrored pair at evaluation")
    # --- run ---
    seed: int = setting(0, "seed of the weights, the batches and the augmentation")
    device: str = setting("auto", "auto, cpu, mps, cuda or cuda:N")
    precision: str = setting("auto", "auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32",
                             choices=("auto", "fp32", "bf16"))
    channels_last: bool = setting(True, "channels-last memory format for the convolutions")
    compile: str = setting("", "'' = eager; else a torch.compile backend for training steps (inductor: worth it "
                           "on CUDA)")
    cuda_graphs: bool = setting(False, "on CUDA, each full batch's training step is one CUDA graph replay")
    cudnn_benchmark: bool = setting(False, "let cuDNN time its algorithms per shape (faster kernels; not "
                                    "bit-reproducible)")
    stem_fp32: bool = setting(False, "the first conv (one input channel) outside bf16 autocast, where its kernel "
                              "is slow")
    threads: int = setting(0, "torch intra-op threads; 0 = torch's default", ">= 0")
    eval_batch_size: int = setting(512, "pairs per evaluation batch", "> 0")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison; inf is no setting
                raise InputError(f"option {f.name}={value!r} must be a finite number")
            if f.metadata["choices"] and value not in f.metadata["choices"]:
                raise InputError(f"option {f.name}={value!r} is not one of {', '.join(f.metadata['choices'])}")
            if f.metadata["rule"] and not obeys(value, f.metadata["rule"]):
                raise InputError(f"option {f.name}={value!r} must be {describe_rule(f.metadata['rule'])}")
        if self.val_pairs == "all" and self.val_split != "identity":
            raise InputError("option val_pairs='all' needs val_split='identity' (a random split shares people "
                             "between training and validation)")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise InputError(f"option device={self.device!r} is not auto, cpu, mps, cuda or cuda:N")
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
            guesses = [f"{key} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(key, known, n=1))
                       else key for key in unknown]
            raise InputError(f"{source}: unknown option(s) {', '.join(guesses)}; `tune-siamese config-fields` "
                             "lists them")
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
        from tune_siamese.core import (
            storage,  # not at the top: pyarrow stays out of quick commands that only parse a config
        )

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


def obeys(value: float, rule: str) -> bool:
    """Whether `value` obeys a rule of `setting`: "> 0", ">= 0" or an interval "(lo, hi]" / "[lo, hi)" / ..."""
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    low, high = (float(end) for end in rule[1:-1].split(","))
    above = value >= low if rule[0] == "[" else value > low
    below = value <= high if rule[-1] == "]" else value < high
    return above and below


def describe_rule(rule: str) -> str:
    return rule if rule.startswith(">") else f"in {rule}"


def field_table() -> list[tuple[str, str, str, str, str]]:
    """(name, type, default, rule, meaning) of every Config field, for `tune-siamese config-fields`."""
    rows = []
    for f in fields(Config):
        rule = describe_rule(f.metadata["rule"]) if f.metadata["rule"] else ""
        if f.metadata["choices"]:
            rule = "one of " + ", ".join(f.metadata["choices"])
        rows.append((f.name, str(f.type), repr(f.default), rule, f.metadata["help"]))
    return rows

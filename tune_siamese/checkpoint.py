"""Checkpoints and exports. Nothing is ever unpickled: torch.load(weights_only=True) or safetensors only.

An export directory holds:
  model.safetensors  weights            config.json   the whole Config
  model.pt2          torch.export graph metrics.json  test metrics and the decision threshold
  SHA256SUMS         checksums of all of the above; a mismatch refuses to load
An ensemble export holds member_1/, member_2/, ... (each an export as above), ensemble.json (the member
folders and the ensemble's input config), metrics.json and SHA256SUMS over those and the members' SHA256SUMS.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import storage
from .config import Config
from .errors import InputError
from .model import EnsembleNet, SiameseNet, build_model

CHECKSUMS = "SHA256SUMS"
ENSEMBLE_FILE = "ensemble.json"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomic save of a training state (tensors, numbers, strings, dicts and lists only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corruption is bad input
        raise InputError(f"not a loadable checkpoint ({exc.__class__.__name__}: {str(exc)[:200]})", path) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_model(model: SiameseNet, config: Config, out_dir: str | Path, metrics: dict[str, Any] | None = None,
                 threshold_logit: float = 0.0) -> Path:
    """Write weights, config, a torch.export graph (dynamic batch size), metrics and checksums to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()  # caller's stays put
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    config.save(out / "config.json")
    _write_metrics(out, metrics, threshold_logit)
    size = config.model_input_size
    # Two distinct tensors: given the same tensor twice, torch.export aliases the inputs and the graph
    # scores b against b, whatever a is.
    example = tuple(torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(i)) for i in (1, 2))
    batch = torch.export.Dim("batch", min=1)
    graph = torch.export.export(model, example, dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(graph, str(out / "model.pt2"))  # torch.export.load(...).module()(a, b) -> logits
    _write_checksums(out, ["model.safetensors", "config.json", "metrics.json", "model.pt2"])
    return out


def export_ensemble(ensemble: EnsembleNet, out_dir: str | Path, metrics: dict[str, Any] | None = None,
                    threshold_logit: float = 0.0) -> Path:
    """Each member as a full export in member_K/, plus ensemble.json, metrics.json and checksums over all."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders = [f"member_{k}" for k in range(1, len(ensemble.members) + 1)]
    for model, config, folder in zip(ensemble.members, ensemble.configs, folders):
        export_model(model, config, out / folder)
    (out / ENSEMBLE_FILE).write_text(json.dumps({"members": folders, "config": ensemble.config.to_dict()},
                                                indent=2) + "\n")
    _write_metrics(out, metrics, threshold_logit)
    _write_checksums(out, [ENSEMBLE_FILE, "metrics.json", *(f"{folder}/{CHECKSUMS}" for folder in folders)])
    return out


def _write_metrics(out: Path, metrics: dict[str, Any] | None, threshold_logit: float) -> None:
    (out / "metrics.json").write_text(json.dumps({"threshold_logit": threshold_logit, **(metrics or {})},
                                                 indent=2) + "\n")


def _write_checksums(out: Path, files: list[str]) -> None:
    (out / CHECKSUMS).write_text("".join(f"{_sha256(out / name)}  {name}\n" for name in files))


def _threshold(export_dir: Path) -> float:
    return float(json.loads((export_dir / "metrics.json").read_text()).get("threshold_logit", 0.0))


def _load_ensemble(source: Path) -> tuple[EnsembleNet, Config, float]:
    verify_checksums(source)
    spec = json.loads((source / ENSEMBLE_FILE).read_text())
    loaded = [_load_local(source / folder) for folder in spec["members"]]
    model = EnsembleNet([m for m, _, _ in loaded], [c for _, c, _ in loaded])
    return model.eval(), Config.from_dict(spec["config"], source=str(source / ENSEMBLE_FILE)), _threshold(source)


def verify_checksums(export_dir: Path) -> None:
    sums = export_dir / CHECKSUMS
    if not sums.is_file():
        raise InputError(f"no {CHECKSUMS} in the export; refusing to load it", export_dir)
    for number, line in enumerate(sums.read_text().splitlines(), start=1):
        digest, _, name = line.partition("  ")
        target = export_dir / name
        if not target.is_file():
            raise InputError(f"{name} listed in {CHECKSUMS} is missing", sums, number)
        if _sha256(target) != digest:
            raise InputError(f"checksum mismatch for {name}: the export was modified or corrupted", sums, number)


def load_model(source: str | Path) -> tuple[SiameseNet | EnsembleNet, Config, float]:
    """(model, config, decision threshold as a logit) from an export directory (single or ensemble, local or
    a storage URI such as s3://bucket/results/EXP/export) or a checkpoint file. The config is the one to feed
    `engine.predict` with."""
    if storage.is_uri(source):
        with storage.local_copy(source) as folder:  # everything is read into memory before it goes
            return _load_local(folder)
    return _load_local(Path(source))


def _load_local(source: Path) -> tuple[SiameseNet | EnsembleNet, Config, float]:
    if (source / ENSEMBLE_FILE).is_file():
        return _load_ensemble(source)
    if source.is_dir():
        verify_checksums(source)
        config = Config.load(source / "config.json")
        model = build_model(config)
        model.load_state_dict(load_file(str(source / "model.safetensors")))
        return as_trained(model, config), config, _threshold(source)
    state = load_checkpoint(source)
    if "config" not in state or "model" not in state:
        raise InputError("checkpoint holds no config and model", source)
    config = Config.from_dict(state["config"], source=str(source))
    model = build_model(config)
    model.load_state_dict(state["model"])
    return as_trained(model, config), config, float(state.get("threshold_logit", 0.0))


def as_trained(model: SiameseNet, config: Config) -> SiameseNet:
    """Eval mode in the memory layout it was trained in: under bf16 autocast, oneDNN picks different kernels
    for NCHW and channels_last weights, which round differently, so scores would shift in the 6th digit."""
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()

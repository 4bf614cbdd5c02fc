"""Checkpoints and exports. Nothing is ever unpickled: torch.load(weights_only=True) or safetensors only.

An export directory holds:
  model.safetensors  weights            config.json   the whole Config
  model.pt2          torch.export graph metrics.json  test metrics and the decision threshold
  verifier.pt2       torch.export graph of the pair pipeline: decoded uint8 images -> probability (pipeline.Verifier)
  preprocess.json    how to decode an image for verifier.pt2 (grayscale, crop, size, filter) and the threshold
  identities.json    whom the model trained or was selected on: a salted SHA-256 digest of each person's name
                     (exports from before it have none; `evaluate` then cannot check the people it scores)
  SHA256SUMS         checksums of all of the above
An ensemble export holds member_1/, member_2/, ... (each an export as above), ensemble.json (the member
folders and the ensemble's input config), metrics.json, verifier.pt2, preprocess.json, identities.json and
SHA256SUMS over those and the members' SHA256SUMS.
Loading refuses an export unless every file it reads is listed in SHA256SUMS and matches, every listed file
matches and lies inside the export folder, and the configs, metrics and weights read are what this code writes.
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, cast

import pyarrow.fs
import safetensors.torch
import torch
from safetensors.torch import save_file

from tune_siamese.artifacts.checksums import CHECKSUMS, listed_files, verify_checksums, write_checksums
from tune_siamese.artifacts.people import TrainedPeople, parse_people_record, people_record
from tune_siamese.artifacts.pipeline import ProbabilityVerifier
from tune_siamese.core import storage
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import FINAL_FILE, SETTINGS_FILE
from tune_siamese.training.model import EnsembleNet, SiameseNet, build_model

ENSEMBLE_FILE = "ensemble.json"
EXPORT_NEEDS = ("model.safetensors", "config.json", "metrics.json")  # what loading an export reads
VERIFIER_FILES = ("verifier.pt2", "preprocess.json")  # for users without this package; loading does not read them
ENSEMBLE_KEYS = {"members", "config"}
IDENTITIES_FILE = "identities.json"


@dataclass
class LoadedModel:
    """What `load` reads from an export or a checkpoint file."""
    model: SiameseNet | EnsembleNet
    config: Config
    threshold: float | None  # the decision threshold as a logit; None: a search trial's state, which holds none
    trained_people: TrainedPeople | None  # None: not recorded (an older export or checkpoint, a trial's state)
    best_epoch: int | None = None  # a trial's state: the epoch whose weights these are


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomic save of a training state (tensors, numbers, strings, dicts and lists only)."""
    path = Path(path)
    try:
        with storage.replacing(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as exc:  # a full disk or a lost mount (torch's writer raises RuntimeError)
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200]
        raise InputError(f"cannot write the checkpoint ({reason})", path) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corruption is bad input
        raise InputError(f"not a loadable checkpoint ({exc.__class__.__name__}: {str(exc)[:200]})", path) from None


def export_model(model: SiameseNet, config: Config, out_dir: str | Path, metrics: dict[str, Any] | None = None,
                 threshold_logit: float = 0.0, trained_people: Iterable[str] | None = None) -> Path:
    """Write weights, config, a torch.export graph (dynamic batch size), metrics, the record of `trained_people`
    (the names of everyone the model trained or was selected on; every export the project writes gives them)
    and checksums to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format).eval()  # caller's stays put
    _save_weights({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    config.save(out / "config.json")
    _write_metrics(out, metrics, threshold_logit)
    size = config.model_input_size
    # Two distinct tensors: given the same tensor twice, torch.export aliases the inputs and the graph
    # scores b against b, whatever a is.
    example = tuple(torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(i)) for i in (1, 2))
    batch = torch.export.Dim("batch", min=1)
    graph = torch.export.export(model, example, dynamic_shapes=({0: batch}, {0: batch}))
    _save_graph(graph, out / "model.pt2")  # torch.export.load(...).module()(a, b) -> logits
    _export_verifier(model, config, out, threshold_logit)
    recorded = _write_people(out, trained_people)
    write_checksums(out, ["model.safetensors", "config.json", "metrics.json", "model.pt2", *VERIFIER_FILES,
                           *recorded])
    return out


def export_ensemble(ensemble: EnsembleNet, out_dir: str | Path, metrics: dict[str, Any] | None = None,
                    threshold_logit: float = 0.0, trained_people: Iterable[str] | None = None) -> Path:
    """Each member as a full export in member_K/, plus ensemble.json, metrics.json, the people record and
    checksums over all."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders = [f"member_{k}" for k in range(1, len(ensemble.members) + 1)]
    people = None if trained_people is None else list(trained_people)
    for model, config, folder in zip(ensemble.members, ensemble.configs, folders):
        export_model(cast(SiameseNet, model), config, out / folder, trained_people=people)
    storage.write_text(out / ENSEMBLE_FILE, json.dumps({"members": folders, "config": ensemble.config.to_dict()},
                                                       indent=2) + "\n")
    _write_metrics(out, metrics, threshold_logit)
    _export_verifier(copy.deepcopy(ensemble).to("cpu").eval(), ensemble.config, out, threshold_logit)
    recorded = _write_people(out, people)
    write_checksums(out, [ENSEMBLE_FILE, "metrics.json", *VERIFIER_FILES, *recorded,
                           *(f"{folder}/{CHECKSUMS}" for folder in folders)])
    return out


def _write_people(out: Path, names: Iterable[str] | None) -> list[str]:
    """identities.json from the names, if given; the files written, for SHA256SUMS."""
    if names is None:
        return []
    storage.write_text(out / IDENTITIES_FILE, json.dumps(people_record(names), indent=2) + "\n")
    return [IDENTITIES_FILE]


def _save_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    with storage.replacing(path) as tmp:
        try:
            save_file(weights, str(tmp))
        except safetensors.SafetensorError as exc:  # its I/O errors (a full disk) are no OSError
            raise OSError(f"cannot write {path} ({exc})") from None


def _save_graph(graph: torch.export.ExportedProgram, path: Path) -> None:
    # A model that came back from a Ray task holds its tensors as views into one buffer. torch.export.save then
    # warns "No complete tensor found" and saves the span the views cover, which is exact for CPU weights (all of
    # ours here; tests/test_model.py checks it), so the warning would only alarm the user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        graph_bytes = io.BytesIO()
        torch.export.save(graph, graph_bytes)
    # Written by Python, not by torch's zip writer, which aborts the process (SIGABRT) on a full disk: here it is
    # an OSError, and `replacing` leaves no temporary.
    with storage.replacing(path) as tmp, open(tmp, "wb") as out:
        out.write(graph_bytes.getbuffer())


def _export_verifier(model: SiameseNet | EnsembleNet, config: Config, out: Path, threshold_logit: float) -> None:
    """verifier.pt2 (decoded images in, probability out) and preprocess.json, the decoding in front of it.

    The decoding stays outside the graph: it is PIL's (EXIF rotation, grayscale, central crop, Lanczos resize)
    and torch.export cannot trace PIL. The plain-torch snippet in docs/exports.md does exactly these steps."""
    size = config.image_size
    example = tuple(torch.randint(0, 256, (2, size, size), dtype=torch.uint8,
                                  generator=torch.Generator().manual_seed(i)) for i in (1, 2))
    batch = torch.export.Dim("batch", min=1)
    graph = torch.export.export(ProbabilityVerifier(model, config).eval(), example,
                                dynamic_shapes=({0: batch}, {0: batch}))
    _save_graph(graph, out / "verifier.pt2")
    recipe = {
        "graph": "verifier.pt2: torch.export.load(path).module()(a, b) -> probability [batch] that a[i], b[i] "
                 "show the same person; a, b: uint8 tensors [batch, size, size]",
        "decode": "PIL: ImageOps.exif_transpose(Image.open(path)).convert('L'), then the central `crop` fraction "
                  "(width and height rounded, offsets floored), then resize to size x size with LANCZOS",
        "crop": config.crop, "size": size, "resample": "LANCZOS",
        "in_graph": {"zoom": config.zoom, "input_size": config.model_input_size, "flip_averaging": config.tta_flip},
        "threshold_logit": threshold_logit,
        "threshold_probability": 0.5 * (1.0 + math.tanh(0.5 * threshold_logit)),  # sigmoid, no overflow
    }
    storage.write_text(out / "preprocess.json", json.dumps(recipe, indent=2) + "\n")


def _write_metrics(out: Path, metrics: dict[str, Any] | None, threshold_logit: float) -> None:
    storage.write_text(out / "metrics.json", json.dumps({"threshold_logit": threshold_logit, **(metrics or {})},
                                                        indent=2) + "\n")


def load(source: str | Path) -> LoadedModel:
    """Model, config (the one to feed `scoring.predict` with), decision threshold and training people from an
    export directory (single or ensemble, local or a storage URI such as s3://bucket/results/EXP/export) or a
    checkpoint file: `tune-siamese train`'s checkpoint.pt, or a search trial's state.pt, whose best epoch's
    weights load (it holds no threshold: LoadedModel.threshold is None)."""
    if storage.is_uri(source):
        with storage.local_copy(source) as folder:  # everything is read into memory before it goes
            return _load_local(folder)
    return _load_local(Path(source))


def load_model(source: str | Path) -> tuple[SiameseNet | EnsembleNet, Config, float]:
    """(model, config, decision threshold as a logit) of `load`; a trial's state, which holds no threshold, is
    refused."""
    loaded = load(source)
    if loaded.threshold is None:
        raise InputError("a search trial's state holds no decision threshold (`tune-siamese evaluate` chooses one "
                         "on the trial's validation pairs)", source)
    return loaded.model, loaded.config, loaded.threshold


def experiment_export(source: str | os.PathLike[str]) -> str:
    """What to load for `source`: EXPERIMENT/export for a search's experiment folder (it holds final.json or
    search_settings.json; local or a storage URI), else `source` itself. An experiment without an export is
    refused in one line, naming the other exports it holds (export-ensemble, export-NAME) if any."""
    text = os.fspath(source)
    if not storage.is_uri(text) and not Path(text).is_dir():
        return text  # a checkpoint file, or nothing at all: `load` says which
    if storage.exists(storage.child(text, CHECKSUMS)) or not any(
            storage.exists(storage.child(text, name)) for name in (FINAL_FILE, SETTINGS_FILE)):
        return text  # an export itself, or no experiment
    export = storage.child(text, "export")
    if storage.exists(export):
        return export
    fs, where = storage.filesystem(text)
    others = sorted(info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(where))
                    if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("export"))
    instead = f"load one of its other exports ({', '.join(others)})" if others else "load a checkpoint file instead"
    raise InputError(f"an experiment folder without an export (the search ran with --no-retrain, stopped before "
                     f"its export, or had no usable trial); {instead}", text)


def _load_local(source: Path) -> LoadedModel:
    if (source / ENSEMBLE_FILE).is_file():
        return _load_ensemble(source)
    if source.is_dir():
        return _load_export(source)
    return _load_checkpoint_file(source)


def _needs(folder: Path, needs: tuple[str, ...]) -> tuple[str, ...]:
    """The files loading reads: `needs`, and the people record where the export has one (then it must be listed)."""
    return (*needs, IDENTITIES_FILE) if (folder / IDENTITIES_FILE).is_file() else needs


def _loaded_people(folder: Path, files: dict[str, bytes]) -> TrainedPeople | None:
    if IDENTITIES_FILE not in files:
        return None
    return parse_people_record(_json_object(files[IDENTITIES_FILE], folder / IDENTITIES_FILE), folder / IDENTITIES_FILE)


def _load_export(folder: Path) -> LoadedModel:
    files = verify_checksums(folder, _needs(folder, EXPORT_NEEDS))
    config = _config(_json_object(files["config.json"], folder / "config.json"), folder / "config.json")
    weights_path = folder / "model.safetensors"
    try:
        weights = safetensors.torch.load(files["model.safetensors"])
    except Exception as exc:  # noqa: BLE001 - the parser's errors (header, dtype, offsets) are all bad input
        raise InputError(f"not a readable safetensors file ({str(exc)[:200]})", weights_path) from None
    model = model_from_weights(config, folder / "config.json", weights, weights_path)
    metrics_path = folder / "metrics.json"
    threshold = _json_object(files["metrics.json"], metrics_path).get("threshold_logit")
    return LoadedModel(model, config, _threshold(threshold, metrics_path), _loaded_people(folder, files))


def _load_ensemble(source: Path) -> LoadedModel:
    files = verify_checksums(source, _needs(source, (ENSEMBLE_FILE, "metrics.json")))
    spec_path = source / ENSEMBLE_FILE
    spec = _json_object(files[ENSEMBLE_FILE], spec_path)
    unknown, missing = sorted(set(spec) - ENSEMBLE_KEYS), sorted(ENSEMBLE_KEYS - set(spec))
    if unknown or missing:
        raise InputError(f"unknown key(s) {first_few(unknown)}, missing key(s) {first_few(missing)}; known: members, "
                         f"config", spec_path)
    folders = spec["members"]
    if not isinstance(folders, list) or not folders:
        raise InputError("members must be a non-empty list of folder names", spec_path)
    for name in folders:
        # One plain name: a member is a folder of this export, never ../x, /x or a/../../x.
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name:
            raise InputError(f"member folder {name!r} is not a folder inside the export", spec_path)
    if len(set(folders)) != len(folders):
        raise InputError("members names a folder twice", spec_path)
    # The members' own SHA256SUMS must be covered too, or a member could be swapped together with its sums;
    # the first verify_checksums call has hashed them already.
    listed_files(source, [f"{name}/{CHECKSUMS}" for name in folders])
    if not isinstance(spec["config"], dict):
        raise InputError("config must be a JSON object of Config options", spec_path)
    config = _config(spec["config"], spec_path)
    loaded = [_load_export(source / name) for name in folders]
    try:
        model = EnsembleNet([cast(SiameseNet, m.model) for m in loaded], [m.config for m in loaded])
    except InputError as exc:  # members that cannot be ensembled: say which file put them together
        raise InputError(str(exc), spec_path) from None
    if config != model.config:  # scoring.predict feeds the ensemble by this config: it must be the members'
        raise InputError("config differs from the one its members' configs give", spec_path)
    metrics_path = source / "metrics.json"
    threshold = _json_object(files["metrics.json"], metrics_path).get("threshold_logit")
    return LoadedModel(model.eval(), config, _threshold(threshold, metrics_path),
                       _loaded_people(source, files))


def _load_checkpoint_file(source: Path) -> LoadedModel:
    state = load_checkpoint(source)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise InputError("checkpoint holds no config and model", source)
    if not isinstance(state["config"], dict):
        raise InputError("checkpoint's config is not a dict of Config options", source)
    # A search trial's state (engine.fit's, with its optimizer and history): "model" holds the last epoch's
    # weights, "best_model" the best epoch's, the ones the search ranks the trial by.
    trial = "best_model" in state
    weights = state["best_model" if trial else "model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError("checkpoint's model is not a dict of tensors", source)
    config = _config(state["config"], source)
    model = model_from_weights(config, source, weights, source)
    people = parse_people_record(state["trained_people"], source) if "trained_people" in state else None
    if trial:
        best_epoch = state.get("best_epoch")
        return LoadedModel(model, config, None, people, best_epoch if isinstance(best_epoch, int) else None)
    return LoadedModel(model, config, _threshold(state.get("threshold_logit", 0.0), source), people)


def _json_object(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg}", path, exc.lineno) from None
    except RecursionError:
        raise InputError("not valid JSON: nested too deeply", path) from None
    if not isinstance(value, dict):
        raise InputError("must hold one JSON object", path)
    return value


def _config(values: dict[str, Any], path: Path) -> Config:
    try:
        return Config.from_dict(values, source=str(path))
    except OverflowError as exc:  # an int field given as 1e400 and the like
        raise InputError(f"a value is out of range ({exc})", path) from None


def _threshold(value: Any, path: Path) -> float:
    # Anything but a finite number would decide every pair the same way (NaN: never the same person).
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            number = math.inf
    if not math.isfinite(number):
        raise InputError(f"threshold_logit={value!r} is not a finite number", path)
    return number


def model_from_weights(config: Config, config_path: Path, weights: dict[str, torch.Tensor], path: Path) -> SiameseNet:
    """The model `config` builds, holding `weights`; refused unless names, shapes and dtypes all match."""
    try:
        with torch.device("meta"):  # shapes only: an edited config must not allocate a giant model
            expected = build_model(config).state_dict()
    except (OverflowError, RuntimeError, ValueError) as exc:
        raise InputError(f"the model this config describes cannot be built ({str(exc)[:200]})", config_path) from None
    described = "the model its config describes" if config_path == path else f"the model {config_path.name} describes"
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise InputError(f"weights do not fit {described}: missing {first_few(missing)}, "
                         f"unexpected {first_few(unexpected)}",
                         path)
    for name, want in expected.items():  # in layer order: the first misfit is the one to name
        tensor = weights[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise InputError(f"weights do not fit {described}: {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                             f"it needs {tuple(want.shape)} {want.dtype}", path)
    model = build_model(config)
    model.load_state_dict(weights)
    return as_trained(model, config)


def first_few(names: list[str]) -> str:
    if not names:
        return "none"
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def as_trained(model: SiameseNet, config: Config) -> SiameseNet:
    """Eval mode in the memory layout it was trained in: under bf16 autocast, oneDNN picks different kernels
    for NCHW and channels_last weights, which round differently, so scores would shift in the 6th digit."""
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()

"""Loading and checking a search space: a preset by name, a user's `module:SPACE` / `file.py:SPACE`, a space
written as JSON data (`space.json`, also what an experiment records of a space given to ts.search as a Python
object), its keys and starting points against Config, and every value it can give a trial checked by Config's
rules before Ray starts. The presets themselves are plain data (search_spaces)."""
from __future__ import annotations

import importlib
import json
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search import sample

from search_spaces import PRESETS, Preset
from tune_siamese.core import storage
from tune_siamese.core.config import DATA_FIELDS, Config
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import SPACE_FILE, SPACE_IN_EXPERIMENT
from tune_siamese.searching.owners import space_source


def _validate(preset: Preset, source: str) -> Preset:
    known = set(Config().to_dict())
    for where, keys in (("space", preset.space), ("fixed", preset.fixed),
                        *((f"point {i + 1}", p) for i, p in enumerate(preset.points))):
        unknown = sorted(set(keys) - known)
        if unknown:
            raise InputError(f"search space {source}: {where} names unknown option(s) {', '.join(unknown)}")
    # The data are read once and shared by every trial: a trial given another data setting would train on data
    # that its config does not describe.
    searched_data = [key for key in preset.space if key in DATA_FIELDS]
    if searched_data:
        raise InputError(f"search space {source}: space searches data setting(s) {', '.join(searched_data)}, which "
                         "the whole search shares (the data are read once); fix them with `fixed` or --set")
    for i, point in enumerate(preset.points):
        missing = sorted(set(preset.space) - set(point))
        if missing:
            raise InputError(f"search space {source}: point {i + 1} lacks {', '.join(missing)}")
    return preset


def space_values(domain: Any) -> list[tuple[Any, str]]:
    """The values of one space entry worth checking, each with a word on where it comes from: every choice,
    both ends of a range (a randint's upper end is exclusive), or the constant itself."""
    if isinstance(domain, sample.Categorical):
        return [(value, "a choice") for value in domain.categories]
    if isinstance(domain, sample.Integer):
        return [(domain.lower, "the range's lower end"), (domain.upper - 1, "the range's upper end")]
    if isinstance(domain, sample.Float):
        return [(domain.lower, "the range's lower end"), (domain.upper, "the range's upper end")]
    if isinstance(domain, sample.Domain):
        raise InputError(f"a {domain.__class__.__name__} space entry cannot be checked before the search; use "
                         "tune.choice, tune.uniform, tune.loguniform, tune.randint or their q-forms")
    return [(domain, "a fixed value")]


def check_values(preset: Preset, base: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Every value the space can produce (each choice, each range's ends) and every starting point, each
    applied to `base` and checked by Config's rules, so that no trial fails on a value known in advance.
    Returns those configs (as dicts) for checks that need more than Config (devices, compile backends)."""
    checked = []
    for key, domain in preset.space.items():
        try:
            values = space_values(domain)
        except InputError as exc:
            raise InputError(f"search space {source}: {key}: {exc}") from None
        for value, where in values:
            values_of_trial = {**base, key: value}
            Config.from_dict(values_of_trial, source=f"search space {source}: {key}={value!r} ({where})")
            checked.append(values_of_trial)
    for i, point in enumerate(preset.points):
        values_of_trial = {**base, **point}
        Config.from_dict(values_of_trial, source=f"search space {source}: point {i + 1}")
        checked.append(values_of_trial)
    return checked or [dict(base)]


def without(preset: Preset, keys: list[str]) -> Preset:
    """The preset with `keys` taken out of its space and its starting points (--set fixes them); points that
    then coincide are kept once."""
    points: list[dict[str, Any]] = []
    for point in preset.points:
        kept = {key: value for key, value in point.items() if key not in keys}
        if kept not in points:
            points.append(kept)
    return replace(preset, space={key: domain for key, domain in preset.space.items() if key not in keys},
                   points=points)


def _split(name: str) -> tuple[str, str]:
    """(module or file, attribute) of a user's space: `module:ATTR`, `file.py:ATTR` or `file.py` (SPACE)."""
    target, _, attr = name.partition(":") if ":" in name else (name, ":", "SPACE")
    return target, attr or "SPACE"


def space_file(name: str) -> Path | None:
    """The Python file a --space value imports (`file.py:ATTR`), or None (a preset or a module)."""
    target = _split(name)[0]
    return Path(target) if name not in PRESETS and target.endswith(".py") else None


def get_preset(name: str, experiment: str = "", option: str = "--space") -> Preset:
    """A preset by name, a user's space given as `module:ATTR`, `file.py:ATTR` or `file.py` (SPACE), or a JSON
    file of space data (SPACE_IN_EXPERIMENT: the one recorded in `experiment`). A `file.py` is run from its source
    only, and only when it and its folder are this user's alone (owners.space_source); `option` names the option
    that loads it, for messages."""
    if name in PRESETS:
        return PRESETS[name]
    if name.endswith(".json"):
        return _json_preset(name, experiment)
    if ":" not in name and not name.endswith(".py"):
        raise InputError(f"option --space: unknown preset {name!r}; available: {', '.join(PRESETS)} "
                         "(or module:SPACE, file.py:SPACE or space.json)")
    target, attr = _split(name)
    try:
        path = space_file(name)
        if path is not None:
            if not path.is_file():
                raise InputError("search-space file not found", path)
            module = _run_source(path, option)
        else:
            module = importlib.import_module(target)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import
        raise InputError(f"option --space: cannot import {target!r} ({exc.__class__.__name__}: {exc})") from None
    value = getattr(module, attr, None)
    if isinstance(value, Preset):
        return _validate(value, name)
    if isinstance(value, dict):
        return _validate(Preset(space=value), name)
    raise InputError(f"option --space: {target!r} has no dict or Preset named {attr}")


def _run_source(path: Path, option: str) -> types.ModuleType:
    """The module a space file's source makes, compiled and run here rather than imported: an import would run a
    cached `__pycache__/NAME.cpython-*.pyc` whose header matches the source, and write one."""
    source = space_source(path, option)
    module = types.ModuleType(path.stem)
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec", dont_inherit=True), module.__dict__)  # as an import runs it
    return module


# ------------------------------------------------------------------------------------------------------
# A space as data: what an experiment records of a space given to ts.search as a Python object (no pickle), and
# what `--space FILE.json` reads. Each searched key maps to {"DISTRIBUTION": [arguments]}, named and ordered as
# Ray Tune's functions (tune.loguniform(1e-4, 1e-2) is {"loguniform": [1e-4, 1e-2]}); any other value is fixed.



def domain_data(domain: Any, key: str) -> Any:
    """One space entry as JSON data; InputError for what data cannot say (tune.sample_from, grid_search)."""
    if isinstance(domain, sample.Categorical):
        return {"choice": list(domain.categories)}
    if isinstance(domain, (sample.Float, sample.Integer)):
        sampler = domain.get_sampler()
        q = sampler.q if isinstance(sampler, sample.Quantized) else None
        inner = sampler.sampler if isinstance(sampler, sample.Quantized) else sampler
        kind = type(inner).__name__  # _Uniform, _LogUniform, _Normal
        integer = isinstance(domain, sample.Integer)
        if isinstance(inner, sample.Float._Normal):
            name, args = "randn", [inner.mean, inner.sd]
        else:
            name = {"_Uniform": "randint" if integer else "uniform",
                    "_LogUniform": "lograndint" if integer else "loguniform"}[kind]
            args = [domain.lower, domain.upper]
        return {f"q{name}" if q is not None else name: [*args, q] if q is not None else args}
    if isinstance(domain, sample.Domain) or (isinstance(domain, dict) and "grid_search" in domain):
        raise InputError(f"space entry {key}: a {type(domain).__name__} cannot be recorded as data; use "
                         "tune.choice, tune.uniform, tune.loguniform, tune.randint or their q-forms")
    return domain


DISTRIBUTIONS = ("choice", "uniform", "loguniform", "quniform", "qloguniform", "randn", "qrandn", "randint",
                 "lograndint", "qrandint", "qlograndint")


def domain_from_data(value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS or not isinstance(next(iter(value.values())), list):
        raise InputError(f"space entry {key}: {json.dumps(value)[:200]} is not one of "
                         f"{{DISTRIBUTION: [arguments]}} with a distribution of {', '.join(DISTRIBUTIONS)}")
    name, args = next(iter(value.items()))
    try:
        return tune.choice(args) if name == "choice" else getattr(tune, name)(*args)
    except (TypeError, ValueError) as exc:
        raise InputError(f"space entry {key}: tune.{name}{tuple(args)} is refused ({exc})") from None


def preset_data(preset: Preset) -> dict[str, Any]:
    """A preset as JSON-ready data (preset_from_data reads it back)."""
    data = {"space": {key: domain_data(domain, key) for key, domain in preset.space.items()},
            "points": preset.points, "fixed": preset.fixed, "option_defaults": preset.option_defaults,
            "doc": preset.doc}
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the space holds a value JSON cannot record ({exc})") from None
    return data


def preset_from_data(data: Any, source: str) -> Preset:
    if not isinstance(data, dict) or not isinstance(data.get("space"), dict):
        raise InputError("not a search space: a JSON object with a \"space\" object is expected", source)
    unknown = sorted(set(data) - {"space", "points", "fixed", "option_defaults", "doc"})
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)}", source)
    try:
        space = {key: domain_from_data(value, key) for key, value in data["space"].items()}
    except InputError as exc:
        raise InputError(str(exc), source) from None
    preset = Preset(space=space, points=list(data.get("points", [])), fixed=dict(data.get("fixed", {})),
                    option_defaults=dict(data.get("option_defaults", {})), doc=str(data.get("doc", "")))
    return _validate(preset, source)


def as_preset(space: Any, source: str) -> Preset:
    """A space given as a Python object (a dict of Ray Tune distributions or a Preset), checked and known to
    survive the round trip through data (the experiment records it so)."""
    if isinstance(space, dict):
        space = Preset(space=space)
    if not isinstance(space, Preset):
        raise InputError(f"{source} must be a preset name, \"module:SPACE\", \"file.py:SPACE\", a .json file, a "
                         f"dict of Ray Tune distributions or a search_spaces.Preset, not {type(space).__name__}")
    _validate(space, source)
    try:
        data = preset_data(space)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    return preset_from_data(data, source)


def _json_preset(name: str, experiment: str) -> Preset:
    where = storage.child(experiment, SPACE_FILE) if name == SPACE_IN_EXPERIMENT else name
    text = storage.read_text(where)
    if text is None:
        raise InputError("search-space file not found", where)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg})", where, exc.lineno) from None
    return preset_from_data(data, where)


def write_space_data(preset: Preset, experiment: str) -> None:
    """Record a space given as a Python object in the experiment, for --resume and the record."""
    storage.write_text(storage.child(experiment, SPACE_FILE), json.dumps(preset_data(preset), indent=2) + "\n")

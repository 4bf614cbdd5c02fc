"""Loading and checking a search space: a preset by name or a user's `module:SPACE` / `file.py:SPACE`, its keys
and starting points against Config, and every value it can give a trial checked by Config's rules before Ray
starts. The presets themselves are plain data (search_spaces)."""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray.tune.search import sample

from search_spaces import PRESETS, Preset
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError


def _validate(preset: Preset, source: str) -> Preset:
    known = set(Config().to_dict())
    for where, keys in (("space", preset.space), ("fixed", preset.fixed),
                        *((f"point {i + 1}", p) for i, p in enumerate(preset.points))):
        unknown = sorted(set(keys) - known)
        if unknown:
            raise InputError(f"search space {source}: {where} names unknown option(s) {', '.join(unknown)}")
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


def get_preset(name: str) -> Preset:
    """A preset by name, or a user's space given as `module:ATTR`, `file.py:ATTR` or `file.py` (SPACE)."""
    if name in PRESETS:
        return PRESETS[name]
    if ":" not in name and not name.endswith(".py"):
        raise InputError(f"option --space: unknown preset {name!r}; available: {', '.join(PRESETS)} "
                         "(or module:SPACE, or file.py:SPACE)")
    target, attr = _split(name)
    try:
        path = space_file(name)
        if path is not None:
            if not path.is_file():
                raise InputError("search-space file not found", path)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
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

"""The Python API, for notebooks and scripts:

    import tune_siamese as ts
    result = ts.search(data="../shared/data/lfw-a", space="best", num_samples=32, name="lfw")
    result.best_config, result.test, result.experiment, result.export
    ts.load(result.export).score("a.jpg", "b.jpg")

`search` takes run_search.py's options as keyword arguments (the long name with `_` for `-`), declared once in
searching.options: each value is checked against its option's type and choices (a one-line InputError), then the
command's own checks apply, and the experiment records the command line that reruns it. It prints nothing unless
console=True; warnings about the result go to `warnings`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from tune_siamese.core.errors import InputError
from tune_siamese.searching.options import SearchOptions, declared, from_values, option_fields, value_type


@dataclass(frozen=True)
class SearchResult:
    """What a finished search hands back; `summary` is final.json."""

    summary: dict[str, Any]
    experiment: str
    command: str  # the equivalent command line, e.g. to resume: add --resume EXPERIMENT
    model: Any = None  # the model handed back, in memory (None: --no-retrain or no usable trial)

    @property
    def best_config(self) -> dict[str, Any]:
        return dict(self.summary.get("best_config", {}))

    @property
    def test(self) -> dict[str, Any] | None:
        """Test scores of the model handed back (None: --no-retrain, or no usable trial)."""
        return self.summary.get("test")

    @property
    def export(self) -> str | None:
        return self.summary.get("export")

    @property
    def warnings(self) -> list[str]:
        from tune_siamese.app.console import summary_warnings

        return summary_warnings(self.summary)

    @property
    def usable(self) -> bool:
        """False when every trial diverged or errored (summary["no_usable_trial"] says why)."""
        return "no_usable_trial" not in self.summary


def search_options(keywords: dict[str, Any]) -> SearchOptions:
    """The options of ts.search's keyword arguments (run_search.py's, with _ for -), each value checked against its
    option's declaration; they record the command line that gives them. None leaves an option at its default."""
    fields = {f.name: f for f in option_fields()}
    values: dict[str, Any] = {}
    for key, value in keywords.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise InputError(f"ts.search() has no option {key!r}{hint} (its options are run_search.py's, "
                             "with _ for -)")
        if value is not None:
            values[key] = _checked(fields[key], value)
    return from_values(values)


# What a value of each type must be, said in the error
_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "True or False"}


def _checked(field: dataclasses.Field[Any], value: Any) -> Any:
    """`value` as the option's type; one-line InputError naming the option when it is not one."""
    option, of = declared(field), value_type(field)
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)  # True is an int to Python

    def refused(must: str) -> InputError:
        return InputError(f"ts.search() option {field.name}={value!r} must be {must}")

    if option.kind == "count":
        if whole and value >= 0:
            return int(value)
        raise refused("a whole number >= 0 (how many times the flag is given)")
    if option.kind == "repeatable":  # --set: a dict, or "KEY=VALUE" strings
        items = [f"{k}={_text(v)}" for k, v in value.items()] if isinstance(value, dict) else value
        if isinstance(items, (list, tuple)) and all(isinstance(item, str) for item in items):
            return tuple(items)
        raise refused('a dict or a list of "KEY=VALUE" strings')
    if of is bool and isinstance(value, bool):
        typed: Any = value
    elif of is int and whole:
        typed = int(value)
    elif of is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        typed = float(value)
    elif of is str and isinstance(value, (str, os.PathLike)):
        typed = os.fspath(value)
    else:
        raise refused(_TYPE_WORDS[of])
    if option.choices is not None and typed not in option.choices:
        raise refused(f"one of {', '.join(option.choices)}")
    return typed


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@contextlib.contextmanager
def _silenced(silent: bool) -> Iterator[None]:
    """Swallow stdout (the live table, the summary; Ray forwards workers' lines there too), keep stderr."""
    if not silent:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def search(*, console: bool = False, **options: Any) -> SearchResult:
    """Run a search as `python run_search.py --OPTION VALUE ...` does and return what it hands back.

    Bad input raises InputError before Ray starts; Ctrl-C raises SearchInterrupted (a KeyboardInterrupt whose
    message says how to resume: ts.search(resume=EXPERIMENT)). console=True prints what the command prints."""
    from tune_siamese.app.search_command import run

    if not console and "quiet" not in options and "verbose" not in options:
        options = {**options, "quiet": True}  # no live table: it would be swallowed anyway
    args = search_options(options)
    with _silenced(not console):
        summary, model = run(args)
    result = SearchResult(summary, summary["experiment"], args.command, model)
    if not console:
        for line in result.warnings:
            warnings.warn(line.removeprefix("WARNING: "), UserWarning, stacklevel=2)
    return result


def search_settings(**options: Any) -> tuple[Any, Any]:
    """(SearchSettings, Preset) that ts.search(**options) would run with, every option checked and nothing
    started: for benchmarks and tools that build their own Tuner (searching.tuner.tuner_for)."""
    from tune_siamese.searching.preflight import check_search
    from tune_siamese.searching.settings import settings_for

    given = search_options(options)
    settings, preset = settings_for(given)
    check_search(given, settings, preset)
    return settings, preset


def load(source: str) -> Any:
    """A FaceVerifier from an export folder, a storage URI or a checkpoint: .score(a, b), .verify(a, b)."""
    from tune_siamese.artifacts.verifier import FaceVerifier

    return FaceVerifier(source)

"""The Python API's keywords, made from the options' one declaration (searching.options): each value checked
against its option's type and choices, and the signatures and docstrings that help(), inspect.signature and
Jupyter's completion show."""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import numbers
import os
import re
from typing import Any, Callable

from tune_siamese.core.errors import InputError
from tune_siamese.core.names import SPACE_IN_EXPERIMENT
from tune_siamese.searching.options import (
    SearchOptions,
    annotation,
    declared,
    from_values,
    option_fields,
    resumable,
    value_type,
)


def search_options(keywords: dict[str, Any]) -> SearchOptions:
    """The options of ts.search's keyword arguments (run_search.py's, with _ for -), each value checked against its
    option's declaration; they record the command line that gives them. None leaves an option at its default."""
    fields = {f.name: f for f in option_fields()}
    values: dict[str, Any] = {}
    space_object = None
    for key, value in keywords.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise InputError(f"ts.search() has no option {key!r}{hint} (help(ts.search) lists them)")
        if key == "space" and value is not None and not isinstance(value, (str, os.PathLike)):
            space_object, value = value, SPACE_IN_EXPERIMENT  # recorded in the experiment as data
        if value is not None:
            values[key] = _checked(fields[key], value)
    return from_values(values, space_object)


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
    if option.kind == "repeatable":  # set: a dict, or "KEY=VALUE" strings
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


_API_KEYWORDS = [
    inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=bool),
    inspect.Parameter("console", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool),
]
_API_DOCS = ["progress: one progress line (trials ended / running, best val loss, elapsed, time left); False: "
             "none", "console: print what run_search.py prints (the live table, Ray's lines) instead"]


def _annotation(f: dataclasses.Field[Any]) -> Any:
    if f.name == "space":
        return "str | dict[str, Any] | search_spaces.Preset"
    if f.name == "set":
        return "dict[str, Any] | list[str]"
    return annotation(f)


SPACE_HELP = ("a preset's name (search_spaces.PRESETS), 'module:SPACE', 'file.py:SPACE', a space .json file, a dict "
              "of Ray Tune distributions or a search_spaces.Preset (a Python object is recorded in the experiment "
              "as data, so ts.resume needs nothing else)")


def _one_line(f: dataclasses.Field[Any]) -> str:
    """The option's help as one line, its default said once."""
    if f.name == "space":
        return f"space: {SPACE_HELP} (default: {f.default!r})"
    text = re.sub(r"\s*\(default: %\(default\)s\)", "", declared(f).help).replace("%(default)s", repr(f.default))
    default = "" if "default" in text or "preset's" in text else f" (default: {f.default!r})"
    return f"{f.name}: {text.replace('%%', '%')}{default}"


def _declared_parameters(only: Callable[[dataclasses.Field[Any]], bool]) -> list[inspect.Parameter]:
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=_annotation(f))
            for f in option_fields() if only(f)]


SEARCH_DOC = """Run a search as `python run_search.py --OPTION VALUE ...` does and return what it hands back.

Every option is a keyword, run_search.py's long name with _ for -; None (or leaving it out) keeps its default.

Args:
    {options}

Returns:
    A SearchResult: best_params, best_config, test (the final model's test scores), export, experiment, model,
    analysis (the experiment as DataFrames), warnings.

Raises:
    InputError: a bad option or input (one line naming it), before Ray starts.
    SearchInterrupted: Ctrl-C or SIGTERM; the experiment resumes with ts.resume(error.experiment).

Example:
    >>> import tune_siamese as ts
    >>> result = ts.search(space="smoke", num_samples=4, name="demo")
    >>> result.best_params, result.test["auc"]
"""

RESUME_DOC = """Continue an interrupted search where it stopped; finished trials are not run again.

Only the options that act on this run may be given (those that shape the search are the experiment's own), and
num_samples above the experiment's own, which grows the search, also a finished one: the missing trials run in the
same study, and the earlier final model is kept beside the new one (final-n<trials>.json, export-n<trials>).

Args:
    experiment: the experiment folder or URI.
    {options}

Returns:
    A SearchResult, as ts.search.

Raises:
    InputError: no experiment there, an option that shapes the search, or num_samples not above its own.
    SearchInterrupted: interrupted again.

Example:
    >>> result = ts.resume("ray_results/siamese-quick-20261207-101500")
    >>> grown = ts.resume("ray_results/siamese-quick-20261207-101500", num_samples=48)
"""


def document(search: Callable[..., Any], resume: Callable[..., Any], returns: type) -> None:
    """Give ts.search every option as a keyword, and ts.resume the options that act on one run or grow the
    search."""
    every = _declared_parameters(lambda f: True)
    search.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*every, *_API_KEYWORDS], return_annotation=returns)
    search.__doc__ = SEARCH_DOC.format(options="\n    ".join(
        [*(_one_line(f) for f in option_fields()), *_API_DOCS]))
    per_run = [f for f in option_fields() if resumable(f) and f.name != "resume"]
    resume.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("experiment", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str | os.PathLike"),
         *_declared_parameters(lambda f: f in per_run), *_API_KEYWORDS], return_annotation=returns)
    resume.__doc__ = RESUME_DOC.format(options="\n    ".join([*(_one_line(f) for f in per_run), *_API_DOCS]))

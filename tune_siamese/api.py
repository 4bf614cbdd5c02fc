"""The Python API, for notebooks and scripts:

    import tune_siamese as ts
    result = ts.search(data="../shared/data/lfw-a", space="best", num_samples=32, name="lfw")
    result.best_config, result.test, result.experiment, result.export
    ts.load(result.export).score("a.jpg", "b.jpg")

`search` takes run_search.py's options as keyword arguments (the long name with `_` for `-`) and turns them into
that command line, so the same parser, checks and one-line InputErrors apply, and the experiment records a
command that reruns it. It prints nothing unless console=True; warnings about the result go to `warnings`.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import InputError


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
        from .console import summary_warnings

        return summary_warnings(self.summary)

    @property
    def usable(self) -> bool:
        """False when every trial diverged or errored (summary["no_usable_trial"] says why)."""
        return "no_usable_trial" not in self.summary


def _long_flag(action: argparse.Action) -> str:
    return next(flag for flag in action.option_strings if flag.startswith("--"))  # --reproducible, not --no-...


def options_to_argv(options: dict[str, Any]) -> list[str]:
    """run_search.py's command line for keyword options; an unknown name is an InputError (with a suggestion)."""
    from .search_command import build_parser

    actions = {a.dest: a for a in build_parser()._actions if a.option_strings and a.dest != "help"}
    argv: list[str] = []
    for key, value in options.items():
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(key, list(actions), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise InputError(f"ts.search() has no option {key!r}{hint} (its options are run_search.py's, "
                             "with _ for -)")
        flag = _long_flag(action)
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if _flag_value(key, value) else f"--no-{flag[2:]}")
        elif isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if _flag_value(key, value) else []
        elif isinstance(action, argparse._CountAction):
            argv += [flag] * int(value)
        elif isinstance(action, argparse._AppendAction):  # --set: a dict, or "KEY=VALUE" strings
            items = [f"{k}={_text(v)}" for k, v in value.items()] if isinstance(value, dict) else list(value)
            for item in items:
                argv += [flag, str(item)]
        else:
            argv += [flag, _text(value)]
    return argv


def _flag_value(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"ts.search() option {key}={value!r} must be True or False")
    return value


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
    from .search_command import command_to_rerun, parse_args, run

    argv = options_to_argv(options)
    if not console and "quiet" not in options and "verbose" not in options:
        argv.append("--quiet")  # no live table: it would be swallowed anyway
    args = parse_args(argv, prog="run_search.py")
    with _silenced(not console):
        summary, model = run(args)
    result = SearchResult(summary, summary["experiment"], " ".join([command_to_rerun("run_search.py"), *argv]), model)
    if not console:
        for line in result.warnings:
            warnings.warn(line.removeprefix("WARNING: "), UserWarning, stacklevel=2)
    return result


def search_settings(**options: Any) -> tuple[Any, Any]:
    """(SearchSettings, Preset) that ts.search(**options) would run with, every option checked and nothing
    started: for benchmarks and tools that build their own Tuner (tuning.tuner_for)."""
    from .preflight import check_search
    from .search_command import parse_args
    from .settings import settings_for

    parsed = parse_args(options_to_argv(options), prog="run_search.py")
    settings, preset = settings_for(parsed)
    check_search(parsed, settings, preset)
    return settings, preset


def load(source: str) -> Any:
    """A FaceVerifier from an export folder, a storage URI or a checkpoint: .score(a, b), .verify(a, b)."""
    from .face_verifier import FaceVerifier

    return FaceVerifier(source)

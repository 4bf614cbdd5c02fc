"""The Python API, for notebooks and scripts:

    import tune_siamese as ts
    result = ts.search(data="../shared/data/lfw-a", space="best", num_samples=32, name="lfw")
    result.best_params, result.test, result.experiment, result.export
    ts.load(result.experiment).score_pairs([("a.jpg", "b.jpg"), ...])

`search`'s keywords are run_search.py's options (the long name with `_` for `-`), made from their one declaration
(searching.options) into its signature and docstring: `help(ts.search)` lists them and Jupyter completes them. Each
value is checked against its option's type and choices (a one-line InputError), then the command's own checks
apply, and the experiment records the command line that reruns it. It shows one progress line (a notebook output
or a terminal line updated in place) and nothing of Ray's unless verbose; warnings about the result are Python
warnings.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any, Iterator

from tune_siamese.app.keywords import document, search_options
from tune_siamese.app.live_line import LiveLine
from tune_siamese.app.result import SearchResult
from tune_siamese.core import progress as progress_module
from tune_siamese.core import storage
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import SPACE_FILE, counted

if TYPE_CHECKING:
    from tune_siamese.artifacts.verifier import FaceVerifier

__all__ = ["SearchResult", "finalize", "load", "resume", "search", "search_settings"]

@contextlib.contextmanager
def _call_console(console: bool, show_progress: bool) -> Iterator[None]:
    """What a call shows: with console=True what the command prints; else one progress line (show_progress),
    stdout swallowed (the live table, the summary) and the warnings no user can act on silenced."""
    if console:
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(warnings.catch_warnings())
        _quiet_warnings()
        # Ray's hint to install ipywidgets, logged when it is first imported in a notebook
        widgets = logging.getLogger("ray.widgets.util")
        stack.callback(widgets.setLevel, widgets.level)
        widgets.setLevel(logging.WARNING)
        # MLflow's download bars, when a search logs to MLflow (its documented switch)
        stack.enter_context(_environ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"))
        display = stack.enter_context(LiveLine()) if show_progress else (lambda line: None)
        token = progress_module.display.set(display)
        stack.callback(progress_module.display.reset, token)
        yield


def _quiet_warnings() -> None:
    """Warnings of libraries under the search that say nothing a user of this API can act on."""
    warnings.filterwarnings("ignore", message=r"IProgress not found")  # tqdm.auto in a kernel without ipywidgets
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(sqlalchemy|optuna|ray|mlflow)\b")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(ray|mlflow)\b")
    with contextlib.suppress(ImportError):
        from tqdm import TqdmWarning

        warnings.filterwarnings("ignore", category=TqdmWarning)


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _search(progress: bool, console: bool, options: dict[str, Any]) -> SearchResult:
    from tune_siamese.app.search_command import run

    args = search_options(options)
    command = args.command
    if not console and not args.verbose:
        args = dataclasses.replace(args, quiet=True)  # no live table (the progress line says it), not recorded
    with _call_console(console, progress):
        progress_module.report("Checking the options and the space ...", live=True)  # Ray and torch load first
        summary, model = run(args, ray_logs=console or bool(args.verbose))
        progress_module.report(_done_line(summary))
    if args.space_object is not None:  # the command that reruns it names the space the experiment recorded
        command = args.naming_space_file(storage.child(summary["experiment"], SPACE_FILE)).command
    result = SearchResult(summary, summary["experiment"], command, model)
    if not console:
        for line in result.warnings:
            warnings.warn(line.removeprefix("WARNING: "), UserWarning, stacklevel=3)
    return result


def _done_line(summary: dict[str, Any]) -> str:
    """The progress line's last word: what the search handed back, and where."""
    if "no_usable_trial" in summary:
        return f"[done] no usable trial: {summary['no_usable_trial']}"
    auc = (summary.get("test") or {}).get("auc")
    tested = f", test AUC {auc:.3f}" if isinstance(auc, float) else ""
    where = f"; exported to {summary['export']}" if summary.get("export") else ""
    loss = summary.get("best_val_loss", float("nan"))
    return f"[done] {counted(summary.get('trials', 0), 'trial')}, best val loss {loss:.4f}{tested}{where}"


def search(*, progress: bool = True, console: bool = False, **options: Any) -> SearchResult:
    # The signature and docstring are made below, from the options' declaration.
    return _search(progress, console, options)


def resume(experiment: str | os.PathLike[str], *, progress: bool = True, console: bool = False,
           **options: Any) -> SearchResult:
    return _search(progress, console, {**options, "resume": experiment})


def finalize(experiment: str | os.PathLike[str], final: str, *, final_size: int | None = None,
             pick: str | None = None, address: str | None = None, connect_timeout: float = 30.0,
             progress: bool = True, console: bool = False) -> SearchResult:
    """Build, test and export another final model of a finished search, beside what the search handed back
    (`tune-siamese finalize`); final.json and export/ are never written over.

    Args:
        experiment: the search's experiment folder or URI.
        final: retrain, trial, seeds or folds (see ts.search's `final`).
        final_size: members of a seeds or folds model (default 3).
        pick: which trial's configuration: best, or smallest-within=D (default: the search's own rule).
        address: the Ray cluster to join (default: a new local Ray, shut down when this returns).
        connect_timeout: seconds to wait for the cluster.
        progress: show the progress line.
        console: print what the command prints instead.

    Returns:
        A SearchResult whose summary is the new final-NAME.json ("record" says where it is).

    Raises:
        InputError: a bad value, an unfinished search, or a final model of that name already there.

    Example:
        >>> other = ts.finalize("ray_results/lfw", "seeds", final_size=5)
        >>> other.test["auc"]
    """
    from tune_siamese.core.names import FINAL_POLICIES
    from tune_siamese.final.finalize import finalize as finalize_search

    if final not in FINAL_POLICIES:
        raise InputError(f"ts.finalize() final={final!r} must be one of {', '.join(FINAL_POLICIES)}")
    words = ["tune-siamese", "finalize", os.fspath(experiment), "--final", final]
    words += ["--final-size", str(final_size)] * (final_size is not None) + ["--pick", str(pick)] * (pick is not None)
    with _call_console(console, progress):
        summary = finalize_search(os.fspath(experiment), final, final_size, address, connect_timeout, pick,
                                  ray_logs=console)
    return SearchResult(summary, str(summary.get("experiment", os.fspath(experiment))), " ".join(words))


def search_settings(**options: Any) -> tuple[Any, Any]:
    """(SearchSettings, Preset) that ts.search(**options) would run with, every option checked and nothing
    started: for benchmarks and tools that build their own Tuner (searching.tuner.tuner_for)."""
    from tune_siamese.searching.preflight import check_search
    from tune_siamese.searching.settings import settings_for

    given = search_options(options)
    settings, preset = settings_for(given)
    check_search(given, settings, preset)
    return settings, preset


def load(source: str | os.PathLike[str]) -> FaceVerifier:
    """A face verifier from an export folder, an experiment (its export), a storage URI or a checkpoint file.

    Args:
        source: what to load; an export is checked against its SHA256SUMS before anything is read.

    Returns:
        A FaceVerifier: score(a, b), score_pairs(pairs), verify(a, b), embed(images), identify(probes, gallery).

    Raises:
        InputError: nothing loadable there, or an export that fails its checks.

    Example:
        >>> verifier = ts.load("ray_results/lfw")
        >>> verifier.score_pairs([("a.jpg", "b.jpg")])
    """
    from tune_siamese.artifacts.verifier import FaceVerifier

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verifier = FaceVerifier(os.fspath(source))
    for warned in caught:  # pointed at the caller's line, not this one
        warnings.warn(warned.message, warned.category, stacklevel=2)
    return verifier


# The signatures and docstrings, made from the options' declaration (keywords)

document(search, resume, SearchResult)

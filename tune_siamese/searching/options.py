"""What a user asked a search for: one typed field per option of run_search.py (and keyword of ts.search), each
declared once, here: its type (the annotation), its default, and with `option(...)` what --help says of it (help
text, group, metavar, choices, short flag) and how a value is given (its kind). The command line
(search_command.build_parser) and ts.search's keywords (api) are made from this declaration. The values are
checked on their own before any preset, file or Ray is looked at.

An option declared with `preset_or(FALLBACK, ...)` has the default None: the preset's value, else FALLBACK
(settings.resolve does that). Options marked `per_run` act on one invocation only (where to connect, what to print,
what to do after the search); every other option shapes the search, which `--resume` takes from the experiment, so
giving one there is refused, except one marked `grows` (--num-samples), which --resume takes only above the
experiment's own value: it grows the search (settings.grown).

Imports nothing heavy: --help and a usage error stay quick.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from tune_siamese.core.errors import InputError
from tune_siamese.core.names import FINAL_POLICIES, RUNG_METRICS, SCHEDULERS, SEARCHERS

# How a value is given: --opt VALUE; --opt (True); -v -v (a count); --opt A --opt B (a tuple); --opt / --no-opt
Kind = Literal["value", "flag", "count", "repeatable", "boolean-optional"]


@dataclass(frozen=True)
class Option:
    """An option's declaration besides its name, type and default (the field's)."""

    group: str  # its group in --help
    help: str  # argparse's: %(default)s is the default
    kind: Kind = "value"
    metavar: str | None = None  # None: argparse's (the choices, or the name in capitals)
    choices: tuple[str, ...] | None = None
    short: str | None = None  # a one-letter flag besides the long one: -v
    per_run: bool = False  # acts on this invocation only: allowed with --resume
    fallback: Any = None  # preset_or's: what the option takes when neither the user nor the preset gives one
    grows: bool = False  # shapes the search, yet --resume takes a value above the experiment's: it grows the search


def option(default: Any, group: str, help: str, *, kind: Kind = "value", metavar: str | None = None,
           choices: Sequence[str] | None = None, short: str | None = None, per_run: bool = False,
           fallback: Any = None, grows: bool = False) -> Any:
    """A SearchOptions field declaring an option."""
    declared = Option(group, help, kind, metavar, None if choices is None else tuple(choices), short, per_run,
                      fallback, grows)
    return field(default=default, metadata={"option": declared})


def preset_or(fallback: Any, group: str, help: str, **declared: Any) -> Any:
    """An option whose default is the preset's value, else `fallback` (its default is None: not given). "{preset}"
    in the help says so."""
    return option(None, group, help.replace("{preset}", preset_default(fallback)), fallback=fallback, **declared)


def preset_default(fallback: Any) -> str:
    return f"default: the preset's, else {fallback:g}" if isinstance(fallback, float) else (
        f"default: the preset's, else {fallback}")


# --help's groups, in its order
WHAT = "what to search"
SEARCHER = "searcher and early stopping (Optuna, ASHA)"
RESOURCES = "resources and cluster"
RESULTS = "where results go"
AFTER = "after the search: the model handed back"
CONSOLE = "console"


@dataclass(frozen=True)
class SearchOptions:
    """run_search.py's options, in --help's order."""

    data: str = option(
        "synthetic", WHAT, metavar="PATH",
        help="an LFW-a folder with its pair lists, an identity folder, 'lfw' (torchvision download) or 'synthetic' "
             "(default: %(default)s)")
    space: str = option(
        "quick", WHAT, metavar="SPACE",
        help="a preset (listed below), module:SPACE, file.py:SPACE or a space .json file (default: %(default)s)")
    set: tuple[str, ...] = option(
        (), WHAT, kind="repeatable", metavar="KEY=VALUE",
        help="fix a Config field for every trial, e.g. --set image_size=96 (repeatable; a key the space searches is "
             "then not searched); `tune-siamese config-fields` lists the fields")
    num_samples: int | None = preset_or(
        8, WHAT, metavar="N", grows=True,
        help="trials to run ({preset}); with --resume, more than the experiment asked for grows it to N trials in "
             "the same study")
    max_epochs: int | None = preset_or(20, WHAT, metavar="N", help="epochs per trial at most, ASHA's max_t ({preset})")
    seed: int = option(0, WHAT, metavar="N", help="seed of the searcher and of every trial (default: %(default)s)")
    name: str | None = option(None, WHAT, help="the experiment's folder in --storage-path: one folder name, not "
                                               "starting with '-' (default: siamese-<space>-<time>)")

    searcher: str | None = preset_or(
        "tpe", SEARCHER, choices=SEARCHERS,
        help="Optuna's sampler ({preset}): tpe (multivariate, constant liar for parallel trials), random, gp "
             "(Gaussian process; choices as unordered categories), cmaes (CMA-ES on the ranges only: choices are "
             "drawn at random; needs pip install cmaes), qmc (scrambled Sobol, seeded)")
    scheduler: str | None = option(
        None, SEARCHER, choices=SCHEDULERS,
        help="what stops trials early: asha (ASHA on --rung-metric), pasha (progressive ASHA: the top rung starts at "
             "the second and rises only while the trials' ranking there still changes), pareto (ASHA's rungs ranked by "
             "non-dominated sorting over --objectives), fifo (nothing) (default: the preset's, else pareto with "
             "several objectives, else asha)")
    grace_period: int | None = preset_or(2, SEARCHER, metavar="N",
                                         help="epochs before ASHA may stop a trial ({preset})")
    reduction_factor: float | None = preset_or(3.0, SEARCHER, metavar="X", help="ASHA's reduction factor ({preset})")
    rung_metric: str | None = preset_or(
        "last", SEARCHER, choices=tuple(RUNG_METRICS),
        help="what ASHA judges a trial by at each rung: last (this epoch's val loss), best (best so far) or avg3 "
             "(mean of the last 3 epochs') ({preset})")
    reproducible: bool | None = preset_or(
        False, SEARCHER, kind="boolean-optional",
        help="the same trials run to run on the same machine: suggestions in batches of --max-concurrent, each "
             "from finished batches only, and no early stopping (ASHA off) (default: the preset's, else off)")
    objectives: str | None = preset_or(
        "val_loss", SEARCHER, metavar="val_loss,OBJ",
        help="what the search minimises: val_loss, then any of params, flops, latency (ms per pair on the CPU, "
             "batch 1); several make a multi-objective search (TPE's multi-objective mode, or --searcher nsga2) "
             "whose rungs judge every objective (--scheduler pareto) ({preset})")
    warm_start: str | None = option(
        None, SEARCHER, metavar="EXP[,EXP...]",
        help="start the study from earlier experiments of the same test data: their trials that fit this space join "
             "it as they ended, and for another space their best configurations are the first trials (default: none)")
    max_failures: int = option(3, SEARCHER, metavar="N",
                               help="restarts of a failing trial before it errors (default: %(default)s)")

    cpus_per_trial: float = option(1.0, RESOURCES, metavar="X",
                                   help="CPUs per trial, also its torch threads (default: %(default)s)")
    gpus_per_trial: float = option(
        0.0, RESOURCES, metavar="X",
        help="GPUs per trial; fractions that divide one GPU (0.5, 0.25, ...) share it (default: %(default)s)")
    max_concurrent: int | None = option(None, RESOURCES, metavar="N",
                                        help="trials running at once (default: as many as the resources allow)")
    address: str | None = option(
        None, RESOURCES, per_run=True,
        help="Ray cluster to join: 'auto' (the one running on this node) or HEAD_IP:6379 (default: $RAY_ADDRESS "
             "when set, as in a Ray job; else a new local Ray)")
    connect_timeout: float = option(30.0, RESOURCES, metavar="SECONDS", per_run=True,
                                    help="give up joining a cluster after this long (default: %(default)s)")
    wait_for_resources: float = option(
        0.0, RESOURCES, metavar="SECONDS", per_run=True,
        help="let trials wait up to this long for nodes that fit them (nodes you add by hand); with an autoscaler "
             "they always wait for the nodes it can add (default: %(default)s, refuse at once)")
    dashboard: bool = option(False, RESOURCES, kind="flag", per_run=True,
                             help="start Ray's dashboard (bound to 127.0.0.1)")

    storage_path: str = option(
        "ray_results", RESULTS, metavar="PATH",
        help="where experiments go: a local folder, a shared filesystem or a URI (s3://bucket/path, gs://..., "
             "file:///...; S3 options in the query, e.g. ?endpoint_override=HOST:PORT) (default: %(default)s)")
    study_storage: str | None = option(
        None, RESULTS, metavar="URL",
        help="where the Optuna study lives: an SQLAlchemy URL (postgresql://..., sqlite:///...) or a journal file "
             "path, used as given (default: sqlite EXPERIMENT/optuna.db for a local storage path, found in the "
             "experiment folder wherever it moves; in memory for a URI)")
    mlflow: str | None = option(
        None, RESULTS, metavar="URI",
        help="also log the search to MLflow, an MLflow experiment named like the search: a tracking URI "
             "(http://HOST:5000, sqlite:///PATH/mlflow.db, file:///PATH/mlruns) or a folder (made an absolute "
             "file:// URI, so a resume or a Ray job logs to the same store). Needs pip install "
             '"tune-siamese[mlflow]" (default: none)')
    resume: str | None = option(
        None, RESULTS, metavar="EXPERIMENT", per_run=True,
        help="continue an interrupted experiment folder; finished trials are not run again (with --num-samples N "
             "above its own, a finished one runs the missing trials too)")

    final: str | None = preset_or(
        "retrain", AFTER, choices=FINAL_POLICIES,
        help="what the search hands back, built from the best configuration: retrain (one model on train + val, "
             "the best trial's epochs), trial (the best trial's own model), seeds (K retrains with seeds "
             "seed..seed+K-1, averaged), folds (K identity-disjoint folds of train + val, each model stopped early "
             "on its own fold, averaged) ({preset}); `tune-siamese finalize` builds another later")
    final_size: int | None = preset_or(
        3, AFTER, metavar="K",
        help="models in a seeds or folds final model, fitted side by side as Ray tasks sharing one retrain's CPUs "
             "and GPUs ({preset})")
    pick: str = option(
        "best", AFTER, metavar="RULE",
        help="which trial's configuration the final model is built from: best (lowest val loss) or "
             "smallest-within=D (the lowest second objective among the trials within D of the lowest val loss) "
             "(default: %(default)s)")
    finalists: int | None = preset_or(
        0, AFTER, metavar="K",
        help="before that, train the top K configurations again with --finalist-seeds fresh seeds each (Ray trials "
             "under EXPERIMENT/finalists) and hand back the one with the lowest mean best val loss ({preset}: off)")
    finalist_seeds: int | None = preset_or(0, AFTER, metavar="S",
                                           help="seeds per finalist, >= 1 with --finalists ({preset})")
    ensemble: int = option(
        0, AFTER, metavar="K", per_run=True,
        help="also test and export the mean of the top K trials' own models (K >= 2; exported to "
             "EXPERIMENT/export-ensemble, or EXPORT_DIR-ensemble) (default: %(default)s, off)")
    retrain_cpus: float = option(
        0.0, AFTER, metavar="X",
        help="CPUs of the final model's fits (default: what the search used at once, up to one node's)")
    retrain_gpus: float | None = option(
        None, AFTER, metavar="X",
        help="GPUs of the final model's fits, which run on a worker node (default: --gpus-per-trial)")
    export_dir: str | None = option(
        None, AFTER, metavar="PATH", per_run=True,
        help="also copy the export (EXPERIMENT/export) to this local folder (default: none)")
    no_retrain: bool = option(False, AFTER, kind="flag", per_run=True,
                              help="stop after the search: no finalists, final model, test or export")

    verbose: int = option(
        0, CONSOLE, kind="count", short="-v", per_run=True,
        help="more console: -v each trial's results and Optuna's log, -vv everything Tune prints")
    quiet: bool = option(False, CONSOLE, kind="flag", short="-q", per_run=True,
                         help="no live table: only the progress lines and the summary")

    # Not options: how the search was started, for the command recorded in the experiment and the resume hint.
    prog: str = "run_search.py"
    argv: tuple[str, ...] | None = None  # the words after prog; None: sys.argv's
    # A space given to ts.search as a Python object (a dict of Ray Tune distributions or a Preset); `space` then
    # says where the experiment records it as data (spaces.SPACE_IN_EXPERIMENT).
    space_object: Any = None
    # The options the user gave (command-line words or keywords), also those given at their default value, which
    # `--resume --space quick` is: --resume refuses every search-shaping one given. None (options made directly):
    # only a value other than the default counts as given.
    given: frozenset[str] | None = field(default=None, compare=False)

    def naming_space_file(self, path: str) -> SearchOptions:
        """These options with the command line naming the file the experiment recorded the space object in."""
        words = None if self.argv is None else tuple(path if word == self.space else word for word in self.argv)
        return dataclasses.replace(self, argv=words)

    @property
    def space_label(self) -> str:
        """The space as messages name it."""
        return "ts.search(space=...)" if self.space_object is not None else self.space

    @property
    def command(self) -> str:
        """The command line that started the search, as a user retypes it."""
        words = sys.argv[1:] if self.argv is None else list(self.argv)
        return " ".join([command_to_rerun(self.prog), shlex.join(words)]).strip()

    def command_words(self) -> list[str]:
        """The command-line words that give these options: each one that differs from its default, in --help's
        order."""
        words: list[str] = []
        for f in option_fields():
            value, kind, long = getattr(self, f.name), declared(f).kind, flag(f.name)
            if value == f.default:
                continue
            if kind == "flag":
                words.append(long)
            elif kind == "boolean-optional":
                words.append(long if value else f"--no-{long[2:]}")
            elif kind == "count":
                words += [long] * value
            elif kind == "repeatable":
                words += [word for item in value for word in (long, item)]
            else:
                words += [long, str(value)]
        return words

    def search_shaping_given(self) -> list[str]:
        """The options that shape the search and were given, even at their default value, or hold a value other
        than their default (refused with --resume; an option that `grows` the search is judged by its value there,
        settings.grown)."""
        given = self.given or frozenset()
        return [flag(f.name) for f in option_fields() if not resumable(f)
                and (f.name in given or getattr(self, f.name) != f.default)]

    def check(self) -> None:
        """Each value on its own (preset values and combinations are settings.resolve's)."""
        for name in ("num_samples", "max_epochs", "grace_period", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"option {flag(name)}={value} must be >= 1")
        for name in ("cpus_per_trial", "gpus_per_trial", "reduction_factor", "retrain_cpus", "retrain_gpus",
                     "connect_timeout", "wait_for_resources"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InputError(f"option {flag(name)}={value} must be a finite number")
        if self.cpus_per_trial <= 0:
            raise InputError(f"option --cpus-per-trial={self.cpus_per_trial} must be > 0")
        if self.reduction_factor is not None and self.reduction_factor <= 1:
            raise InputError(f"option --reduction-factor={self.reduction_factor} must be > 1")
        if self.max_failures < 0:
            raise InputError(f"option --max-failures={self.max_failures} must be >= 0 (restarts of a failing trial)")
        check_fraction(self.gpus_per_trial, "--gpus-per-trial")
        if self.retrain_gpus is not None:
            check_fraction(self.retrain_gpus, "--retrain-gpus")
        if self.retrain_cpus < 0:
            raise InputError(f"option --retrain-cpus={self.retrain_cpus} must be >= 0")
        if self.ensemble == 1 or self.ensemble < 0:
            raise InputError(f"option --ensemble={self.ensemble} must be 0 (off) or at least 2")
        if not self.connect_timeout > 0:
            raise InputError(f"option --connect-timeout={self.connect_timeout} must be > 0")
        if not self.wait_for_resources >= 0:
            raise InputError(f"option --wait-for-resources={self.wait_for_resources} must be >= 0")


# The functions below look SearchOptions up when called, so that a test can declare one more option in a subclass.

def option_fields() -> list[dataclasses.Field[Any]]:
    """The declared options, in --help's order."""
    return [f for f in dataclasses.fields(SearchOptions) if "option" in f.metadata]


def declared(f: dataclasses.Field[Any]) -> Option:
    declaration: Option = f.metadata["option"]
    return declaration


def resumable(f: dataclasses.Field[Any]) -> bool:
    """Whether --resume (and ts.resume) takes the option: one that acts on one run, or grows the search."""
    return declared(f).per_run or declared(f).grows


def annotation(f: dataclasses.Field[Any]) -> Any:
    """The option's type as declared: `int | None`, `tuple[str, ...]`."""
    return typing.get_type_hints(SearchOptions)[f.name]


def value_type(f: dataclasses.Field[Any]) -> type:
    """The type of one value of the option, from its annotation: int for `int | None`, str for `tuple[str, ...]`."""
    hint = annotation(f)
    args = [arg for arg in typing.get_args(hint) if arg not in (type(None), Ellipsis)]
    return args[0] if args else hint


def from_namespace(args: argparse.Namespace, prog: str, argv: Sequence[str] | None,
                   given: frozenset[str] | None = None) -> SearchOptions:
    """The options of a parsed command line; `argv` is that command line (None: sys.argv's), `given` the names of
    the options it gives."""
    values = {f.name: getattr(args, f.name) for f in option_fields()}
    values["set"] = tuple(values["set"])
    return SearchOptions(**values, prog=prog, argv=None if argv is None else tuple(str(a) for a in argv),
                         given=given)


def from_values(values: Mapping[str, Any], space_object: Any = None) -> SearchOptions:
    """The options given as typed values (ts.search's keywords, checked), recording the command line that gives
    them."""
    options = SearchOptions(**values, prog=API, space_object=space_object, given=frozenset(values))
    return dataclasses.replace(options, argv=tuple(options.command_words()))


# What an option left at None takes when the preset says nothing either
FALLBACKS = {f.name: declared(f).fallback for f in option_fields() if declared(f).fallback is not None}


def flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


API = "ts.search"  # the prog of a search started from Python


def command_to_rerun(prog: str) -> str:
    """The command a user types to run the search command again: `python run_search.py` or `tune-siamese search`
    (also the command line equivalent to a ts.search call)."""
    return "python run_search.py" if prog in ("run_search.py", API) else prog


def how_to_resume(prog: str, experiment: str) -> str:
    """What continues an interrupted search, in the form it was started in."""
    return f"ts.resume({experiment!r})" if prog == API else f"{command_to_rerun(prog)} --resume {experiment}"


def check_fraction(gpus: float, option: str) -> None:
    if gpus < 0:
        raise InputError(f"option {option}={gpus} must be >= 0")
    if 0 < gpus < 1 and not math.isclose(1 / gpus, round(1 / gpus), rel_tol=1e-6):
        raise InputError(f"option {option}={gpus} does not divide a GPU (use 1/2, 1/3, 1/4, ...)")
    if gpus > 1 and not float(gpus).is_integer():
        raise InputError(f"option {option}={gpus}: above 1 it must be a whole number of GPUs")

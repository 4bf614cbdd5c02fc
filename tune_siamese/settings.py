"""The search's settings: built from the command line and checked before any Ray work starts, saved in the
experiment folder, read back to resume. Everything a search writes to is tried for writes here too.

Heavy modules (Ray, torch, the presets) are imported where they are needed, so that `--help` stays quick.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import storage
from .cluster import resolve_address
from .config import Config, parse_overrides
from .errors import InputError
from .names import FINAL_POLICIES, FINAL_SIZE, RUNG_METRICS, SETTINGS_FILE
from .preflight import check_owner, check_owner_of, check_trial_values, require_mlflow
from .study import default_study_storage, redact, study_location


@dataclass
class SearchSettings:
    """Everything the driver needs to run, resume and finish a search; saved in the experiment folder."""

    base: dict[str, Any]  # fixed Config values shared by every trial (data settings, max_epochs, threads)
    space: str
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    seed: int
    storage_path: str
    name: str
    max_failures: int = 3
    command: str = ""  # the command line that started the search, for the record
    study_storage: str = ""  # where the Optuna study lives: an SQLAlchemy URL, a journal file, "" = in memory
    retrain_cpus: float = 0.0  # 0: what the search used at once, up to one node's CPUs
    retrain_gpus: float | None = None  # None: a trial's share
    mlflow: str = ""  # MLflow tracking URI each trial is logged to (absolute); "" = no MLflow
    searcher: str = "tpe"  # the Optuna sampler (SEARCHERS)
    rung_metric: str = "last"  # what ASHA judges a trial by at each rung (names.RUNG_METRICS)
    reproducible: bool = False  # batches of max_concurrent suggestions, no early stopping (search.build_tuner)
    finalists: int = 0  # after the search, retrain the top K configurations with fresh seeds (finalists.run_finalists)
    finalist_seeds: int = 0  # seeds per finalist (>= 1 when finalists > 0)
    final: str = "retrain"  # what is handed back (names.FINAL_POLICIES, built by final_model)
    final_size: int = 1  # members of a `seeds` or `folds` final model
    # Keys the space searches that --set fixes: taken out of the searched space (and its starting points)
    not_searched: list[str] = dataclasses.field(default_factory=list)
    study_name: str = ""  # the Optuna study's name: the name the search began with ("" = name), kept by a rename

    def __post_init__(self) -> None:
        self.study_name = self.study_name or self.name

    @property
    def experiment_path(self) -> str:
        return storage.child(self.storage_path, self.name)

    @property
    def study_location(self) -> str:
        """Where the study is now (study_storage may be recorded relative to the experiment)."""
        return study_location(self.study_storage, self.experiment_path)


def command_to_rerun(prog: str) -> str:
    """The command a user types to run the search command again: `python run_search.py` or `tune-siamese search`."""
    return "python run_search.py" if prog == "run_search.py" else prog


def check_fraction(gpus: float, option: str) -> None:
    if gpus < 0:
        raise InputError(f"option {option}={gpus} must be >= 0")
    if 0 < gpus < 1 and not math.isclose(1 / gpus, round(1 / gpus), rel_tol=1e-6):
        raise InputError(f"option {option}={gpus} does not divide a GPU (use 1/2, 1/3, 1/4, ...)")
    if gpus > 1 and not float(gpus).is_integer():
        raise InputError(f"option {option}={gpus}: above 1 it must be a whole number of GPUs")


# --searcher: Optuna's samplers, and the modules each needs beyond Optuna (checked before Ray starts)
SEARCHERS = ("tpe", "random", "gp", "cmaes", "qmc")
SEARCHER_NEEDS = {"gp": ("scipy", "torch"), "cmaes": ("cmaes",)}


def require_searcher(searcher: str, source: str) -> None:
    """A sampler whose package is missing fails at its first suggestion, inside Ray: refuse it here instead."""
    missing = [module for module in SEARCHER_NEEDS.get(searcher, ()) if importlib.util.find_spec(module) is None]
    if missing:
        raise InputError(f"{source}={searcher} needs {', '.join(missing)}, which is not installed: "
                         f"pip install {' '.join(missing)}")


def preset_choice(preset_defaults: dict[str, Any], key: str, choices: Any, given: str | None, source: str) -> str:
    """An option's value: the one given (argparse checked it), else the preset's or the default (checked here)."""
    if given is not None:
        return given
    value = preset_defaults[key]
    if value not in choices:
        raise InputError(f"search space {source}: option_defaults {key}={value!r} is not one of {', '.join(choices)}")
    return str(value)


# Config fields that options of this script set; --set must not set them behind the option's back.
SET_BY_OPTION = {"data": "--data", "seed": "--seed", "threads": "--cpus-per-trial"}


def build_settings(args: argparse.Namespace) -> tuple[SearchSettings, Any]:
    """Validate every option and every value the space can give a trial; build (SearchSettings, Preset)
    before any Ray work starts."""
    from search_spaces import check_values, get_preset, without

    check_numbers(args)
    name = args.name if args.name is not None else (
        f"siamese-{Path(args.space).stem.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}")
    storage.check_name(name, "option --name")
    preset = get_preset(args.space)
    overrides = parse_overrides(args.set)
    for key, option in SET_BY_OPTION.items():
        if key in overrides:
            raise InputError(f"option --set {key}=...: use {option} instead")
    # --set fixes a value for every trial, also one the space searches: that key is then not searched.
    not_searched = [key for key in preset.space if key in overrides]
    preset = without(preset, not_searched)
    if not_searched and not preset.space:
        raise InputError(f"option --set fixes every value the search space {args.space} searches "
                         f"({', '.join(not_searched)}): nothing left to search")
    preset_defaults = {"num_samples": 8, "max_epochs": 20, "grace_period": 2, "reduction_factor": 3.0,
                       "searcher": "tpe", "rung_metric": "last", "reproducible": False, "final": "retrain",
                       **preset.option_defaults}
    given_max_epochs = args.max_epochs
    if "max_epochs" in overrides:  # --set max_epochs=N means what --max-epochs N means
        if args.max_epochs is not None and str(args.max_epochs) != overrides["max_epochs"]:
            raise InputError("options --max-epochs and --set max_epochs disagree")
        given_max_epochs = Config.from_dict({"max_epochs": overrides["max_epochs"]}, source="option --set").max_epochs
    max_epochs = given_max_epochs or preset_defaults["max_epochs"]
    if args.grace_period is not None and args.grace_period > max_epochs:
        raise InputError(f"option --grace-period={args.grace_period} exceeds the {max_epochs} epochs a trial runs "
                         "at most (--max-epochs)")
    # the preset's, cut to short runs
    grace_period = min(args.grace_period or preset_defaults["grace_period"], max_epochs)
    reduction_factor = float(args.reduction_factor or preset_defaults["reduction_factor"])
    if not reduction_factor > 1:  # a given one was checked with the other numbers; this is the preset's
        raise InputError(f"search space {args.space}: option_defaults reduction_factor={reduction_factor} must be > 1")
    searcher = preset_choice(preset_defaults, "searcher", SEARCHERS, args.searcher, args.space)
    require_searcher(searcher, "option --searcher")
    rung_metric = preset_choice(preset_defaults, "rung_metric", RUNG_METRICS, args.rung_metric, args.space)
    reproducible = bool(preset_defaults["reproducible"] if args.reproducible is None else args.reproducible)
    if reproducible:
        check_reproducible(args)
    num_samples = args.num_samples or preset_defaults["num_samples"]
    finalists, finalist_seeds = check_finalists(args, preset.option_defaults, num_samples)
    final, final_size = final_policy(args.final, args.final_size, preset_defaults, args.space)
    # GPU trials replay each training step as a CUDA graph, which removes the per-kernel launch cost that dominates
    # a small net's step (figures: benchmarks/RESULTS.md, cuda graphs); a preset or --set cuda_graphs=false says
    # otherwise. On a CPU it changes nothing.
    gpu_defaults = {"cuda_graphs": True} if args.gpus_per_trial else {}
    base = {**gpu_defaults, **preset.fixed, **overrides, "data": args.data, "max_epochs": max_epochs,
            "seed": args.seed, "threads": max(1, int(args.cpus_per_trial))}
    Config.from_dict(base, source="search settings")  # fail now on a bad fixed value, not in every trial
    check_trial_values(check_values(preset, base, args.space), args)
    storage_path = storage.resolve(args.storage_path)
    settings = SearchSettings(
        base=base, space=args.space, num_samples=num_samples, max_epochs=max_epochs,
        grace_period=grace_period, reduction_factor=reduction_factor, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent or 0, seed=args.seed,
        storage_path=storage_path, name=name, max_failures=args.max_failures,
        study_storage=args.study_storage or default_study_storage(storage_path), study_name=name,
        retrain_cpus=args.retrain_cpus, retrain_gpus=args.retrain_gpus, mlflow=mlflow_uri(args.mlflow),
        searcher=searcher, rung_metric=rung_metric, reproducible=reproducible, finalists=finalists,
        finalist_seeds=finalist_seeds, final=final, final_size=final_size, not_searched=not_searched,
        command=" ".join([command_to_rerun(args.prog),
                          shlex.join(sys.argv[1:] if args.argv is None else args.argv)]).strip())
    return settings, preset


def check_finalists(args: argparse.Namespace, preset_defaults: dict[str, Any], num_samples: int) -> tuple[int, int]:
    """--finalists K and --finalist-seeds S (given, else the preset's, else 0 = off), checked before Ray starts.

    The finalist stage trains K x S models to the end (no ASHA); more of them than the search has trials would
    outweigh the search it refines, and is more likely a typo than a plan."""
    def value(key: str) -> tuple[int, str]:
        option = f"--{key.replace('_', '-')}"
        given = getattr(args, key)
        if given is not None:
            return given, f"option {option}={given}"
        if key not in preset_defaults:
            return 0, f"option {option}=0 (the default)"
        number = preset_defaults[key]
        if isinstance(number, bool) or not isinstance(number, int):
            raise InputError(f"search space {args.space}: option_defaults {key}={number!r} must be a whole number")
        return number, f"search space {args.space}: option_defaults {key}={number} ({option})"

    (k, k_source), (s, s_source) = value("finalists"), value("finalist_seeds")
    if k < 0:
        raise InputError(f"{k_source} must be >= 0 (0: no finalist stage)")
    if s < 0:
        raise InputError(f"{s_source} must be >= 0")
    if k == 0:
        if s and args.finalist_seeds is not None:
            raise InputError(f"{s_source} needs --finalists K > 0; without finalists it would be ignored")
        return 0, 0
    if s < 1:
        raise InputError(f"{s_source} must be >= 1 with --finalists={k} (the fresh seeds each finalist trains with)")
    if k > num_samples:
        raise InputError(f"{k_source} exceeds the {num_samples} trials of the search (--num-samples)")
    if k * s > num_samples:
        raise InputError(f"{k_source} x --finalist-seeds={s} = {k * s} finalist runs exceed the {num_samples} trials "
                         "of the search (--num-samples); lower one of them or search more")
    if args.no_retrain and args.finalists is not None:
        raise InputError(f"{k_source}: --no-retrain stops after the search, so the finalists would not run")
    return k, s


def final_policy(policy: str | None, size: int | None, preset_defaults: dict[str, Any], space: str) -> tuple[str, int]:
    """--final and --final-size (given, else the preset's, else retrain; 3 members), checked before Ray starts."""
    chosen = preset_choice(preset_defaults, "final", FINAL_POLICIES, policy, space)
    if size is None:
        size = int(preset_defaults.get("final_size", FINAL_SIZE)) if chosen in ("seeds", "folds") else 1
    check_final_policy(chosen, size)
    return chosen, size


def check_final_policy(policy: str, size: int) -> None:
    if policy not in FINAL_POLICIES:
        raise InputError(f"option --final={policy!r} is not one of {', '.join(FINAL_POLICIES)}")
    if policy in ("retrain", "trial") and size != 1:
        raise InputError(f"option --final={policy} hands back one model; --final-size={size} applies to seeds and "
                         "folds")
    if policy == "seeds" and size < 1:
        raise InputError(f"option --final-size={size} must be >= 1 for --final seeds")
    if policy == "folds" and size < 2:
        raise InputError(f"option --final-size={size} must be >= 2 for --final folds (one fold is held out)")


def check_reproducible(args: argparse.Namespace) -> None:
    """The reproducible mode runs every trial to its end (no ASHA): refuse ASHA's options rather than ignore them."""
    given = [option for option, value in (("--grace-period", args.grace_period), ("--rung-metric", args.rung_metric),
                                          ("--reduction-factor", args.reduction_factor)) if value is not None]
    if given:
        raise InputError(f"option --reproducible stops no trial early (no ASHA), so {', '.join(given)} would be "
                         "ignored; leave them out")


def mlflow_uri(value: str | None) -> str:
    """--mlflow as an absolute tracking URI: a folder becomes file:///abs/folder and a relative SQLite file an
    absolute one, so that a resumed search, or a Ray job (whose driver runs in a temporary copy of the code), logs
    to the same store."""
    if value is None:
        return ""
    if not value.strip():
        raise InputError("option --mlflow needs a tracking URI or a folder")
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        return f"sqlite:///{Path(value.removeprefix('sqlite:///')).expanduser().resolve()}"
    return value if storage.is_uri(value) else Path(value).expanduser().resolve().as_uri()


def check_numbers(args: argparse.Namespace) -> None:
    for name in ("num_samples", "max_epochs", "grace_period", "max_concurrent"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"option --{name.replace('_', '-')}={value} must be >= 1")
    for name in ("cpus_per_trial", "gpus_per_trial", "reduction_factor", "retrain_cpus", "retrain_gpus",
                 "connect_timeout", "wait_for_resources"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise InputError(f"option --{name.replace('_', '-')}={value} must be a finite number")
    if args.cpus_per_trial <= 0:
        raise InputError(f"option --cpus-per-trial={args.cpus_per_trial} must be > 0")
    if args.reduction_factor is not None and args.reduction_factor <= 1:
        raise InputError(f"option --reduction-factor={args.reduction_factor} must be > 1")
    if args.max_failures < 0:
        raise InputError(f"option --max-failures={args.max_failures} must be >= 0 (restarts of a failing trial)")
    check_fraction(args.gpus_per_trial, "--gpus-per-trial")
    if args.retrain_gpus is not None:
        check_fraction(args.retrain_gpus, "--retrain-gpus")
    if args.retrain_cpus < 0:
        raise InputError(f"option --retrain-cpus={args.retrain_cpus} must be >= 0")


def load_resume_settings(path: str) -> SearchSettings:
    """The settings of the experiment at `path`, in its current folder: Ray's experiment and the study inside it
    are found there wherever the folder was moved or copied; the study keeps the name the search began with."""
    from search_spaces import space_file

    experiment = storage.resolve(path)
    where = storage.child(experiment, SETTINGS_FILE)
    text = storage.read_text(where)
    if text is None:
        raise InputError(f"option --resume: no experiment here ({SETTINGS_FILE} missing)", path)
    check_owner(experiment)
    try:
        values = json.loads(text)
        settings = SearchSettings(**values)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg})", where, exc.lineno) from None
    except TypeError as exc:  # not an object, unknown or missing keys
        raise InputError(f"not this project's search settings ({exc})", where) from None
    space = space_file(settings.space)
    if space is not None and space.exists():  # a missing one is refused when the space is loaded
        check_owner_of([space])
    storage_path, name = storage.parent_and_name(experiment)
    return dataclasses.replace(settings, storage_path=storage_path, name=name)


# Options that act on this invocation only. Every other option shapes the search, which a resumed search takes
# from its search_settings.json: giving one with --resume is refused, so a new option is refused there by
# default rather than silently ignored.
PER_RUN_OPTIONS = frozenset({"resume", "address", "connect_timeout", "wait_for_resources", "dashboard", "verbose",
                             "quiet", "export_dir", "no_retrain", "ensemble"})


def check_resume_options(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """`defaults`: every option's default value; a search-shaping option given another value is refused."""
    changed = [f"--{name.replace('_', '-')}" for name, default in defaults.items()
               if name not in PER_RUN_OPTIONS | {"argv", "prog"} and getattr(args, name) != default]
    if changed:
        raise InputError(f"option --resume continues the experiment with its own settings; {', '.join(changed)} "
                         "would be ignored, so leave them out (or start a new search)")


def prepare(args: argparse.Namespace, defaults: dict[str, Any]) -> tuple[SearchSettings, Any]:
    """(settings, preset) of a new search or of the experiment to resume, with every option checked."""
    from search_spaces import get_preset, without

    if args.resume:
        check_resume_options(args, defaults)
        settings = load_resume_settings(args.resume)
        require_mlflow(settings.mlflow, f"this experiment logs to MLflow ({redact(settings.mlflow)}) and")
        require_searcher(settings.searcher, "option --resume: this experiment's --searcher")
        preset = without(get_preset(settings.space), settings.not_searched)  # the space the search searched
    else:
        require_mlflow(mlflow_uri(args.mlflow), "option --mlflow")
        settings, preset = build_settings(args)
    if args.ensemble == 1 or args.ensemble < 0:
        raise InputError(f"option --ensemble={args.ensemble} must be 0 (off) or at least 2")
    if not args.connect_timeout > 0:
        raise InputError(f"option --connect-timeout={args.connect_timeout} must be > 0")
    if not args.wait_for_resources >= 0:
        raise InputError(f"option --wait-for-resources={args.wait_for_resources} must be >= 0")
    resolve_address(args.address)
    return settings, preset

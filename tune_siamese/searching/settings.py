"""The search's settings: what the user's SearchOptions and the preset resolve to (`resolve`, pure), saved in the
experiment folder and read back to resume (`settings_for` does either). Checks that look at the outside world
(storage, study, MLflow, packages, devices) are preflight's.

Heavy modules (Ray, torch, the presets) are imported where they are needed, so that `--help` stays quick.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_siamese.core import storage
from tune_siamese.core.config import Config, parse_overrides
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import (
    FINAL_POLICIES,
    RUNG_METRICS,
    SCHEDULERS,
    SEARCHERS,
    SETTINGS_FILE,
    SPACE_FILE,
)
from tune_siamese.searching.objectives import parse_objectives
from tune_siamese.searching.options import FALLBACKS, SearchOptions, flag
from tune_siamese.searching.owners import check_owner, check_owner_of
from tune_siamese.searching.pareto import parse_pick
from tune_siamese.searching.study import default_study_storage, study_location

if TYPE_CHECKING:
    from search_spaces import Preset


@dataclass
class SearchSettings:
    """Everything the driver needs to run, resume and finish a search; saved in the experiment folder.

    A field named like an option holds that option's value as resolved (given, else the preset's, else its
    fallback): options.SearchOptions declares what it means. Defaults serve experiments written before a field
    existed (`SearchSettings(**json)` of an older file), so they are not the options' defaults, which may change."""

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
    retrain_cpus: float = 0.0
    retrain_gpus: float | None = None  # None: a trial's share
    mlflow: str = ""  # MLflow tracking URI each trial is logged to (absolute); "" = no MLflow
    searcher: str = "tpe"  # the Optuna sampler (SEARCHERS)
    rung_metric: str = "last"  # what ASHA judges a trial by at each rung (names.RUNG_METRICS)
    scheduler: str = "asha"  # what stops trials early (names.SCHEDULERS); before 0.4.0 every search ran ASHA
    reproducible: bool = False  # batches of max_concurrent suggestions, no early stopping (tuner.build_tuner)
    finalists: int = 0  # after the search, retrain the top K configurations with fresh seeds (finalists.run_finalists)
    finalist_seeds: int = 0  # seeds per finalist (>= 1 when finalists > 0)
    final: str = "retrain"  # what is handed back (names.FINAL_POLICIES, built by final.policies)
    final_size: int = 1  # members of a `seeds` or `folds` final model
    objectives: list[str] = dataclasses.field(default_factory=lambda: ["val_loss"])  # objectives.parse_objectives
    pick: str = "best"  # the point of the front handed back (pareto.PickRule)
    # Keys the space searches that --set fixes: taken out of the searched space (and its starting points)
    not_searched: list[str] = dataclasses.field(default_factory=list)
    study_name: str = ""  # the Optuna study's name: the name the search began with ("" = name), kept by a rename
    # num_samples before each growth (--resume --num-samples N: grown), oldest first; num_samples is the total now
    grown_from: list[int] = dataclasses.field(default_factory=list)
    # the experiments the study was warm-started from (--warm-start: warm_start.warm_start_for), as given
    warm_start: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.study_name = self.study_name or self.name

    @property
    def experiment_path(self) -> str:
        return storage.child(self.storage_path, self.name)

    @property
    def study_location(self) -> str:
        """Where the study is now (study_storage may be recorded relative to the experiment)."""
        return study_location(self.study_storage, self.experiment_path)


def preset_choice(value: Any, key: str, choices: Any, options: SearchOptions) -> str:
    """A choice given (checked against the option's declared choices), else the preset's or the fallback, which is
    checked here."""
    if value not in choices:
        raise InputError(f"search space {options.space_label}: option_defaults {key}={value!r} is not one of "
                         f"{', '.join(choices)}")
    return str(value)


# Config fields that options of this script set; --set must not set them behind the option's back.
SET_BY_OPTION = {"data": "--data", "seed": "--seed", "threads": "--cpus-per-trial"}


def resolve(options: SearchOptions, preset: Preset, started: str) -> tuple[SearchSettings, Preset]:
    """The settings of a new search: each option as given, else the preset's option_defaults, else the option's
    fallback; every fixed value and every value the space can give a trial checked by Config's rules. Pure: no
    file, package, device or Ray is looked at (preflight does that). `started` (a time stamp) names an unnamed
    search. Also returns the preset without the keys --set fixes (the space that is searched)."""
    from tune_siamese.searching.spaces import check_values, without

    name = options.name if options.name is not None else (
        f"siamese-{Path(options.space).stem.replace(':', '-')}-{started}")
    storage.check_name(name, "option --name")
    overrides = parse_overrides(list(options.set))
    for key, option in SET_BY_OPTION.items():
        if key in overrides:
            raise InputError(f"option --set {key}=...: use {option} instead")
    # --set fixes a value for every trial, also one the space searches: that key is then not searched.
    not_searched = [key for key in preset.space if key in overrides]
    preset = without(preset, not_searched)
    if not_searched and not preset.space:
        raise InputError(f"option --set fixes every value the search space {options.space_label} searches "
                         f"({', '.join(not_searched)}): nothing left to search")

    def chosen(key: str) -> Any:
        given = getattr(options, key)
        return given if given is not None else preset.option_defaults.get(key, FALLBACKS[key])

    given_max_epochs = options.max_epochs
    if "max_epochs" in overrides:  # --set max_epochs=N means what --max-epochs N means
        set_max_epochs = Config.from_dict({"max_epochs": overrides["max_epochs"]}, source="option --set").max_epochs
        if options.max_epochs is not None and options.max_epochs != set_max_epochs:
            raise InputError("options --max-epochs and --set max_epochs disagree")
        given_max_epochs = set_max_epochs
    max_epochs = given_max_epochs or chosen("max_epochs")
    if options.grace_period is not None and options.grace_period > max_epochs:
        raise InputError(f"option --grace-period={options.grace_period} exceeds the {max_epochs} epochs a trial "
                         "runs at most (--max-epochs)")
    grace_period = min(chosen("grace_period"), max_epochs)  # the preset's, cut to short runs
    reduction_factor = float(chosen("reduction_factor"))
    if not reduction_factor > 1:  # a given one was checked with the other options; this is the preset's
        raise InputError(f"search space {options.space_label}: option_defaults reduction_factor={reduction_factor} "
                         "must be > 1")
    searcher = preset_choice(chosen("searcher"), "searcher", SEARCHERS, options)
    rung_metric = preset_choice(chosen("rung_metric"), "rung_metric", RUNG_METRICS, options)
    reproducible = bool(chosen("reproducible"))
    if reproducible:
        check_reproducible(options)
    num_samples = chosen("num_samples")
    finalists, finalist_seeds = check_finalists(options, preset.option_defaults, num_samples)
    final = preset_choice(chosen("final"), "final", FINAL_POLICIES, options)
    one_model = 1 if options.final_size is None else options.final_size  # a given size is checked below
    final_size = chosen("final_size") if final in ("seeds", "folds") else one_model
    check_final_policy(final, final_size)
    objectives = parse_objectives(str(chosen("objectives")))
    pick = str(parse_pick(options.pick, objectives))
    if len(objectives) > 1 and searcher == "cmaes":
        raise InputError(f"option --objectives={','.join(objectives)}: CMA-ES optimises one objective; use tpe "
                         "(default) or nsga2")
    scheduler = "fifo" if reproducible else choose_scheduler(options, preset, objectives)
    # GPU trials replay each training step as a CUDA graph, which removes the per-kernel launch cost that dominates
    # a small net's step; a preset or --set cuda_graphs=false says otherwise. On a CPU it changes nothing.
    gpu_defaults = {"cuda_graphs": True} if options.gpus_per_trial else {}
    base = {**gpu_defaults, **preset.fixed, **overrides, "data": options.data, "max_epochs": max_epochs,
            "seed": options.seed, "threads": max(1, int(options.cpus_per_trial))}
    fixed = Config.from_dict(base, source="search settings")  # fail now on a bad fixed value, not in every trial
    # Each value as Config's type (--set's are strings), so that the settings and every trial's params record
    # lr=0.005 as a number and augment=true as a bool, and analysis can compute with them.
    base = {key: getattr(fixed, key) for key in base}
    check_values(preset, base, options.space_label)
    storage_path = storage.resolve(options.storage_path)
    settings = SearchSettings(
        base=base, space=options.space, num_samples=num_samples, max_epochs=max_epochs,
        grace_period=grace_period, reduction_factor=reduction_factor, cpus_per_trial=options.cpus_per_trial,
        gpus_per_trial=options.gpus_per_trial, max_concurrent=options.max_concurrent or 0, seed=options.seed,
        storage_path=storage_path, name=name, max_failures=options.max_failures,
        study_storage=options.study_storage or default_study_storage(storage_path), study_name=name,
        retrain_cpus=options.retrain_cpus, retrain_gpus=options.retrain_gpus, mlflow=mlflow_uri(options.mlflow),
        searcher=searcher, rung_metric=rung_metric, scheduler=scheduler, reproducible=reproducible, finalists=finalists,
        finalist_seeds=finalist_seeds, final=final, final_size=final_size, not_searched=not_searched,
        objectives=objectives, pick=pick, warm_start=parse_warm_start(options.warm_start),
        command=options.command)
    return settings, preset


def parse_warm_start(value: str | None) -> list[str]:
    """The experiments --warm-start names, comma separated (a local folder made absolute, as recorded); what a
    warm start takes from them is warm_start.warm_start_for's."""
    if value is None:
        return []
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise InputError(f"option --warm-start={value!r}: give experiment folders separated by commas")
    return [storage.resolve(name) for name in names]


def check_finalists(options: SearchOptions, preset_defaults: dict[str, Any], num_samples: int) -> tuple[int, int]:
    """--finalists K and --finalist-seeds S (given, else the preset's, else 0 = off), checked before Ray starts.

    The finalist stage trains K x S models to the end (no ASHA); more of them than the search has trials would
    outweigh the search it refines, and is more likely a typo than a plan."""
    def value(key: str) -> tuple[int, str]:
        option = flag(key)
        given = getattr(options, key)
        if given is not None:
            return given, f"option {option}={given}"
        if key not in preset_defaults:
            return 0, f"option {option}=0 (the default)"
        number = preset_defaults[key]
        if isinstance(number, bool) or not isinstance(number, int):
            raise InputError(f"search space {options.space_label}: option_defaults {key}={number!r} must be a whole "
                             "number")
        return number, f"search space {options.space_label}: option_defaults {key}={number} ({option})"

    (k, k_source), (s, s_source) = value("finalists"), value("finalist_seeds")
    if k < 0:
        raise InputError(f"{k_source} must be >= 0 (0: no finalist stage)")
    if s < 0:
        raise InputError(f"{s_source} must be >= 0")
    if k == 0:
        if s and options.finalist_seeds is not None:
            raise InputError(f"{s_source} needs --finalists K > 0; without finalists it would be ignored")
        return 0, 0
    if s < 1:
        raise InputError(f"{s_source} must be >= 1 with --finalists={k} (the fresh seeds each finalist trains with)")
    if k > num_samples:
        raise InputError(f"{k_source} exceeds the {num_samples} trials of the search (--num-samples)")
    if k * s > num_samples:
        raise InputError(f"{k_source} x --finalist-seeds={s} = {k * s} finalist runs exceed the {num_samples} trials "
                         "of the search (--num-samples); lower one of them or search more")
    if options.no_retrain and options.finalists is not None:
        raise InputError(f"{k_source}: --no-retrain stops after the search, so the finalists would not run")
    return k, s


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


def choose_scheduler(options: SearchOptions, preset: Preset, objectives: list[str]) -> str:
    """--scheduler as given, else the preset's, else pareto for several objectives and asha for one."""
    default = "pareto" if len(objectives) > 1 else "asha"
    scheduler = options.scheduler or preset_choice(preset.option_defaults.get("scheduler", default), "scheduler",
                                                   SCHEDULERS, options)
    if scheduler == "pareto" and len(objectives) < 2:
        raise InputError(f"option --scheduler=pareto ranks trials by several objectives, and --objectives names only "
                         f"{objectives[0]}; add one (e.g. --objectives val_loss,params) or use asha")
    return scheduler


def check_reproducible(options: SearchOptions) -> None:
    """The reproducible mode runs every trial to its end (no ASHA): refuse ASHA's options rather than ignore them."""
    given = [flag(name) for name in ("grace_period", "rung_metric", "reduction_factor")
             if getattr(options, name) is not None]
    if options.scheduler not in (None, "fifo"):
        given.append(f"--scheduler={options.scheduler}")
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


def load_resume_settings(path: str) -> SearchSettings:
    """The settings of the experiment at `path`, in its current folder: Ray's experiment and the study inside it
    are found there wherever the folder was moved or copied; the study keeps the name the search began with."""
    from tune_siamese.searching.spaces import space_file

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


def grown(settings: SearchSettings, num_samples: int) -> SearchSettings:
    """The settings of a search grown to `num_samples` trials (--resume EXP --num-samples N): the trials it lacks
    run in the same study, so the searcher conditions on every earlier trial. Only growth: an equal N changes
    nothing, and a smaller one cannot take back the trials that ran."""
    if num_samples <= settings.num_samples:
        raise InputError(f"option --num-samples={num_samples} with --resume grows the search: it must exceed the "
                         f"{settings.num_samples} trials this experiment asked for (leave it out to continue it)")
    return dataclasses.replace(settings, num_samples=num_samples,
                               grown_from=[*settings.grown_from, settings.num_samples])


def record_growth(settings: SearchSettings) -> None:
    """Write a growth (`grown`) into the experiment's saved settings, so that a later --resume, finalize and the
    analysis see the new total; nothing else in the file changes."""
    where = storage.child(settings.experiment_path, SETTINGS_FILE)
    saved = json.loads(storage.read_text(where) or "{}")  # read and checked by load_resume_settings before
    if saved.get("num_samples", 0) >= settings.num_samples:
        return
    saved.update(num_samples=settings.num_samples, grown_from=settings.grown_from)
    storage.write_text(where, json.dumps(saved, indent=2) + "\n")


def settings_for(options: SearchOptions) -> tuple[SearchSettings, Preset]:
    """(settings, searched preset) of a new search, or of the experiment --resume names, which keeps its own:
    an option that shapes the search is refused there rather than silently ignored."""
    from tune_siamese.searching.spaces import as_preset, get_preset, without

    ignored = options.search_shaping_given() if options.resume else []
    if ignored:
        raise InputError(f"option --resume continues the experiment with its own settings; {', '.join(ignored)} "
                         "would be ignored, so leave them out (or start a new search)")
    options.check()
    if options.resume:
        settings = load_resume_settings(options.resume)
        if options.num_samples is not None:
            settings = grown(settings, options.num_samples)
        searched = get_preset(settings.space, settings.experiment_path, option="--resume")
        return settings, without(searched, settings.not_searched)  # the space it searched
    if options.space_object is not None:
        settings, preset = resolve(options, as_preset(options.space_object, options.space_label), stamp())
        # what reruns it, once the experiment has recorded the space
        named = options.naming_space_file(storage.child(settings.experiment_path, SPACE_FILE))
        return dataclasses.replace(settings, command=named.command), preset
    return resolve(options, get_preset(options.space), stamp())


def stamp() -> str:
    """What names an unnamed search: the time it started."""
    return time.strftime("%Y%m%d-%H%M%S")


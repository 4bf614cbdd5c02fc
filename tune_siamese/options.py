"""What a user asked a search for: one typed field per option of run_search.py (and keyword of ts.search), with
its default in one place, checked on its own before any preset, file or Ray is looked at.

An option whose default is `None` takes the preset's value, else its `fallback` (settings.resolve does that).
Options marked `per_run` act on one invocation only (where to connect, what to print, what to do after the search);
every other option shapes the search, which `--resume` takes from the experiment, so giving one there is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError


def per_run(default: Any) -> Any:
    return field(default=default, metadata={"per_run": True})


def preset_or(fallback: Any) -> Any:
    """Default None: the preset's value, else `fallback`."""
    return field(default=None, metadata={"fallback": fallback})


@dataclass(frozen=True)
class SearchOptions:
    data: str = "synthetic"
    space: str = "quick"
    num_samples: int | None = preset_or(8)
    max_epochs: int | None = preset_or(20)
    grace_period: int | None = preset_or(2)
    reduction_factor: float | None = preset_or(3.0)
    searcher: str | None = preset_or("tpe")
    rung_metric: str | None = preset_or("last")
    reproducible: bool | None = preset_or(False)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # None: as many as the resources allow
    address: str | None = per_run(None)
    connect_timeout: float = per_run(30.0)
    wait_for_resources: float = per_run(0.0)
    storage_path: str = "ray_results"
    study_storage: str | None = None  # None: sqlite in the experiment folder (in memory for a URI)
    name: str | None = None  # None: siamese-<space>-<time>
    mlflow: str | None = None
    resume: str | None = per_run(None)
    seed: int = 0
    set: tuple[str, ...] = ()
    export_dir: str | None = per_run(None)
    no_retrain: bool = per_run(False)
    finalists: int | None = preset_or(0)
    finalist_seeds: int | None = preset_or(0)
    final: str | None = preset_or("retrain")
    final_size: int | None = preset_or(3)
    objectives: str | None = preset_or("val_loss")  # val_loss[,params|flops|latency...]: several = multi-objective
    pick: str = "best"  # which point of the Pareto front is handed back: best | smallest-within=D
    ensemble: int = per_run(0)
    retrain_cpus: float = 0.0  # 0: what the search used at once, up to one node's CPUs
    retrain_gpus: float | None = None  # None: --gpus-per-trial
    max_failures: int = 3
    dashboard: bool = per_run(False)
    verbose: int = per_run(0)
    quiet: bool = per_run(False)
    # Not options: how the search was started, for the command recorded in the experiment and the resume hint.
    prog: str = field(default="run_search.py", metadata={"record": True})
    argv: tuple[str, ...] | None = field(default=None, metadata={"record": True})  # None: sys.argv

    @classmethod
    def from_namespace(cls, args: argparse.Namespace, prog: str, argv: Any) -> SearchOptions:
        values = {f.name: getattr(args, f.name) for f in option_fields()}
        values["set"] = tuple(values["set"])
        return cls(**values, prog=prog, argv=None if argv is None else tuple(str(a) for a in argv))

    @property
    def command(self) -> str:
        """The command line that started the search, as a user retypes it."""
        words = sys.argv[1:] if self.argv is None else list(self.argv)
        return " ".join([command_to_rerun(self.prog), shlex.join(words)]).strip()

    def search_shaping_given(self) -> list[str]:
        """The options that shape the search and were given a value other than their default (refused with
        --resume)."""
        return [flag(f.name) for f in option_fields()
                if not f.metadata.get("per_run") and getattr(self, f.name) != f.default]

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


def option_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(SearchOptions) if not f.metadata.get("record")]


DEFAULTS = SearchOptions()
# What an option left at None takes when the preset says nothing either
FALLBACKS = {f.name: f.metadata["fallback"] for f in dataclasses.fields(SearchOptions) if "fallback" in f.metadata}


def flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


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

"""Checks that touch the outside world before any Ray work starts: the targets take writes, the Optuna study
and the MLflow store can be used, optional packages are installed, CUDA and the compile backend exist, and what
--resume would unpickle belongs to this user."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

import pyarrow.fs

from tune_siamese.core import storage
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import SETTINGS_FILE
from tune_siamese.searching.cluster import resolve_address
from tune_siamese.searching.study import check_new_study, check_resumed_study, redact

if TYPE_CHECKING:
    from search_spaces import Preset
    from tune_siamese.searching.options import SearchOptions
    from tune_siamese.searching.settings import SearchSettings


class Targets(Protocol):
    """What a search writes to (settings.SearchSettings has it)."""

    @property
    def experiment_path(self) -> str: ...
    @property
    def study_location(self) -> str: ...
    study_name: str
    mlflow: str
    name: str


@contextlib.contextmanager
def temporary_environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set, restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def require_mlflow(uri: str, source: str) -> None:
    """MLflow is an optional extra: without it, stop before any Ray work rather than in Ray's MLflow callback (or
    in unpickling a resumed search's state, which holds that callback)."""
    if uri and importlib.util.find_spec("mlflow") is None:
        raise InputError(f'{source} needs MLflow, which is not installed: pip install "tune-siamese[mlflow]"')


# One try, 10 s at most, for each call the driver makes: by default MLflow retries an unreachable server for minutes.
MLFLOW_QUICK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def allow_file_store(uri: str) -> None:
    """MLflow 3 keeps folder stores in maintenance mode and refuses them unless told; one asked for is meant."""
    if uri.startswith("file://"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def check_mlflow_store(uri: str, experiment: str) -> None:
    """Open the MLflow tracking store now (a server must answer, a folder or database must take writes) and look
    up the experiment: Ray's callback reuses one of that name, and fails on one that was deleted."""
    allow_file_store(uri)
    try:
        from mlflow.tracking import MlflowClient

        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with temporary_environment(MLFLOW_QUICK):
            found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception as exc:  # noqa: BLE001 - scheme, driver, network or permission: all mean "cannot use it"
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
        raise InputError(f"option --mlflow={redact(uri)}: cannot use it ({reason})") from None
    if found is not None and found.lifecycle_stage == "deleted":
        raise InputError(f"option --mlflow={redact(uri)}: the MLflow experiment {experiment!r} was deleted; restore "
                         "it (mlflow experiments restore) or choose another --name")


# the modules each searcher needs beyond Optuna
SEARCHER_NEEDS = {"gp": ("scipy", "torch"), "cmaes": ("cmaes",)}


def require_searcher(searcher: str, source: str) -> None:
    """A sampler whose package is missing fails at its first suggestion, inside Ray: refuse it here instead."""
    missing = [module for module in SEARCHER_NEEDS.get(searcher, ()) if importlib.util.find_spec(module) is None]
    if missing:
        raise InputError(f"{source}={searcher} needs {', '.join(missing)}, which is not installed: "
                         f"pip install {' '.join(missing)}")


def check_search(options: SearchOptions, settings: SearchSettings, preset: Preset) -> None:
    """What resolving the options cannot judge: the packages the search needs are installed, a CUDA device has a
    GPU share (and, for a Ray started here, CUDA here), a compile backend exists, the cluster address parses."""
    import ray
    import torch

    from tune_siamese.searching.spaces import check_values
    from tune_siamese.searching.warm_start import warm_start_for
    from tune_siamese.training.engine import check_compile_backend

    if options.resume:
        require_mlflow(settings.mlflow, f"this experiment logs to MLflow ({redact(settings.mlflow)}) and")
        require_searcher(settings.searcher, "option --resume: this experiment's --searcher")
    else:
        require_mlflow(settings.mlflow, "option --mlflow")
        require_searcher(settings.searcher, "option --searcher")
        if settings.warm_start:  # each experiment found, of the same test data, with a study: before Ray starts
            warm_start_for(settings, preset.space)
    starts_local_ray = resolve_address(options.address) == "local" and not ray.is_initialized()
    configs = [Config.from_dict(values, source="search settings")
               for values in check_values(preset, settings.base, settings.space)]
    for backend in sorted({config.compile for config in configs}):
        check_compile_backend(backend)
    for device in sorted({config.device for config in configs if config.device.startswith("cuda")}):
        if not settings.gpus_per_trial:
            raise InputError(f"option device={device!r} needs --gpus-per-trial > 0 (a trial without a GPU share "
                             "sees no GPU)")
        if starts_local_ray and not torch.cuda.is_available():
            raise InputError(f"option device={device!r} but CUDA is not available here")


def recorded_trials(experiment: str) -> int:
    """How many trials Tune's newest experiment state lists (0 before it wrote one)."""
    fs, root = storage.filesystem(experiment)
    states = sorted(info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
                    if info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json"))
    if not states:
        return 0
    where = storage.child(experiment, states[-1])  # the timestamp in the name sorts as text
    try:
        state = json.loads(storage.read_text(where) or "{}")
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg})", where, exc.lineno) from None
    return len(state.get("trial_data", [])) if isinstance(state, dict) else 0


def in_a_new_folder(location: str, experiment: str) -> bool:
    """Whether the study at `location` is an SQLite file inside a local experiment folder that does not exist yet
    (the default, EXPERIMENT/optuna.db, of a new search): it holds no study, and opening it would make the folder."""
    file = location.removeprefix("sqlite:///") if location.startswith("sqlite:///") else ""
    if not file or storage.is_uri(experiment) or Path(experiment).exists():
        return False
    return Path(file).resolve().is_relative_to(Path(experiment).resolve())


def check_targets(settings: Targets, export_dir: str | None, new: bool) -> None:
    """Everything the search writes to must take writes now, not after hours of searching. The checks leave
    nothing behind (a probe's folders are removed again), so a refused search leaves no experiment folder."""

    if new and storage.exists(storage.child(settings.experiment_path, SETTINGS_FILE)):
        raise InputError("an experiment of this name exists already; --resume it or choose another --name",
                         settings.experiment_path)
    if export_dir is not None:
        if storage.is_uri(export_dir):
            raise InputError("option --export-dir must be a local folder (the export is in the experiment's "
                             "storage already)", export_dir)
        storage.check_writable(export_dir, "--export-dir")
    storage.check_writable(settings.experiment_path, "--storage-path")
    if new:
        if not in_a_new_folder(settings.study_location, settings.experiment_path):
            check_new_study(settings.study_location, settings.study_name)
    else:
        check_resumed_study(settings.study_location, settings.study_name, recorded_trials(settings.experiment_path))
    if settings.mlflow:
        check_mlflow_store(settings.mlflow, settings.name)

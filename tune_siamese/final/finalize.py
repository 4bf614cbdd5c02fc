"""`tune-siamese finalize EXPERIMENT --final POLICY [--final-size K]`: another final model from a finished search,
without searching again. It writes final-NAME.json and export-NAME/ beside the search's own final.json and export/
(NAME: the policy, with K for seeds and folds, e.g. `seeds3`), and never writes over either.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from tune_siamese.core import storage
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import FINAL_FILE, FINAL_SIZE
from tune_siamese.data import PairData
from tune_siamese.final.publishing import remove_stale_temporaries
from tune_siamese.searching import cluster
from tune_siamese.searching.cluster import ray_console_environment
from tune_siamese.searching.pareto import PickRule
from tune_siamese.searching.preflight import check_mlflow_store, require_mlflow
from tune_siamese.searching.settings import SearchSettings, check_final_policy, load_resume_settings
from tune_siamese.searching.study import redact


def final_name(policy: str, size: int, pick: str = "best") -> str:
    """seeds3, retrain, ...; with another pick rule than best, that rule too (retrain-smallest-within-0.01)."""
    name = f"{policy}{size}" if policy in ("seeds", "folds") else policy
    return name if pick == "best" else f"{name}-{pick.replace('=', '-')}"


def finalize(experiment: str, policy: str, size: int | None, address: str | None = None,
             connect_timeout: float = cluster.CONNECT_TIMEOUT_S, pick: str | None = None,
             ray_logs: bool = True, on_connect: Callable[[], None] | None = None) -> dict[str, Any]:
    """Build, test and export the final model `policy` of a finished experiment; returns what final-NAME.json
    holds, and where it is ("record"); with the experiment's MLflow store, also its run there ("mlflow_run").
    Everything is checked before Ray starts: the policy, the experiment (owned by this user: restoring it
    unpickles Ray's state), that nothing of this name exists yet, the MLflow store, and the data. A Ray it
    started or joined is left when it returns (cluster.connect, cluster.disconnect). `on_connect`: called once
    Ray is up (the command's SIGTERM handler goes back in, over the one ray.init sets)."""
    from tune_siamese.data import load_data
    from tune_siamese.searching.pareto import parse_pick

    ray_console_environment()
    size = size if size is not None else (FINAL_SIZE if policy in ("seeds", "folds") else 1)
    check_final_policy(policy, size)
    settings = load_resume_settings(experiment)
    rule = parse_pick(pick if pick is not None else settings.pick, settings.objectives)  # the search's own by default
    name = final_name(policy, size, str(rule))
    record_path = storage.child(settings.experiment_path, f"final-{name}.json")
    remove_stale_temporaries(settings.experiment_path)  # a killed finalize's half export goes first
    check_not_finalized(record_path, storage.child(settings.experiment_path, f"export-{name}"))
    if not storage.exists(storage.child(settings.experiment_path, FINAL_FILE)):  # written when a search ends
        raise InputError(f"this search has not finished (no {FINAL_FILE}); continue it with --resume first",
                         settings.experiment_path)
    if settings.mlflow:  # finalize logs its model where the search logged
        require_mlflow(settings.mlflow, f"this experiment logs to MLflow ({redact(settings.mlflow)}) and")
        check_mlflow_store(settings.mlflow, settings.name)
    data = load_data(Config.from_dict(settings.base, source="search settings"))
    print(data.summary(), flush=True)
    with storage.experiment_lock(settings.experiment_path):
        address = cluster.connect(address, connect_timeout, ray_logs=ray_logs)
        try:
            if on_connect is not None:
                on_connect()
            record = _finalize_on_ray(settings, data, policy, size, rule, name, record_path)
        finally:
            if address != "existing":
                cluster.disconnect()
    if settings.mlflow:
        from tune_siamese.final.mlflow_record import finalize_run

        params = {"final": policy, "final_size": size, "pick": str(rule)}
        try:
            record["mlflow_run"] = finalize_run(settings, name, params,
                                                {k: v for k, v in record.items() if k != "record"})
        except Exception as exc:  # noqa: BLE001 - the store went away since the check: the model itself is whole
            reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
            print(f"MLflow: the final model was not logged ({reason}); {record_path} and its export are whole",
                  file=sys.stderr, flush=True)
    return record


def check_not_finalized(record_path: str, export: str) -> None:
    """finalize never writes over an earlier final model: its record is what makes one. An export without its
    record is what a finalize killed between the two left (any other failure removes it): it is replaced."""
    if storage.exists(record_path):
        raise InputError("finalize never writes over an earlier one; delete it, or choose another --final or "
                         "--final-size", record_path)
    if storage.exists(export):
        print(f"{export}: an export without its record (a finalize cut short); it is built again", flush=True)


def _finalize_on_ray(settings: SearchSettings, data: PairData, policy: str, size: int, rule: PickRule, name: str,
                     record_path: str) -> dict[str, Any]:
    """finalize's steps that need Ray: the search's results restored, the finalists' winner, the final model."""
    from tune_siamese.final.finalists import Finalists, run_finalists
    from tune_siamese.final.finish import FinalPlan, hand_back_final
    from tune_siamese.searching.ranking import no_usable_reason
    from tune_siamese.searching.tuner import interrupted, restore_tuner

    results = restore_tuner(settings, data).get_results()
    if interrupted(results, settings.num_samples, None, watched=False):
        raise InputError("this search did not finish; continue it with --resume first", settings.experiment_path)
    finalists: Finalists | None = None
    if settings.finalists:  # the stage has ended: restoring it runs nothing and gives its winner again
        finalists = run_finalists(settings, results, data, verbose=0)
        if finalists is None:
            raise InputError("this search's finalist stage did not finish; continue it with --resume first",
                             settings.experiment_path)
    plan = FinalPlan(policy, size, rule, record_path, export_suffix=f"-{name}", seconds_as="final_model")
    handed = hand_back_final(settings, results, data, plan, finalists)
    if handed is None:
        raise InputError(f"no usable trial to build a final model from ({no_usable_reason(results)})",
                         settings.experiment_path)
    return {**handed[0], "record": record_path}

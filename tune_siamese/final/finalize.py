"""`tune-siamese finalize EXPERIMENT --final POLICY [--final-size K]`: another final model from a finished search,
without searching again. It writes final-NAME.json and export-NAME/ beside the search's own final.json and export/
(NAME: the policy, with K for seeds and folds, e.g. `seeds3`), and never writes over either.
"""
from __future__ import annotations

from typing import Any

from tune_siamese.core import storage
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import FINAL_FILE, FINAL_SIZE
from tune_siamese.data import PairData
from tune_siamese.searching import cluster
from tune_siamese.searching.cluster import ray_console_environment
from tune_siamese.searching.pareto import PickRule
from tune_siamese.searching.settings import SearchSettings, check_final_policy, load_resume_settings


def final_name(policy: str, size: int, pick: str = "best") -> str:
    """seeds3, retrain, ...; with another pick rule than best, that rule too (retrain-smallest-within-0.01)."""
    name = f"{policy}{size}" if policy in ("seeds", "folds") else policy
    return name if pick == "best" else f"{name}-{pick.replace('=', '-')}"


def finalize(experiment: str, policy: str, size: int | None, address: str | None = None,
             connect_timeout: float = cluster.CONNECT_TIMEOUT_S, pick: str | None = None,
             ray_logs: bool = True) -> dict[str, Any]:
    """Build, test and export the final model `policy` of a finished experiment; returns what final-NAME.json
    holds, and where it is ("record"). Everything is checked before Ray starts: the policy, the experiment (owned
    by this user: restoring it unpickles Ray's state), that nothing of this name exists yet, and the data. A Ray
    it started or joined is left when it returns (cluster.connect, cluster.disconnect)."""
    from tune_siamese.data import load_data
    from tune_siamese.searching.pareto import parse_pick

    ray_console_environment()
    size = size if size is not None else (FINAL_SIZE if policy in ("seeds", "folds") else 1)
    check_final_policy(policy, size)
    settings = load_resume_settings(experiment)
    rule = parse_pick(pick if pick is not None else settings.pick, settings.objectives)  # the search's own by default
    name = final_name(policy, size, str(rule))
    record_path = storage.child(settings.experiment_path, f"final-{name}.json")
    for path in (record_path, storage.child(settings.experiment_path, f"export-{name}")):
        if storage.exists(path):
            raise InputError("finalize never writes over an earlier one; delete it, or choose another --final or "
                             "--final-size", path)
    if not storage.exists(storage.child(settings.experiment_path, FINAL_FILE)):  # written when a search ends
        raise InputError(f"this search has not finished (no {FINAL_FILE}); continue it with --resume first",
                         settings.experiment_path)
    data = load_data(Config.from_dict(settings.base, source="search settings"))
    print(data.summary(), flush=True)
    with storage.experiment_lock(settings.experiment_path):
        address = cluster.connect(address, connect_timeout, ray_logs=ray_logs)
        try:
            return _finalize_on_ray(settings, data, policy, size, rule, name, record_path)
        finally:
            if address != "existing":
                cluster.disconnect()


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

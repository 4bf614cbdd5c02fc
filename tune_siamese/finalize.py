"""`tune-siamese finalize EXPERIMENT --final POLICY [--final-size K]`: another final model from a finished search,
without searching again. It writes final-NAME.json and export-NAME/ beside the search's own final.json and export/
(NAME: the policy, with K for seeds and folds, e.g. `seeds3`), and never writes over either.
"""
from __future__ import annotations

import json
import time
from typing import Any

from . import cluster, storage
from .config import Config
from .console import ray_console_environment
from .errors import InputError
from .names import FINAL_FILE, FINAL_SIZE, trial_id_of
from .settings import check_final_policy, load_resume_settings


def final_name(policy: str, size: int, pick: str = "best") -> str:
    """seeds3, retrain, ...; with another pick rule than best, that rule too (retrain-smallest-within-0.01)."""
    name = f"{policy}{size}" if policy in ("seeds", "folds") else policy
    return name if pick == "best" else f"{name}-{pick.replace('=', '-')}"


def finalize(experiment: str, policy: str, size: int | None, address: str | None = None,
             connect_timeout: float = cluster.CONNECT_TIMEOUT_S, pick: str | None = None) -> dict[str, Any]:
    """Build, test and export the final model `policy` of a finished experiment; returns what final-NAME.json
    holds. Everything is checked before Ray starts: the policy, the experiment (owned by this user: restoring it
    unpickles Ray's state), that nothing of this name exists yet, and the data."""
    from .data import load_data
    from .final_model import build_final_model
    from .finalists import Finalists, run_finalists
    from .finish import final_basis, hand_back, member_options, task_options
    from .pareto import parse_pick
    from .ranking import best_trial, front_record, no_usable_reason, picked_trial
    from .tuning import interrupted, restore_tuner

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
        cluster.connect(address, connect_timeout)
        results = restore_tuner(settings, data).get_results()
        if interrupted(results, settings.num_samples, None, watched=False):
            raise InputError("this search did not finish; continue it with --resume first", settings.experiment_path)
        started = time.time()
        several = len(settings.objectives) > 1
        ranked = picked_trial(results, settings.objectives, rule) if several else best_trial(results)
        if ranked is None:
            raise InputError(f"no usable trial to build a final model from ({no_usable_reason(results)})",
                             settings.experiment_path)
        best, epoch, loss = ranked
        finalists: Finalists | None = None
        if settings.finalists:  # the stage has ended: restoring it runs nothing and gives its winner again
            finalists = run_finalists(settings, results, data, verbose=0)
            if finalists is None:
                raise InputError("this search's finalist stage did not finish; continue it with --resume first",
                                 settings.experiment_path)
        config = Config.from_dict(dict(best.config or {}), source="best trial")
        base, epochs, checkpoint = final_basis(config, epoch, best.checkpoint, finalists)
        options = task_options(settings)
        final = build_final_model(policy, size, base.replace(threads=max(1, int(options["num_cpus"]))), epochs,
                                  data, checkpoint, options, member_options(settings, size))
        record = {"best_trial": trial_id_of(best.path), "best_config": config.to_dict(), "best_epoch": epoch,
                  "best_val_loss": loss, "trials": len(results),
                  **({"objectives": settings.objectives, "pick": str(rule),
                      "front": front_record(results, settings.objectives)} if several else {}),
                  **hand_back(final, settings, data, None, epochs, suffix=f"-{name}"),
                  "wall_seconds": {"final_model": round(time.time() - started, 1)}}
        storage.write_text(record_path, json.dumps(record, indent=2) + "\n")
    return {**record, "record": record_path}


def cmd_finalize(args: Any) -> int:
    from .console import print_final

    summary = finalize(args.experiment, args.final, args.final_size, args.address, args.connect_timeout, args.pick)
    print(f"\nFrom {summary['best_trial']} (val loss {summary['best_val_loss']:.4f} at epoch {summary['best_epoch']}).")
    print_final(summary)
    print(f"Recorded in {summary['record']} ({FINAL_FILE} and export/ are untouched)")
    return 0

"""After the search: pick the best trial, retrain it, score the test pairs, export; optionally ensemble.

The training work runs as Ray tasks with a trial's resources, so on a cluster it lands on a worker node (where
the GPUs are), not on the driver; the driver writes the exports and final.json to the experiment's storage.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

import ray
import torch
from ray import tune

from . import storage
from .checkpoint import export_ensemble, export_model
from .cluster import alive_nodes
from .config import Config
from .console import final_stage_line
from .data import PairData
from .errors import InputError
from .final_model import FinalModel, build_final_model, cpu_state, rebuilt, trial_model

# train_finalist: finalist stages saved before it moved to finalists.py name it from here in their pickled state
from .finalists import Finalists, train_finalist  # noqa: F401
from .metrics import chance_check, threshold_note
from .model import EnsembleNet
from .names import FINAL_FILE, trial_id_of
from .pareto import parse_pick
from .publishing import export_targets, publish_export
from .ranking import (
    best_report_row,
    best_trial,
    each_result,
    front_record,
    no_usable_reason,
    picked_trial,
    status_counts,
    top_trials,
)
from .scoring import images_on, resolve_device, val_and_test
from .settings import SearchSettings


def ensemble_and_test(members: list[tuple[Config, Any]], data: PairData) -> tuple[EnsembleNet, dict[str, Any]]:
    """Average the logits of the given trials' own models (best epochs, trained on the train part only).

    The threshold is chosen on the val pairs, which no member trained on."""
    model = EnsembleNet([m for _, m in members], [c for c, _ in members])
    device = resolve_device(model.config)
    model = model.to(device)
    return model, val_and_test(model, images_on(device, data.images), data, model.config)


# ------------------------------------------------------------------------------------------------------
# The Ray tasks: they return CPU weights and scores; the driver rebuilds the models to export them.

def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _ensemble_task(members: list[tuple[dict[str, Any], tune.Checkpoint | None]], data: PairData
                   ) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any], str]:
    loaded = []
    for values, checkpoint in members:
        config = Config.from_dict(values, source="ensemble member")
        loaded.append((config, trial_model(checkpoint, config)))
    model, report = ensemble_and_test(loaded, data)
    return [cpu_state(member) for member in model.members], report, _node_id()


def task_options(settings: SearchSettings) -> dict[str, Any]:
    """A retrain takes one trial's GPU share (or --retrain-gpus) and the CPUs the search used at once, up to
    what one node has: the search is over, so those cores are free."""
    largest = max((node.get("CPU", 0.0) for node in alive_nodes()), default=0.0)
    cpus = max(settings.cpus_per_trial, min(largest, settings.cpus_per_trial * max(1, settings.max_concurrent)))
    if settings.retrain_cpus:
        cpus = settings.retrain_cpus
    gpus = settings.gpus_per_trial if settings.retrain_gpus is None else settings.retrain_gpus
    return {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 1}


def member_options(settings: SearchSettings, size: int) -> dict[str, Any]:
    """The `size` members of a final model share one retrain's room, split evenly, so that they all run at once
    wherever one retrain could: on 2 cores, three members at 2/3 of a CPU each and one thread each take about
    1.5 single-thread fits, where two at once and then the third would take 2 (Ray wants whole amounts above 1)."""
    def share(amount: float) -> float:
        part = amount / size
        return float(math.floor(part)) if part > 1 else part
    options = task_options(settings)
    return {**options, "num_cpus": share(options["num_cpus"]), "num_gpus": share(options["num_gpus"])}


def judged(test: dict[str, Any], data: PairData) -> dict[str, Any]:
    """final.json's verdicts on a model's test scores: "chance" (is its AUC better than chance?) and, when the
    val pairs chose a threshold that rejects every pair, "threshold_note" saying so."""
    verdicts: dict[str, Any] = {"chance": chance_check(test["auc"], data.test[:, 2], "test")}
    note = threshold_note(test["threshold_logit"])
    if note:
        verdicts["threshold_note"] = note
    return verdicts


def _scalars(test: dict[str, Any]) -> dict[str, Any]:
    """Test metrics without the ROC points, for an export's metrics.json."""
    return {k: v for k, v in test.items() if not k.startswith("roc_")}


def final_basis(config: Config, epoch: int, checkpoint: tune.Checkpoint | None, finalists: Finalists | None
                ) -> tuple[Config, int, tune.Checkpoint | None]:
    """What the final model is built from: the finalists' winner (its config, the median of its seeds' best
    epochs, its most typical run), else the best trial (its config, best epoch and checkpoint)."""
    if finalists is not None and finalists.config is not None:
        return finalists.config, finalists.epochs, finalists.checkpoint
    return config, epoch, checkpoint


def hand_back(final: FinalModel, settings: SearchSettings, data: PairData, export_dir: str | None, epochs: int,
              suffix: str = "") -> dict[str, Any]:
    """Export a final model to EXPERIMENT/export<suffix> (and EXPORT_DIR<suffix>), with whom it trained on (for
    evaluate's overlap check); returns its part of final.json."""
    target, copy = export_targets(settings, export_dir, suffix)
    test, threshold, people = final.scores["test"], final.threshold_logit, data.training_people
    if isinstance(final.model, EnsembleNet):
        publish_export(lambda folder: export_ensemble(final.model, folder, metrics=_scalars(test),
                                                      threshold_logit=threshold, trained_people=people), target, copy)
    else:
        publish_export(lambda folder: export_model(final.model, final.configs[0], folder, threshold_logit=threshold,
                                                   metrics={"epochs_trained": epochs, **_scalars(test)},
                                                   trained_people=people), target, copy)
    part: dict[str, Any] = {**final.scores, "epochs": epochs, "final": final.record, "export": target,
                            **({"export_copy": copy} if copy else {})}
    part["retrain_node"] = final.record["members"][0].get("node")
    return {**part, **judged(test, data)}


def finish_search(settings: SearchSettings, results: tune.ResultGrid, data: PairData, export_dir: str | None,
           retrain: bool = True, ensemble: int = 0, search_seconds: float = 0.0,
           resumed: bool = False, finalists: Finalists | None = None) -> tuple[dict[str, Any], Any]:
    """Pick the best trial (or take the finalists' winner), retrain, test, export; optionally also ensemble the
    top trials; write final.json (with the wall time of the search as the caller measured it, and of this step).

    Returns (summary, retrained model). Without a usable trial (every one diverged or errored) the summary and
    final.json say why under "no_usable_trial", and nothing is retrained or exported: (summary, None).
    """
    started = time.time()
    counts = {"experiment": settings.experiment_path, "trials": len(results),
              "errored_trials": sum(result.error is not None for result in each_result(results)),
              "trial_statuses": status_counts(results)}
    several = len(settings.objectives) > 1
    rule = parse_pick(settings.pick, settings.objectives)
    picked = picked_trial(results, settings.objectives, rule) if several else best_trial(results)
    if picked is None:
        unusable = {"no_usable_trial": no_usable_reason(results), **counts,
                    "wall_seconds": {"search": round(search_seconds, 1), "resumed": resumed}}
        storage.write_text(storage.child(settings.experiment_path, FINAL_FILE), json.dumps(unusable, indent=2) + "\n")
        return unusable, None
    best, epoch, loss = picked
    config = Config.from_dict(dict(best.config or {}), source="best trial")
    summary: dict[str, Any] = {"best_config": config.to_dict(), "best_epoch": epoch, "best_val_loss": loss,
                               "best_trial": trial_id_of(best.path), **counts}
    if several:  # what was minimised, the front, and which point of it is handed back
        summary.update(objectives=settings.objectives, pick=settings.pick,
                       front=front_record(results, settings.objectives))
    # Without a retrain, the best trial's own val AUC at its best epoch is what tells a model from chance.
    summary["chance"] = chance_check(float(best_report_row(best.metrics_dataframe).get("val_auc", math.nan)),
                                     data.val_scored[:, 2], "val")
    if "identity_overlap" in data.info:  # allowed by allow_identity_overlap: the test score is not clean
        summary["identity_overlap"] = data.info["identity_overlap"]
    if finalists is not None:
        summary["finalists"] = finalists.record
    retrained, epochs, threshold_checkpoint = final_basis(config, epoch, best.checkpoint, finalists)
    options = task_options(settings)
    threads = max(1, int(options["num_cpus"]))
    model = None
    if retrain:
        print(final_stage_line(settings.final, settings.final_size, epochs), flush=True)
        final = build_final_model(settings.final, settings.final_size, retrained.replace(threads=threads), epochs,
                                  data, threshold_checkpoint, options, member_options(settings, settings.final_size))
        summary.update(hand_back(final, settings, data, export_dir, epochs))
        model = final.model
    if ensemble >= 2:
        chosen = [(result, loss) for result, loss in top_trials(results, ensemble) if result.checkpoint is not None]
        if len(chosen) < 2:
            raise InputError(f"option --ensemble={ensemble}: only {len(chosen)} trial(s) have a usable checkpoint")
        configs = [Config.from_dict(dict(result.config or {}), source="ensemble member") for result, _ in chosen]
        ensemble_task = ray.remote(_ensemble_task).options(**options)
        states, report, node = ray.get(ensemble_task.remote(
            [(c.replace(threads=threads).to_dict(), r.checkpoint) for c, (r, _) in zip(configs, chosen)], data))
        members = EnsembleNet([rebuilt(c, s) for c, s in zip(configs, states)], configs)
        report["members"] = [{"trial_id": trial_id_of(result.path), "val_loss": loss} for result, loss in chosen]
        target, copy = export_targets(settings, export_dir, "-ensemble")
        publish_export(lambda folder: export_ensemble(members, folder, metrics=_scalars(report["test"]),
                                               threshold_logit=report["test"]["threshold_logit"],
                                               trained_people=data.training_people), target, copy)
        summary["ensemble"] = {**report, **judged(report["test"], data), "node": node, "export": target,
                               **({"export_copy": copy} if copy else {})}
    summary["wall_seconds"] = {"search": round(search_seconds, 1),  # of this invocation (a resume: its part only)
                               "retrain_test_export": round(time.time() - started, 1), "resumed": resumed}
    if finalists is not None:
        summary["wall_seconds"]["finalists"] = finalists.record["wall_seconds"]
    storage.write_text(storage.child(settings.experiment_path, FINAL_FILE), json.dumps(summary, indent=2) + "\n")
    return summary, model

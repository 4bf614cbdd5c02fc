"""After the search: pick the trial, build the final model (--final), score the test pairs, export, write the
record; optionally also the ensemble of the top trials' own models. `run_search.py` does it as the search ends
(final.json, export/), `tune-siamese finalize` later with another policy (final-NAME.json, export-NAME/): both
through hand_back_final.

The training and scoring run as Ray tasks with a trial's resources, so on a cluster they land on a worker node
(where the GPUs are), not on the driver; the driver writes the exports and the record to the experiment's storage.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from ray import tune

from tune_siamese.artifacts.checkpoint import export_ensemble, export_model
from tune_siamese.core import storage
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import FINAL_FILE, trial_id_of
from tune_siamese.core.progress import report
from tune_siamese.data import PairData
from tune_siamese.final.finalists import Finalists
from tune_siamese.final.policies import (
    ChooseOnVal,
    FinalModel,
    build_final_model,
    check_checkpoint,
    cpu_state,
    member_threads,
    score_members,
    trial_model,
)
from tune_siamese.final.publishing import (
    WriteFailed,
    export_size,
    export_targets,
    publish_export,
    remove_export,
    remove_stale_temporaries,
    write_failure,
)
from tune_siamese.searching.cluster import alive_nodes
from tune_siamese.searching.pareto import PickRule, parse_pick
from tune_siamese.searching.ranking import (
    best_report_row,
    best_trial,
    each_result,
    front_record,
    no_usable_reason,
    picked_trial,
    status_counts,
    top_trials,
)
from tune_siamese.searching.settings import SearchSettings
from tune_siamese.training.engine import Diverged
from tune_siamese.training.metrics import chance_check, threshold_note
from tune_siamese.training.model import EnsembleNet

# The record's key for a final model whose training diverged (a member, or the threshold model): the pick is
# recorded, nothing is exported, and the command exits 3 (EXIT_NO_USABLE_TRIAL) as when no trial is usable.
FINAL_DIVERGED = "final_diverged"


def task_options(settings: SearchSettings) -> dict[str, Any]:
    """A retrain takes one trial's GPU share (or --retrain-gpus) and the CPUs the search used at once, up to
    what one node has: the search is over, so those cores are free. --reproducible: one trial's CPUs, so that its
    torch thread count (policies.member_threads) is the settings', not the cluster's."""
    largest = max((node.get("CPU", 0.0) for node in alive_nodes()), default=0.0)
    cpus = max(settings.cpus_per_trial, min(largest, settings.cpus_per_trial * max(1, settings.max_concurrent)))
    if settings.reproducible:
        cpus = settings.cpus_per_trial
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


def threads_warning(settings: SearchSettings, plan: FinalPlan) -> str | None:
    """A WARNING line when this final model's fits run with another torch thread count than the search's own final
    fit recorded in final.json (finalize, or a rerun through --resume): the same seed scores differently with
    another count. None when they agree, or there is no such record (or no fit: --final trial)."""
    if plan.policy == "trial":
        return None
    try:
        final = json.loads(storage.read_text(storage.child(settings.experiment_path, FINAL_FILE)) or "{}")
    except json.JSONDecodeError:
        return None
    recorded = (final.get("final") if isinstance(final, dict) else None) or {}
    count = recorded.get("torch_threads") if isinstance(recorded, dict) else None
    now = member_threads(member_options(settings, plan.size))
    if not isinstance(count, int) or count == now:
        return None
    fix = "" if settings.reproducible else " (--reproducible fixes the count)"
    return (f"WARNING: the final model's fits run with {now} torch thread(s), the search's own final fit with {count} "
            f"({FINAL_FILE}): its scores may differ from a fit with {count}, even with the same seed{fix}")


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


def final_stage_line(policy: str, size: int, epochs: int) -> str:
    """What the console says while the final model is built (it takes minutes, and Ray's lines start late)."""
    work = {"retrain": f"one model on train + val for {epochs} epochs (a Ray task)",
            "trial": "the best trial's own model",
            "seeds": f"{size} models on train + val for {epochs} epochs each, side by side (Ray tasks)",
            "folds": f"{size} models on identity-disjoint folds, up to {epochs} epochs each, side by side (Ray tasks)"}
    return f"[final] {work[policy]}; then the test pairs and the export ..."


def export_final(final: FinalModel, settings: SearchSettings, data: PairData, export_dir: str | None, epochs: int,
                 suffix: str = "") -> dict[str, Any]:
    """Export a final model to EXPERIMENT/export<suffix> (and EXPORT_DIR<suffix>), with whom it trained on (for
    evaluate's overlap check); returns its part of the record."""
    target, copy = export_targets(settings, export_dir, suffix)
    test, threshold, people = final.scores["test"], final.threshold_logit, data.training_people
    if isinstance(final.model, EnsembleNet):
        publish_export(lambda folder: export_ensemble(final.model, folder, metrics=_scalars(test),
                                                      threshold_logit=threshold, trained_people=people), target, copy,
                       export_size(final.model))
    else:
        publish_export(lambda folder: export_model(final.model, final.configs[0], folder, threshold_logit=threshold,
                                                   metrics={"epochs_trained": epochs, **_scalars(test)},
                                                   trained_people=people), target, copy, export_size(final.model))
    part: dict[str, Any] = {**final.scores, "epochs": epochs, "final": final.record, "export": target,
                            **({"export_copy": copy} if copy else {})}
    part["retrain_node"] = final.record["members"][0].get("node")
    return {**part, **judged(test, data)}


def trials_ensemble(settings: SearchSettings, results: tune.ResultGrid, data: PairData, size: int,
                    export_dir: str | None, options: dict[str, Any], threads: int) -> dict[str, Any]:
    """--ensemble K: the top K trials' own models (best epochs, trained on the train part only), their logits
    averaged, scored in the final models' task with the threshold chosen on the val pairs (which no member
    trained on), exported to export-ensemble; returns the record's "ensemble"."""
    chosen = [(result, loss) for result, loss in top_trials(results, size) if result.checkpoint is not None]
    if len(chosen) < 2:
        raise InputError(f"option --ensemble={size}: only {len(chosen)} trial(s) have a usable checkpoint")
    configs = [Config.from_dict(dict(result.config or {}), source="ensemble member") for result, _ in chosen]
    models = [trial_model(result.checkpoint, config) for config, (result, _) in zip(configs, chosen)]
    report, node = score_members([(config.replace(threads=threads), cpu_state(model))
                                  for config, model in zip(configs, models)], data, ChooseOnVal(), options)
    members = EnsembleNet(models, configs)  # the loaded models themselves: no second build from their weights
    report["members"] = [{"trial_id": trial_id_of(result.path), "val_loss": loss} for result, loss in chosen]
    target, copy = export_targets(settings, export_dir, "-ensemble")
    publish_export(lambda folder: export_ensemble(members, folder, metrics=_scalars(report["test"]),
                                                  threshold_logit=report["test"]["threshold_logit"],
                                                  trained_people=data.training_people), target, copy,
                   export_size(members))
    return {**report, **judged(report["test"], data), "node": node, "export": target,
            **({"export_copy": copy} if copy else {})}


@dataclass(frozen=True)
class FinalPlan:
    """What hand_back_final builds and where it records it: the search's own final.json and export/ (with
    --export-dir's copy, --no-retrain and --ensemble K), or finalize's final-NAME.json and export-NAME/."""

    policy: str  # --final
    size: int  # --final-size
    pick: PickRule  # the point of a multi-objective search's front
    record_path: str
    export_suffix: str = ""  # export<suffix>
    export_dir: str | None = None  # --export-dir: a copy of the export there
    build: bool = True  # False (--no-retrain): the pick is recorded, nothing is built or exported
    ensemble: int = 0  # >= 2: also the top K trials' own models averaged (export-ensemble)
    seconds_as: str = "retrain_test_export"  # this step's key in the record's wall_seconds


def hand_back_final(settings: SearchSettings, results: tune.ResultGrid, data: PairData, plan: FinalPlan,
                    finalists: Finalists | None = None, noted: dict[str, Any] | None = None,
                    wall_seconds: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any] | None:
    """Pick the trial (the lowest val loss, or plan.pick's point of a multi-objective front), take the finalists'
    winner when there is one, build the final model, score and export it (and the ensemble), and write the record
    to plan.record_path: the pick, `noted` (the caller's own keys), the scores, and `wall_seconds` (the caller's
    own wall times) with this step's.

    Returns (record, final model; None with plan.build False or when the final model diverged: the record says
    so under FINAL_DIVERGED and nothing is exported); None when no trial is usable (every one diverged or
    errored), with nothing written: the caller says so. The picked checkpoint is checked to load before any
    retrain. The record and its exports are whole or none: a failure removes the exports this call wrote (a full
    disk at the record: InputError, one line)."""
    started = time.time()
    several = len(settings.objectives) > 1
    picked = picked_trial(results, settings.objectives, plan.pick) if several else best_trial(results)
    if picked is None:
        return None
    best, epoch, loss = picked
    config = Config.from_dict(dict(best.config or {}), source="best trial")
    record: dict[str, Any] = {"best_trial": trial_id_of(best.path), "best_config": config.to_dict(),
                              "best_epoch": epoch, "best_val_loss": loss, "trials": len(results), **(noted or {})}
    if several:  # what was minimised, the front, and which point of it is handed back
        record.update(objectives=settings.objectives, pick=str(plan.pick),
                      front=front_record(results, settings.objectives))
    # Without a final model, the best trial's own val AUC at its best epoch is what tells a model from chance;
    # a final model's test AUC replaces it.
    record["chance"] = chance_check(float(best_report_row(best.metrics_dataframe).get("val_auc", math.nan)),
                                    data.val_scored[:, 2], "val")
    base, epochs, checkpoint = final_basis(config, epoch, best.checkpoint, finalists)
    options = task_options(settings)
    threads = max(1, int(options["num_cpus"]))
    remove_stale_temporaries(settings.experiment_path)  # a killed run's half export or record
    model = None
    try:
        if plan.build:
            check_checkpoint(checkpoint, base)  # before any retrain: a truncated state.pt is found now, not after
            report(final_stage_line(plan.policy, plan.size, epochs))
            warning = threads_warning(settings, plan)
            if warning:
                report(warning)
            try:
                final = build_final_model(plan.policy, plan.size, base.replace(threads=threads), epochs, data,
                                          checkpoint, options, member_options(settings, plan.size))
            except Diverged as exc:  # recorded, nothing exported; the caller says so and exits 3
                record[FINAL_DIVERGED] = f"--final {plan.policy} (size {plan.size}): {exc}"
            else:
                record.update(export_final(final, settings, data, plan.export_dir, epochs, plan.export_suffix))
                model = final.model
        if plan.ensemble >= 2:
            record["ensemble"] = trials_ensemble(settings, results, data, plan.ensemble, plan.export_dir, options,
                                                 threads)
        record["wall_seconds"] = {**(wall_seconds or {}), plan.seconds_as: round(time.time() - started, 1)}
        written = storage.record_as_written(record, settings.experiment_path)  # relative paths: it may move
        storage.write_text(plan.record_path, json.dumps(written, indent=2) + "\n")
    except BaseException as exc:
        # Whole or none, the record and its exports together: an export without its record would be taken for a
        # finished one (and refuse finalize's rerun), so the exports this call wrote go with a failed record.
        removed = written_exports(record)
        for target in removed:
            remove_export(target)
        if isinstance(exc, OSError):  # the record's write: a full disk, a lost mount
            gone = f"; its export ({', '.join(removed)}) was removed" if removed else ""
            raise WriteFailed(f"cannot write the record ({write_failure(exc)}){gone}: nothing of this final model "
                             "is left; free some space and run it again", plan.record_path) from None
        raise
    return record, model


def written_exports(record: dict[str, Any]) -> list[str]:
    """The exports a record names (the final model's, the ensemble's)."""
    return [part["export"] for part in (record, record.get("ensemble") or {}) if part.get("export")]


def finish_search(settings: SearchSettings, results: tune.ResultGrid, data: PairData, export_dir: str | None,
                  retrain: bool = True, ensemble: int = 0, search_seconds: float = 0.0,
                  resumed: bool = False, finalists: Finalists | None = None) -> tuple[dict[str, Any], Any]:
    """The search's own final model (--final, --final-size, --pick, --ensemble): hand_back_final to final.json and
    export/, with the trial counts, the finalist stage and the wall time of the search as the caller measured it.

    Returns (summary, final model). Without a usable trial (every one diverged or errored) the summary and
    final.json say why under "no_usable_trial", and nothing is built or exported: (summary, None).
    """
    counts = {"experiment": settings.experiment_path, "trials": len(results),
              "errored_trials": sum(result.error is not None for result in each_result(results)),
              "trial_statuses": status_counts(results)}
    wall: dict[str, Any] = {"search": round(search_seconds, 1), "resumed": resumed}  # a resume: its part only
    record_path = storage.child(settings.experiment_path, FINAL_FILE)
    noted: dict[str, Any] = dict(counts)
    if settings.grown_from:  # the trial counts it grew from; the earlier final models are final-n<count>.json
        noted["grown_from"] = settings.grown_from
    if settings.warm_start:  # the experiments its study was warm-started from
        noted["warm_start"] = settings.warm_start
    if "identity_overlap" in data.info:  # allowed by allow_identity_overlap: the test score is not clean
        noted["identity_overlap"] = data.info["identity_overlap"]
    walls = dict(wall)
    if finalists is not None:
        noted["finalists"] = finalists.record
        walls["finalists"] = finalists.record["wall_seconds"]
    plan = FinalPlan(settings.final, settings.final_size, parse_pick(settings.pick, settings.objectives), record_path,
                     export_dir=export_dir, build=retrain, ensemble=ensemble)
    handed = hand_back_final(settings, results, data, plan, finalists, noted, walls)
    if handed is None:
        unusable = {"no_usable_trial": no_usable_reason(results), **counts, "wall_seconds": wall}
        storage.write_text(record_path, json.dumps(storage.record_as_written(unusable, settings.experiment_path),
                                                   indent=2) + "\n")
        return unusable, None
    return handed

"""After the search: pick the best trial, retrain it, score the test pairs, export; optionally ensemble.

The training work runs as Ray tasks with a trial's resources, so on a cluster it lands on a worker node (where
the GPUs are), not on the driver; the driver writes the exports and final.json to the experiment's storage.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray
import torch
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from . import storage
from .checkpoint import CHECKSUMS, export_ensemble, export_model
from .cluster import alive_nodes
from .config import Config
from .data import PairData
from .engine import chance_check, images_on, resolve_device, threshold_note, val_and_test
from .errors import InputError
from .final_model import FinalModel, build_final_model, cpu_state, rebuilt, trial_model
from .model import EnsembleNet
from .names import FINAL_FILE, VAL_LOSS, trial_status
from .settings import SearchSettings, check_owner
from .tuning import CompletionWatch, SearchProgress, fit_tuner, live_table, train_siamese


def best_trial(results: tune.ResultGrid) -> tuple[tune.Result, int, float] | None:
    """(result, epoch of its best val loss, that loss) of the trial with the lowest val loss at any epoch, ranked
    as top_trials ranks (errored and diverged trials never win); None when no trial is usable."""
    ranked = top_trials(results, 1)
    if not ranked:
        return None
    best = ranked[0][0]
    epoch, loss = _best_epoch(best.metrics_dataframe)
    return best, epoch, loss


def no_usable_reason(results: tune.ResultGrid) -> str:
    """Why best_trial found none: how many trials there were and why each is unusable (_unusable)."""
    if not len(results):
        return "the search ran no trial"
    reasons: dict[str, int] = {}
    for result in _each(results):
        why = _unusable(result) or "usable"
        reasons[why] = reasons.get(why, 0) + 1
    counts = ", ".join(f"{count} {why}" for why, count in reasons.items())
    return f"none of the {len(results)} trials has a usable val loss ({counts})"


def _best_row(frame: Any) -> Any:
    """The report of a trial's lowest val loss at any epoch."""
    rows = frame[frame[VAL_LOSS].notna()]
    return rows.loc[rows[VAL_LOSS].idxmin()]


def _best_epoch(frame: Any) -> tuple[int, float]:
    """(epoch, val loss) of a trial's lowest val loss at any epoch."""
    row = _best_row(frame)
    return int(row["epoch"]), float(row[VAL_LOSS])


def _unusable(result: tune.Result) -> str | None:
    """Why a trial cannot be ranked by its val loss ("errored", "diverged", "reported no val loss"), or None."""
    frame = result.metrics_dataframe
    if result.error is not None:
        return "errored"
    if _diverged(frame):
        return "diverged"
    if frame is None or VAL_LOSS not in frame or "epoch" not in frame or \
            (frame[VAL_LOSS].notna() & frame["epoch"].notna()).sum() == 0:
        return "reported no val loss"
    return None


def _each(results: tune.ResultGrid) -> Any:
    """The results one by one (a ResultGrid indexes but declares no iterator)."""
    return (results[i] for i in range(len(results)))


def _diverged(frame: Any) -> bool:
    """Whether a trial's reports say it diverged (its last report has diverged=1)."""
    return bool(frame is not None and "diverged" in frame and frame["diverged"].fillna(0).max() > 0)


def status_counts(results: tune.ResultGrid) -> dict[str, int]:
    """How many trials finished, were stopped by ASHA, diverged or errored (names.trial_status's rule)."""
    counts: dict[str, int] = {}
    for result in _each(results):
        frame = result.metrics_dataframe
        config = Config.from_dict(dict(result.config or {}), source="trial config")
        epochs, best = 0, None
        if frame is not None and "epoch" in frame and VAL_LOSS in frame:
            rows = frame[frame["epoch"].notna() & frame[VAL_LOSS].notna()]  # a diverged trial's last row has neither
            if len(rows):
                epochs, best = int(rows["epoch"].max()), int(rows.loc[rows[VAL_LOSS].idxmin(), "epoch"])
        status = trial_status("ERROR" if result.error is not None else "TERMINATED", epochs, best, _diverged(frame),
                              config.max_epochs, config.patience)
        counts[status] = counts.get(status, 0) + 1
    return counts


def top_trials(results: tune.ResultGrid, k: int) -> list[tuple[tune.Result, float]]:
    """The k trials with the lowest val loss at any epoch (errored, diverged and unreported trials left out).
    Equal losses are ordered by trial name: a restored ResultGrid may list the trials in another order, and a
    resumed finalist stage must find the same finalists (seen on tiny data, where trials tie exactly)."""
    ranked = []
    for result in _each(results):
        if _unusable(result) is None:
            ranked.append((result, _best_epoch(result.metrics_dataframe)[1]))
    ranked.sort(key=lambda pair: (pair[1], Path(pair[0].path).name))
    return ranked[:k]


def ensemble_and_test(members: list[tuple[Config, Any]], data: PairData) -> tuple[EnsembleNet, dict[str, Any]]:
    """Average the logits of the given trials' own models (best epochs, trained on the train part only).

    The threshold is chosen on the val pairs, which no member trained on."""
    model = EnsembleNet([m for _, m in members], [c for c, _ in members])
    device = resolve_device(model.config)
    model = model.to(device)
    return model, val_and_test(model, images_on(device, data.images), data, model.config)


# ------------------------------------------------------------------------------------------------------
# Finalists (--finalists K --finalist-seeds S): the search's best val loss is the minimum over many noisy trials,
# so the top one is partly luck. The top K configurations train again, each with the same S fresh seeds, as a
# second Tune experiment (EXPERIMENT/finalists), and the lowest mean best val loss wins.

FINALISTS_DIR = "finalists"


def train_finalist(config: dict[str, Any], data: PairData, configs: dict[str, dict[str, Any]]) -> None:
    """One finalist run: the search's own trainable on a finalist's config (keyed by its search trial) with one
    of the fresh seeds; it validates, stops early and reports every epoch like a search trial."""
    train_siamese({**configs[config["finalist"]], "seed": config["seed"]}, data)


def finalist_seeds(settings: SearchSettings) -> list[int]:
    """seed + 1 ... seed + S: never the seed every search trial trained with (seed), and the same for every
    finalist, so that finalists differ by their configs rather than by the seeds each drew."""
    return [settings.seed + 1 + i for i in range(settings.finalist_seeds)]


def finalist_tuner(settings: SearchSettings, data: PairData, configs: dict[str, dict[str, Any]], seeds: list[int],
                   verbose: int = 1) -> tune.Tuner:
    """A grid of (finalist, seed), FIFO, no searcher, each run with a search trial's resources; after a resume
    whose finalist stage was cut short, that stage goes on (its ended runs are kept)."""
    trainable = tune.with_resources(tune.with_parameters(train_finalist, data=data, configs=configs),
                                    {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    path = storage.child(settings.experiment_path, FINALISTS_DIR)
    if tune.Tuner.can_restore(path):
        check_owner(path)  # restoring unpickles its tuner.pkl, as --resume does the search's
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # its saved run config holds live_table's reporter
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable, param_space={"finalist": tune.grid_search(list(configs)), "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), max_concurrent_trials=settings.max_concurrent or None,
                                    reuse_actors=True, trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(
            name=FINALISTS_DIR, storage_path=settings.experiment_path, verbose=verbose,
            progress_reporter=live_table(["finalist", "seed"]), checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[CompletionWatch(), SearchProgress(len(configs) * len(seeds), "finalists", "runs")],
            failure_config=tune.FailureConfig(max_failures=settings.max_failures)))


def run_outcome(result: tune.Result) -> dict[str, Any]:
    """One finalist run: its trial folder and its best val loss and epoch, or why it has none ("error")."""
    outcome: dict[str, Any] = {"run": Path(result.path).name}
    error = _unusable(result)
    if error is not None:
        return {**outcome, "error": error}
    epoch, loss = _best_epoch(result.metrics_dataframe)
    return {**outcome, "best_val_loss": loss, "best_epoch": epoch}


def summarise_finalists(top: list[tuple[str, float, dict[str, Any]]], seeds: list[int],
                        runs: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """final.json's "finalists": per finalist (its search trial, val loss there and config) each seed's best val
    loss and epoch, their mean and s.d.; the winner, or why there is none ("fallback").

    top: (search trial, its best val loss, its config), best first; runs: (trial, seed) -> run_outcome.
    A finalist with a diverged run cannot win (that config is unstable); an errored or missing run leaves the
    comparison incomplete, so no finalist wins and the search's best trial is used instead."""
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    for trial_id, search_loss, config in top:
        outcomes = [runs.get((trial_id, seed)) or {"error": "missing"} for seed in seeds]
        problems += [f"{trial_id} seed {seed} {o['error']}" for seed, o in zip(seeds, outcomes)
                     if o.get("error") in ("errored", "missing", "reported no val loss")]
        losses = [o.get("best_val_loss") for o in outcomes]
        done = [loss for loss in losses if loss is not None]
        entries.append({
            "trial_id": trial_id, "search_val_loss": search_loss, "config": config, "seeds": seeds,
            "val_losses": losses, "best_epochs": [o.get("best_epoch") for o in outcomes],
            "runs": [o.get("run") for o in outcomes], "failed": [o.get("error") for o in outcomes],
            "mean_val_loss": statistics.fmean(done) if done else None,
            "sd_val_loss": statistics.stdev(done) if len(done) > 1 else None,  # sample s.d. over the seeds
            "complete": len(done) == len(seeds), "winner": False})
    record: dict[str, Any] = {"seeds": seeds, "trials": entries, "winner": None, "fallback": None,
                              "retrain_epochs": None, "threshold_run": None}
    eligible = [entry for entry in entries if entry["complete"]]
    if problems:
        record["fallback"] = (f"{len(problems)} of {len(entries) * len(seeds)} finalist runs errored or are "
                              f"missing ({'; '.join(problems[:4])}{'; ...' if len(problems) > 4 else ''})")
    elif not eligible:
        record["fallback"] = "every finalist has a run that diverged" if entries else "no trial has a val loss"
    if record["fallback"]:
        return record
    winner = min(eligible, key=lambda entry: entry["mean_val_loss"])  # ties: the better search rank (first)
    winner["winner"] = True
    # The threshold is chosen on the val pairs by one of the winner's own runs: the one whose best val loss is
    # closest to the mean (ties: the first seed), a typical run of the config rather than its luckiest.
    closest = min(range(len(seeds)), key=lambda i: abs(winner["val_losses"][i] - winner["mean_val_loss"]))
    # A single run's best epoch is noisy; the median over the seeds is a typical training length that one
    # outlying seed does not move (rounded up with an even number of seeds).
    epochs = math.ceil(statistics.median(winner["best_epochs"]))
    record.update(winner=winner["trial_id"], retrain_epochs=epochs, threshold_run=winner["runs"][closest])
    return record


@dataclass
class Finalists:
    """The finalist stage's outcome: final.json's record, and what the retrain takes from the winner."""

    record: dict[str, Any]
    config: Config | None = None  # the winner's config (its search trial's); None: the search's best trial
    epochs: int = 0  # the retrain's epochs (summarise_finalists)
    checkpoint: tune.Checkpoint | None = None  # the winner's run whose own model chooses the threshold


def run_finalists(settings: SearchSettings, results: tune.ResultGrid, data: PairData,
                  verbose: int = 1) -> Finalists | None:
    """Train the search's top K configurations again with S fresh seeds each; pick the lowest mean best val loss.

    None when the stage was interrupted (Ctrl-C): as after an interrupted search, --resume goes on with it."""
    started = time.time()
    top = [(Path(result.path).name, loss, Config.from_dict(dict(result.config or {}), source="finalist").to_dict())
           for result, loss in top_trials(results, settings.finalists)]
    seeds = finalist_seeds(settings)
    path = storage.child(settings.experiment_path, FINALISTS_DIR)
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    checkpoints: dict[str, tune.Checkpoint | None] = {}
    if top:
        fewer = f" (only {len(top)} of the trials have a val loss)" if len(top) < settings.finalists else ""
        print(f"[finalists] the top {len(top)} trials{fewer}, seeds {', '.join(map(str, seeds))}: "
              f"{len(top) * len(seeds)} runs in {path}", flush=True)
        grid = fit_tuner(finalist_tuner(settings, data, {trial_id: config for trial_id, _, config in top}, seeds,
                                        verbose))
        watch = CompletionWatch.latest  # tells an interrupt (Ctrl-C) from runs that ended
        if watch is None or watch.cut_short:
            return None
        for result in _each(grid):
            outcome = run_outcome(result)
            runs[(str(result.config["finalist"]), int(result.config["seed"]))] = outcome
            checkpoints[outcome["run"]] = result.checkpoint
    record = summarise_finalists(top, seeds, runs)
    record.update(experiment=path, wall_seconds=round(time.time() - started, 1))
    if record["fallback"] and top:  # without a usable trial finish_search says so itself
        print(f"[finalists] no winner: {record['fallback']}; retraining the search's best trial instead",
              flush=True)
        return Finalists(record)
    winner = next(entry for entry in record["trials"] if entry["winner"])
    return Finalists(record, Config.from_dict(winner["config"], source="finalist"), record["retrain_epochs"],
                     checkpoints.get(record["threshold_run"]))


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


# ------------------------------------------------------------------------------------------------------
# Exports: written next to the experiment (local folder or storage URI), optionally copied to a local folder

def export_targets(settings: SearchSettings, export_dir: str | None, suffix: str = "") -> tuple[str, str | None]:
    """(EXPERIMENT/export<suffix> in the experiment's storage, EXPORT_DIR<suffix> or None)."""
    copy = storage.resolve(f"{export_dir.rstrip('/')}{suffix}") if export_dir else None
    return storage.child(settings.experiment_path, f"export{suffix}"), copy


def publish(write: Callable[[Path], Any], target: str, copy: str | None) -> None:
    """Run `write(folder)` into the target, then copy it. A local target is written into a temporary folder that
    takes its place once whole (storage.replacing_folder): a full disk or Ctrl-C leaves the old export or none,
    never half of one. A URI is written to a local temporary folder and uploaded file by file, each whole, the
    checksums last (storage.upload_folder): one cut short lacks them, and loading refuses it."""
    if storage.is_uri(target):
        with tempfile.TemporaryDirectory(prefix="tune-siamese-export-") as folder:
            write(Path(folder))
            storage.upload_folder(folder, target, last=CHECKSUMS)
            if copy:
                storage.upload_folder(folder, copy, last=CHECKSUMS)
        return
    with storage.replacing_folder(target) as folder:
        write(folder)
    if copy:
        storage.upload_folder(target, copy, last=CHECKSUMS)


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
        publish(lambda folder: export_ensemble(final.model, folder, metrics=_scalars(test), threshold_logit=threshold,
                                               trained_people=people), target, copy)
    else:
        publish(lambda folder: export_model(final.model, final.configs[0], folder, threshold_logit=threshold,
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
              "errored_trials": sum(result.error is not None for result in _each(results)),
              "trial_statuses": status_counts(results)}
    picked = best_trial(results)
    if picked is None:
        unusable = {"no_usable_trial": no_usable_reason(results), **counts,
                    "wall_seconds": {"search": round(search_seconds, 1), "resumed": resumed}}
        storage.write_text(storage.child(settings.experiment_path, FINAL_FILE), json.dumps(unusable, indent=2) + "\n")
        return unusable, None
    best, epoch, loss = picked
    config = Config.from_dict(dict(best.config or {}), source="best trial")
    summary: dict[str, Any] = {"best_config": config.to_dict(), "best_epoch": epoch, "best_val_loss": loss,
                               "best_trial": Path(best.path).name, **counts}
    # Without a retrain, the best trial's own val AUC at its best epoch is what tells a model from chance.
    summary["chance"] = chance_check(float(_best_row(best.metrics_dataframe).get("val_auc", math.nan)),
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
        report["members"] = [{"trial_id": Path(result.path).name, "val_loss": loss} for result, loss in chosen]
        target, copy = export_targets(settings, export_dir, "-ensemble")
        publish(lambda folder: export_ensemble(members, folder, metrics=_scalars(report["test"]),
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

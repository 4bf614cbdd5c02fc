"""The finalist stage (--finalists K --finalist-seeds S), a second Tune experiment under EXPERIMENT/finalists."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.schedulers import FIFOScheduler

from tune_siamese.core import storage
from tune_siamese.core.config import Config
from tune_siamese.core.names import trial_id_of
from tune_siamese.core.progress import report
from tune_siamese.data import PairData
from tune_siamese.searching.callbacks import SearchProgress
from tune_siamese.searching.owners import check_owner
from tune_siamese.searching.ranking import best_epoch_and_loss, each_result, top_trials, unusable_reason
from tune_siamese.searching.settings import SearchSettings
from tune_siamese.searching.trainable import train_siamese
from tune_siamese.searching.tuner import fit_tuner, run_config, trial_folder, trial_name

# ------------------------------------------------------------------------------------------------------
# Finalists (--finalists K --finalist-seeds S): the search's best val loss is the minimum over many noisy trials,
# so the top one is partly luck. The top K configurations train again, each with the same S fresh seeds, as a
# second Tune experiment (EXPERIMENT/finalists), and the lowest mean best val loss wins.

FINALISTS_DIR = "finalists"


def train_finalist(config: dict[str, Any], data: PairData, configs: dict[str, dict[str, Any]]) -> None:
    """One finalist run: the search's own trainable on a finalist's config (keyed by its search trial) with one
    of the fresh seeds; it validates, stops early and reports every epoch like a search trial."""
    train_siamese({**configs[trial_id_of(config["finalist"])], "seed": config["seed"]}, data)


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
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable, param_space={"finalist": tune.grid_search(list(configs)), "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), max_concurrent_trials=settings.max_concurrent or None,
                                    reuse_actors=True, trial_dirname_creator=trial_folder,
                                    trial_name_creator=trial_name),
        run_config=run_config(FINALISTS_DIR, settings.experiment_path, verbose, ["finalist", "seed"],
                              settings.max_failures, [SearchProgress(len(configs) * len(seeds), "finalists", "runs")]))


def run_outcome(result: tune.Result) -> dict[str, Any]:
    """One finalist run: its trial folder and its best val loss and epoch, or why it has none ("error")."""
    outcome: dict[str, Any] = {"run": trial_id_of(result.path)}
    error = unusable_reason(result)
    if error is not None:
        return {**outcome, "error": error}
    epoch, loss = best_epoch_and_loss(result.metrics_dataframe)
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
    top = [(trial_id_of(result.path), loss, Config.from_dict(dict(result.config or {}), source="finalist").to_dict())
           for result, loss in top_trials(results, settings.finalists)]
    seeds = finalist_seeds(settings)
    path = storage.child(settings.experiment_path, FINALISTS_DIR)
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    checkpoints: dict[str, tune.Checkpoint | None] = {}
    if top:
        fewer = f" (only {len(top)} of the trials have a val loss)" if len(top) < settings.finalists else ""
        report(f"[finalists] the top {len(top)} trials{fewer}, seeds {', '.join(map(str, seeds))}: "
               f"{len(top) * len(seeds)} runs in {path}")
        grid, watch = fit_tuner(finalist_tuner(settings, data, {trial_id: config for trial_id, _, config in top}, seeds,
                                        verbose))
        if watch is None or watch.cut_short:  # an interrupt (Ctrl-C), not runs that ended
            return None
        for result in each_result(grid):
            outcome = run_outcome(result)
            runs[(trial_id_of(str(result.config["finalist"])), int(result.config["seed"]))] = outcome
            checkpoints[outcome["run"]] = result.checkpoint
    record = summarise_finalists(top, seeds, runs)
    record.update(experiment=path, wall_seconds=round(time.time() - started, 1))
    if record["fallback"]:
        if top:  # without a usable trial finish_search says so itself
            print(f"[finalists] no winner: {record['fallback']}; retraining the search's best trial instead",
                  flush=True)
        return Finalists(record)
    winner = next(entry for entry in record["trials"] if entry["winner"])
    return Finalists(record, Config.from_dict(winner["config"], source="finalist"), record["retrain_epochs"],
                     checkpoints.get(record["threshold_run"]))

"""Names shared by the search, the work after it and the analysis. Free of torch and Ray, so that reading an
experiment (the analysis) loads neither."""
from __future__ import annotations

import math

# Files of an experiment folder (besides Tune's own)
SETTINGS_FILE = "search_settings.json"  # the search's settings, for --resume and the analysis
SPACE_FILE = "space.json"  # a space given to ts.search as a Python object, recorded as data (searching.spaces)
SPACE_IN_EXPERIMENT = "{experiment}/" + SPACE_FILE  # --space of such a search: the file in its folder, wherever that is
FINAL_FILE = "final.json"  # the retrained model's test scores, written once the search is finished
STUDY_FILE = "optuna.db"  # the default Optuna study storage (SQLite), in a local experiment folder
STATE_FILE = "state.pt"  # inside each trial checkpoint: the resumable training state

# Reported metrics, and who ranks trials by which
VAL_LOSS = "val_loss"  # this epoch's: ASHA's default rung metric; the final pick takes its minimum
BEST_VAL_LOSS = "best_val_loss"  # the best so far: the Optuna searcher learns from it (a trial that later
#                                  overfits still found a good point)
VAL_LOSS_AVG3 = "val_loss_avg3"  # the mean val loss of the last 3 epochs (of all of them before epoch 3)
# --rung-metric: what ASHA compares trials at equal epochs by (this epoch's, the best so far, a moving average)
RUNG_METRICS = {"last": VAL_LOSS, "best": BEST_VAL_LOSS, "avg3": VAL_LOSS_AVG3}
MODE = "min"
# A trial whose mean training or val loss exceeds DIVERGED_ABOVE, 100 × ln 2 ≈ 69.3 (100 times a constant
# predictor's loss: training.engine.check_loss), is ended as diverged; every usable trial reports at most that.
DIVERGED_ABOVE = 100 * math.log(2)
# What a diverged trial reports instead, and what the study and the analysis record for it: finite, so the searcher
# learns "this region diverges" instead of failing, and above every loss a usable trial can report, so that no
# sampler rates a diverged region above a merely bad one (it was 10.0, below a usable trial's 23.1). Twice the bound
# rather than some huge number: samplers that model the values (GP, CMA-ES) are distorted less by a near outlier.
DIVERGED_LOSS = 2 * DIVERGED_ABOVE

# Exit codes of a search besides 0 and 2 (bad input, InputError); docs/guarantees.md lists them.
EXIT_NO_USABLE_TRIAL = 3  # every trial diverged or errored: final.json says why, nothing is exported
EXIT_CTRL_C = 130  # 128 + SIGINT, as a shell reports a job Ctrl-C ended
EXIT_SIGTERM = 143  # 128 + SIGTERM

# What a search hands back (--final; final.policies builds each) and the members of a seeds or folds final model
FINAL_POLICIES = ("retrain", "trial", "seeds", "folds")
# --searcher: Optuna's samplers (samplers.build_sampler)
SEARCHERS = ("tpe", "random", "gp", "cmaes", "qmc", "nsga2")
# The rules that stop trials early (searching.tuner.build_scheduler; searching.rung_rules)
SCHEDULERS = ("asha", "pasha", "pareto", "fifo")
FINAL_SIZE = 3


def final_label(policy: str, size: int) -> str:
    """A few words on a final model, for tables (final.json's final.policy and final.size)."""
    return {"retrain": "retrained on train + val", "trial": "the best trial's own model (train only)",
            "seeds": f"{size} retrains on train + val, averaged",
            "folds": f"{size} models on identity-disjoint folds, averaged"}[policy]

# A trial's id is Tune's (d3f281ec): the console, final.json, the DataFrames, MLflow's run names and the Optuna
# study's user attr tune_trial_id all say it; its folder is trial_<id>. Older records said the folder's name, and
# Tune's own trial name is train_siamese_<id>: trial_id_of() reads each.
TRIAL_PREFIXES = ("trial_", "train_siamese_", "train_finalist_")


def trial_id_of(name: str) -> str:
    """The trial id in a folder path, a folder name, a Tune trial name or the id itself."""
    base = str(name).rstrip("/").rsplit("/", 1)[-1]
    for prefix in TRIAL_PREFIXES:
        if base.startswith(prefix):
            return base.removeprefix(prefix)
    return base


# A trial's status as the search's summary and the analysis report it (trial_status gives the rule)
FINISHED, ASHA_STOPPED, DIVERGED, ERRORED, RUNNING, PENDING = (
    "finished", "asha_stopped", "diverged", "errored", "running", "pending")


def trial_status(tune_status: str | None, epochs: int, best_epoch: int | None, diverged: bool,
                 max_epochs: int, patience: int) -> str:
    """Our status from Tune's recorded one, which says TERMINATED for every trial that ended without error.

    ERROR -> errored; PENDING -> pending; RUNNING, PAUSED or not yet in Tune's state file -> running (also
    after an interrupted search). TERMINATED -> diverged if the trial reported diverged=1; finished if it ran
    max_epochs or its own early stopping ended it (patience epochs without a better val loss); otherwise only
    ASHA can have ended it sooner -> asha_stopped.
    """
    if tune_status == "ERROR":
        return ERRORED
    if tune_status == "PENDING":
        return PENDING
    if tune_status != "TERMINATED":
        return RUNNING
    if diverged:
        return DIVERGED
    if epochs >= max_epochs or (best_epoch is not None and epochs - best_epoch >= patience):
        return FINISHED
    return ASHA_STOPPED


def counted(n: int, noun: str) -> str:
    """"1 trial", "6 trials": a count with its noun (a regular plural), for the console and the analysis."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

"""What each search method hands a user: the DevTest score of the model it returns, at equal epoch budgets.

Space (default 24 configurations): width {0.0625, 0.125} x lr {3e-4, 3e-3, 3e-2} x BatchNorm {on, off} x
optimizer {sgd, adam}; 72 px, batch 32, momentum 0.9, Koch init, early stopping off (--patience). LFW-a by default
($TUNE_SIAMESE_LFW, else ../shared/data/lfw-a; --data synthetic for a quick check). All through Ray Tune on the
same cores, --max-concurrent trials at once, one CPU and one torch thread each.

  grid           tune.grid_search over every configuration, FIFO, --max-epochs epochs each: always run (or loaded
                 from --results). It yields the oracle: every grid configuration retrained as run_search.py
                 retrains its pick, the best DevTest AUC among them (--oracle-top N: cheaper, see below).
  SEARCHER[+asha][:OPTION...]
                 tuner.build_tuner exactly as run_search.py builds it (settings from tune_siamese.app.api.search_settings
                 with --searcher SEARCHER, SEARCHER in random, tpe, gp, cmaes, qmc), given the same epoch budget
                 (--budget, default a quarter of the grid's epochs): a Tune stopper ends the search once its trials
                 have reported that many epochs. +asha: ASHA (--grace-period, --reduction-factor); without it every
                 trial runs --max-epochs (ASHA with grace period = max epochs, which stops nothing). OPTIONs:
                 rung=last|best|avg3 (--rung-metric), val=all (--set val_pairs=all), finalists=KxS (--finalists K
                 --finalist-seeds S; the finalist runs' epochs come out of the same budget: the search gets the
                 budget less K x S x max epochs), reproducible (--reproducible: batches, no ASHA).
  --methods all  grid, random, random+asha, tpe+asha, gp+asha and the variants tpe+asha:rung=best,
                 tpe+asha:rung=avg3, tpe+asha:val=all, tpe+asha:finalists=2x2, tpe:reproducible.

Each search method runs once per searcher seed (--seeds, default 5: seeds 0..4). Its pick is what run_search.py
hands back: the trial with the lowest val loss at any epoch (ranking.best_trial), or the finalists' winner
(finalists.run_finalists), retrained on train + val by final_model's `retrain` policy (Ray tasks) with finish.task_options
(finish_search's path, without the export): trained for the pick's epochs, DevTest scored at the threshold the
pick's own model chose on the val pairs. A pick that was retrained before (same configuration, epochs and threshold
model) is not retrained again: every trial trains with the same trial seed (Config.seed = --trial-seed, whatever
the searcher seed), so one configuration has one learning curve in every method (checked and printed).

Figures: per method over the seeds, DevTest AUC and accuracy at the val-chosen threshold (mean ± s.e.), how many
seeds land within --auc-points AUC points of the oracle, epochs used (search + finalist runs, against the grid's),
wall time; per seed the pick and its scores; every grid configuration's retrained scores; verdict lines for the
targets (TPE+ASHA within 1 AUC point of the oracle in >= 4 of 5 seeds at <= 1/4 of the grid's epochs, and ahead
of random+ASHA on the mean) and, per variant, how far it moved TPE+ASHA.

Oracle: by default every grid configuration is retrained (at its own best val epoch, threshold from its own model):
the exact best-by-test configuration. --oracle-top N instead scores each grid trial's own model (train part only,
best epoch) on DevTest and retrains only the N best of those: cheaper, and the oracle may then miss a configuration
whose own model ranked lower.

--results FILE keeps every finished run (and the grid and oracle) in a JSON file; a later invocation with the same
settings and file reuses them and runs only what is missing, so a long run can be split or continued:

    python3 benchmarks/search_efficiency.py --methods all --results se.json      # LFW-a, 5 seeds; see README.md
    python3 benchmarks/search_efficiency.py --data synthetic --seeds 2 --methods grid,random+asha,tpe+asha \\
        --max-epochs 2 --widths 0.0625 --pairs 256 --no-record                       # quick check, a few minutes
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)

from tune_siamese.core.config import Config  # noqa: E402
from tune_siamese.core.errors import InputError  # noqa: E402
from tune_siamese.core.names import RUNG_METRICS, VAL_LOSS  # noqa: E402
from tune_siamese.searching.cluster import ray_console_environment  # noqa: E402

ray_console_environment()  # Ray's console as run_search.py sets it

SEARCHERS = ("random", "tpe", "gp", "cmaes", "qmc")
BASIC = ["grid", "random", "random+asha", "tpe+asha", "gp+asha"]
VARIANTS = ["tpe+asha:rung=best", "tpe+asha:rung=avg3", "tpe+asha:val=all", "tpe+asha:finalists=2x2",
            "tpe:reproducible"]
TPE, RANDOM = "tpe+asha", "random+asha"  # the two the targets compare


@dataclasses.dataclass(frozen=True)
class Method:
    """One way of searching: run_search.py's options for it."""

    name: str
    searcher: str = "grid"
    asha: bool = False
    rung: str = "last"
    val_pairs: str = "given"
    finalists: int = 0
    finalist_seeds: int = 0
    reproducible: bool = False


def parse_method(text: str) -> Method:
    """'grid' or SEARCHER[+asha][:rung=R][:val=all][:finalists=KxS][:reproducible]."""
    name = text.strip().lower()
    head, *options = name.split(":")
    searcher, plus, scheduler = head.partition("+")
    if name == "grid":
        return Method("grid")
    if searcher not in SEARCHERS or (plus and scheduler != "asha"):
        raise argparse.ArgumentTypeError(f"unknown method {text!r}: grid, or SEARCHER[+asha][:OPTION...] with "
                                         f"SEARCHER one of {', '.join(SEARCHERS)}")
    fields: dict[str, Any] = {"asha": bool(plus)}
    for option in options:
        key, _, value = option.partition("=")
        if key == "rung" and value in RUNG_METRICS:
            fields["rung"] = value
        elif key == "val" and value in ("given", "all"):
            fields["val_pairs"] = value
        elif key == "finalists" and re.fullmatch(r"[1-9]\d*x[1-9]\d*", value):
            fields["finalists"], fields["finalist_seeds"] = (int(n) for n in value.split("x"))
        elif key == "reproducible" and not value:
            fields["reproducible"] = True
        else:
            raise argparse.ArgumentTypeError(f"method {text!r}: unknown option {option!r} (rung=last|best|avg3, "
                                             "val=all, finalists=KxS, reproducible)")
    if fields.get("reproducible") and fields["asha"]:
        raise argparse.ArgumentTypeError(f"method {text!r}: the reproducible mode runs without ASHA; write "
                                         f"{searcher}:reproducible")
    if fields.get("rung", "last") != "last" and not fields["asha"]:
        raise argparse.ArgumentTypeError(f"method {text!r}: a rung metric needs +asha")
    return Method(name, searcher, **fields)


def parse_methods(text: str) -> list[Method]:
    names: list[str] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        names += BASIC + VARIANTS if part == "all" else [part]
    return [parse_method(name) for name in dict.fromkeys(names)]


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="an LFW-a folder (default: $TUNE_SIAMESE_LFW, else ../shared/data/lfw-a) or "
                                  "'synthetic'")
    p.add_argument("--methods", type=parse_methods, default=parse_methods(",".join(BASIC)),
                   help=f"comma list (default: {','.join(BASIC)}; 'all' adds {','.join(VARIANTS)}); the grid "
                        "always runs")
    p.add_argument("--seeds", type=int, default=5, help="searcher seeds 0..N-1 per search method (default 5)")
    p.add_argument("--widths", type=floats, default=[0.0625, 0.125])
    p.add_argument("--lrs", type=floats, default=[3e-4, 3e-3, 3e-2])
    p.add_argument("--batchnorm", default="true,false", help="comma list of true/false")
    p.add_argument("--optimizers", default="sgd,adam", help="comma list")
    p.add_argument("--image-size", type=int, default=72)
    p.add_argument("--pairs", type=int, default=0, help="seeded subset of N training pairs (0 = all)")
    p.add_argument("--max-epochs", type=int, default=6, help="grid epochs per trial = ASHA's max_t")
    p.add_argument("--budget", type=int, default=0,
                   help="epochs each search may use (default 0: a quarter of the grid's, rounded down)")
    p.add_argument("--num-samples", type=int, default=0,
                   help="trials per search (default 0: budget / grace period with ASHA, budget / max epochs "
                        "without, so that the budget, not the trial count, ends each search)")
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--patience", type=int, default=0, help="early-stopping patience (0 = off: max_epochs + 1)")
    p.add_argument("--trial-seed", type=int, default=0, help="Config.seed of every trial, in every method")
    p.add_argument("--auc-points", type=float, default=1.0, help="'near the oracle' = within this many AUC "
                                                                 "points (1 point = 0.01)")
    p.add_argument("--oracle-top", type=int, default=0,
                   help="0 (default): retrain every grid configuration for the oracle; N: score each grid trial's "
                        "own model on DevTest and retrain only the N best")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--results", help="JSON file of finished runs: reused when the settings match, extended after "
                                     "each run (split or continue a long run)")
    p.add_argument("--storage-path", help="keep the Ray experiments here (default: a temporary folder, removed)")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.max_epochs < 1 or not 1 <= args.grace_period <= args.max_epochs:
        p.error("--seeds and --max-epochs must be >= 1, --grace-period between 1 and --max-epochs")
    return args


def space_values(args: argparse.Namespace) -> dict[str, list[Any]]:
    return {"width": args.widths, "lr": args.lrs,
            "batchnorm": [v.strip().lower() in ("1", "true", "on", "yes") for v in args.batchnorm.split(",")],
            "optimizer": [v.strip() for v in args.optimizers.split(",")]}


def describe(config: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={config[k]:g}" if isinstance(config[k], float) else f"{k}={config[k]}" for k in keys)


# ------------------------------------------------------------------------------------------------------
# Settings and tuners


def search_budget(args: argparse.Namespace, method: Method) -> int:
    """The epochs the search itself may use: the budget less what the finalist runs take at most."""
    return args.budget - method.finalists * method.finalist_seeds * args.max_epochs


def num_samples(args: argparse.Namespace, method: Method) -> int:
    if args.num_samples:
        return args.num_samples
    per_trial = args.grace_period if method.asha else args.max_epochs  # the fewest epochs a trial can take
    return max(2, math.ceil(search_budget(args, method) / per_trial), method.finalists * method.finalist_seeds)


def build(args: argparse.Namespace, storage: str, name: str, method: Method, seed: int, samples: int,
          extra: dict[str, Any] | None = None) -> Any:
    """SearchSettings as run_search.py builds them from these options (and `extra` ones, e.g. scheduler=...); the
    trials' seed is then pinned to --trial-seed (run_search.py uses --seed for both)."""
    from tune_siamese.app.api import search_settings

    patience = args.patience or args.max_epochs + 1
    fixed: dict[str, Any] = {"image_size": args.image_size, "embedding": 4096, "init": "koch", "batch_size": 32,
                             "momentum": 0.9, "patience": patience}
    if method.val_pairs != "given":
        fixed["val_pairs"] = method.val_pairs
    options: dict[str, Any] = dict(data=args.data, space="smoke", seed=seed, num_samples=samples,
                                   max_epochs=args.max_epochs, cpus_per_trial=1, max_concurrent=args.max_concurrent,
                                   storage_path=storage, name=name, max_failures=0, set=fixed)
    if method.searcher != "grid":
        options["searcher"] = method.searcher
    if method.reproducible:
        options["reproducible"] = True  # refuses ASHA's options
    else:
        options.update(grace_period=args.grace_period if method.asha else args.max_epochs,
                       reduction_factor=args.reduction_factor, rung_metric=method.rung)
    if method.finalists:
        options.update(finalists=method.finalists, finalist_seeds=method.finalist_seeds)
    settings, _ = search_settings(**options, **(extra or {}))
    base = {k: v for k, v in settings.base.items() if k != "width"}  # width comes from the space
    return dataclasses.replace(settings, base={**base, "seed": args.trial_seed})


def epoch_budget_stopper(budget: int) -> Any:
    """A Tune stopper that ends the whole search once its trials have reported `budget` epochs (every report is
    one epoch; a diverged trial's last report stands for the epoch it diverged in)."""
    from ray.tune.stopper import Stopper

    class EpochBudget(Stopper):
        def __init__(self) -> None:
            self.seen: set[tuple[str, Any]] = set()  # (trial, epoch): Tune may pass a trial's last result twice

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            self.seen.add((trial_id, result.get("training_iteration")))
            return len(self.seen) >= budget

        def stop_all(self) -> bool:
            return len(self.seen) >= budget

    return EpochBudget()


def grid_tuner(settings: Any, data: Any, values: dict[str, list[Any]]) -> Any:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tune_siamese.searching import tuner

    return tune.Tuner(
        tuner.build_trainable(settings, data),
        param_space={**settings.base, **{k: tune.grid_search(v) for k, v in values.items()}},
        tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1, reuse_actors=True,
                                    max_concurrent_trials=settings.max_concurrent,
                                    trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(name=settings.name, storage_path=settings.storage_path, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=settings.max_failures)))


def search_tuner(settings: Any, data: Any, values: dict[str, list[Any]], budget: int, stopper: Any = None,
                 warm: Any = None) -> Any:
    """tuner.build_tuner as run_search.py calls it (with `warm`: a warm start's WarmStart), with only an epoch-budget
    stopper (`stopper`, else epoch_budget_stopper(budget)) added to its RunConfig."""
    from ray import tune

    from tune_siamese.searching import tuner as tuner_module

    original = tune.Tuner

    def tuner(*args: Any, run_config: Any, **kwargs: Any) -> Any:
        run_config.stop = stopper or epoch_budget_stopper(budget)
        return original(*args, run_config=run_config, **kwargs)

    tune.Tuner = tuner  # only while build_tuner runs (Tune checks RunConfig's type, so that one stays)
    try:
        return tuner_module.build_tuner(settings, data, {k: tune.choice(v) for k, v in values.items()}, [], verbose=0,
                                        warm=warm)
    finally:
        tune.Tuner = original


# ------------------------------------------------------------------------------------------------------
# Reading a search's results


def collect(results: Any, keys: list[str]) -> dict[str, Any]:
    """Every reported epoch (configuration, epoch, val loss), the trials that reported, errors, epoch times."""
    from tune_siamese.searching.ranking import each_result

    curves, trials, errors, seconds = [], 0, 0, []
    for result in each_result(results):
        errors += result.error is not None
        frame = result.metrics_dataframe
        if frame is None or VAL_LOSS not in frame:
            continue
        frame = frame[frame[VAL_LOSS].notna()]
        if not len(frame):
            continue
        trials += 1
        label = describe(dict(result.config), keys)
        curves += [[label, int(r["training_iteration"]), float(r[VAL_LOSS])] for r in frame.to_dict("records")]
        if "epoch_seconds" in frame:
            seconds += [float(s) for s in frame["epoch_seconds"].dropna()]
    return {"curves": curves, "trials": trials, "errors": errors, "epochs": len(curves),
            "best_val_loss": min((c[2] for c in curves), default=float("nan")),
            "epoch_seconds": sum(seconds) / len(seconds) if seconds else float("nan")}


def count_finalist_epochs(experiment: str) -> int:
    """Epochs the finalist runs reported (their own Tune experiment, read from Tune's result.json files)."""
    total = 0
    for result in Path(experiment.removeprefix("file://")).glob("trial_*/result.json"):
        for line in result.read_text().splitlines():
            try:
                total += json.loads(line).get(VAL_LOSS) is not None
            except json.JSONDecodeError:
                break
    return total


# ------------------------------------------------------------------------------------------------------
# Retraining: finish_search's path (final_model's `retrain` policy with finish.task_options), no export


class Retrainer:
    """Retrains picks and remembers the scores, keyed by what determines them (trials are seeded alike)."""

    def __init__(self, settings: Any, cache: dict[str, Any], save: Any) -> None:
        from tune_siamese.final import finish

        self.options = finish.task_options(settings)
        self.cache, self.save = cache, save

    def __call__(self, data: Any, variant: str, config: dict[str, Any], keys: list[str], epochs: int,
                 checkpoint: Any, threshold: tuple[int, int]) -> tuple[dict[str, Any], bool]:
        """(scores, retrained now?) for `config` retrained `epochs` epochs, its threshold chosen by the model of
        seed threshold[0] at epoch threshold[1] (the checkpoint's best model)."""
        from tune_siamese.final.policies import build_final_model

        key = json.dumps([variant, describe(config, keys), epochs, *threshold])
        if key in self.cache:
            return self.cache[key], False
        threads = max(1, int(self.options["num_cpus"]))
        pick = Config.from_dict(dict(config), source="pick").replace(threads=threads)
        print(f"  retraining {describe(config, keys)} for {epochs} epochs ...", flush=True)
        started = time.time()
        scores = build_final_model("retrain", 1, pick, epochs, data, checkpoint, self.options, self.options).scores
        test, own = scores["test"], scores["searched_model_test"]
        self.cache[key] = {"auc": test["auc"], "accuracy_at_threshold": test["accuracy_at_threshold"],
                           "accuracy": test["accuracy"], "own_auc": own["auc"],
                           "seconds": round(time.time() - started, 1)}
        self.save()
        return self.cache[key], True


def own_model_auc(result: Any, data: Any) -> float:
    """DevTest AUC of a trial's own model (train part only, best epoch): --oracle-top's cheap ranking."""
    from tune_siamese.final import policies as final_model
    from tune_siamese.training.device import resolve_device
    from tune_siamese.training.scoring import images_on, val_and_test

    config = Config.from_dict(dict(result.config), source="grid trial")
    model = final_model.trial_model(result.checkpoint, config)
    device = resolve_device(config)
    return float(val_and_test(model.to(device), images_on(device, data.images), data, config)["test"]["auc"])


# ------------------------------------------------------------------------------------------------------
# Runs


def run_grid(args: argparse.Namespace, storage: str, stamp: str, data: Any, values: dict[str, list[Any]],
             retrain: Retrainer) -> dict[str, Any]:
    from tune_siamese.searching.ranking import best_epoch_and_loss, best_trial, each_result

    keys = list(values)
    n_grid = len(list(itertools.product(*values.values())))
    settings = build(args, storage, f"grid-{stamp}", Method("grid"), 0, 1)
    print(f"grid: {n_grid} configurations x {args.max_epochs} epochs ...", flush=True)
    started = time.time()
    results = grid_tuner(settings, data, values).fit()
    wall = time.time() - started
    run = {"method": "grid", "seed": 0, "wall": round(wall, 1), **collect(results, keys)}
    if not run["trials"]:
        raise SystemExit("search_efficiency: the grid produced no results; see the errors above")
    trials = [r for r in each_result(results) if r.error is None and r.metrics_dataframe is not None
              and VAL_LOSS in r.metrics_dataframe and r.metrics_dataframe[VAL_LOSS].notna().any()]
    if args.oracle_top:
        print(f"oracle: scoring the {len(trials)} grid trials' own models on DevTest ...", flush=True)
        ranked = sorted(trials, key=lambda r: -own_model_auc(r, data))
        chosen = ranked[:args.oracle_top]
    else:
        chosen = trials
    print(f"oracle: retraining {len(chosen)} grid configurations ...", flush=True)
    configs = []
    for result in chosen:
        epoch, loss = best_epoch_and_loss(result.metrics_dataframe)
        config = {k: result.config[k] for k in keys}
        scores, _ = retrain(data, "given", dict(result.config), keys, epoch, result.checkpoint,
                            (args.trial_seed, epoch))
        configs.append({"config": config, "epochs": epoch, "best_val_loss": loss, **scores})
    configs.sort(key=lambda c: -c["auc"])
    run["configs"] = configs
    run["oracle"] = configs[0]
    # The grid as a search method: its pick is its best trial by val loss, retrained like any pick.
    best, epoch, loss = best_trial(results)
    scores, _ = retrain(data, "given", dict(best.config), keys, epoch, best.checkpoint, (args.trial_seed, epoch))
    run["pick"] = {"config": {k: best.config[k] for k in keys}, "epochs": epoch, "val_loss": loss,
                   "how": "best trial"}
    run["test"] = scores
    if not args.storage_path:
        shutil.rmtree(settings.experiment_path, ignore_errors=True)
    return run


def run_method(args: argparse.Namespace, storage: str, stamp: str, method: Method, seed: int, data: Any,
               values: dict[str, list[Any]], retrain: Retrainer) -> dict[str, Any]:

    keys = list(values)
    samples = num_samples(args, method)
    budget = search_budget(args, method)
    tag = re.sub(r"[^a-z0-9]+", "-", method.name)
    settings = build(args, storage, f"{tag}-s{seed}-{stamp}", method, seed, samples)
    print(f"{method.name} (searcher seed {seed}): up to {samples} trials, budget {budget} epochs ...", flush=True)
    started = time.time()
    results = search_tuner(settings, data, values, budget).fit()
    wall = time.time() - started
    run = {"method": method.name, "seed": seed, "wall": round(wall, 1), "num_samples": samples,
           **collect(results, keys), "finalist_epochs": 0, "finalist_wall": 0.0}
    if not run["trials"]:
        run["test"] = None
        return run
    from tune_siamese.final.finalists import run_finalists
    from tune_siamese.searching.ranking import best_trial

    best, epoch, loss = best_trial(results)
    config, epochs, checkpoint, threshold = dict(best.config), epoch, best.checkpoint, (args.trial_seed, epoch)
    how = "best trial"
    if method.finalists:
        started = time.time()
        finalists = run_finalists(settings, results, data, verbose=0)
        run["finalist_wall"] = round(time.time() - started, 1)
        if finalists is None:
            raise SystemExit("search_efficiency: the finalist stage was interrupted")
        record = finalists.record
        run["finalist_epochs"] = count_finalist_epochs(record["experiment"])
        if finalists.config is not None:
            winner = next(entry for entry in record["trials"] if entry["winner"])
            index = winner["runs"].index(record["threshold_run"])
            config, epochs, checkpoint = finalists.config.to_dict(), finalists.epochs, finalists.checkpoint
            threshold = (winner["seeds"][index], winner["best_epochs"][index])
            how = "finalist winner" + (" (the best trial)" if winner["trial_id"] == Path(best.path).name else "")
        else:
            how = f"best trial (finalists fell back: {record['fallback']})"
    scores, fresh = retrain(data, method.val_pairs, config, keys, epochs, checkpoint, threshold)
    run["pick"] = {"config": {k: config[k] for k in keys}, "epochs": epochs, "val_loss": loss, "how": how}
    run["test"] = scores
    print(f"  {run['trials']} trials, {run['epochs']} + {run['finalist_epochs']} epochs, {wall:.0f} s; pick "
          f"{describe(config, keys)} ({how}, {epochs} epochs): DevTest AUC {scores['auc']:.4f}, accuracy "
          f"{scores['accuracy_at_threshold']:.4f}{'' if fresh else ' (retrained before)'}", flush=True)
    if not args.storage_path:
        shutil.rmtree(settings.experiment_path, ignore_errors=True)
    return run


# ------------------------------------------------------------------------------------------------------
# The results file (--results)


def signature(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting a run's outcome depends on (not which methods or seeds: those are what a file collects)."""
    fields = ("data", "widths", "lrs", "batchnorm", "optimizers", "image_size", "pairs", "max_epochs", "budget",
              "num_samples", "grace_period", "reduction_factor", "patience", "trial_seed", "oracle_top", "cpus",
              "max_concurrent")
    return {f: getattr(args, f) for f in fields}


def load_state(path: str | None, sig: dict[str, Any]) -> dict[str, Any]:
    empty = {"signature": sig, "grid": None, "runs": {}, "retrains": {}}
    if not path or not Path(path).exists():
        return empty
    state = json.loads(Path(path).read_text())
    if state.get("signature") != sig:
        differ = sorted(k for k in sig if state.get("signature", {}).get(k) != sig[k])
        raise SystemExit(f"search_efficiency: --results {path} holds runs of other settings (they differ in "
                         f"{', '.join(differ)}); give another file")
    return {**empty, **state}


def save_state(path: str | None, state: dict[str, Any]) -> None:
    if not path:
        return
    temp = Path(f"{path}.tmp")
    temp.write_text(json.dumps(state, indent=1) + "\n")
    temp.replace(path)


# ------------------------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> tuple[float, dict[str, Any], dict[str, list[Any]]]:
    """(start time, machine info, the space's values) of a run of this or a benchmark built on it; the machine line
    printed, --data made absolute and --budget defaulted to a quarter of the grid's epochs."""
    started = time.time()
    info = _common.machine_info(1)
    print(_common.machine_line(info), flush=True)
    args.data = "synthetic" if args.data == "synthetic" else str(Path(args.data or _common.default_lfw()).resolve())
    values = space_values(args)
    args.budget = args.budget or len(list(itertools.product(*values.values()))) * args.max_epochs // 4
    return started, info, values


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, info, values = prepare(args)
    for method in args.methods:
        if method.name != "grid" and search_budget(args, method) < args.max_epochs:
            raise SystemExit(f"search_efficiency: method {method.name}: the budget of {args.budget} epochs leaves "
                             f"{search_budget(args, method)} for the search after its finalist runs")
    temp = tempfile.mkdtemp(prefix="search_efficiency-")
    storage = args.storage_path or os.path.join(temp, "ray_results")
    try:
        return run(args, info, storage, started, values)
    except InputError as exc:
        print(f"search_efficiency: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def run(args: argparse.Namespace, info: dict[str, Any], storage: str, started: float,
        values: dict[str, list[Any]]) -> int:
    import ray

    from tune_siamese.data import load_data

    state = load_state(args.results, signature(args))
    wanted = {f"{m.name}|{s}" for m in args.methods for s in range(args.seeds)}
    loaded = (["grid and oracle"] if state["grid"] else []) + sorted(k for k in state["runs"] if k in wanted)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    grid_settings = build(args, storage, f"grid-{stamp}", Method("grid"), 0, 1)
    datas: dict[str, Any] = {}

    def data_for(variant: str) -> Any:
        if variant not in datas:
            config = Config.from_dict({**grid_settings.base, "width": args.widths[0], "val_pairs": variant})
            datas[variant] = _common.subset_train(load_data(config), args.pairs)
        return datas[variant]

    print(data_for("given").summary(), flush=True)
    searches = [m for m in args.methods if m.name != "grid"]
    # A trial the budget stopped before it started has no results; Tune warns about each such trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    _common.start_ray(args.cpus)
    try:
        retrain = Retrainer(grid_settings, state["retrains"], lambda: save_state(args.results, state))
        if state["grid"] is None:
            state["grid"] = run_grid(args, storage, stamp, data_for("given"), values, retrain)
            save_state(args.results, state)
        else:
            print("grid and oracle: loaded from --results", flush=True)
        for seed in range(args.seeds):
            for method in searches:
                key = f"{method.name}|{seed}"
                if key in state["runs"]:
                    continue
                state["runs"][key] = run_method(args, storage, stamp, method, seed, data_for(method.val_pairs),
                                                values, retrain)
                save_state(args.results, state)
    finally:
        ray.shutdown()
    body = report(args, state, searches, values, data_for("given"), loaded)
    _common.record("search_efficiency", body, info, started, enabled=not args.no_record)
    return 0


# ------------------------------------------------------------------------------------------------------
# The report


def mean_se(values: list[float]) -> tuple[float, float]:
    mean, sd = _common.mean_sd(values)
    return mean, sd / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def pm(values: list[float], digits: int = 4) -> str:
    mean, se = mean_se(values)
    if mean != mean:
        return "—"
    return f"{mean:.{digits}f}" if se != se else f"{mean:.{digits}f} ± {se:.{digits}f}"


def report(args: argparse.Namespace, state: dict[str, Any], searches: list[Method], values: dict[str, list[Any]],
           data: Any, loaded: list[str]) -> str:
    keys = list(values)
    grid, oracle = state["grid"], state["grid"]["oracle"]
    near = args.auc_points / 100
    runs = {m.name: [state["runs"][f"{m.name}|{s}"] for s in range(args.seeds)] for m in searches}
    scored = {name: [r for r in items if r.get("test")] for name, items in runs.items()}
    scored = {"grid": [grid], **scored}
    grid_epochs = grid["epochs"]

    curve = {(c[0], c[1]): c[2] for c in grid["curves"]}
    given = [r for m in searches if m.val_pairs == "given" for r in runs[m.name]]
    deviation = max((abs(curve[(c[0], c[1])] - c[2]) for r in given for c in r["curves"] if (c[0], c[1]) in curve),
                    default=0.0)

    def used(run: dict[str, Any]) -> int:
        return run["epochs"] + run.get("finalist_epochs", 0)

    tpe_aucs = {r["seed"]: r["test"]["auc"] for r in scored.get(TPE, [])}
    summary = []
    for name, items in scored.items():
        aucs = [r["test"]["auc"] for r in items]
        epochs = [float(used(r)) for r in items]
        paired = [r["test"]["auc"] - tpe_aucs[r["seed"]] for r in items if name not in ("grid", TPE)
                  and r["seed"] in tpe_aucs]
        summary.append([
            name, len(items), f"{mean_se(epochs)[0]:.1f} ({mean_se(epochs)[0] / grid_epochs:.2f})",
            f"{mean_se([float(r['trials']) for r in items])[0]:.1f}", pm(aucs),
            pm([r["test"]["accuracy_at_threshold"] for r in items]),
            f"{sum(oracle['auc'] - a <= near + 1e-12 for a in aucs)}/{len(aucs)}",
            f"{mean_se(aucs)[0] - oracle['auc']:+.4f}", pm(paired) if paired else "—",
            f"{mean_se([r['best_val_loss'] for r in items])[0]:.4f}",
            f"{mean_se([r['wall'] + r.get('finalist_wall', 0.0) for r in items])[0]:.0f}"])

    per_seed = []
    for name, items in [("grid", [grid]), *runs.items()]:
        for r in items:
            test = r.get("test")
            pick = r.get("pick")
            per_seed.append([
                name, r["seed"] if name != "grid" else "—", r["trials"],
                f"{r['epochs']}" + (f" + {r['finalist_epochs']}" if r.get("finalist_epochs") else ""),
                f"{r['best_val_loss']:.4f}",
                f"{describe(pick['config'], keys)}; {pick['epochs']} epochs; {pick['how']}" if pick else "—",
                f"{test['auc']:.4f}" if test else "—", f"{test['accuracy_at_threshold']:.4f}" if test else "—",
                f"{test['auc'] - oracle['auc']:+.4f}" if test else "—", f"{test['own_auc']:.4f}" if test else "—",
                f"{r['wall'] + r.get('finalist_wall', 0.0):.0f}"])

    configs = [[describe(c["config"], keys), c["epochs"], f"{c['best_val_loss']:.4f}", f"{c['auc']:.4f}",
                f"{c['accuracy_at_threshold']:.4f}", f"{c['own_auc']:.4f}"] for c in grid["configs"]]
    oracle_how = ("every grid configuration retrained" if not args.oracle_top else
                  f"the {args.oracle_top} grid configurations whose own models (train part, best epoch) scored "
                  "the highest DevTest AUC, retrained (cheaper; a configuration ranked lower by its own model is "
                  "not retrained, so the oracle may be missed)")
    retrained = state["retrains"].values()
    body = [
        f"- data: {data.summary()}",
        f"- space ({len(list(itertools.product(*values.values())))} configurations): " + "; ".join(f"{k} {v}" for k, v in values.items())
        + f"; fixed: {args.image_size} px, batch 32, momentum 0.9 (SGD), Koch init, trial seed {args.trial_seed} in "
        f"every method, patience {args.patience or 'off'}",
        f"- grid: FIFO, {args.max_epochs} epochs per trial, {grid_epochs} epochs, {grid['wall']:.0f} s; mean epoch "
        f"{grid['epoch_seconds']:.1f} s (1 torch thread, {args.max_concurrent} trials at once on "
        f"ray.init(num_cpus={args.cpus}))",
        f"- searches: run_search.py's settings and tuner.build_tuner, each ended by a budget of {args.budget} "
        f"epochs ({args.budget / grid_epochs:.2f} of the grid's; a finalist variant's search gets the budget less K "
        "x S x max epochs, its finalist runs the rest); trials per search: "
        + (f"{args.num_samples}" if args.num_samples else "budget / grace period with ASHA, budget / max epochs "
           "without (the budget ends the search)")
        + f"; ASHA max_t {args.max_epochs}, grace {args.grace_period}, reduction factor {args.reduction_factor:g}; "
        f"searcher seeds 0..{args.seeds - 1}",
        "- pick: what run_search.py hands back (the lowest val loss at any epoch, or the finalists' winner), "
        "retrained on train + val by final_model's `retrain` policy (Ray tasks) with finish.task_options (finish_search's "
        "path, no export); DevTest accuracy at the threshold its own model chose on the val pairs",
        f"- oracle ({oracle_how}; each at its best val epoch, threshold from its own model): "
        f"{describe(oracle['config'], keys)}, {oracle['epochs']} epochs: DevTest AUC {oracle['auc']:.4f}, "
        f"accuracy {oracle['accuracy_at_threshold']:.4f}; 'near' = within {args.auc_points:g} AUC point(s) of it",
        f"- the same configuration gave the same val loss at the same epoch in every given-pairs search and the grid "
        f"to within {deviation:.2g} (trials are seeded alike)",
        f"- retrains: {len(state['retrains'])}, {sum(r['seconds'] for r in retrained):.0f} s in all (a repeated "
        "pick is retrained once)",
        *([f"- loaded from --results {args.results} (measured by an earlier invocation): {', '.join(loaded)}"]
          if loaded else []),
        "",
        _common.md_table(["method", "runs", "epochs used, mean (share of grid's)", "trials (mean)",
                          "DevTest AUC (mean ± s.e.)", "DevTest acc. at val threshold (mean ± s.e.)",
                          "near the oracle", "AUC − oracle (mean)", f"AUC − {TPE} (same seed, mean ± s.e.)",
                          "best val loss (mean)", "search wall s (mean)"], summary),
        "",
        _common.md_table(["method", "searcher seed", "trials", "epochs (search + finalists)", "best val loss",
                          "handed back (retrained for)", "DevTest AUC", "DevTest acc. at val threshold",
                          "AUC − oracle", "own model's DevTest AUC (train part)", "search wall s"], per_seed),
        "",
        "Grid configurations, retrained (best DevTest AUC first):",
        "",
        _common.md_table(["configuration", "best val epoch (retrained for)", "best val loss", "DevTest AUC",
                          "DevTest acc. at val threshold", "own model's DevTest AUC"], configs),
        "",
        *verdicts(args, scored, oracle, grid_epochs, near),
    ]
    errors = grid["errors"] + sum(r["errors"] for items in runs.values() for r in items)
    if errors:
        body += ["", f"Errored trials: {errors}"]
    return "\n".join(body)


def verdicts(args: argparse.Namespace, scored: dict[str, list[dict[str, Any]]], oracle: dict[str, Any],
             grid_epochs: int, near: float) -> list[str]:
    lines = ["Verdict:", ""]
    tpe, rnd = scored.get(TPE), scored.get(RANDOM)
    if not tpe:
        return [*lines, f"- no {TPE} runs: no verdict"]
    n = len(tpe)
    close = sum(oracle["auc"] - r["test"]["auc"] <= near + 1e-12 for r in tpe)
    needed = math.ceil(0.8 * n)
    epochs = mean_se([float(r["epochs"] + r.get("finalist_epochs", 0)) for r in tpe])[0]
    ok = [close >= needed, epochs <= grid_epochs / 4]
    lines += [f"- {TPE} within {args.auc_points:g} AUC point(s) of the oracle ({oracle['auc']:.4f}) in {close} of "
              f"{n} seeds (target ≥ {needed} of {n}): {'met' if ok[0] else 'MISSED'}",
              f"- {TPE} used {epochs:.1f} epochs on average, {epochs / grid_epochs:.2f} of the grid's {grid_epochs} "
              f"(target ≤ 0.25): {'met' if ok[1] else 'MISSED'}"]
    if rnd:
        t_auc, r_auc = mean_se([r["test"]["auc"] for r in tpe]), mean_se([r["test"]["auc"] for r in rnd])
        ok.append(t_auc[0] > r_auc[0])
        lines.append(f"- {TPE} mean DevTest AUC {t_auc[0]:.4f} ± {t_auc[1]:.4f} vs {RANDOM} {r_auc[0]:.4f} ± "
                     f"{r_auc[1]:.4f} (s.e.): {t_auc[0] - r_auc[0]:+.4f} (target > 0): {'met' if ok[2] else 'MISSED'}")
    else:
        lines.append(f"- no {RANDOM} runs: the comparison with it is not made")
    lines.append(f"- all targets {'met' if all(ok) else 'NOT met'}")
    # The levers: how each other method or variant moved the figures the targets are about, against tpe+asha.
    levers = [(name, items) for name, items in scored.items() if name not in ("grid", TPE) and items]
    if levers:
        t_mean = mean_se([r["test"]["auc"] for r in tpe])[0]
        lines += ["", f"Against {TPE} ({close}/{n} near the oracle, mean AUC {t_mean:.4f}):"]
        for name, items in levers:
            aucs = [r["test"]["auc"] for r in items]
            near_count = sum(oracle["auc"] - a <= near + 1e-12 for a in aucs)
            lines.append(f"- {name}: {near_count}/{len(items)} near the oracle, mean AUC {mean_se(aucs)[0]:.4f} "
                         f"({mean_se(aucs)[0] - t_mean:+.4f})")
    return lines


if __name__ == "__main__":
    sys.exit(main())

"""Anytime behaviour of a search: what it would hand back after each epoch it spends, not only at the end.

Space, data and trials as search_efficiency.py's (its defaults: width {0.0625, 0.125} x lr {3e-4, 3e-3, 3e-2} x
BatchNorm {on, off} x optimizer {sgd, adam}; 72 px, batch 32, Koch init, early stopping off; LFW-a from
$TUNE_SIAMESE_LFW, else ../shared/data/lfw-a; --data synthetic for a quick check). Every search is
search_efficiency's (settings as run_search.py builds them, tuner.build_tuner, a Tune stopper ending it at the epoch
budget); each arm runs once per searcher seed (--seeds, default 5: seeds 0..4), every arm with the same budget
(--budget, default a quarter of the space's configurations x --max-epochs: 36 epochs for 24 x 6), ASHA-type
schedulers with grace period 1 and reduction factor 3 (--grace-period, --reduction-factor):

  random+asha     Optuna's random sampler, ASHA on this epoch's val loss (--scheduler asha)
  tpe+asha        TPE, ASHA
  tpe+pasha       TPE, progressive ASHA (--scheduler pasha: the top rung is raised only while the ranking of the top
                  two rungs changes)
  tpe+asha+warm   TPE + ASHA warm-started (--warm-start) from the tpe+asha search of searcher seed (s + 1) mod N:
                  its trials join the study as they ended there. Those epochs are the prior, not counted in the
                  budget (tpe+asha runs for every seed whenever this arm does).
  mo-fifo         two objectives (--objectives val_loss,params; multi-objective TPE), no early stopping (--scheduler
                  fifo): every trial runs --max-epochs. Without the --scheduler option in this checkout: ASHA with
                  grace period = max epochs, which stops nothing.
  mo+asha         two objectives, ASHA on the val loss (--scheduler asha)
  mo+pareto       two objectives, the Pareto rung rule (--scheduler pareto: non-dominated sorting over the
                  objectives at each rung)

--arms picks a subset (default: all). Each search's trials are read in the order Tune handed their reports to
the budget stopper, the order the budget counts them: after cumulative epoch n = 1 .. budget,
  - the best val loss so far;
  - the pick the search would hand back then (run_search.py's rule: the trial with the lowest val loss at any of its
    epochs so far; the epoch of that loss), retrained on train + val for that many epochs as search_efficiency's
    Retrainer retrains a pick (final_model's `retrain` policy, finish.task_options), and its DevTest AUC: hindsight,
    never used to choose. The retrained scores are an oracle table keyed by (configuration, epochs): every trial
    trains with the same trial seed (Config.seed = --trial-seed in every arm), so one configuration has one
    learning curve in every arm (checked: the same val loss at the same epoch in every search) and a retrain
    depends on nothing else; each is retrained once, right after the first search that picks it (its threshold
    model is that search's trial, which sets only the accuracy, not the AUC used here);
  - the hypervolume of the (val loss, parameters) points reported so far (objectives_search.hypervolume: share of
    the box [0, ln 2] x [log10 fewest, log10 upper] parameters; fewest = the space's smallest model, upper = its
    largest x (largest / fewest)^0.1, so the largest models count too), the same box for every arm.
Bands over the seeds: mean and min-max at each cumulative epoch, a search's last value carried forward.

Verdict lines (issue 35, item 4): for each arm, the first cumulative epoch at which its mean DevTest AUC curve
reaches random+asha's final mean DevTest AUC, as a share of the budget (target: <= 0.5 for at least one arm besides
random+asha); for mo+pareto (and mo+asha, for the record), the first epoch at which its mean hypervolume reaches
mo-fifo's final mean hypervolume, as a share of mo-fifo's epochs (target: <= 1/3).

Output: the section in RESULTS.md (tables, verdicts, the exact command), the figure (--figure, default
docs/anytime.png: best val loss so far, DevTest AUC of the pick, hypervolume of the two-objective arms) and every
curve as JSON (--curves, default benchmarks/figures/anytime_curves.json); with --no-record and neither given, both go
to a temporary folder. --results FILE keeps every finished search and the oracle table, so a rerun (or a run split
over invocations) neither searches nor retrains again; the warm arm's priors (each tpe+asha study) are kept beside
it in FILE.priors/.

    python3 benchmarks/anytime.py --results anytime.json                       # LFW-a, 5 seeds, every arm
    python3 benchmarks/anytime.py --data synthetic --seeds 2 --arms random+asha,tpe+asha --budget 6 \\
        --max-epochs 2 --widths 0.0625 --pairs 256 --no-record                 # quick check, a few minutes
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
import search_efficiency as se  # noqa: E402  (sets Ray's console as run_search.py does)

from tune_siamese.core.config import Config  # noqa: E402
from tune_siamese.core.errors import InputError  # noqa: E402
from tune_siamese.core.names import STUDY_FILE, VAL_LOSS  # noqa: E402

OBJECTIVES = "val_loss,params"
BASELINE, WARM, PRIOR, FIFO, PARETO = "random+asha", "tpe+asha+warm", "tpe+asha", "mo-fifo", "mo+pareto"
SIZE_MARGIN = 0.1  # the hypervolume's upper parameter reference: this share of the log size range above the largest


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    searcher: str
    scheduler: str  # --scheduler
    multi: bool = False  # --objectives val_loss,params
    warm: bool = False  # --warm-start from tpe+asha of searcher seed (s + 1) mod N


ARMS = {arm.name: arm for arm in (
    Arm(BASELINE, "random", "asha"), Arm(PRIOR, "tpe", "asha"), Arm("tpe+pasha", "tpe", "pasha"),
    Arm(WARM, "tpe", "asha", warm=True), Arm(FIFO, "tpe", "fifo", multi=True), Arm("mo+asha", "tpe", "asha", multi=True),
    Arm(PARETO, "tpe", "pareto", multi=True))}


def parse_arms(text: str) -> list[Arm]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARMS and n != "all"]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {', '.join(unknown)}: choose from {', '.join(ARMS)}")
    return [ARMS[n] for n in (ARMS if "all" in names else dict.fromkeys(names))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    shared = se.parse_args([])  # search_efficiency's defaults: the same space, trials and budget rule
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="an LFW-a folder (default: $TUNE_SIAMESE_LFW, else ../shared/data/lfw-a) or "
                                  "'synthetic'")
    p.add_argument("--arms", type=parse_arms, default=list(ARMS.values()),
                   help=f"comma list of {', '.join(ARMS)} (default: all)")
    p.add_argument("--seeds", type=int, default=shared.seeds, help="searcher seeds 0..N-1 per arm (default 5)")
    p.add_argument("--budget", type=int, default=0, help="epochs of every search (default 0: a quarter of the "
                                                         "space's configurations x --max-epochs)")
    p.add_argument("--max-epochs", type=int, default=shared.max_epochs, help="epochs per trial at most (max_t)")
    p.add_argument("--grace-period", type=int, default=shared.grace_period)
    p.add_argument("--reduction-factor", type=float, default=shared.reduction_factor)
    space = p.add_argument_group("space and trials (search_efficiency.py's)")
    space.add_argument("--widths", type=se.floats, default=shared.widths)
    space.add_argument("--lrs", type=se.floats, default=shared.lrs)
    space.add_argument("--batchnorm", default=shared.batchnorm, help="comma list of true/false")
    space.add_argument("--optimizers", default=shared.optimizers, help="comma list")
    space.add_argument("--image-size", type=int, default=shared.image_size)
    space.add_argument("--pairs", type=int, default=shared.pairs, help="seeded subset of N training pairs (0 = all)")
    space.add_argument("--num-samples", type=int, default=0,
                       help="trials per search (default 0: budget / grace period, or / max epochs for mo-fifo)")
    space.add_argument("--patience", type=int, default=0, help="early-stopping patience (0 = off)")
    space.add_argument("--trial-seed", type=int, default=shared.trial_seed, help="Config.seed of every trial")
    space.add_argument("--cpus", type=int, default=shared.cpus)
    space.add_argument("--max-concurrent", type=int, default=shared.max_concurrent)
    out = p.add_argument_group("output")
    out.add_argument("--results", help="JSON file of finished searches and the oracle table: reused when the "
                                       "settings match, extended after each search")
    out.add_argument("--figure", help="the PNG (default docs/anytime.png; a temporary folder with --no-record)")
    out.add_argument("--curves", help="every curve as JSON (default benchmarks/figures/anytime_curves.json; a "
                                      "temporary folder with --no-record)")
    out.add_argument("--storage-path", help="keep the Ray experiments here (default: a temporary folder, removed)")
    out.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    args.oracle_top = 0  # read by search_efficiency.signature
    if args.seeds < 1 or args.max_epochs < 1 or not 1 <= args.grace_period <= args.max_epochs:
        p.error("--seeds and --max-epochs must be >= 1, --grace-period between 1 and --max-epochs")
    return args


def method_of(arm: Arm) -> se.Method:
    """search_efficiency's Method for the arm: grace period = max epochs for mo-fifo (stops nothing)."""
    return se.Method(arm.name, arm.searcher, asha=arm.scheduler != "fifo")


def arm_settings(args: argparse.Namespace, storage: str, name: str, arm: Arm, seed: int) -> Any:
    """search_efficiency.build's settings with the arm's --objectives and --scheduler."""
    extra: dict[str, Any] = {"objectives": OBJECTIVES} if arm.multi else {}
    method = method_of(arm)
    return se.build(args, storage, name, method, seed, se.num_samples(args, method),
                    extra={**extra, "scheduler": arm.scheduler})


def recording_stopper(budget: int, order: list[tuple[str, int]]) -> Any:
    """search_efficiency.epoch_budget_stopper, also noting each (trial, epoch) in the order the budget counts it."""
    from ray.tune.stopper import Stopper

    inner = se.epoch_budget_stopper(budget)

    class Recording(Stopper):
        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            order.append((trial_id, int(result.get("training_iteration") or 0)))
            return inner(trial_id, result)

        def stop_all(self) -> bool:
            return inner.stop_all()

    return Recording()


# ------------------------------------------------------------------------------------------------------
# Curves of one search


def param_counts(base: dict[str, Any], values: dict[str, list[Any]]) -> dict[str, float]:
    """Every configuration's parameter count, as a trial measures it (searching.objectives.model_costs)."""
    from tune_siamese.searching.objectives import model_costs
    from tune_siamese.training.model import build_model

    keys, counts = list(values), {}
    for combo in itertools.product(*values.values()):
        config = dict(zip(keys, combo))
        built = Config.from_dict({**base, **config})
        counts[se.describe(config, keys)] = model_costs(build_model(built), built, ["params"])["params"]
    return counts


def size_box(counts: dict[str, float]) -> tuple[float, float]:
    """(fewest, upper) parameters of the hypervolume's box: upper a margin above the largest model (see docstring)."""
    low, high = math.log10(min(counts.values())), math.log10(max(counts.values()))
    return 10 ** low, 10 ** (high + SIZE_MARGIN * max(high - low, 0.1))


def anytime(history: list[list[Any]], budget: int, box: tuple[float, float]) -> dict[str, list[Any]]:
    """From reports [trial, configuration, epoch, val loss, params, usable] in budget order: after each of the first
    `budget` epochs, the best val loss so far, the pick [trial, configuration, epoch] and the hypervolume."""
    from objectives_search import hypervolume

    best: dict[str, tuple[float, int, str]] = {}  # trial -> (its lowest val loss so far, at epoch, configuration)
    points: list[tuple[float, float]] = []
    curves: dict[str, list[Any]] = {"best_val_loss": [], "pick": [], "hypervolume": []}
    for trial, config, epoch, loss, params, usable in history[:budget]:
        if usable and (trial not in best or loss < best[trial][0]):
            best[trial] = (loss, epoch, config)
            points.append((loss, params))
        pick = min(best.items(), key=lambda item: item[1][0], default=None)  # first such trial on a tie
        curves["best_val_loss"].append(pick[1][0] if pick else math.nan)
        curves["pick"].append([pick[0], pick[1][2], pick[1][1]] if pick else None)
        curves["hypervolume"].append(float(hypervolume(points, box)))
    return curves


def read_history(results: Any, order: list[tuple[str, int]], keys: list[str],
                 counts: dict[str, float]) -> tuple[list[list[Any]], dict[str, Any], dict[str, Any]]:
    """(every report in budget order, trial id -> Result, facts: reports Tune never handed the stopper, the largest
    difference between a reported parameter count and the table's)."""
    from tune_siamese.searching.ranking import each_result

    rows: dict[tuple[str, int], list[Any]] = {}
    by_trial: dict[str, Any] = {}
    params_gap = 0.0
    for result in each_result(results):
        frame = result.metrics_dataframe
        if frame is None or VAL_LOSS not in frame or "trial_id" not in frame:
            continue
        label = se.describe(dict(result.config), keys)
        for row in frame.to_dict("records"):
            trial, epoch, loss = str(row["trial_id"]), int(row["training_iteration"]), row[VAL_LOSS]
            by_trial[trial] = result
            diverged = row.get("diverged")  # NaN where this trial did not diverge
            usable = result.error is None and not (diverged == diverged and diverged) and loss == loss
            params = row.get("params")
            if params is not None and params == params:
                params_gap = max(params_gap, abs(float(params) - counts[label]))
            rows[(trial, epoch)] = [trial, label, epoch, float(loss), counts[label], bool(usable)]
    history, seen = [], set()
    for key in order:
        if key in rows and key not in seen:
            seen.add(key)
            history.append(rows[key])
    return history, by_trial, {"unordered": len(rows) - len(seen), "params_gap": params_gap}


# ------------------------------------------------------------------------------------------------------
# Runs


def run_arm(args: argparse.Namespace, storage: str, stamp: str, arm: Arm, seed: int, data: Any,
            values: dict[str, list[Any]], state: dict[str, Any], retrain: se.Retrainer, counts: dict[str, float],
            box: tuple[float, float], priors: Path) -> dict[str, Any]:
    from ray import tune

    from tune_siamese.searching.warm_start import warm_start_for

    keys = list(values)
    tag = re.sub(r"[^a-z0-9]+", "-", arm.name)
    settings = arm_settings(args, storage, f"{tag}-s{seed}-{stamp}", arm, seed)
    order: list[tuple[str, int]] = []
    extra: dict[str, Any] = {"scheduler": settings.scheduler}
    warm = None
    if arm.warm:
        source = f"{PRIOR}|{(seed + 1) % args.seeds}"
        prior = state["runs"][source]["prior"]
        if not prior or not Path(prior).is_dir():
            raise SystemExit(f"anytime: the prior of {arm.name} seed {seed} ({source}'s study, {prior}) is gone; "
                             f"take {source} out of --results to run it again")
        settings = dataclasses.replace(settings, warm_start=[prior])
        warm = warm_start_for(settings, {k: tune.choice(v) for k, v in values.items()})
        extra.update(warm_from=source, warm_trials=len(warm.trials))
    print(f"{arm.name} (searcher seed {seed}): budget {args.budget} epochs, scheduler {extra['scheduler']}"
          + (f", warm-started from {extra['warm_from']} ({extra['warm_trials']} trials)" if arm.warm else "")
          + " ...", flush=True)
    started = time.time()
    results = se.search_tuner(settings, data, values, args.budget, recording_stopper(args.budget, order), warm).fit()
    wall = time.time() - started
    history, by_trial, facts = read_history(results, order, keys, counts)
    curves = anytime(history, args.budget, box)
    pick_auc: dict[str, float] = {}
    for pick in filter(None, curves["pick"]):
        trial, label, epoch = pick
        if f"{label}|{epoch}" not in pick_auc:
            result = by_trial[trial]
            scores, _ = retrain(data, "given", dict(result.config), keys, epoch, result.checkpoint,
                                (args.trial_seed, epoch))
            pick_auc[f"{label}|{epoch}"] = scores["auc"]
    run = {"arm": arm.name, "seed": seed, "wall": round(wall, 1), "trials": len(by_trial),
           "epochs": min(len(history), args.budget), "reported": len(history), **facts, **extra,
           "history": history, "pick_auc": pick_auc, "prior": None}
    if arm.name == PRIOR:  # what a warm-started search reads: the settings and the Optuna study
        folder = priors / settings.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "search_settings.json").write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
        shutil.copy2(Path(settings.experiment_path) / STUDY_FILE, folder / STUDY_FILE)
        run["prior"] = str(folder.resolve())
    last = curves["pick"][-1] if curves["pick"] else None
    print(f"  {run['trials']} trials, {run['epochs']} epochs, {wall:.0f} s; best val loss "
          f"{curves['best_val_loss'][-1] if history else math.nan:.4f}; hypervolume "
          f"{curves['hypervolume'][-1] if history else 0:.4f}; hands back "
          + (f"{last[1]} ({last[2]} epochs): DevTest AUC {pick_auc[f'{last[1]}|{last[2]}']:.4f}" if last else "nothing")
          + f"; {len(pick_auc)} distinct picks along the way", flush=True)
    if not args.storage_path:
        shutil.rmtree(settings.experiment_path, ignore_errors=True)
    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, info, values = se.prepare(args)
    if any(a.warm for a in args.arms) and ARMS[PRIOR] not in args.arms:
        args.arms = [ARMS[PRIOR], *args.arms]  # the priors
    temp = tempfile.mkdtemp(prefix="anytime-")
    storage = args.storage_path or os.path.join(temp, "ray_results")
    if args.no_record:
        args.figure = args.figure or os.path.join(tempfile.mkdtemp(prefix="anytime-out-"), "anytime.png")
        args.curves = args.curves or str(Path(args.figure).with_suffix(".json"))
    args.figure = args.figure or str(_common.REPO / "docs" / "anytime.png")
    args.curves = args.curves or str(_common.REPO / "benchmarks" / "figures" / "anytime_curves.json")
    priors = Path(f"{args.results}.priors") if args.results else Path(temp) / "priors"
    try:
        return run(args, info, storage, started, values, priors)
    except InputError as exc:
        print(f"anytime: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def run(args: argparse.Namespace, info: dict[str, Any], storage: str, started: float, values: dict[str, list[Any]],
        priors: Path) -> int:
    import ray

    from tune_siamese.data import load_data

    signature = {**se.signature(args), "benchmark": "anytime", "objectives": OBJECTIVES,
                 "size_margin": SIZE_MARGIN}
    state = se.load_state(args.results, signature)
    loaded = sorted(state["runs"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    grid_settings = se.build(args, storage, f"retrain-{stamp}", se.Method("grid"), 0, 1)
    config = Config.from_dict({**grid_settings.base, "width": args.widths[0]})
    data = _common.subset_train(load_data(config), args.pairs)
    print(data.summary(), flush=True)
    counts = param_counts(grid_settings.base, values)
    box = size_box(counts)
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # trials the budget cut
    # seed by seed, the warm arm after every prior
    order = sorted(((a, s) for a in args.arms for s in range(args.seeds)), key=lambda item: (item[0].warm, item[1]))
    _common.start_ray(args.cpus)
    try:
        retrain = se.Retrainer(grid_settings, state["retrains"], lambda: se.save_state(args.results, state))
        for arm, seed in order:
            key = f"{arm.name}|{seed}"
            if key not in state["runs"]:
                state["runs"][key] = run_arm(args, storage, stamp, arm, seed, data, values, state, retrain, counts,
                                             box, priors)
                se.save_state(args.results, state)
    finally:
        ray.shutdown()
    arms = [a.name for a in args.arms]
    curves = {name: arm_curves(args, [state["runs"][f"{name}|{s}"] for s in range(args.seeds)], box)
              for name in arms}
    write_curves(args, curves, counts, box)
    plot(args, curves)
    body = report(args, state, curves, values, data, counts, box, [k for k in loaded if k.split("|")[0] in arms])
    _common.record("anytime", body, info, started, enabled=not args.no_record)
    return 0


# ------------------------------------------------------------------------------------------------------
# Bands, figure and report


def band(series: list[list[float]], length: int) -> dict[str, list[float]]:
    """Mean, min, max and s.e. over the seeds at each cumulative epoch 1..length, each series' last value carried
    forward (NaN: none yet)."""
    out: dict[str, list[float]] = {"mean": [], "min": [], "max": [], "se": []}
    for x in range(length):
        here = [s[min(x, len(s) - 1)] for s in series if s]
        here = [v for v in here if v == v]
        mean, sd = _common.mean_sd(here)
        out["mean"].append(mean)
        out["min"].append(min(here) if here else math.nan)
        out["max"].append(max(here) if here else math.nan)
        out["se"].append(sd / math.sqrt(len(here)) if len(here) > 1 else math.nan)
    return out


def arm_curves(args: argparse.Namespace, runs: list[dict[str, Any]], box: tuple[float, float]) -> dict[str, Any]:
    per_seed = {}
    for r in runs:
        c = anytime(r["history"], args.budget, box)
        c["auc"] = [r["pick_auc"][f"{p[1]}|{p[2]}"] if p else math.nan for p in c["pick"]]
        per_seed[r["seed"]] = c
    return {"epochs": [r["epochs"] for r in runs], "trials": [r["trials"] for r in runs],
            "wall": [r["wall"] for r in runs], "per_seed": per_seed,
            **{m: band([c[m] for c in per_seed.values()], args.budget)
               for m in ("best_val_loss", "auc", "hypervolume")}}


def write_curves(args: argparse.Namespace, curves: dict[str, Any], counts: dict[str, float],
                 box: tuple[float, float]) -> None:
    Path(args.curves).parent.mkdir(parents=True, exist_ok=True)
    doc = {"budget": args.budget, "x": "cumulative epochs 1..budget", "seeds": args.seeds,
           "hypervolume_box": {"val_loss": [0, math.log(2)], "params": list(box)}, "params": counts, "arms": curves}
    Path(args.curves).write_text(json.dumps(doc, indent=1).replace("NaN", "null") + "\n")


def first_reach(mean: list[float], target: float) -> int | None:
    """The first cumulative epoch (1-based) at which the mean curve is at or above `target`."""
    return next((x + 1 for x, v in enumerate(mean) if v == v and v >= target - 1e-12), None)


def holds_from(mean: list[float], target: float) -> int | None:
    """The first cumulative epoch from which the mean curve stays at or above `target` to the end (None: it ends
    below)."""
    below = [x + 1 for x, v in enumerate(mean) if not (v == v and v >= target - 1e-12)]
    start = (below[-1] + 1) if below else 1
    return start if start <= len(mean) else None


def plot(args: argparse.Namespace, curves: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    multi = [name for name in curves if ARMS[name].multi]
    panels = [("best_val_loss", "best val loss so far", list(curves)),
              ("auc", "DevTest AUC of the pick (hindsight)", list(curves))]
    if multi:
        panels.append(("hypervolume", "hypervolume (val loss, log params)", multi))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), dpi=110, squeeze=False)
    x = list(range(1, args.budget + 1))
    colors = dict(zip(ARMS, plt.get_cmap("tab10").colors))
    for ax, (metric, title, names) in zip(axes[0], panels):
        for name in names:
            b = curves[name][metric]
            style = "--" if ARMS[name].multi else "-"
            ax.plot(x, b["mean"], style, color=colors[name], lw=1.7, label=f"{name} (n={args.seeds})",
                    drawstyle="steps-post")
            ax.fill_between(x, b["min"], b["max"], color=colors[name], alpha=0.13, lw=0, step="post")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("cumulative epochs")
        ax.grid(alpha=0.3)
        if metric == "auc" and BASELINE in curves:
            ax.axhline(curves[BASELINE]["auc"]["mean"][-1], color="gray", ls=":", lw=1)
            ax.axvline(args.budget / 2, color="gray", ls=":", lw=1)
            ax.annotate(f"{BASELINE} final; ½ budget", (args.budget / 2, curves[BASELINE]["auc"]["mean"][-1]),
                        textcoords="offset points", xytext=(4, -12), fontsize=7, color="gray")
        if metric == "hypervolume" and FIFO in curves:
            fifo = curves[FIFO]
            epochs = sum(fifo["epochs"]) / len(fifo["epochs"])
            ax.axhline(fifo["hypervolume"]["mean"][-1], color="gray", ls=":", lw=1)
            ax.axvline(epochs / 3, color="gray", ls=":", lw=1)
            ax.annotate(f"{FIFO} final; ⅓ of its epochs", (epochs / 3, fifo["hypervolume"]["mean"][-1]),
                        textcoords="offset points", xytext=(4, -12), fontsize=7, color="gray")
    axes[0][0].set_ylabel("mean over searcher seeds; band: min–max")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8, frameon=False)
    fig.suptitle(f"Anytime behaviour at a budget of {args.budget} epochs per search "
                 f"({'synthetic data' if args.data == 'synthetic' else 'LFW-a'}, searcher seeds 0..{args.seeds - 1})",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure)
    plt.close(fig)
    print(f"figure: {args.figure}; curves: {args.curves}", flush=True)


def fmt(values: list[float], digits: int = 4) -> str:
    mean, se_ = se.mean_se(values)
    return "—" if mean != mean else f"{mean:.{digits}f}" + ("" if se_ != se_ else f" ± {se_:.{digits}f}")


def report(args: argparse.Namespace, state: dict[str, Any], curves: dict[str, Any], values: dict[str, list[Any]],
           data: Any, counts: dict[str, float], box: tuple[float, float], loaded: list[str]) -> str:
    runs = [state["runs"][f"{name}|{s}"] for name in curves for s in range(args.seeds)]
    losses: dict[tuple[str, int], list[float]] = {}
    for r in runs:
        for _, label, epoch, loss, _, usable in r["history"]:
            if usable:
                losses.setdefault((label, epoch), []).append(loss)
    deviation = max((max(v) - min(v) for v in losses.values()), default=0.0)
    quarter, half = max(1, args.budget // 4), max(1, args.budget // 2)
    summary = []
    for name, c in curves.items():
        finals = {m: [s[m][-1] for s in c["per_seed"].values() if s[m]] for m in ("best_val_loss", "auc",
                                                                                  "hypervolume")}
        summary.append([name, ARMS[name].scheduler, len(c["per_seed"]), f"{se.mean_se(c['epochs'])[0]:.1f}",
                        f"{se.mean_se(c['trials'])[0]:.1f}", fmt(finals["best_val_loss"]),
                        f"{c['auc']['mean'][quarter - 1]:.4f}", f"{c['auc']['mean'][half - 1]:.4f}",
                        fmt(finals["auc"]), fmt(finals["hypervolume"]), f"{se.mean_se(c['wall'])[0]:.0f}"])
    per_seed = []
    for r in runs:
        c = curves[r["arm"]]["per_seed"][r["seed"]]
        pick = c["pick"][-1] if c["pick"] else None
        per_seed.append([r["arm"], r["seed"], r["trials"], r["epochs"],
                         f"{c['best_val_loss'][-1]:.4f}" if pick else "—",
                         f"{pick[1]}; {pick[2]} epochs" if pick else "—",
                         f"{c['auc'][-1]:.4f}" if pick else "—", f"{c['hypervolume'][-1]:.4f}" if pick else "—",
                         len(r["pick_auc"]), r.get("warm_from", "") and f"{r['warm_from']} ({r['warm_trials']})",
                         f"{r['wall']:.0f}"])
    table = sorted(((json.loads(k), v) for k, v in state["retrains"].items()), key=lambda kv: -kv[1]["auc"])
    oracle = [[k[1], k[2], f"{v['auc']:.4f}", f"{v['seconds']:.0f}"] for k, v in table]
    scheds = {r["arm"]: r["scheduler"] for r in runs}
    body = [
        f"- data: {data.summary()}",
        f"- space ({len(counts)} configurations): " + "; ".join(f"{k} {v}" for k, v in values.items())
        + f"; {args.image_size} px, batch 32, Koch init, patience {args.patience or 'off'}; max epochs "
        f"{args.max_epochs}, grace period {args.grace_period}, reduction factor {args.reduction_factor:g}",
        f"- every search: search_efficiency's (run_search.py's settings, tuner.build_tuner, a budget stopper) with a "
        f"budget of {args.budget} epochs; searcher seeds 0..{args.seeds - 1}; {args.max_concurrent} trials at once "
        f"on ray.init(num_cpus={args.cpus}); schedulers as run: "
        + "; ".join(f"{k}: {v}" for k, v in scheds.items()),
        *([f"- two objectives ({', '.join(n for n in curves if ARMS[n].multi)}): {OBJECTIVES} (multi-objective "
           "TPE)"] if any(ARMS[n].multi for n in curves) else []),
        f"- hypervolume of the (val loss, log10 params) points reported so far as a share of the box [0, ln 2] x "
        f"[log10 {box[0]:,.0f}, log10 {box[1]:,.0f}] (smallest model; largest {max(counts.values()):,.0f} with a "
        f"margin of {SIZE_MARGIN:g} of the log range), one box for every arm",
        *([f"- {WARM}: TPE + ASHA warm-started from the {PRIOR} study of searcher seed (s + 1) mod {args.seeds}; "
           "the prior's epochs are not counted"] if WARM in curves else []),
        "- the pick at each epoch: the trial with the lowest val loss at any epoch so far, retrained on train + val "
        "for that epoch count (search_efficiency's Retrainer); its DevTest AUC is hindsight, never used to choose",
        f"- trials are seeded alike (Config.seed = {args.trial_seed} in every arm): the same configuration gave the "
        f"same val loss at the same epoch in every search to within {deviation:.2g} "
        f"({sum(len(v) > 1 for v in losses.values())} (configuration, epoch) pairs seen more than once); the "
        f"reported parameter counts match the table to within {max(r['params_gap'] for r in runs):g}; reports "
        f"never handed to the budget stopper (not ordered, left out): {sum(r['unordered'] for r in runs)}",
        f"- oracle table: {len(state['retrains'])} (configuration, epochs) retrained, "
        f"{sum(v['seconds'] for v in state['retrains'].values()):.0f} s in all",
        f"- figure: {args.figure}; every curve: {args.curves}",
        *([f"- loaded from --results {args.results} (measured by an earlier invocation): {', '.join(loaded)}"]
          if loaded else []),
        "",
        _common.md_table(["arm", "scheduler", "seeds", "epochs (mean)", "trials (mean)",
                          "final best val loss (mean ± s.e.)", f"pick's AUC at epoch {quarter} (mean)",
                          f"at epoch {half} (mean)", "final pick's DevTest AUC (mean ± s.e.)",
                          "final hypervolume (mean ± s.e.)", "wall s (mean)"], summary),
        "",
        _common.md_table(["arm", "searcher seed", "trials", "epochs", "best val loss", "hands back at the end",
                          "DevTest AUC", "hypervolume", "distinct picks", "warm from (trials)", "wall s"], per_seed),
        "",
        "Oracle table (every pick retrained once; best DevTest AUC first):",
        "",
        _common.md_table(["configuration", "epochs", "DevTest AUC", "retrain s"], oracle),
        "",
        *verdicts(args, curves),
    ]
    return "\n".join(body)


def verdicts(args: argparse.Namespace, curves: dict[str, Any]) -> list[str]:
    lines = ["Verdict:", ""]
    if BASELINE in curves:
        target = curves[BASELINE]["auc"]["mean"][-1]
        lines.append(f"- {BASELINE}'s final mean DevTest AUC: {target:.4f}")
        met = []
        for name, c in curves.items():
            x = first_reach(c["auc"]["mean"], target)
            if x is None:
                lines.append(f"- {name}: its mean AUC curve never reaches it within {args.budget} epochs (final "
                             f"{c['auc']['mean'][-1]:.4f}, best {max(v for v in c['auc']['mean'] if v == v):.4f})")
            else:
                held = holds_from(c["auc"]["mean"], target)
                lines.append(f"- {name}: reaches it at epoch {x} of {args.budget}, {x / args.budget:.2f} of the budget"
                             + ("" if held == x else f" (the mean is not monotone: it stays at or above it from epoch "
                                                    f"{held})" if held else " (and falls below it again by the end)"))
                if name != BASELINE:
                    met.append((x / args.budget, name))
        best = min(met, default=None)
        ok = best is not None and best[0] <= 0.5
        lines.append(f"- target (an arm besides {BASELINE} at ≤ 0.50 of its epochs): {'PASS' if ok else 'MISS'} "
                     + (f"(earliest: {best[1]} at {best[0]:.2f})" if best else "(no other arm reaches it)"))
    else:
        lines.append(f"- no {BASELINE} runs: the AUC target is not judged")
    if FIFO in curves:
        fifo = curves[FIFO]
        target, epochs = fifo["hypervolume"]["mean"][-1], sum(fifo["epochs"]) / len(fifo["epochs"])
        lines.append(f"- {FIFO}'s final mean hypervolume: {target:.4f} after {epochs:.1f} epochs (mean)")
        others = [n for n in curves if ARMS[n].multi and n != FIFO]
        if not target > 0:
            lines.append(f"- no point of {FIFO} lies below the reference val loss (ln 2): the hypervolume target is "
                         "not judged")
            others = []
        for name in others:
            x = first_reach(curves[name]["hypervolume"]["mean"], target)
            judged = " (target ≤ 0.33)" if name == PARETO else " (for the record)"
            if x is None:
                lines.append(f"- {name}: its mean hypervolume never reaches it within {args.budget} epochs (final "
                             f"{curves[name]['hypervolume']['mean'][-1]:.4f}){judged}"
                             + (": MISS" if name == PARETO else ""))
            else:
                share = x / epochs
                lines.append(f"- {name}: reaches it at epoch {x}, {share:.2f} of {FIFO}'s epochs{judged}"
                             + ((": PASS" if share <= 1 / 3 + 1e-12 else ": MISS") if name == PARETO else ""))
        if PARETO not in curves:
            lines.append(f"- no {PARETO} runs: the hypervolume target is not judged")
    else:
        lines.append(f"- no {FIFO} runs: the hypervolume target is not judged")
    return lines


if __name__ == "__main__":
    sys.exit(main())

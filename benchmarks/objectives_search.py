"""Accuracy against size: does a multi-objective search (val loss and parameters) find smaller models that are
nearly as good, at the budget of a single-objective search? Compared on two finished searches of one budget:

    python run_search.py --data ../shared/data/lfw-a --space best --seed 0 --num-samples 20 --max-epochs 24 \\
        --final retrain --name lfw-best-single20
    python run_search.py ... (the same) --objectives val_loss,params --name lfw-best-multi20
    python -m tune_siamese finalize ray_results/lfw-best-multi20 --final retrain --pick smallest-within=0.01
    python3 benchmarks/objectives_search.py ray_results/lfw-best-single20 ray_results/lfw-best-multi20

Per search, over its trials (diverged and errored ones left out): the hypervolume of (best val loss, log10
parameters), the trials on that front, and, from each trial's own model (lowest-val-loss epoch, train part only)
scored on DevTest, the smallest model within 1 point of the search's most accurate one (hindsight: DevTest
chooses nothing in the searches). Then each search's final models (final*.json), with their parameters, FLOPs and
CPU latency measured here, one after another, on one thread.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from final_policies import with_interval  # noqa: E402
from optuna._hypervolume import compute_hypervolume  # noqa: E402  (Optuna's exact hypervolume; no public API)
from selection_signal import own_model  # noqa: E402

import analysis  # noqa: E402
from tune_siamese.artifacts.checkpoint import load_checkpoint, load_model  # noqa: E402
from tune_siamese.core import storage  # noqa: E402
from tune_siamese.core.config import Config  # noqa: E402
from tune_siamese.core.names import STATE_FILE  # noqa: E402
from tune_siamese.searching.objectives import model_costs  # noqa: E402
from tune_siamese.searching.pareto import front  # noqa: E402
from tune_siamese.searching.spaces import get_preset  # noqa: E402
from tune_siamese.training.model import build_model  # noqa: E402
from tune_siamese.training.scoring import val_and_test  # noqa: E402

CHANCE_LOSS = math.log(2)  # BCE of a model that always says 0.5: the hypervolume's reference in val loss
SIZE_FIELDS = ("width", "embedding", "input_size", "head")  # what sets a model's parameter count in `best`
COSTS = ["params", "flops", "latency"]
FIGURE = _common.REPO / "benchmarks" / "figures" / "objectives_search_fronts.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+", help="finished searches of one budget (single- and multi-objective)")
    p.add_argument("--space", default="best", help="the searches' preset (sets the hypervolume's size range)")
    p.add_argument("--note", default="", help="a line added under the machine line")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def size_range(space: str, base: dict[str, Any]) -> tuple[float, float]:
    """The fewest and most parameters a model of the preset can have (every combination of SIZE_FIELDS)."""
    preset = get_preset(space)
    choices = {name: preset.space[name].categories for name in SIZE_FIELDS if name in preset.space}
    counts = []
    for values in itertools.product(*choices.values()):
        config = Config.from_dict({**base, **dict(zip(choices, values))})
        counts.append(model_costs(build_model(config), config, ["params"])["params"])  # as a trial counts
    return min(counts), max(counts)


def hypervolume(points: list[tuple[float, float]], sizes: tuple[float, float]) -> float:
    """Share of the box [0, ln 2] x [log10 fewest, log10 most parameters] that the points dominate (0 to 1)."""
    low, high = math.log10(sizes[0]), math.log10(sizes[1])
    inside = [(loss, math.log10(params)) for loss, params in points if loss < CHANCE_LOSS]
    if not inside:
        return 0.0
    volume = compute_hypervolume(np.array(inside), np.array([CHANCE_LOSS, high]))
    return volume / (CHANCE_LOSS * (high - low))


def trial_rows(experiment: Path) -> list[dict[str, Any]]:
    """Each usable trial: its best val loss, status, costs and its own model's DevTest scores."""
    exp = analysis.load(experiment)
    loaded: dict[tuple, Any] = {}
    rows = []
    for _, trial in exp.best(len(exp.trials)).iterrows():
        checkpoints = sorted((experiment / f"trial_{trial['trial_id']}").glob(f"checkpoint_*/{STATE_FILE}"))
        if not checkpoints:
            continue
        config = Config.from_dict(load_checkpoint(checkpoints[-1])["config"])
        model, data, images = own_model(checkpoints[-1].parent, config, loaded)
        test = val_and_test(model, images, data, config)["test"]
        costs = model_costs(build_model(config), config, COSTS)  # as a trial measures them, before training
        rows.append({"trial": trial["trial_id"], "status": trial["status"], "val_loss": trial["best_val_loss"],
                     **costs, "acc": test["accuracy_at_threshold"], "auc": test["auc"],
                     "config": {name: getattr(config, name) for name in SIZE_FIELDS}})
    return rows


def final_rows(experiment: Path) -> list[dict[str, Any]]:
    """Each final model of the search (final.json, final-NAME.json) with its test scores and its export's costs."""
    rows = []
    for record_path in sorted(experiment.glob("final*.json")):
        record = storage.record_as_read(json.loads(record_path.read_text()), str(experiment))  # paths where it is
        if not record.get("export"):
            continue
        model, config, _ = load_model(record["export"])
        rows.append({"record": record_path.name, "pick": record.get("pick", "best"), "trial": record["best_trial"],
                     "val_loss": record["best_val_loss"], "test": record["test"],
                     **model_costs(model, config, COSTS)})
    return rows


def plot_fronts(searches: dict[str, list[dict[str, Any]]], finals: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for (name, rows), color in zip(searches.items(), ("tab:gray", "tab:blue", "tab:green", "tab:orange")):
        points = [(r["params"], r["val_loss"]) for r in rows]
        ax.scatter(*zip(*points), s=22, color=color, alpha=0.55, label=f"{name}: trials")
        on_front = sorted(points[i] for i in front([(loss, params) for params, loss in points]))
        ax.step(*zip(*on_front), where="post", color=color, lw=1.6, label=f"{name}: front")
        by_trial: dict[str, list[dict[str, Any]]] = {}
        for row in finals.get(name, []):  # rules that picked the same trial share one label
            by_trial.setdefault(row["trial"], []).append(row)
        for trial, picks in by_trial.items():
            picked = next((r for r in rows if r["trial"] == trial), None)
            if picked is not None:
                ax.scatter([picked["params"]], [picked["val_loss"]], s=120, facecolors="none", edgecolors=color,
                           lw=1.6)
                rules = " = ".join(row["pick"] for row in picks)
                ax.annotate(f"{rules}: DevTest {picks[0]['test']['accuracy_at_threshold']:.3f}",
                            (picked["params"], picked["val_loss"]), textcoords="offset points", xytext=(8, -12),
                            fontsize=8, color=color)
    ax.margins(y=0.08)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("best val loss (BCE)")
    ax.set_title("Trials of two searches of one budget on LFW-a; circled: the models handed back", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(FIGURE)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    torch.set_num_threads(1)  # model_costs times on one thread anyway; scoring on one keeps the run quiet
    info = _common.machine_info(torch.get_num_threads())
    print(_common.machine_line(info), flush=True)
    experiments = [Path(path) for path in args.experiments]
    settings = {exp.name: json.loads((exp / "search_settings.json").read_text()) for exp in experiments}
    sizes = size_range(args.space, next(iter(settings.values()))["base"])
    searches = {exp.name: trial_rows(exp) for exp in experiments}
    finals = {exp.name: final_rows(exp) for exp in experiments}

    search_table = []
    for exp in experiments:
        rows, given = searches[exp.name], settings[exp.name]
        points = [(r["val_loss"], r["params"]) for r in rows]
        on_front = [rows[i] for i in front(points)]
        most = max(rows, key=lambda r: r["acc"])
        near = min((r for r in rows if r["acc"] >= most["acc"] - 0.01), key=lambda r: (r["params"], -r["acc"]))
        search_table.append([
            exp.name, ",".join(given.get("objectives") or ["val_loss"]), f"{len(rows)} of {given['num_samples']}",
            f"{hypervolume(points, sizes):.3f}", len(on_front),
            f"{min(r['params'] for r in rows):,.0f}", f"{most['acc']:.3f} ({most['params']:,.0f} params)",
            f"{near['acc']:.3f} ({near['params']:,.0f} params, {near['trial']})"])
    final_table = [[exp.name, row["pick"], row["trial"], f"{row['val_loss']:.4f}",
                    with_interval(row["test"], "accuracy_at_threshold"), with_interval(row["test"], "auc"),
                    f"{row['params']:,.0f}", f"{row['flops'] / 1e6:,.1f}", f"{row['latency_ms']:.2f}"]
                   for exp in experiments for row in finals[exp.name]]
    trial_table = [[exp.name, r["trial"], r["status"], f"{r['val_loss']:.4f}", f"{r['params']:,.0f}",
                    f"{r['flops'] / 1e6:,.1f}", f"{r['latency_ms']:.2f}", f"{r['acc']:.3f}", f"{r['auc']:.3f}",
                    ", ".join(f"{k}={v}" for k, v in r["config"].items())]
                   for exp in experiments for r in sorted(searches[exp.name], key=lambda r: r["params"])]
    plot_fronts(searches, finals)

    body = "\n".join([
        *([f"- {args.note}", ""] if args.note else []),
        f"- hypervolume of (best val loss, log10 parameters) over the usable trials, as a share of the box [0, ln 2] "
        f"x [log10 {sizes[0]:,.0f}, log10 {sizes[1]:,.0f}] (the `{args.space}` space's smallest and largest "
        "models); DevTest of each trial's own model (train part only, lowest-val-loss epoch, accuracy at its val "
        "threshold) is hindsight: nothing in a search sees it",
        "",
        _common.md_table(["search", "objectives", "usable trials", "hypervolume", "trials on the front",
                          "smallest params", "most accurate trial (DevTest)",
                          "smallest within 1 point of it (DevTest)"], search_table),
        "",
        "Final models (retrained on train + val; parameters, MFLOPs per pair and CPU latency of the export, batch 1, "
        "one thread, min of 30 runs, measured here one after another):",
        "",
        _common.md_table(["search", "pick", "trial", "val loss", "DevTest acc at val threshold", "AUC", "params",
                          "MFLOPs", "latency ms"], final_table),
        "",
        f"Every trial ({FIGURE.relative_to(_common.REPO)}):",
        "",
        _common.md_table(["search", "trial", "status", "best val loss", "params", "MFLOPs", "latency ms",
                          "DevTest acc", "AUC", "size"], trial_table),
    ])
    _common.record("objectives_search", body, info, started, enabled=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

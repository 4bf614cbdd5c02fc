"""Does a search's selection signal rank its trials as DevTest does? Checked on finished run_search.py experiments.

For every trial with a checkpoint, its own model (the epoch of its lowest val loss, trained on the train part
only, as `--ensemble` uses it) is scored on the DevTest pairs. Per experiment: the Spearman rank correlation of
that epoch's val loss and of its val AUC with DevTest AUC (over the trials that learn, DevTest AUC > 0.6), and the
DevTest scores of the trial the search picks (lowest val loss), of the one the highest val AUC would pick, and of
the best trial by DevTest (what a perfect signal would pick among the trials this search ran).

    python3 benchmarks/selection_signal.py ray_results/lfw-best-seed0 ray_results/lfw-best-seed1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)
import torch  # noqa: E402
from ray import tune  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from tune_siamese.artifacts.checkpoint import load_checkpoint  # noqa: E402
from tune_siamese.core.config import DATA_FIELDS, Config  # noqa: E402
from tune_siamese.core.names import STATE_FILE  # noqa: E402
from tune_siamese.data import load_data  # noqa: E402
from tune_siamese.final.policies import trial_model  # noqa: E402
from tune_siamese.training.metrics import pair_metrics  # noqa: E402
from tune_siamese.training.scoring import images_on, predict  # noqa: E402

LEARNS = 0.6  # DevTest AUC above which a trial counts as having learned (the others tie near 0.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+", help="experiment folders written by run_search.py")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def own_model(checkpoint: Path, config: Config, loaded: dict[tuple, Any]) -> tuple[Any, Any, torch.Tensor]:
    """A trial's own model (its lowest-val-loss epoch) from its checkpoint folder, as the `trial` policy reads it
    (eval mode, trained layout), with its data and images; `loaded` keeps the data of earlier trials, which mostly
    share it."""
    key = tuple(getattr(config, name) for name in DATA_FIELDS)
    if key not in loaded:
        data = load_data(config)
        loaded[key] = (data, images_on(torch.device("cpu"), data.images))
    data, images = loaded[key]
    return trial_model(tune.Checkpoint.from_directory(str(checkpoint)), config), data, images


def trial_rows(experiment: Path) -> list[dict[str, Any]]:
    """One row per trial with a checkpoint: val loss and val AUC of its saved epoch, and its DevTest scores."""
    rows: list[dict[str, Any]] = []
    loaded: dict[tuple, Any] = {}
    for trial in sorted(experiment.glob("trial_*")):
        checkpoints = sorted(trial.glob(f"checkpoint_*/{STATE_FILE}"))
        if not checkpoints:
            continue
        state = load_checkpoint(checkpoints[-1])
        scored = [row for row in state["history"] if row.get("val_loss") is not None]
        if not scored:
            continue
        saved = min(scored, key=lambda row: row["val_loss"])  # the epoch state["best_model"] holds
        config = Config.from_dict(state["config"])
        model, data, images = own_model(checkpoints[-1].parent, config, loaded)
        test = pair_metrics(data.test[:, 2], predict(model, images, data.test, config))
        rows.append({"trial": trial.name, "val_loss": saved["val_loss"], "val_auc": saved["val_auc"],
                     "test_accuracy": test["accuracy"], "test_auc": test["auc"]})
    return rows


def summarize(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    learned = [r for r in rows if r["test_auc"] > LEARNS]
    test_auc = [r["test_auc"] for r in learned]
    return {"experiment": name, "trials": len(rows), "learned": len(learned),
            "rho_loss": spearmanr([r["val_loss"] for r in learned], test_auc)[0],
            "rho_auc": spearmanr([r["val_auc"] for r in learned], test_auc)[0],
            "by_loss": min(rows, key=lambda r: r["val_loss"]), "by_auc": max(rows, key=lambda r: r["val_auc"]),
            "by_test": max(rows, key=lambda r: r["test_auc"])}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    info = _common.machine_info(torch.get_num_threads())
    print(_common.machine_line(info), flush=True)
    results = []
    for path in args.experiments:
        results.append(summarize(Path(path).name, trial_rows(Path(path))))
        print(f"{path}: done", flush=True)

    def picked(row: dict[str, Any]) -> str:
        return f"{row['trial']} {row['test_accuracy']:.3f} / {row['test_auc']:.3f}"

    table = [[r["experiment"], f"{r['learned']} of {r['trials']}", f"{r['rho_loss']:+.2f}", f"{r['rho_auc']:+.2f}",
              picked(r["by_loss"]), picked(r["by_auc"]), picked(r["by_test"])] for r in results]
    mean = {key: statistics.mean(r[key] for r in results) for key in ("rho_loss", "rho_auc")}
    same = sum(r["by_loss"]["trial"] == r["by_auc"]["trial"] for r in results)
    body = "\n".join([
        "- each trial's own model at its lowest-val-loss epoch (train part only, from its last checkpoint) scored "
        f"on DevTest; Spearman ρ over the trials that learn (DevTest AUC > {LEARNS})",
        "",
        _common.md_table(["experiment", "trials that learn", "ρ(val loss, DevTest AUC)", "ρ(val AUC, DevTest AUC)",
                          "picked by lowest val loss: DevTest acc / AUC", "by highest val AUC",
                          "best by DevTest (hindsight)"], table),
        "",
        f"Mean ρ: val loss {mean['rho_loss']:+.2f}, val AUC {mean['rho_auc']:+.2f}; the two signals pick the same "
        f"trial in {same} of {len(results)} experiments.",
    ])
    _common.record("selection_signal", body, info, started, enabled=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

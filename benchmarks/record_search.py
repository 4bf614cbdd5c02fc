"""Record finished run_search.py experiments in RESULTS.md: the exact command, wall time, machine, what the
search ran, and the DevTest scores of the retrained best model, the best trial's own model and the ensemble.

Nothing is recomputed: every figure comes from the experiment folder (search_settings.json, final.json and
Tune's per-trial results, read with the project's `analysis` package).

    python3 benchmarks/record_search.py ray_results/lfw-best ray_results/lfw-best-mined
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+", help="experiment folders written by run_search.py")
    p.add_argument("--note", default="", help="a line added under the machine line (e.g. what else ran)")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def scores(test: dict | None) -> str:
    if not test:
        return "—"
    return f"{test['accuracy']:.3f} / {test['accuracy_at_threshold']:.3f} / {test['auc']:.3f}"


def section(path: str) -> tuple[str, str]:
    import analysis

    exp = analysis.load(path)
    summary = exp.summary
    if summary is None:
        raise SystemExit(f"{path}: no final.json (the search has not finished)")
    settings = exp.settings
    trials = exp.trials
    statuses = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    wall = summary.get("wall_seconds", {})
    ensemble = summary.get("ensemble") or {}
    best = summary["best_config"]
    config = ", ".join(f"{k}={best[k]}" for k in exp.hyperparameters)
    members = ", ".join(f"{m['trial_id']} ({m['val_loss']:.4f})" for m in ensemble.get("members", []))
    lines = [
        f"- command: `{settings.get('command') or '(not recorded)'}`",
        f"- wall time: search {wall.get('search', float('nan')) / 60:.1f} min, retrain + test + export "
        f"{wall.get('retrain_test_export', float('nan')) / 60:.1f} min"
        + (" (this invocation resumed the search: its part only)" if wall.get("resumed") else ""),
        f"- search: preset `{settings['space']}`, {len(trials)} trials ({statuses}), "
        f"{int(trials['last_epoch'].sum())} epochs run of {len(trials) * settings['max_epochs']} possible, "
        f"{settings['max_concurrent']} at once, {settings['cpus_per_trial']:g} CPU each, seed {settings['seed']}",
        f"- best trial: val loss {summary['best_val_loss']:.4f} at epoch {summary['best_epoch']}; {config}",
        "",
        _common.md_table(["model", "DevTest accuracy at 0.5 / at val threshold / AUC"], [
            [f"best configuration retrained on train + val for {summary.get('epochs')} epochs (exported)",
             scores(summary.get("test"))],
            ["the best trial's own model (train part only)", scores(summary.get("searched_model_test"))],
            [f"ensemble of the top {len(ensemble.get('members', []))} trials' own models: {members}",
             scores(ensemble.get("test"))] if ensemble else ["ensemble", "— (not requested)"],
        ]),
    ]
    return exp.name, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    info = _common.machine_info()
    parts = []
    for path in args.experiments:
        name, body = section(path)
        parts.append(f"### {name}\n\n{body}")
    body = "\n\n".join(([f"- {args.note}", ""] if args.note else []) + parts)
    _common.record("record_search", body, info, started, enabled=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

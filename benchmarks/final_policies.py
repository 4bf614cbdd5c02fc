"""Which final model should a search hand back? Runs `tune-siamese finalize` with every policy on finished
searches (one per searcher seed), then records DevTest scores per policy: per search with 95 % intervals over
people, and over the searches as mean ± s.d. (min–max), with the final stage's wall time.

DevTest is only scored here, never used to choose: each policy builds its model from the search alone.

    python3 benchmarks/final_policies.py ray_results/lfw-best-seed0 ray_results/lfw-best-seed1 \\
        ray_results/lfw-best-seed2 --policies retrain trial seeds folds --size 3

A finalize that already ran (final-NAME.json exists) is read, not run again: the script can be stopped and
started. Its wall time is then the one recorded when it ran.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)

from tune_siamese.final.finalize import final_name  # noqa: E402

SCORES = [("accuracy_at_threshold", "acc at val threshold"), ("auc", "AUC"), ("tar_at_far_0.01", "TAR@FAR 1e-2")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+", help="finished run_search.py experiments (e.g. one per --seed)")
    p.add_argument("--policies", nargs="+", default=["retrain", "trial", "seeds", "folds"])
    p.add_argument("--size", type=int, default=3, help="--final-size for seeds and folds")
    p.add_argument("--note", default="", help="a line added under the machine line (e.g. what else ran)")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def finalized(experiment: Path, policy: str, size: int) -> dict[str, Any]:
    """final-NAME.json of `experiment`, running `tune-siamese finalize` first when it is not there yet."""
    name = final_name(policy, size)
    record = experiment / f"final-{name}.json"
    if not record.exists():
        command = [sys.executable, "-m", "tune_siamese", "finalize", str(experiment), "--final", policy]
        if policy in ("seeds", "folds"):
            command += ["--final-size", str(size)]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return json.loads(record.read_text())


def with_interval(test: dict[str, Any], key: str) -> str:
    interval = test.get(f"{key}_ci")
    return f"{test[key]:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def spread(values: list[float]) -> str:
    mean, sd = _common.mean_sd(values)
    sd_text = f" ± {sd:.3f}" if sd == sd else ""
    return f"{mean:.3f}{sd_text} ({min(values):.3f}–{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    info = _common.machine_info()
    experiments = [Path(path) for path in args.experiments]
    names = [final_name(policy, args.size) for policy in args.policies]
    records = {(exp, name): finalized(exp, policy, args.size)
               for exp in experiments for policy, name in zip(args.policies, names)}

    headers = ["policy", *(label for _, label in SCORES), "wall time"]
    parts = [f"- {args.note}", ""] if args.note else []
    parts += ["Over the searches (DevTest, mean ± s.d. (min–max)); wall time of `finalize` (final model, test and "
              "export), mean:", ""]
    rows = []
    for name in names:
        tests = [records[exp, name]["test"] for exp in experiments]
        walls = [records[exp, name]["wall_seconds"]["final_model"] for exp in experiments]
        rows.append([name, *(spread([t[key] for t in tests]) if all(key in t for t in tests) else "—"
                             for key, _ in SCORES), minutes(sum(walls) / len(walls))])
    parts.append(_common.md_table(headers, rows))
    for name in names:  # what averaging gained: each member of an ensemble scored alone at the same threshold
        alone = [member["test"] for exp in experiments for member in records[exp, name]["final"]["members"]
                 if "test" in member]
        if alone:
            parts += ["", f"{name}, its {len(alone)} members scored alone at their ensemble's threshold: acc "
                          f"{spread([m['accuracy_at_threshold'] for m in alone])}, AUC "
                          f"{spread([m['auc'] for m in alone])}"]
    for exp in experiments:
        first = records[exp, names[0]]
        parts += ["", f"### {exp.name}: best trial {first['best_trial']} (val loss {first['best_val_loss']:.4f} at "
                      f"epoch {first['best_epoch']}); 95 % intervals resample people", ""]
        parts.append(_common.md_table(headers, [
            [name, *(with_interval(records[exp, name]["test"], key) if key in records[exp, name]["test"] else "—"
                     for key, _ in SCORES), minutes(records[exp, name]["wall_seconds"]["final_model"])]
            for name in names]))
    _common.record("final_policies", "\n".join(parts), info, started, enabled=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m analysis EXPERIMENT [--out DIR] [--color-by PARAM]: write a report of a run_search.py experiment."""
from __future__ import annotations

import argparse
import sys

from tune_siamese.core.errors import InputError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    p.add_argument("experiment", help="experiment folder written by run_search.py (local path or storage URI)")
    p.add_argument("--out", help="report folder (default: EXPERIMENT/report)")
    p.add_argument("--color-by", help="hyperparameter that colours the learning curves (default: the first numeric)")
    args = p.parse_args(argv)
    from .report import report

    try:
        out = report(args.experiment, args.out, args.color_by)
    except InputError as exc:
        print(f"python -m analysis: error: {exc}", file=sys.stderr)
        return 2
    print(f"Report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

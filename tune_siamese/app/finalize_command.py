"""What `tune-siamese finalize` prints around final.finalize.finalize (cli.py parses)."""
from __future__ import annotations

import argparse

from tune_siamese.app.console import print_final
from tune_siamese.core.names import FINAL_FILE
from tune_siamese.final.finalize import finalize


def cmd_finalize(args: argparse.Namespace) -> int:
    summary = finalize(args.experiment, args.final, args.final_size, args.address, args.connect_timeout, args.pick)
    print(f"\nFrom {summary['best_trial']} (val loss {summary['best_val_loss']:.4f} at epoch {summary['best_epoch']}).")
    print_final(summary)
    print(f"Recorded in {summary['record']} ({FINAL_FILE} and export/ are untouched)")
    return 0

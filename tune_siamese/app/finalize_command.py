"""What `tune-siamese finalize` prints around final.finalize.finalize (cli.py parses), and how it stops: Ctrl-C or
SIGTERM ends it with one line, exit 130 or 143, its record and export whole or absent."""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from tune_siamese.app.console import print_final
from tune_siamese.app.search_command import SigtermAsCtrlC
from tune_siamese.core.names import EXIT_CTRL_C, EXIT_NO_USABLE_TRIAL, EXIT_SIGTERM, FINAL_FILE
from tune_siamese.final.finalize import finalize
from tune_siamese.final.finish import FINAL_DIVERGED

PROG = "tune-siamese finalize"


def cmd_finalize(args: argparse.Namespace) -> int:
    """Exit 0 done; 2 bad input (cli.main prints it); 3 the final model diverged (its record says so, nothing is
    exported); 130 Ctrl-C, 143 SIGTERM."""
    stop = SigtermAsCtrlC()
    stop.install()  # again once Ray is up (on_connect): ray.init sets its own, which aborted the process (134)
    # Ctrl-C is Python's KeyboardInterrupt for the command's run, whatever handler the process had; restored after.
    on_main_thread = threading.current_thread() is threading.main_thread()
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler) if on_main_thread else None
    try:
        summary = finalize(args.experiment, args.final, args.final_size, args.address, args.connect_timeout,
                           args.pick, on_connect=stop.install)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted{stop.how()}; its record and export are whole or absent (none half-written): "
              "run it again", file=sys.stderr)
        return EXIT_SIGTERM if stop.received else EXIT_CTRL_C
    finally:
        stop.uninstall()
        if on_main_thread:
            signal.signal(signal.SIGINT, inherited)
    if FINAL_DIVERGED in summary:
        print(f"{PROG}: the final model diverged ({summary[FINAL_DIVERGED]}); nothing was exported (exit "
              f"{EXIT_NO_USABLE_TRIAL}); recorded in {summary['record']}", file=sys.stderr)
        return EXIT_NO_USABLE_TRIAL
    print(f"\nFrom {summary['best_trial']} (val loss {summary['best_val_loss']:.4f} at epoch {summary['best_epoch']}).")
    print_final(summary)
    print(f"Recorded in {summary['record']} ({FINAL_FILE} and export/ are untouched)")
    if summary.get("mlflow_run"):
        print(f"MLflow: run {summary['mlflow_run']}, a child of the search's run")
    return 0

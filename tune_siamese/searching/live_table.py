"""Tune's live table of trials: the searched values and what the search ranks by, without Tune's status lines that
mislead here."""
from __future__ import annotations

from typing import Any

from ray import tune

from tune_siamese.core.names import (
    BEST_VAL_LOSS,
    MODE,
    VAL_LOSS,
)

# Lines of Tune's legacy status block that mislead here: ASHA's bracket prints the negated loss it maximises,
# `num_stopped` counts finished trials too, and "Result logdir" names Ray's session folder, not the experiment.
MISLEADING_STATUS = ("Using AsyncHyperBand", "Bracket:", "Result logdir:", "Using FIFO scheduling")


class LiveTable(tune.CLIReporter):
    """Tune's table of trials without the misleading status lines."""

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        status = self._progress_str(trials, done, *sys_info)
        self._print("\n".join(line for line in status.splitlines() if not line.strip().startswith(MISLEADING_STATUS)))


def live_table(searched: list[str]) -> tune.CLIReporter:
    """Tune's table of trials: the searched values and what the search ranks by, best trial first, every 30 s.

    Ray's newer console prints each trial's whole config when it starts and cannot be narrowed to columns;
    this reporter is the one RunConfig(progress_reporter=...) takes (console.ray_console_environment)."""
    metrics = {"epoch": "epoch", VAL_LOSS: "val loss", BEST_VAL_LOSS: "best val loss", "val_auc": "val AUC"}
    return LiveTable(metric_columns=metrics, parameter_columns=searched, max_report_frequency=30,
                     metric=BEST_VAL_LOSS, mode=MODE, sort_by_metric=True, max_progress_rows=30)

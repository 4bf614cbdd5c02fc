"""What ts.search, ts.resume and ts.finalize hand back."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import analysis


@dataclass(frozen=True)
class SearchResult:
    """What a finished search (or ts.finalize) hands back.

    Attributes:
        summary: final.json as a dict (for ts.finalize, its final-NAME.json).
        experiment: the experiment folder or URI (absolute).
        command: the equivalent command line.
        model: the model handed back, in memory (None: no_retrain, no usable trial, or ts.finalize).

    Example:
        result = ts.search(space="smoke")
        result.best_params, result.test["auc"], result.analysis.trials
    """

    summary: dict[str, Any]
    experiment: str
    command: str
    model: Any = None

    def __post_init__(self) -> None:
        from tune_siamese.core import storage

        object.__setattr__(self, "experiment", storage.resolve(self.experiment))  # absolute, as --resume takes it

    def __repr__(self) -> str:
        test = self.test or {}
        auc = f", test_auc={test['auc']:.4f}" if isinstance(test.get("auc"), float) else ""
        loss = self.summary.get("best_val_loss")
        best = f", best_val_loss={loss:.4f}" if isinstance(loss, float) else ""
        return (f"SearchResult(experiment={self.experiment!r}, trials={self.summary.get('trials')}{best}{auc}, "
                f"export={self.export!r})")

    @property
    def best_config(self) -> dict[str, Any]:
        """Every Config field of the configuration handed back (fixed values included); see best_params."""
        return dict(self.summary.get("best_config", {}))

    @property
    def best_params(self) -> dict[str, Any]:
        """The searched hyperparameters' values in the configuration handed back, as Optuna and Ray name them."""
        searched = self.analysis.hyperparameters
        return {name: value for name, value in self.best_config.items() if name in searched}

    @property
    def test(self) -> dict[str, Any] | None:
        """The test scores of the model handed back (auc, accuracy, intervals, ...), final.json's "test" and the
        Experiment's `test`; None without one (no_retrain, or no usable trial)."""
        return self.summary.get("test")

    @property
    def export(self) -> str | None:
        """The export folder of the model handed back (ts.load takes it, or the experiment), or None: absolute,
        where the experiment is now (a record read from a file names it relative to the experiment)."""
        from tune_siamese.core import storage

        export = storage.record_as_read(self.summary, self.experiment).get("export")
        return export if isinstance(export, str) else None

    @property
    def warnings(self) -> list[str]:
        """What may make the result wrong or weak (also issued as Python warnings when the search returned)."""
        from tune_siamese.app.console import summary_warnings

        return summary_warnings(self.summary)

    @property
    def usable(self) -> bool:
        """False when every trial diverged or errored (summary["no_usable_trial"] says why), or the final model
        diverged (summary["final_diverged"]): no model was handed back."""
        return "no_usable_trial" not in self.summary and "final_diverged" not in self.summary

    @functools.cached_property
    def analysis(self) -> analysis.Experiment:
        """The experiment read back as DataFrames (analysis.load): trials, history, best(n), importance()."""
        import analysis

        return analysis.load(self.experiment)

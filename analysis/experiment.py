"""A run_search.py experiment as pandas tables (`load`), several side by side (`compare`): from its files alone
(read by files.py), no Ray cluster, finished or still running.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs

from tune_siamese.core import storage
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import (
    DIVERGED,
    ERRORED,
    FINAL_FILE,
    SETTINGS_FILE,
    VAL_LOSS,
    counted,
    trial_id_of,
    trial_status,
)
from tune_siamese.searching.objectives import REPORTED
from tune_siamese.searching.pareto import front

from .files import ExperimentFiles, result_rows, trial_records, with_trial_ids

# Columns of `Experiment.trials`, then config/<name> for every config value (Ray's ResultGrid.get_dataframe()
# convention), the searched ones first: a merge with the per-epoch history (whose `lr` is the scheduled one of
# each epoch) gives no lr_x/lr_y. last_epoch, best_epoch and last_val_loss name epochs as `history` does.
TRIAL_COLUMNS = ["trial_id", "status", "tune_status", "last_epoch", "best_epoch", "best_val_loss", "last_val_loss",
                 "best_val_accuracy", "best_val_auc", "start_time", "end_time", "wall_time_s", "node_id"]
TIME_DTYPE = "datetime64[ns, UTC]"  # start_time and end_time: one resolution for both, NaT for a trial without


def config_column(name: str) -> str:
    """The column of `Experiment.trials` that holds config value `name`."""
    return f"config/{name}"


@dataclass(repr=False)
class Experiment:
    """One loaded experiment: per-trial and per-epoch tables, the search settings and the final test scores."""

    path: str
    name: str
    settings: dict[str, Any]  # search_settings.json
    summary: dict[str, Any] | None  # final.json, once the search has finished
    hyperparameters: list[str]
    trials: pd.DataFrame  # one row per trial: TRIAL_COLUMNS plus one column per hyperparameter
    history: pd.DataFrame  # one row per trial per reported epoch, every reported metric
    configs: dict[str, dict[str, Any]]  # trial id -> full trial config, values as Tune passed them
    space: dict[str, Any] | None  # the preset's Ray Tune space when settings name a known preset

    @property
    def test(self) -> dict[str, Any] | None:
        """The final model's test scores and ROC points (final.json's "test"), as `result.test` of the Python API.

        Returns:
            {"loss", "accuracy", "auc", "tar_at_far_0.01", ..., "roc_fpr", "roc_tpr", ...}; None before the search
            ended, or when it did not retrain (--no-retrain) or found no usable trial.

        Example:
            >>> analysis.load("ray_results/EXPERIMENT").test["auc"]
        """
        test = (self.summary or {}).get("test")
        return test if isinstance(test, dict) else None

    @property
    def final(self) -> dict[str, Any] | None:
        """The same as `test` (its older name): the final model's test scores, None before or without."""
        return self.test

    @property
    def finalists(self) -> pd.DataFrame | None:
        """One row per finalist (final.json's "finalists", --finalists): its search trial, whether it won, its
        searched values, the mean and s.d. of its best val loss over the fresh seeds, each seed's best val loss
        and epoch (lists, None for a run that failed) and its val loss in the search; None without finalists."""
        record = (self.summary or {}).get("finalists")
        if not isinstance(record, dict):
            return None
        rows = [{"trial_id": entry["trial_id"], "winner": bool(entry["winner"]),
                 **{h: entry["config"].get(h) for h in self.hyperparameters},
                 "mean_val_loss": _number(entry["mean_val_loss"]), "sd_val_loss": _number(entry["sd_val_loss"]),
                 "val_losses": entry["val_losses"], "best_epochs": entry["best_epochs"],
                 "search_val_loss": _number(entry["search_val_loss"])} for entry in record.get("trials", [])]
        return pd.DataFrame(rows, columns=["trial_id", "winner", *self.hyperparameters, "mean_val_loss",
                                           "sd_val_loss", "val_losses", "best_epochs", "search_val_loss"])

    def __repr__(self) -> str:
        """One line: name, trials by status, the best trial and its val loss, the test AUC, the path."""
        statuses = ", ".join(f"{n} {s}" for s, n in self.trials["status"].value_counts().items())
        best = self.best(1)
        top = f"; best {best.iloc[0]['trial_id']} (val loss {best.iloc[0]['best_val_loss']:.4f})" if len(best) else ""
        auc = (self.test or {}).get("auc")
        scored = f"; test AUC {auc:.3f}" if isinstance(auc, (int, float)) else ""
        return (f"Experiment({self.name!r}: {counted(len(self.trials), 'trial')} ({statuses}){top}{scored}; "
                f"{self.path})")

    @property
    def best_config(self) -> dict[str, Any]:
        """The configuration the search handed back (final.json's), else the best trial's; {} without either."""
        if self.summary and isinstance(self.summary.get("best_config"), dict):
            return dict(self.summary["best_config"])
        best = self.best(1)
        return dict(self.configs.get(best.iloc[0]["trial_id"]) or {}) if len(best) else {}

    @property
    def best_params(self) -> dict[str, Any]:
        """The searched values of `best_config` only (the fixed ones left out), in `hyperparameters`' order.

        Returns:
            {name: value} for each of `hyperparameters` that `best_config` holds; {} before any trial has a val
            loss.

        Example:
            >>> exp.best_params
            {'batch_size': 64, 'optimizer': 'adam', 'lr': 0.0021, 'batchnorm': True}
        """
        config = self.best_config
        return {h: config[h] for h in self.hyperparameters if h in config}

    @property
    def objectives(self) -> list[str]:
        """What the search minimised: val_loss, then any costs (--objectives)."""
        return list(self.settings.get("objectives") or ["val_loss"])

    def cost(self, name: str) -> pd.Series:
        """Objective `name` (params, flops, latency) of each trial that reported it, by trial id."""
        column = REPORTED[name]
        if column not in self.history:
            return pd.Series(dtype=float)
        return self.history.dropna(subset=[column]).groupby("trial_id")[column].last()

    def pareto(self) -> pd.DataFrame:
        """The non-dominated trials (diverged and errored ones left out), val loss first: their objectives (val_loss
        is the best val loss) and configs, ordered by val loss."""
        usable = self.best(len(self.trials)).copy()
        usable["val_loss"] = usable["best_val_loss"]
        for name in self.objectives[1:]:
            usable[name] = usable["trial_id"].map(self.cost(name))
        usable = usable.dropna(subset=self.objectives)
        on_front = front(usable[self.objectives].to_numpy(dtype=float).tolist())
        configs = [c for c in usable.columns if c.startswith("config/")]
        return usable.iloc[on_front][["trial_id", "status", *self.objectives, *configs]].reset_index(drop=True)

    def trial(self, which: str) -> pd.Series:
        """One trial's row of `trials`, by its id in any of the forms it is shown in: d3f281ec, trial_d3f281ec
        (its folder, and final.json before ids were unified), train_siamese_d3f281ec (Tune's trial name)."""
        wanted = trial_id_of(which)
        rows = self.trials[self.trials["trial_id"] == wanted]
        if rows.empty:
            raise KeyError(f"no trial {which!r} in {self.name}")
        return rows.iloc[0]

    def best(self, n: int = 1) -> pd.DataFrame:
        """The n trials with the lowest val loss at any epoch, best first, ranked as the search ranks them for its
        pick: diverged and errored trials left out, equal losses in trial order."""
        usable = self.trials[~self.trials["status"].isin([DIVERGED, ERRORED])].dropna(subset=["best_val_loss"])
        return usable.sort_values(["best_val_loss", "trial_id"], kind="stable").head(n)

    def importance(self, evaluator: Any = None) -> pd.Series:
        """Hyperparameter importances for the best val loss, largest first, summing to 1 (see analysis.importance).

        Args:
            evaluator: one of optuna.importance's evaluators; None: fANOVA's mean over FANOVA_SEEDS seeds.

        Returns:
            One share per hyperparameter (0 for one that never varied); `.attrs`: "trials" (how many they rest
            on), "method" and, for the default, "sd" (each share's s.d. over the seeds).

        Raises:
            InputError: fewer than two trials with different val losses, or no hyperparameters.

        Warns:
            FewTrialsWarning (a UserWarning): the shares rest on fewer than FEW_TRIALS (20) trials, the point
            below which the report calls them rough too.

        Example:
            >>> exp.importance()
            lr            0.61
            batch_size    0.22
            ...
        """
        from .importance import importances, warn_if_few

        series = importances(self, evaluator)
        warn_if_few(series.attrs["trials"], stacklevel=2)  # points at the caller
        return series


def _number(value: Any) -> float:
    """A JSON number, or NaN for null (a finalist without a mean, an s.d. of one seed)."""
    return math.nan if value is None else float(value)


def load(experiment_path: str | Path) -> Experiment:
    """Load an experiment folder written by run_search.py (a local path or a storage URI)."""
    folder = ExperimentFiles(experiment_path)
    kind = folder.kind()
    if kind == pyarrow.fs.FileType.NotFound:
        raise InputError("no such experiment folder", folder.display)
    if kind != pyarrow.fs.FileType.Directory:
        raise InputError("not a folder; give an experiment folder written by run_search.py", folder.display)
    settings = folder.json(SETTINGS_FILE)
    if not isinstance(settings, dict):
        raise InputError(f"not an experiment folder written by run_search.py ({SETTINGS_FILE} missing)",
                         folder.display)
    summary = with_trial_ids(folder.json(FINAL_FILE))
    if summary is not None:  # its paths where the experiment is now (recorded relative to it, or before, absolute)
        summary = storage.record_as_read(summary, folder.display)

    records = trial_records(folder)
    frames, configs = [], {}
    for trial_id, record in records.items():
        rows = result_rows(folder.text(f"{record['folder']}/result.json")) if record["folder"] else []
        params = folder.json(f"{record['folder']}/params.json") if record["folder"] else None
        configs[trial_id] = params if isinstance(params, dict) else record["config"]
        if rows:
            frame = pd.DataFrame([{k: v for k, v in row.items() if k != "config"} for row in rows])
            frame["trial_id"] = trial_id
            frames.append(frame)
    if not frames:
        raise InputError("no trial results yet: no trial has reported an epoch", folder.display)
    history = _history(pd.concat(frames, ignore_index=True))

    space = _preset_space(settings)
    if space is not None and all(set(space) <= set(c) for c in configs.values() if c):
        hyperparameters = list(space)
    else:
        space = None
        hyperparameters = _varying(configs, records)
    trials = _trials(records, configs, history, hyperparameters, settings)
    name = storage.parent_and_name(folder.display)[1]  # the folder's name, as --resume takes it
    return Experiment(folder.display, name, settings, summary,
                      hyperparameters, trials, history, configs, space)


def _history(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial per epoch. A restarted trial may repeat an epoch: its last report wins. The row of a
    diverged trial carries no epoch of its own: it takes its training_iteration."""
    if "epoch" not in frame:
        frame["epoch"] = frame["training_iteration"]
    frame["epoch"] = frame["epoch"].fillna(frame["training_iteration"]).astype(int)
    frame = frame.drop_duplicates(["trial_id", "epoch"], keep="last").sort_values(["trial_id", "epoch"])
    first = ["trial_id", "epoch"]
    return frame[first + [c for c in frame.columns if c not in first]].reset_index(drop=True)


def _preset_space(settings: dict[str, Any]) -> dict[str, Any] | None:
    """The space the search searched, when its settings name a known preset: without the keys --set fixed."""
    try:
        from search_spaces import PRESETS
    except ImportError:
        return None
    name, fixed = settings.get("space"), settings.get("not_searched") or []
    preset = PRESETS.get(name) if isinstance(name, str) else None
    return {k: v for k, v in preset.space.items() if k not in fixed} if preset is not None else None


def _varying(configs: dict[str, dict[str, Any]], records: dict[str, dict[str, Any]]) -> list[str]:
    """Hyperparameters of a space that is not a known preset: what the searcher sampled, as Tune recorded it,
    else the config keys whose values differ between trials."""
    sampled = [k for r in records.values() for k in r["params"]]
    if sampled:
        return list(dict.fromkeys(sampled))
    keys = list(dict.fromkeys(k for c in configs.values() for k in c))
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs.values() if c}) > 1]


def _trials(records: dict[str, dict[str, Any]], configs: dict[str, dict[str, Any]], history: pd.DataFrame,
            hyperparameters: list[str], settings: dict[str, Any]) -> pd.DataFrame:
    by_trial = dict(tuple(history.groupby("trial_id", sort=False)))
    rows = []
    for trial_id, record in records.items():
        config = configs.get(trial_id) or {}
        reported = by_trial.get(trial_id, history.iloc[:0])
        diverged = reported["diverged"].eq(1) if "diverged" in reported else pd.Series(False, reported.index)
        epochs_ok = reported[~diverged & reported[VAL_LOSS].notna()] if VAL_LOSS in reported else reported.iloc[:0]
        best = epochs_ok.loc[epochs_ok[VAL_LOSS].idxmin()] if len(epochs_ok) else None
        epochs = int(epochs_ok["epoch"].max()) if len(epochs_ok) else 0
        best_epoch = int(best["epoch"]) if best is not None else None
        max_epochs = int(config.get("max_epochs", settings.get("max_epochs", 0)))
        patience = int(config.get("patience", 5))  # Config's default when the trial does not set it
        last = reported.iloc[-1] if len(reported) else None
        node = None
        if last is not None:
            node = next((last[k] for k in ("node_id", "hostname") if k in last and pd.notna(last[k])), None)
        start, end = _span(reported)
        rows.append({
            "trial_id": trial_id,
            "status": trial_status(record["tune_status"], epochs, best_epoch, bool(diverged.any()),
                                   max_epochs, patience),
            "tune_status": record["tune_status"] or "UNKNOWN",
            "last_epoch": epochs,
            "best_epoch": best_epoch,
            "best_val_loss": float(best[VAL_LOSS]) if best is not None else math.nan,
            "last_val_loss": float(epochs_ok[VAL_LOSS].iloc[-1]) if len(epochs_ok) else math.nan,
            "best_val_accuracy": float(best.get("val_accuracy", math.nan)) if best is not None else math.nan,
            "best_val_auc": float(best.get("val_auc", math.nan)) if best is not None else math.nan,
            "start_time": start, "end_time": end,
            "wall_time_s": float(reported["time_total_s"].max()) if "time_total_s" in reported else math.nan,
            "node_id": node,
            **{config_column(key): value for key, value in config.items()},
        })
    fixed = sorted({key for config in configs.values() for key in (config or {})} - set(hyperparameters))
    columns = [*TRIAL_COLUMNS, *(config_column(key) for key in [*hyperparameters, *fixed])]
    trials = pd.DataFrame(rows, columns=columns)
    trials["best_epoch"] = trials["best_epoch"].astype("Int64")
    for column in ("start_time", "end_time"):
        trials[column] = trials[column].astype(TIME_DTYPE)  # else each takes its own resolution (ns, us) or object
    return trials


def _span(reported: pd.DataFrame) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """When a trial began (its first epoch's report less that epoch's time) and last reported, in UTC."""
    if not {"timestamp", "time_this_iter_s"} <= set(reported) or reported.empty:
        return None, None
    first = reported["timestamp"].iloc[0] - reported["time_this_iter_s"].iloc[0]
    return (pd.Timestamp(first, unit="s", tz="UTC").round("ms"),
            pd.Timestamp(reported["timestamp"].iloc[-1], unit="s", tz="UTC"))


def compare(paths: list[str | Path]) -> pd.DataFrame:
    """One row per experiment, e.g. the `seed` preset against `default`: its best trial and final test scores."""
    rows = []
    for path in paths:
        exp = load(path)
        best = exp.best(1)
        top = best.iloc[0] if len(best) else None
        test = exp.final or {}
        ensemble = ((exp.summary or {}).get("ensemble") or {}).get("test", {})
        rows.append({
            "experiment": exp.name, "space": exp.settings.get("space"), "trials": len(exp.trials),
            "statuses": ", ".join(f"{n} {s}" for s, n in exp.trials["status"].value_counts().items()),
            "best_val_loss": float(top["best_val_loss"]) if top is not None else math.nan,
            "best_trial": top["trial_id"] if top is not None else None,
            "best_config": {h: exp.best_config.get(h) for h in exp.hyperparameters} if exp.best_config else None,
            "test_accuracy": test.get("accuracy", math.nan), "test_auc": test.get("auc", math.nan),
            "ensemble_test_accuracy": ensemble.get("accuracy_at_threshold", math.nan),
            "ensemble_test_auc": ensemble.get("auc", math.nan),
            "path": exp.path,
        })
    return pd.DataFrame(rows)

"""Which trials count and which is best: a trial's best epoch by val loss, diverged and errored trials set
aside (they reported the finite stand-in loss or nothing), the statuses final.json counts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from tune_siamese.core.config import Config
from tune_siamese.core.names import VAL_LOSS, trial_id_of, trial_status
from tune_siamese.searching.objectives import REPORTED
from tune_siamese.searching.pareto import PickRule, front


def best_trial(results: tune.ResultGrid) -> tuple[tune.Result, int, float] | None:
    """(result, epoch of its best val loss, that loss) of the trial with the lowest val loss at any epoch, ranked
    as top_trials ranks (errored and diverged trials never win); None when no trial is usable."""
    ranked = top_trials(results, 1)
    if not ranked:
        return None
    best = ranked[0][0]
    epoch, loss = best_epoch_and_loss(best.metrics_dataframe)
    return best, epoch, loss


def objective_points(results: tune.ResultGrid, objectives: list[str]) -> list[tuple[tune.Result, list[float]]]:
    """Each usable trial (ranked as top_trials ranks) with its objectives: its best val loss, then its costs."""
    points = []
    for result, loss in top_trials(results, len(results)):
        frame = result.metrics_dataframe  # a usable trial has one
        assert frame is not None
        costs = [float(frame[REPORTED[name]].dropna().iloc[-1]) for name in objectives[1:]]
        points.append((result, [loss, *costs]))
    return points


def picked_trial(results: tune.ResultGrid, objectives: list[str],
                 rule: PickRule) -> tuple[tune.Result, int, float] | None:
    """The trial `rule` picks (best_trial for `best`), as (result, best epoch, best val loss); None: no usable one."""
    points = objective_points(results, objectives)
    if not points:
        return None
    chosen = points[rule.choose([values for _, values in points])][0]
    epoch, loss = best_epoch_and_loss(chosen.metrics_dataframe)
    return chosen, epoch, loss


def front_record(results: tune.ResultGrid, objectives: list[str]) -> list[dict[str, Any]]:
    """The Pareto front for final.json: each non-dominated trial's id and objectives (val loss as val_loss)."""
    points = objective_points(results, objectives)
    on_front = front([values for _, values in points])
    return [{"trial_id": trial_id_of(points[i][0].path), **dict(zip(objectives, points[i][1]))} for i in on_front]


def no_usable_reason(results: tune.ResultGrid) -> str:
    """Why best_trial found none: how many trials there were and why each is unusable (unusable_reason)."""
    if not len(results):
        return "the search ran no trial"
    reasons: dict[str, int] = {}
    for result in each_result(results):
        why = unusable_reason(result) or "usable"
        reasons[why] = reasons.get(why, 0) + 1
    counts = ", ".join(f"{count} {why}" for why, count in reasons.items())
    return f"none of the {len(results)} trials has a usable val loss ({counts})"


def best_report_row(frame: Any) -> Any:
    """The report of a trial's lowest val loss at any epoch."""
    rows = frame[frame[VAL_LOSS].notna()]
    return rows.loc[rows[VAL_LOSS].idxmin()]


def best_epoch_and_loss(frame: Any) -> tuple[int, float]:
    """(epoch, val loss) of a trial's lowest val loss at any epoch."""
    row = best_report_row(frame)
    return int(row["epoch"]), float(row[VAL_LOSS])


def unusable_reason(result: tune.Result) -> str | None:
    """Why a trial cannot be ranked by its val loss ("errored", "diverged", "reported no val loss"), or None."""
    frame = result.metrics_dataframe
    if result.error is not None:
        return "errored"
    if reported_divergence(frame):
        return "diverged"
    if frame is None or VAL_LOSS not in frame or "epoch" not in frame or \
            (frame[VAL_LOSS].notna() & frame["epoch"].notna()).sum() == 0:
        return "reported no val loss"
    return None


def each_result(results: tune.ResultGrid) -> Any:
    """The results one by one (a ResultGrid indexes but declares no iterator)."""
    return (results[i] for i in range(len(results)))


def reported_divergence(frame: Any) -> bool:
    """Whether a trial's reports say it diverged (its last report has diverged=1)."""
    return bool(frame is not None and "diverged" in frame and frame["diverged"].fillna(0).max() > 0)


def status_counts(results: tune.ResultGrid) -> dict[str, int]:
    """How many trials finished, were stopped by ASHA, diverged or errored (names.trial_status's rule)."""
    counts: dict[str, int] = {}
    for result in each_result(results):
        frame = result.metrics_dataframe
        config = Config.from_dict(dict(result.config or {}), source="trial config")
        epochs, best = 0, None
        if frame is not None and "epoch" in frame and VAL_LOSS in frame:
            rows = frame[frame["epoch"].notna() & frame[VAL_LOSS].notna()]  # a diverged trial's last row has neither
            if len(rows):
                epochs, best = int(rows["epoch"].max()), int(rows.loc[rows[VAL_LOSS].idxmin(), "epoch"])
        status = trial_status("ERROR" if result.error is not None else "TERMINATED", epochs, best,
                              reported_divergence(frame), config.max_epochs, config.patience)
        counts[status] = counts.get(status, 0) + 1
    return counts


def top_trials(results: tune.ResultGrid, k: int) -> list[tuple[tune.Result, float]]:
    """The k trials with the lowest val loss at any epoch (errored, diverged and unreported trials left out).
    Equal losses are ordered by trial name: a restored ResultGrid may list the trials in another order, and a
    resumed finalist stage must find the same finalists (seen on tiny data, where trials tie exactly)."""
    ranked = []
    for result in each_result(results):
        if unusable_reason(result) is None:
            ranked.append((result, best_epoch_and_loss(result.metrics_dataframe)[1]))
    ranked.sort(key=lambda pair: (pair[1], Path(pair[0].path).name))
    return ranked[:k]

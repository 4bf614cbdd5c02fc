"""analysis.anytime_curve and anytime_plot: the best val loss so far against cumulative epochs, on hand-built
histories and hand-written experiments (no search, no Ray)."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from test_analysis import PNG, png_size, write_experiment

import analysis
from analysis.experiment import TRIAL_COLUMNS, Experiment
from tune_siamese.core import names

# (trial, training_iteration, timestamp, val_loss): in the history's order (by trial, then epoch), which is not the
# order of the reports. "c" diverged at its 2nd report (the stand-in loss), "d" errored: their losses never count,
# although d's is the lowest; b and c reported in the same second (Tune's timestamps are whole seconds).
REPORTS = [("a", 1, 100, 0.70), ("a", 2, 130, 0.60), ("a", 3, 160, 0.50),
           ("b", 1, 110, 0.65), ("b", 2, 140, 0.55),
           ("c", 1, 110, 0.45), ("c", 2, 125, names.DIVERGED_LOSS),
           ("d", 1, 95, 0.30)]
STATUS = {"a": names.FINISHED, "b": names.ASHA_STOPPED, "c": names.DIVERGED, "d": names.ERRORED}


def hand_built(reports=REPORTS, timestamps: bool = True) -> Experiment:
    """An Experiment of the given reports, built directly (as `analysis.load` would leave it, columns it needs)."""
    history = pd.DataFrame([{"trial_id": t, "epoch": i, "training_iteration": i, "val_loss": loss,
                             "diverged": 1.0 if loss == names.DIVERGED_LOSS else math.nan,
                             **({"timestamp": stamp, "time_this_iter_s": 5.0} if timestamps else {})}
                            for t, i, stamp, loss in reports])
    trials = pd.DataFrame([{"trial_id": t, "status": STATUS[t]} for t in dict.fromkeys(history["trial_id"])],
                          columns=TRIAL_COLUMNS)
    return Experiment("/nowhere/hand", "hand", {}, None, [], trials, history, {}, None)


def test_epochs_are_numbered_in_the_order_they_were_reported_not_by_trial():
    curve = analysis.anytime_curve(hand_built())
    assert list(curve.columns) == ["cumulative_epochs", "trial_id", "training_iteration", "val_loss", "status",
                                   "best_so_far"]
    assert curve["cumulative_epochs"].tolist() == list(range(1, len(REPORTS) + 1))  # each epoch once, ASHA's too
    assert list(zip(curve["trial_id"], curve["training_iteration"])) == [
        ("d", 1), ("a", 1), ("b", 1), ("c", 1), ("c", 2), ("a", 2), ("b", 2), ("a", 3)]  # b before c: same second
    assert curve["status"].tolist() == [STATUS[t] for t in curve["trial_id"]]
    assert curve.attrs["ordered_by"] == "timestamp"


def test_best_so_far_is_the_running_minimum_of_the_trials_the_search_can_hand_back():
    curve = analysis.anytime_curve(hand_built())
    expected = [math.nan, 0.70, 0.65, 0.65, 0.65, 0.60, 0.55, 0.50]  # d errored and c diverged: never counted
    np.testing.assert_allclose(curve["best_so_far"], expected)
    usable = curve["val_loss"].where(~curve["trial_id"].isin(["c", "d"]))
    running = [min((v for v in usable[:k + 1] if not math.isnan(v)), default=math.nan) for k in range(len(curve))]
    np.testing.assert_allclose(curve["best_so_far"], running)
    steps = curve["best_so_far"].dropna().diff().dropna()
    assert (steps <= 0).all() and (steps < 0).any()  # never rises; falls when a better epoch comes
    assert curve["val_loss"].max() == names.DIVERGED_LOSS  # the stand-in is shown as reported


def test_without_timestamps_the_history_order_is_kept():
    curve = analysis.anytime_curve(hand_built(timestamps=False))
    assert list(zip(curve["trial_id"], curve["training_iteration"])) == [(t, i) for t, i, _, _ in REPORTS]
    assert curve.attrs["ordered_by"] == "history"
    np.testing.assert_allclose(curve["best_so_far"], [0.70, 0.60, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50])
    assert "no timestamps" in analysis.anytime_plot(hand_built(timestamps=False)).axes[0].get_xlabel()


def test_the_curve_ends_at_the_trial_the_search_hands_back(tmp_path):
    exp = analysis.load(write_experiment(tmp_path / "exp", trials=8))
    curve = analysis.anytime_curve(exp)
    assert len(curve) == len(exp.history) == curve["cumulative_epochs"].max()
    assert curve["best_so_far"].iloc[-1] == exp.best(1).iloc[0]["best_val_loss"] == exp.summary["best_val_loss"]
    stamps = exp.history.set_index(["trial_id", "training_iteration"])["timestamp"]
    assert stamps.loc[list(zip(curve["trial_id"], curve["training_iteration"]))].is_monotonic_increasing


def test_the_plot_draws_the_best_so_far_and_keeps_a_diverged_loss_off_its_scale(tmp_path):
    from matplotlib.figure import Figure

    exp = hand_built()
    fig = analysis.anytime_plot(exp, tmp_path / "anytime.png")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    step = [line for line in ax.lines if line.get_label() == "lowest val loss so far"]
    assert len(step) == 1
    curve = analysis.anytime_curve(exp)
    np.testing.assert_allclose(step[0].get_ydata()[:len(curve)], curve["best_so_far"])
    np.testing.assert_allclose(step[0].get_xdata()[:len(curve)], curve["cumulative_epochs"])
    bottom, top = ax.get_ylim()
    assert bottom < 0.30 and 0.70 < top < 1.0  # the stand-in (138.6) does not flatten the curve
    dots = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(dots) >= len(curve) and dots[:, 1].max() <= top  # every report drawn, the stand-in on the top edge
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"lowest val loss so far", "diverged", "errored", "stopped early by ASHA"} <= set(legend)
    assert any(text.startswith("lowest: 0.5000 (trial a, epoch 3)") for text in legend)
    assert any(text.startswith("above ") for text in legend)
    assert ax.get_title().startswith("Anytime curve, hand (4 trials, 8 epochs)")
    assert ax.get_xlabel().startswith("cumulative epochs") and "validation loss" in ax.get_ylabel()
    data = (tmp_path / "anytime.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    width, height = png_size(data)
    assert 300 <= width <= 3000 and 300 <= height <= 3000


def test_the_report_shows_the_anytime_curve(tmp_path):
    import warnings

    exp = analysis.load(write_experiment(tmp_path / "exp", trials=8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", analysis.FewTrialsWarning)
        out = analysis.report(exp.path, tmp_path / "report")
    text = (out / "report.md").read_text()
    assert "anytime.png" in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert text.index("## Optimisation history") < text.index("## Anytime curve") < text.index("![", text.index(
        "## Anytime curve"))
    data = (out / "anytime.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000

"""analysis: tables, statuses, best trial, importances, report and CLI, on the session's real smoke search."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import analysis
from analysis.__main__ import main
from analysis.experiment import TRIAL_COLUMNS, trial_status
from search_spaces import PRESETS
from tune_siamese.core import names
from tune_siamese.core.errors import InputError

PNG = b"\x89PNG\r\n\x1a\n"
TUNE_STATUS = {"finished": "TERMINATED", "asha_stopped": "TERMINATED", "diverged": "TERMINATED",
               "errored": "ERROR", "pending": "PENDING", "running": "RUNNING"}


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, which follows the signature."""
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def distance_to_polyline(x: float, y: float, xs: list[float], ys: list[float]) -> float:
    """The shortest distance from (x, y) to the line through the points (xs, ys), segment by segment."""
    p = np.array([x, y])
    a, b = np.column_stack([xs, ys])[:-1], np.column_stack([xs, ys])[1:]
    length = ((b - a) ** 2).sum(axis=1)
    t = np.clip(((p - a) * (b - a)).sum(axis=1) / np.where(length > 0, length, 1), 0, 1)
    return float(np.sqrt(((a + t[:, None] * (b - a) - p) ** 2).sum(axis=1)).min())


def marks(fig) -> int:
    """How many data marks a figure's axes hold: line points, scatter points and bars."""
    return sum(len(line.get_xdata()) for ax in fig.axes for line in ax.lines) + sum(
        len(c.get_offsets()) for ax in fig.axes for c in ax.collections) + sum(len(ax.patches) for ax in fig.axes)


def result_rows(trial_folder: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_folder / "result.json").read_text().splitlines() if line.strip()]


def write_experiment(root: Path, trials: int = 8, objectives: tuple[str, ...] = ("val_loss",),
                     test: bool = True) -> Path:
    """An experiment folder written by hand as run_search.py leaves one (search_settings.json, Tune's state file,
    each trial's params.json and result.json, final.json), for tests that need no real search. Searched: lr over
    two decades, batch_size and optimizer; a lower lr gives a lower loss; every third trial stops after one epoch
    (ASHA); trials start 10 s apart and take 4 s an epoch, so some overlap. `test`: final.json has test scores."""
    root.mkdir(parents=True)
    settings = {"space": "hand-written", "max_epochs": 3, "objectives": list(objectives),
                "base": {"max_epochs": 3, "image_size": 72}}
    (root / names.SETTINGS_FILE).write_text(json.dumps(settings))
    state, configs, best = [], {}, (np.inf, "", 0)
    for i in range(trials):
        trial_id = f"{i:08x}"
        params = {"lr": 10 ** (-4 + 2 * i / max(trials - 1, 1)), "batch_size": [16, 32, 64][i % 3],
                  "optimizer": ["sgd", "adam"][i % 2]}
        configs[trial_id] = config = {"max_epochs": 3, "image_size": 72, **params}
        folder = root / f"trial_{trial_id}"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(config))
        rows = []
        for epoch in range(1, (2 if i % 3 == 2 else 3) + 1):
            loss = 0.7 - 0.02 * epoch + 0.3 * params["lr"] ** 0.5 + 0.001 * (i % 3)
            rows.append({"epoch": epoch, "val_loss": loss, "val_accuracy": 1 - loss, "val_auc": 1.2 - loss,
                         "train_loss": loss, "lr": params["lr"], "training_iteration": epoch, "trial_id": trial_id,
                         "timestamp": 1_800_000_000 + 10 * i + 4 * epoch, "time_this_iter_s": 4.0,
                         "time_total_s": 4.0 * epoch, "node_id": "node-a", "params": 1000 * (i + 1),
                         "config": config})
            best = min(best, (loss, trial_id, epoch))
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        state.append([json.dumps({"trial_id": trial_id, "status": "TERMINATED", "relative_logdir": folder.name,
                                  "config": config, "evaluated_params": params}), "{}"])
    (root / "experiment_state-2030-01-01_00-00-00.json").write_text(json.dumps({"trial_data": state}))
    loss, trial_id, epoch = best
    final = {"best_trial": trial_id, "best_val_loss": loss, "best_epoch": epoch, "best_config": configs[trial_id]}
    if test:
        final["test"] = {"loss": 0.5, "accuracy": 0.75, "auc": 0.8125, "roc_fpr": [0, 0.5, 1], "roc_tpr": [0, 0.8, 1]}
    (root / names.FINAL_FILE).write_text(json.dumps(final))
    return root


@pytest.fixture
def small(tmp_path):
    """A hand-written experiment of 8 trials (write_experiment), loaded."""
    return analysis.load(write_experiment(tmp_path / "small"))


@pytest.fixture(scope="module")
def experiment(smoke_search) -> Path:
    return Path(smoke_search["experiment"])


@pytest.fixture(scope="module")
def exp(experiment):
    return analysis.load(experiment)


@pytest.fixture(scope="module")
def report_dir(experiment, tmp_path_factory) -> Path:
    return analysis.report(experiment, tmp_path_factory.mktemp("report"))


def test_reading_an_experiment_loads_no_torch(experiment):
    """The analysis shares the search's names through torch-free tune_siamese.names, not through copies."""
    probe = "import sys, analysis; analysis.load(sys.argv[1]); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe, str(experiment)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_trials_one_row_per_trial_with_documented_columns(exp, experiment):
    folders = sorted(experiment.glob("trial_*/result.json"))
    assert exp.hyperparameters == list(PRESETS["smoke"].space)
    searched = [f"config/{h}" for h in exp.hyperparameters]
    assert list(exp.trials.columns)[:len(TRIAL_COLUMNS) + len(searched)] == [*TRIAL_COLUMNS, *searched]
    fixed = [c for c in exp.trials.columns[len(TRIAL_COLUMNS) + len(searched):]]
    assert fixed == sorted(fixed) and "config/image_size" in fixed and "config/max_epochs" in fixed
    assert len(exp.trials) == len(folders) == 6
    assert sorted(exp.trials["trial_id"]) == sorted(result_rows(f.parent)[0]["trial_id"] for f in folders)
    for _, row in exp.trials.iterrows():
        params = json.loads((experiment / f"trial_{row['trial_id']}" / "params.json").read_text())
        assert {key: row[f"config/{key}"] for key in params} == params  # searched and fixed values
        if row["status"] == "diverged":  # a stand-in loss, maybe no real epoch: nothing more to check
            continue
        assert 1 <= row["best_epoch"] <= row["last_epoch"] <= 3
        assert row["best_val_loss"] <= row["last_val_loss"]
        assert row["wall_time_s"] > 0 and row["node_id"]
        # when it ran, as datetimes: its span covers its wall time, but for Tune's report timestamps, which are
        # whole seconds (a trial of a few seconds spans up to 1 s less on them)
        assert row["start_time"] < row["end_time"] and str(row["start_time"].tz) == "UTC"
        assert exp.trials["start_time"].dtype == exp.trials["end_time"].dtype
        assert (row["end_time"] - row["start_time"]).total_seconds() > row["wall_time_s"] - 1


def test_frames_follow_the_ecosystems_conventions(exp):
    """config/<name> columns merge with the per-epoch history without suffixes on the config values, the same
    thing has one name in both frames, best_config is a dict, and the repr fits on a line."""
    merged = exp.history.merge(exp.trials, on="trial_id")
    assert "lr" in merged and "config/lr" in merged and "lr_x" not in merged and "lr_y" not in merged
    assert not [c for c in merged.columns if c.startswith("config/") and c.endswith(("_x", "_y"))]
    assert "node_id" in exp.trials and "node_id" in exp.history and "node" not in exp.trials
    assert exp.best_config == exp.summary["best_config"] and isinstance(exp.best_config, dict)
    shown = repr(exp)
    assert len(shown) < 300 and "6 trials" in shown and exp.summary["best_trial"] in shown


def test_history_one_row_per_trial_epoch_with_every_metric(exp, experiment):
    rows = {f.parent.name.removeprefix("trial_"): result_rows(f.parent) for f in experiment.glob("trial_*/result.json")}
    assert len(exp.history) == sum(len(r) for r in rows.values())
    assert {"trial_id", "epoch", "train_loss", "val_loss", "val_accuracy", "val_auc", "lr", "epoch_seconds",
            "node_id", "training_iteration", "time_total_s"} <= set(exp.history.columns)
    epochs = dict(zip(exp.trials["trial_id"], exp.trials["last_epoch"]))
    for trial_id, frame in exp.history.groupby("trial_id"):
        # the row of a diverged trial has no epoch: it takes its training_iteration
        assert list(frame["epoch"]) == [r.get("epoch", r["training_iteration"]) for r in rows[trial_id]]
        assert list(frame["val_loss"]) == pytest.approx([r["val_loss"] for r in rows[trial_id]])
        if "diverged" not in frame or frame["diverged"].ne(1).all():
            assert epochs[trial_id] == len(frame)


def test_statuses_follow_what_tune_recorded(exp, experiment):
    from ray.tune import ExperimentAnalysis

    recorded = {t.trial_id: t.status for t in ExperimentAnalysis(str(experiment)).trials}
    ours = dict(zip(exp.trials["trial_id"], exp.trials["status"]))
    assert recorded == dict(zip(exp.trials["trial_id"], exp.trials["tune_status"]))
    assert all(TUNE_STATUS[ours[t]] == status for t, status in recorded.items())
    # 3 epochs at most and patience 5: a trial that ended sooner without diverging was stopped by ASHA
    for _, row in exp.trials.iterrows():
        if row["status"] != "diverged":
            assert row["status"] == ("finished" if row["last_epoch"] == 3 else "asha_stopped")
    assert {"finished", "asha_stopped"} <= set(ours.values())


@pytest.mark.parametrize("tune_status, epochs, best_epoch, diverged, expected", [
    ("TERMINATED", 3, 2, False, "finished"),       # ran max_epochs
    ("TERMINATED", 7, 2, False, "finished"),       # its own early stopping: 5 epochs without a better loss
    ("TERMINATED", 6, 2, False, "asha_stopped"),
    ("TERMINATED", 2, None, True, "diverged"),
    ("ERROR", 4, 1, False, "errored"),
    ("RUNNING", 2, 2, False, "running"),
    ("PAUSED", 2, 2, False, "running"),
    (None, 1, 1, False, "running"),                # not in Tune's state file yet
    ("PENDING", 0, None, False, "pending"),
])
def test_status_rule(tune_status, epochs, best_epoch, diverged, expected):
    max_epochs = 3 if epochs == 3 else 10
    assert trial_status(tune_status, epochs, best_epoch, diverged, max_epochs, patience=5) == expected


def test_best_trial_is_tunes_best(exp, smoke_search):
    summary = smoke_search["summary"]
    best = exp.best()
    assert len(best) == 1
    top = best.iloc[0]
    assert top["best_val_loss"] == pytest.approx(summary["best_val_loss"])
    assert top["best_epoch"] == summary["best_epoch"]
    searched = exp.hyperparameters
    assert {h: top[f"config/{h}"] for h in searched} == {h: summary["best_config"][h] for h in searched}
    three = exp.best(3)
    assert len(three) == 3 and list(three["best_val_loss"]) == sorted(three["best_val_loss"])
    assert three.iloc[0]["trial_id"] == top["trial_id"]


def test_final_test_scores(exp, smoke_search):
    test = smoke_search["summary"]["test"]
    assert exp.final["accuracy"] == pytest.approx(test["accuracy"])
    assert exp.final["auc"] == pytest.approx(test["auc"])
    assert len(exp.final["roc_fpr"]) == len(exp.final["roc_tpr"]) > 2


def test_importance_one_value_per_hyperparameter_summing_to_one(exp):
    with pytest.warns(analysis.FewTrialsWarning):  # 6 trials
        importance = exp.importance()
    assert sorted(importance.index) == sorted(exp.hyperparameters)
    assert (importance >= 0).all()
    assert importance.sum() == pytest.approx(1.0, abs=1e-6)
    assert importance.attrs["trials"] == len(exp.trials) == 6  # what the shares rest on


def test_importance_names_its_method_averages_fanova_over_seeds_and_shows_a_second_method(exp):
    """The default is fANOVA's mean over its seeds (reproducible, with the spread), named; PED-ANOVA, Optuna's
    default, sits beside it; a single evaluator can still be asked for."""
    import optuna
    import pandas as pd

    from analysis import importance
    from analysis.importance import importances, methods

    with pytest.warns(analysis.FewTrialsWarning):
        default = exp.importance()
    seeds = importance.FANOVA_SEEDS  # three here (conftest.py), ten in use
    single = [importances(exp, optuna.importance.FanovaImportanceEvaluator(seed=seed)) for seed in seeds]
    mean = pd.concat(single, axis=1).mean(axis=1)
    assert len(seeds) > 1 and default.to_dict() == pytest.approx(mean.to_dict())
    assert default.attrs["method"] == f"fANOVA, mean of {len(seeds)} seeds"
    assert set(default.attrs["sd"]) == set(exp.hyperparameters)
    assert single[0].attrs["method"] == "Fanova"
    with pytest.warns(analysis.FewTrialsWarning):
        table = methods(exp)
    assert list(table.columns) == ["fanova", "fanova_sd", "ped_anova"] and table.attrs["trials"] == 6
    assert table["ped_anova"].sum() == pytest.approx(1.0, abs=1e-6) and list(table.index) == list(default.index)


def test_trial_spans_give_every_trial_its_time_on_the_cluster(exp):
    from analysis import plots

    spans = plots.trial_spans(exp)
    assert sorted(spans["trial_id"]) == sorted(exp.trials["trial_id"]) and spans["start"].min() == 0
    assert (spans["end"] > spans["start"]).all() and spans["start"].is_monotonic_increasing
    # trials ran side by side (2 at once on the session's declared GPU): some trial starts while another runs
    assert any(((spans["start"] < row.start) & (spans["end"] > row.start)).any() for row in spans.itertuples())


def test_compare_one_row_per_experiment(experiment, smoke_search):
    table = analysis.compare([experiment, experiment])
    assert len(table) == 2
    assert {"experiment", "space", "trials", "best_val_loss", "best_config", "test_accuracy",
            "test_auc"} <= set(table.columns)
    row = table.iloc[0]
    assert (row["experiment"], row["space"], row["trials"]) == (experiment.name, "smoke", 6)
    assert row["best_val_loss"] == pytest.approx(smoke_search["summary"]["best_val_loss"])
    assert row["test_auc"] == pytest.approx(smoke_search["summary"]["test"]["auc"])
    assert row["ensemble_test_auc"] == pytest.approx(smoke_search["summary"]["ensemble"]["test"]["auc"])


def test_report_writes_tables_and_valid_pngs(report_dir, exp):
    text = (report_dir / "report.md").read_text()
    assert "## Best trials" in text and "## Final model" in text and "## Search settings" in text
    assert exp.best().iloc[0]["trial_id"] in text
    final = text[text.index("## Final model"):]
    table = [line for line in final.splitlines() if line.startswith("| test AUC")][0]
    summary = exp.summary
    for scores in (summary["test"], summary["searched_model_test"], summary["ensemble"]["test"]):
        assert f"{scores['auc']:.4g}" in table  # retrained, the trial's own model, the ensemble
    tar = [line for line in final.splitlines() if line.startswith("| TAR at FAR 1e-2")][0]
    assert f"{summary['test']['tar_at_far_0.01']:.4g}" in tar  # what face verification reports, in the report too
    assert "best val loss of 6 trials" in text and "With 6 trials these shares are rough" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["anytime.png", "importance.png", "learning_curves.png", "loss_vs_hyperparameters.png",
                             "optimisation_history.png", "parallel_coordinates.png", "roc.png", "trial_timeline.png"]
    for name in links:
        data = (report_dir / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
        width, height = png_size(data)
        assert 300 <= width <= 3000 and 300 <= height <= 3000, (name, width, height)
    assert "## Parallel coordinates" in text
    assert "The dots mark where the decision threshold" in text and "older version" not in text
    assert len((report_dir / "trials.csv").read_text().splitlines()) == len(exp.trials) + 1
    assert len((report_dir / "history.csv").read_text().splitlines()) == len(exp.history) + 1


def test_report_names_paths_inside_the_experiment_relative_to_it(report_dir, experiment):
    """A moved or copied experiment's report must not point at where it was: paths inside it are relative."""
    text = (report_dir / "report.md").read_text()
    assert str(experiment) not in text
    assert f"Experiment `{experiment.name}`" in text and "exported to `export`" in text


def test_parallel_axes_are_the_searched_parameters_scaled_to_unit_range(exp):
    from analysis import parallel, plots

    frame, ticks = parallel.parallel_axes(exp)
    assert list(frame.columns) == [*exp.hyperparameters, parallel.LOSS_AXIS] == list(ticks)
    assert list(frame.index) == list(exp.trials["trial_id"])
    values = frame.to_numpy(dtype=float)
    assert ((values[np.isfinite(values)] >= 0) & (values[np.isfinite(values)] <= 1)).all()
    losses = exp.trials.set_index("trial_id")["best_val_loss"]
    assert frame.at[losses.idxmin(), parallel.LOSS_AXIS] == 0 and frame.at[losses.idxmax(), parallel.LOSS_AXIS] == 1
    choices = [name for name, kind in plots.axis_kinds(exp).items() if kind == "categorical"]
    assert len(choices) == 3  # batch_size, optimizer, batchnorm
    for trial_id, config in exp.configs.items():  # a choice sits at the tick that names it
        for name in choices:
            spots, labels = ticks[name]
            assert labels[spots.index(frame.at[trial_id, name])] == str(config[name])
    # lr is log-uniform over [1e-4, 1e-2] in the smoke space: scaled on log10 over that range, ticked in real values
    lr = exp.trials.set_index("trial_id")["config/lr"]
    assert frame["lr"].to_numpy() == pytest.approx(((np.log10(lr) + 4) / 2).to_numpy())
    spots, labels = ticks["lr"]
    assert list(spots) == [0, 0.5, 1]
    assert [float(label) for label in labels] == pytest.approx([1e-4, 1e-3, 1e-2])


def test_roc_threshold_marks_a_point_on_each_curve(exp):
    """final.json carries the ROC of the retrained model and of the best trial's own model, each with the point
    the val-chosen threshold picks on it; that point lies on its curve (and a point off it does not)."""
    from tune_siamese.artifacts.roc_plot import operating_point

    for scores in (exp.summary["test"], exp.summary["searched_model_test"]):
        assert len(scores["roc_fpr"]) == len(scores["roc_tpr"]) > 2
        fpr, tpr = operating_point(scores)
        assert 0 < fpr < 1 and 0 < tpr < 1
        assert distance_to_polyline(fpr, tpr, scores["roc_fpr"], scores["roc_tpr"]) < 1e-9
        assert distance_to_polyline(fpr, min(tpr + 0.05, 1.0), scores["roc_fpr"], scores["roc_tpr"]) > 1e-3


def test_an_older_final_json_draws_one_roc_with_a_note(exp, tmp_path):
    """final.json from before: no ROC points for the best trial's model and no threshold points."""
    import dataclasses

    from analysis.report import _final_section

    summary = json.loads(json.dumps(exp.summary))
    for key in ("roc_fpr", "roc_tpr", "threshold_fpr", "threshold_tpr"):
        summary["searched_model_test"].pop(key)
    for key in ("threshold_fpr", "threshold_tpr"):
        summary["test"].pop(key)
    text = "\n".join(_final_section(dataclasses.replace(exp, summary=summary), tmp_path))
    assert "retrained model only" in text and "No threshold marked" in text and "The dots mark" not in text
    data = (tmp_path / "roc.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000


def test_cli_writes_a_report(experiment, tmp_path, capsys):
    assert main([str(experiment), "--out", str(tmp_path / "out"), "--color-by", "optimizer"]) == 0
    assert str(tmp_path / "out" / "report.md") in capsys.readouterr().out
    assert (tmp_path / "out" / "learning_curves.png").read_bytes().startswith(PNG)


def test_a_running_search_loads(experiment, tmp_path):
    """No final.json, a trial half way with a line still being written, one not yet in Tune's state file."""
    copy = tmp_path / "running"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("export", "checkpoint_*", names.FINAL_FILE))
    [state_file] = copy.glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    first = json.loads(state["trial_data"][0][0])
    first["status"] = "RUNNING"
    state["trial_data"][0][0] = json.dumps(first)
    state["trial_data"] = state["trial_data"][:-1]  # the newest trial is not in the state file yet
    state_file.write_text(json.dumps(state))
    result = copy / first["relative_logdir"] / "result.json"
    result.write_text(result.read_text().splitlines()[0] + '\n{"epoch": 2, "train_lo')

    running = analysis.load(copy)
    assert running.final is None and running.summary is None
    assert len(running.trials) == 6
    row = running.trials.set_index("trial_id").loc[first["trial_id"]]
    assert (row["status"], row["tune_status"], row["last_epoch"]) == ("running", "RUNNING", 1)
    assert list(running.trials["status"]).count("running") == 2
    assert (running.trials["tune_status"] == "UNKNOWN").sum() == 1


def test_a_trial_folder_outside_the_experiment_is_refused(experiment, tmp_path):
    """Tune's state names each trial's folder; one that leaves the experiment (../) is not read."""
    copy = tmp_path / "copy"
    shutil.copytree(experiment, copy, ignore=shutil.ignore_patterns("export*", "checkpoint_*"))
    [state_file] = copy.glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    first = json.loads(state["trial_data"][0][0])
    state["trial_data"][0][0] = json.dumps({**first, "relative_logdir": "../elsewhere"})
    state_file.write_text(json.dumps(state))
    with pytest.raises(InputError, match=r"relative_logdir='../elsewhere' must be one folder name"):
        analysis.load(copy)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such experiment folder"),
    ("empty folder", "not an experiment folder written by run_search.py"),
    ("a file", "not a folder"),
    ("settings only", "no trial results yet"),
    ("empty result.json", "no trial results yet"),
])
def test_missing_or_half_written_experiment_is_one_clear_error(case, message, experiment, tmp_path, capsys):
    path = tmp_path / "exp"
    if case == "a file":
        path.write_text("{}")
    elif case != "missing":
        path.mkdir()
    if case in ("settings only", "empty result.json"):
        shutil.copy(experiment / names.SETTINGS_FILE, path)
    if case == "empty result.json":
        (path / "trial_0001").mkdir()
        (path / "trial_0001" / "result.json").write_text("")
    with pytest.raises(InputError, match=message) as caught:
        analysis.load(path)
    assert str(path) in str(caught.value)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err
    assert not (path / "report").exists()


def test_a_report_cut_short_by_a_full_disk_leaves_no_partial_file(experiment, tmp_path, monkeypatch):
    """Each report file is written whole or not at all: a CSV that fails after a few bytes leaves nothing."""
    import errno
    import os

    import pandas as pd

    def full_disk_csv(self, path, *args, **kwargs):
        Path(path).write_text("trial_id,sta")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk_csv)
    with pytest.raises(OSError):
        analysis.report(experiment, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_full_disk_stops_the_report_with_no_partial_file(experiment, full_disk):
    from helpers import fill_up

    fill_up(full_disk)
    with pytest.raises(OSError):
        analysis.report(experiment, full_disk / "report")
    assert [p.name for p in full_disk.rglob("*") if p.is_file()] == ["filler"]


def test_unknown_color_by_is_an_input_error(experiment, tmp_path, capsys):
    assert main([str(experiment), "--out", str(tmp_path / "out"), "--color-by", "nope"]) == 2
    assert "'nope' is not a hyperparameter" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ============================ On hand-written experiments (write_experiment): no search ============================

PLOTS = ["learning_curves", "loss_vs_hyperparameters", "importance_chart", "optimisation_history", "trial_timeline",
         "pareto_plot", "parallel_coordinates", "anytime_plot"]


@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_returns_a_figure_and_writes_a_png_only_when_given_a_path(name, tmp_path, monkeypatch):
    import warnings

    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    exp = analysis.load(write_experiment(tmp_path / "exp", objectives=("val_loss", "params")))
    draw = getattr(analysis, name)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", analysis.FewTrialsWarning)  # importance_chart(exp) of 8 trials
        fig = draw(exp)
        assert sorted(tmp_path.rglob("*")) == before  # no path: nothing written
        written = draw(exp, tmp_path / "out" / "picture.png")
    least = 2 * len(exp.hyperparameters) if name == "importance_chart" else len(exp.trials)  # bars, else trials
    for figure in (fig, written):
        assert isinstance(figure, Figure) and figure.axes and marks(figure) >= least
    data = (tmp_path / "out" / "picture.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    width, height = png_size(data)
    assert 300 <= width <= 3000 and 300 <= height <= 3000
    assert plt.get_fignums() == []  # drawn outside pyplot: nothing left open there
    assert fig._repr_png_().startswith(PNG)  # what Jupyter shows for it as a cell's last expression


def test_jupyter_shows_a_plot_as_a_png(small):
    """IPython's PNG formatter (Jupyter's, without pyplot's inline backend loaded) renders a returned figure."""
    formatters = pytest.importorskip("IPython.core.formatters")

    data = formatters.PNGFormatter()(analysis.trial_timeline(small))
    assert data.startswith(PNG) and png_size(data)[0] >= 300


def test_learning_curves_draw_each_trials_val_losses(small):
    fig = analysis.learning_curves(small, color_by="optimizer")
    ax = fig.axes[0]
    curves = sorted(tuple(line.get_ydata()) for line in ax.lines if len(line.get_ydata()) > 1)
    expected = sorted(tuple(frame["val_loss"]) for _, frame in small.history.groupby("trial_id"))
    assert curves == expected
    assert ax.get_title().startswith("Learning curves of 8 trials,") and "(colour: optimizer)" in ax.get_title()


def test_plural_of_one_trial(tmp_path):
    one = analysis.load(write_experiment(tmp_path / "one", trials=1))
    assert "1 trial (1 finished)" in repr(one)
    assert "Learning curves of 1 trial," in analysis.learning_curves(one).axes[0].get_title()
    assert "(1 trial)" in analysis.optimisation_history(one)._suptitle.get_text()
    text = (analysis.report(one.path, tmp_path / "report") / "report.md").read_text()
    assert "1 trial (1 finished)" in text and "1 trials" not in text


def test_timeline_plots_need_timestamps(tmp_path):
    folder = write_experiment(tmp_path / "exp")
    for result in folder.glob("trial_*/result.json"):
        rows = [{k: v for k, v in row.items() if k != "timestamp"} for row in result_rows(result.parent)]
        result.write_text("".join(json.dumps(row) + "\n" for row in rows))
    exp = analysis.load(folder)
    for draw in (analysis.optimisation_history, analysis.trial_timeline):
        with pytest.raises(InputError, match="no timestamps"):
            draw(exp)


def test_importance_warns_below_the_reports_threshold(tmp_path, monkeypatch):
    """One threshold: below it Experiment.importance warns (at the caller's line) and the report cautions."""
    import sys
    import warnings

    from analysis.importance import methods

    # what is checked is the warning and the caution, not the shares: one fANOVA forest per call, not ten
    monkeypatch.setattr(sys.modules["analysis.importance"], "FANOVA_SEEDS", (0,))
    assert sys.modules["analysis.report"].FEW_TRIALS is analysis.FEW_TRIALS == 20
    few = analysis.load(write_experiment(tmp_path / "few", trials=analysis.FEW_TRIALS - 1))
    with pytest.warns(analysis.FewTrialsWarning, match="rest on 19 trials, fewer than 20") as caught:
        few.importance()
    assert issubclass(caught[0].category, UserWarning) and caught[0].filename == __file__
    with pytest.warns(analysis.FewTrialsWarning):
        methods(few)
    with warnings.catch_warnings():
        warnings.simplefilter("error", analysis.FewTrialsWarning)  # the report says it in its text instead
        text = (analysis.report(few.path, tmp_path / "report") / "report.md").read_text()
    assert "With 19 trials these shares are rough" in text
    enough = analysis.load(write_experiment(tmp_path / "enough", trials=analysis.FEW_TRIALS))
    with warnings.catch_warnings():
        warnings.simplefilter("error", analysis.FewTrialsWarning)
        assert enough.importance().attrs["trials"] == 20


def test_start_and_end_times_have_one_dtype(tmp_path):
    """Also when a trial has no timestamps (NaT) or when no trial has any (no object column)."""
    folder = write_experiment(tmp_path / "exp")
    first = folder / "trial_00000000"
    rows = [{k: v for k, v in row.items() if k != "timestamp"} for row in result_rows(first)]
    (first / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    trials = analysis.load(folder).trials
    assert trials["start_time"].dtype == trials["end_time"].dtype == "datetime64[ns, UTC]"
    assert trials["start_time"].isna().sum() == trials["end_time"].isna().sum() == 1
    spans = (trials["end_time"] - trials["start_time"]).dt.total_seconds()
    assert spans[1:].tolist() == (trials["last_epoch"][1:] * 4.0).tolist()  # 4 s an epoch


def test_repr_is_one_short_line(small):
    shown = repr(small)
    assert len(shown) < 400 and "\n" not in shown
    assert "8 trials (6 finished, 2 asha_stopped)" in shown and "best 00000000 (val loss 0.6430)" in shown
    assert "test AUC 0.812" in shown and small.path in shown


def test_best_params_and_test_scores(small, tmp_path):
    summary = json.loads((Path(small.path) / names.FINAL_FILE).read_text())
    assert list(small.best_params) == small.hyperparameters == ["lr", "batch_size", "optimizer"]
    assert small.best_params == {h: summary["best_config"][h] for h in small.hyperparameters}
    assert set(small.best_config) - set(small.best_params) == {"max_epochs", "image_size"}
    assert small.test == summary["test"] == small.final
    untested = analysis.load(write_experiment(tmp_path / "untested", test=False))
    assert untested.test is None and "test AUC" not in repr(untested)

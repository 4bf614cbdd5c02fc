"""--finalists K --finalist-seeds S: the search's top K configurations trained again with S fresh seeds each, the
lowest mean best val loss retrained and exported. One small real search; everything else runs without Ray."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers import SMOKE, SMOKE_SPACE, trial_frames

from tune_siamese.app import search_command
from tune_siamese.artifacts.checkpoint import load_checkpoint
from tune_siamese.core.names import FINAL_FILE, STATE_FILE
from tune_siamese.final.finalists import FINALISTS_DIR, summarise_finalists
from tune_siamese.searching.ranking import best_trial, no_usable_reason, top_trials
from tune_siamese.searching.settings import load_resume_settings, settings_for


@pytest.mark.parametrize("argv, message", [
    (["--finalists", "-1"], "option --finalists=-1 must be >= 0"),
    (["--finalists", "2"], "option --finalist-seeds=0 (the default) must be >= 1 with --finalists=2"),
    (["--finalists", "2", "--finalist-seeds", "0"], "option --finalist-seeds=0 must be >= 1 with --finalists=2"),
    (["--finalist-seeds", "2"], "option --finalist-seeds=2 needs --finalists K > 0"),
    (["--finalists", "1", "--finalist-seeds", "-1"], "option --finalist-seeds=-1 must be >= 0"),
    (["--finalists", "5", "--finalist-seeds", "1"], "option --finalists=5 exceeds the 4 trials of the search"),
    (["--finalists", "2", "--finalist-seeds", "3"], "= 6 finalist runs exceed the 4 trials of the search"),
    (["--finalists", "2", "--finalist-seeds", "1", "--no-retrain"], "--no-retrain stops after the search"),
])
def test_bad_finalist_options_exit_2_before_ray(tmp_path, capsys, argv, message):
    assert search_command.main([*SMOKE, "--storage-path", str(tmp_path), *argv]) == 2  # smoke: 4 trials
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_preset_may_set_the_finalists_and_an_option_beats_it(tmp_path, capsys):
    space = tmp_path / "space.py"
    space.write_text("from ray import tune\nfrom search_spaces import Preset\n"
                     "LR = {'lr': tune.loguniform(1e-4, 1e-2)}\n"
                     "GOOD = Preset(space=LR, option_defaults={'num_samples': 6, 'finalists': 2, "
                     "'finalist_seeds': 3})\n"
                     "HALF = Preset(space=LR, option_defaults={'finalists': 2.5, 'finalist_seeds': 1})\n")

    def settings(*argv: str):
        args = search_command.parse_args(["--space", f"{space}:GOOD", "--storage-path", str(tmp_path), *argv])
        return settings_for(args)[0]

    assert (settings().finalists, settings().finalist_seeds) == (2, 3)
    assert (settings("--finalists", "0").finalists, settings("--finalists", "0").finalist_seeds) == (0, 0)
    assert settings("--finalist-seeds", "1").finalist_seeds == 1
    assert search_command.main(["--space", f"{space}:HALF", "--storage-path", str(tmp_path)]) == 2
    assert "option_defaults finalists=2.5 must be a whole number" in capsys.readouterr().err


def test_resume_keeps_the_finalist_options(tmp_path, capsys):
    args = search_command.parse_args([*SMOKE, "--storage-path", str(tmp_path), "--name", "exp", "--finalists", "2",
                                  "--finalist-seeds", "2"])
    saved = dataclasses.asdict(settings_for(args)[0])
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "search_settings.json").write_text(json.dumps(saved))
    resumed = load_resume_settings(str(experiment))
    assert (resumed.finalists, resumed.finalist_seeds) == (2, 2)
    for option in (["--finalists", "1"], ["--finalist-seeds", "3"]):
        assert search_command.main(["--resume", str(experiment), *option]) == 2
        assert f"{option[0]} would be ignored" in capsys.readouterr().err
    # settings saved before these options existed resume without finalists
    (experiment / "search_settings.json").write_text(json.dumps(
        {key: value for key, value in saved.items() if key not in ("finalists", "finalist_seeds")}))
    resumed = load_resume_settings(str(experiment))
    assert (resumed.finalists, resumed.finalist_seeds) == (0, 0)


def run(loss: float, epoch: int, name: str) -> dict:
    return {"run": name, "best_val_loss": loss, "best_epoch": epoch}


TOP = [("trial_a", 0.50, {"lr": 1.0}), ("trial_b", 0.52, {"lr": 2.0}), ("trial_c", 0.53, {"lr": 3.0})]


def test_the_lowest_mean_wins_not_the_search_best():
    runs = {("trial_a", 1): run(0.60, 3, "a1"), ("trial_a", 2): run(0.56, 5, "a2"), ("trial_a", 3): run(0.58, 4, "a3"),
            ("trial_b", 1): run(0.55, 2, "b1"), ("trial_b", 2): run(0.54, 7, "b2"), ("trial_b", 3): run(0.59, 4, "b3"),
            ("trial_c", 1): run(0.57, 6, "c1"), ("trial_c", 2): run(0.58, 6, "c2"), ("trial_c", 3): run(0.59, 6, "c3")}
    record = summarise_finalists(TOP, [1, 2, 3], runs)
    assert record["fallback"] is None and record["winner"] == "trial_b"
    b = record["trials"][1]
    assert b["winner"] and not record["trials"][0]["winner"]
    assert b["mean_val_loss"] == pytest.approx(0.56) and b["sd_val_loss"] == pytest.approx(statistics.stdev(
        [0.55, 0.54, 0.59]))
    assert b["val_losses"] == [0.55, 0.54, 0.59] and b["best_epochs"] == [2, 7, 4] and b["config"] == {"lr": 2.0}
    assert record["retrain_epochs"] == 4  # the median of 2, 7, 4
    assert record["threshold_run"] == "b1"  # 0.55 is closest to the mean 0.56
    two_seeds = summarise_finalists(TOP[:1], [1, 2], {("trial_a", 1): run(0.5, 3, "a1"),
                                                      ("trial_a", 2): run(0.75, 6, "a2")})
    assert two_seeds["retrain_epochs"] == 5  # the median of 3 and 6, 4.5, rounded up
    assert two_seeds["threshold_run"] == "a1"  # both equally close to the mean: the first seed


def test_trials_tied_on_val_loss_rank_the_same_in_any_listing_order():
    """A restored ResultGrid may list trials in another order; a resumed stage must pick the same top trials."""
    def result(name: str, losses: list[float]) -> SimpleNamespace:
        return SimpleNamespace(path=f"/exp/{name}", error=None,
                               metrics_dataframe=pd.DataFrame({"epoch": range(1, len(losses) + 1), "val_loss": losses}))

    trials = [result("trial_d", [0.7, 0.6]), result("trial_b", [0.65]), result("trial_c", [0.65, 0.9]),
              result("trial_a", [0.8])]
    for listing in (trials, trials[::-1], trials[1:] + trials[:1]):
        assert [Path(r.path).name for r, _ in top_trials(listing, 3)] == ["trial_d", "trial_b", "trial_c"]


def reported(name: str, losses: list[float], error: str | None = None, diverged: bool = False) -> SimpleNamespace:
    """A trial as a ResultGrid holds it: its folder, error and reported rows; a diverged trial's last row carries
    diverged=1 and the finite stand-in loss, without an epoch (search.train_siamese)."""
    rows = [{"epoch": epoch, "val_loss": loss} for epoch, loss in enumerate(losses, start=1)]
    if diverged:
        rows.append({"val_loss": 10.0, "diverged": 1})
    return SimpleNamespace(path=f"/exp/{name}", error=error, metrics_dataframe=pd.DataFrame(rows))


def test_the_best_trial_is_ranked_as_the_finalists_are_and_never_diverged_or_errored():
    """get_best_result(scope="all") ranked every reported loss: a trial with a good epoch before it diverged, or
    an errored one, could win; and a diverged trial's stand-in loss 10 beat exploded finite losses, after which
    its row without an epoch crashed the search's end (KeyError: 'epoch')."""
    trials = [reported("trial_d", [0.7, 0.6]), reported("trial_b", [0.3], diverged=True),
              reported("trial_c", [0.2], error="RuntimeError"), reported("trial_a", [0.9, 0.6, 0.8]),
              reported("trial_e", [], diverged=True)]
    for listing in (trials, trials[::-1]):
        best, epoch, loss = best_trial(listing)
        assert (Path(best.path).name, epoch, loss) == ("trial_a", 2, 0.6)  # tied with trial_d: by name
        assert Path(top_trials(listing, 1)[0][0].path).name == "trial_a"  # one ranking for both
    unusable = trials[1:3] + trials[4:]
    assert best_trial(unusable) is None
    assert no_usable_reason(unusable) == "none of the 3 trials has a usable val loss (2 diverged, 1 errored)"
    assert no_usable_reason([]) == "the search ran no trial"


def test_an_errored_or_missing_run_means_no_winner_and_a_diverged_one_disqualifies():
    runs = {("trial_a", 1): run(0.50, 3, "a1"), ("trial_a", 2): run(0.51, 3, "a2"),
            ("trial_b", 1): run(0.40, 2, "b1"), ("trial_b", 2): {"run": "b2", "error": "errored"}}
    record = summarise_finalists(TOP[:2], [1, 2], runs)
    assert record["winner"] is None and "1 of 4 finalist runs errored or are missing" in record["fallback"]
    assert "trial_b seed 2 errored" in record["fallback"]
    del runs[("trial_b", 2)]
    record = summarise_finalists(TOP[:2], [1, 2], runs)
    assert record["winner"] is None and "trial_b seed 2 missing" in record["fallback"]
    assert record["trials"][1]["val_losses"] == [0.40, None] and math.isclose(record["trials"][1]["mean_val_loss"],
                                                                              0.40)
    runs[("trial_b", 2)] = {"run": "b2", "error": "diverged"}  # lower mean, but unstable: it cannot win
    record = summarise_finalists(TOP[:2], [1, 2], runs)
    assert record["fallback"] is None and record["winner"] == "trial_a"
    runs[("trial_a", 2)] = {"run": "a2", "error": "diverged"}
    assert summarise_finalists(TOP[:2], [1, 2], runs)["fallback"] == "every finalist has a run that diverged"


def best_of(frame) -> tuple[float, int]:
    row = frame.loc[frame["val_loss"].idxmin()]
    return float(row["val_loss"]), int(row["epoch"])


@pytest.mark.slow
def test_finalists_are_trained_again_and_the_winner_is_exported(ray_session, identity_folder, tmp_path):
    """One real search (4 trials on a tiny identity folder, 2 epochs), then 2 finalists x 2 seeds; one at once,
    as each trial actor started costs more than its epochs here (Tune reuses the one actor)."""
    from ray import tune

    import analysis
    from analysis.report import _finalists_section
    from tune_siamese.core.config import Config
    from tune_siamese.data import load_data
    from tune_siamese.final.finalists import run_finalists
    from tune_siamese.searching.trainable import train_siamese

    args = search_command.parse_args(["--data", str(identity_folder), *SMOKE_SPACE, "--num-samples", "4",
                                      "--max-epochs", "2", "--finalists", "2", "--finalist-seeds", "2",
                                      "--cpus-per-trial", "1", "--gpus-per-trial", "0.25", "--max-concurrent", "1",
                                      "--storage-path", str(tmp_path), "--name", "fin", "-q"])
    summary, _ = search_command.run(args)
    experiment = tmp_path / "fin"
    final = json.loads((experiment / FINAL_FILE).read_text())
    record = final["finalists"]
    assert record == {**summary["finalists"], "experiment": "finalists"}  # the file: relative to the experiment
    assert summary["finalists"]["experiment"] == str(experiment / "finalists") and record["fallback"] is None
    assert record["seeds"] == [1, 2]  # fresh: never the search's trial seed (0)

    # The finalists are the search's top 2 trials by best val loss (on this tiny data some trials tie).
    # (final.json names trials by id; their folders are trial_<id>)
    search = {name.removeprefix("trial_"): best_of(frame)[0] for name, frame in trial_frames(experiment).items()}
    assert len(search) == 4
    assert [search[entry["trial_id"]] for entry in record["trials"]] == sorted(search.values())[:2]

    # Each finalist's seeds are Tune trials under EXPERIMENT/finalists; the record matches their result.json.
    runs = {name.removeprefix("trial_"): frame for name, frame in trial_frames(experiment / FINALISTS_DIR).items()}
    assert len(runs) == 4
    for entry in record["trials"]:
        assert entry["search_val_loss"] == pytest.approx(search[entry["trial_id"]])
        assert len(entry["runs"]) == len(entry["val_losses"]) == len(entry["best_epochs"]) == 2
        for seed, name, loss, epoch in zip(record["seeds"], entry["runs"], entry["val_losses"], entry["best_epochs"]):
            assert (loss, epoch) == best_of(runs[name])
            assert list(runs[name]["epoch"]) == [1, 2]  # validated and reported every epoch, like a search trial
            params = json.loads((experiment / FINALISTS_DIR / f"trial_{name}" / "params.json").read_text())
            assert params == {"finalist": entry["trial_id"], "seed": seed}
            state = load_checkpoint(max((experiment / FINALISTS_DIR / f"trial_{name}").glob("checkpoint_*"))
                                    / STATE_FILE)
            assert state["config"] == {**entry["config"], "seed": seed}  # trained with that seed, nothing else
        assert entry["mean_val_loss"] == pytest.approx(statistics.fmean(entry["val_losses"]))
        assert entry["sd_val_loss"] == pytest.approx(statistics.stdev(entry["val_losses"]))
        assert entry["val_losses"][0] != entry["val_losses"][1]  # the seeds do change the training
    assert tune.ExperimentAnalysis(str(experiment / FINALISTS_DIR)).dataframe().shape[0] == 4

    # The lowest mean wins; its config (the search trial's) is retrained for the median of its best epochs.
    winner = min(record["trials"], key=lambda entry: entry["mean_val_loss"])
    assert record["winner"] == winner["trial_id"] and winner["winner"]
    assert sum(entry["winner"] for entry in record["trials"]) == 1
    assert summary["epochs"] == record["retrain_epochs"] == math.ceil(statistics.median(winner["best_epochs"]))
    assert record["threshold_run"] in winner["runs"]
    exported = json.loads((Path(summary["export"]) / "config.json").read_text())
    # Seed and threads differ on purpose: a fresh seed, and the final-model task's own CPU share.
    assert ({k: v for k, v in exported.items() if k not in ("seed", "threads")}
            == {k: v for k, v in winner["config"].items() if k not in ("seed", "threads")})

    # The analysis sees the search's 4 trials (not the finalist runs) and reports the finalists as a table.
    exp = analysis.load(experiment)
    assert len(exp.trials) == 4 and exp.finalists is not None and len(exp.finalists) == 2
    text = "\n".join(_finalists_section(exp))
    table = [line for line in text.splitlines() if line.startswith(f"| {winner['trial_id']} |")]
    assert len(table) == 1 and "| yes |" in table[0]

    # A resume after the stage ended keeps its runs: restored, nothing trained again, the same outcome.
    settings = load_resume_settings(str(experiment))
    results = tune.Tuner.restore(str(experiment), trainable=train_siamese).get_results()
    again = run_finalists(settings, results, load_data(Config.from_dict(settings.base)), verbose=0)
    assert again is not None and again.record["trials"] == record["trials"]
    assert {name.removeprefix("trial_") for name in trial_frames(experiment / FINALISTS_DIR)} == runs.keys()
    assert all(len(frame) == 2 for frame in trial_frames(experiment / FINALISTS_DIR).values())


def test_a_finalist_stage_without_a_usable_trial_leaves_the_record_to_the_search(tmp_path):
    """Every trial diverged or errored: no finalist runs and no winner (it used to end in StopIteration), so the
    search's own no-usable-trial record is written."""
    from tune_siamese.final.finalists import run_finalists
    from tune_siamese.searching.options import SearchOptions
    from tune_siamese.searching.settings import settings_for

    settings, _ = settings_for(SearchOptions(space="smoke", storage_path=str(tmp_path), name="none", finalists=1,
                                             finalist_seeds=1))
    trials = [reported("trial_b", [0.3], diverged=True), reported("trial_c", [0.2], error="RuntimeError")]
    finalists = run_finalists(settings, trials, data=None, verbose=0)
    assert finalists is not None and finalists.config is None
    assert finalists.record["fallback"] == "no trial has a val loss"

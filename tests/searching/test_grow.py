"""Growing a search: `--resume EXP --num-samples N` above the experiment's own runs the missing trials in the same
study, runs no finished trial again, and keeps the earlier final model beside the new one."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import SMOKE, trial_frames

import tune_siamese as ts
from tune_siamese.app import search_command
from tune_siamese.artifacts.checksums import CHECKSUMS
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import FINAL_FILE, SETTINGS_FILE
from tune_siamese.searching.settings import load_resume_settings, record_growth, settings_for


def experiment_of(storage_path: Path, num_samples: int) -> Path:
    """An experiment folder holding only the settings of a smoke search of `num_samples` trials."""
    experiment = storage_path / "exp"
    experiment.mkdir()
    settings, _ = settings_for(search_command.parse_args([*SMOKE, "--num-samples", str(num_samples),
                                                          "--storage-path", str(storage_path), "--name", "exp"]))
    (experiment / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(settings)))
    return experiment


def test_resume_grows_a_search_only_above_its_own_trials(tmp_path, capsys):
    experiment = experiment_of(tmp_path, 2)
    for smaller in ("2", "1"):
        assert search_command.main(["--resume", str(experiment), "--num-samples", smaller]) == 2
        err = capsys.readouterr().err
        assert f"--num-samples={smaller} with --resume grows the search: it must exceed the 2 trials" in err
        assert len(err.splitlines()) == 1
    with pytest.raises(InputError, match="must exceed the 2 trials"):
        ts.resume(experiment, num_samples=2)
    # every other option that shapes the search is still refused, also beside a growth
    assert search_command.main(["--resume", str(experiment), "--num-samples", "3", "--seed", "1"]) == 2
    assert "--seed would be ignored" in capsys.readouterr().err

    settings, _ = settings_for(search_command.parse_args(["--resume", str(experiment), "--num-samples", "3"]))
    assert (settings.num_samples, settings.grown_from) == (3, [2])
    assert load_resume_settings(str(experiment)).num_samples == 2  # nothing written before the run begins
    record_growth(settings)  # what the run does first (tuner.tuner_for)
    assert (load_resume_settings(str(experiment)).num_samples, load_resume_settings(str(experiment)).grown_from) == (
        3, [2])
    again, _ = settings_for(search_command.parse_args(["--resume", str(experiment), "--num-samples", "5"]))
    assert (again.num_samples, again.grown_from) == (5, [2, 3])
    plain, _ = settings_for(search_command.parse_args(["--resume", str(experiment)]))
    assert plain.num_samples == 3  # a plain --resume goes on to the grown total


def test_the_earlier_final_model_moves_aside_named_by_its_trial_count(tmp_path):
    from tune_siamese.final.earlier import keep_earlier_final

    experiment = tmp_path / "exp"
    for folder in ("export", "export-ensemble", "finalists"):
        (experiment / folder).mkdir(parents=True)
        (experiment / folder / "file").write_text(folder)
    record = {"experiment": ".", "trials": 2, "export": "export", "export_copy": "/elsewhere/copy",
              "ensemble": {"export": "export-ensemble"}, "finalists": {"experiment": "finalists"}}
    (experiment / FINAL_FILE).write_text(json.dumps(record))
    assert keep_earlier_final(str(experiment), 2) is None  # not grown: the final stage writes over it, as ever
    assert (experiment / FINAL_FILE).exists()
    kept = keep_earlier_final(str(experiment), 3)
    assert kept == str(experiment / "final-n2.json") and not (experiment / FINAL_FILE).exists()
    assert json.loads(Path(kept).read_text()) == {
        **record, "export": "export-n2", "ensemble": {"export": "export-ensemble-n2"},
        "finalists": {"experiment": "finalists-n2"}}
    for folder in ("export", "export-ensemble", "finalists"):
        assert (experiment / f"{folder}-n2" / "file").read_text() == folder and not (experiment / folder).exists()
    assert keep_earlier_final(str(experiment), 4) is None  # nothing left to keep


def test_a_move_cut_short_is_finished_by_the_next_run(tmp_path):
    from tune_siamese.final.earlier import keep_earlier_final

    experiment = tmp_path / "exp"
    (experiment / "export-n2").mkdir(parents=True)  # moved before the cut; the record was rewritten already
    (experiment / FINAL_FILE).write_text(json.dumps({"experiment": ".", "trials": 2, "export": "export-n2"}))
    assert keep_earlier_final(str(experiment), 3) == str(experiment / "final-n2.json")
    assert json.loads((experiment / "final-n2.json").read_text())["export"] == "export-n2"


@pytest.mark.slow
def test_growing_a_finished_search_runs_only_the_missing_trials(ray_session, tmp_path, capsys):
    """A finished 2-trial search grown to 3: one new trial, suggested by the same study; the two earlier trials'
    results as they were; the final model rebuilt from all 3, the earlier one kept as final-n2.json, export-n2."""
    import optuna

    import analysis

    search_command.run(search_command.parse_args([
        *SMOKE, "--num-samples", "2", "--max-epochs", "2", "--grace-period", "2", "--final", "trial",
        "--max-concurrent", "1", "--storage-path", str(tmp_path), "--name", "grow", "-q"]))  # 1 actor, reused
    experiment = tmp_path / "grow"
    before = trial_frames(experiment)
    first = json.loads((experiment / FINAL_FILE).read_text())
    first_sums = (experiment / "export" / CHECKSUMS).read_text()
    assert len(before) == 2 and first["trials"] == 2
    capsys.readouterr()

    summary, _ = search_command.run(search_command.parse_args(["--resume", str(experiment), "--num-samples", "3",
                                                               "-q"]))
    out = capsys.readouterr().out
    assert "Grown from 2 to 3 trials" in out and "[search] 3/3 trials ended" in out
    after = trial_frames(experiment)
    assert len(after) == 3 and set(before) < set(after)
    for name, frame in before.items():  # no finished trial ran again
        pd.testing.assert_frame_equal(after[name], frame)
    study = optuna.load_study(study_name="grow", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert sorted(f"trial_{t.user_attrs['tune_trial_id']}" for t in study.trials) == sorted(after)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

    final = json.loads((experiment / FINAL_FILE).read_text())
    assert summary["trials"] == final["trials"] == 3 and final["grown_from"] == [2]
    assert final["best_val_loss"] == pytest.approx(min(frame["val_loss"].min() for frame in after.values()))
    kept = json.loads((experiment / "final-n2.json").read_text())
    assert kept == {**first, "export": "export-n2"}
    assert (experiment / "export-n2" / CHECKSUMS).read_text() == first_sums and (experiment / "export").is_dir()
    saved = json.loads((experiment / SETTINGS_FILE).read_text())
    assert (saved["num_samples"], saved["grown_from"]) == (3, [2])
    assert len(analysis.load(experiment).trials) == 3

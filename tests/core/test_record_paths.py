"""final.json names the files of its experiment relative to it (issue 34, case 3): the absolute `experiment` and
`export` it kept went stale when the folder moved. Readers (analysis.load, SearchResult) give them back where the
experiment is now; an older record with absolute paths still reads, moved with its folder."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest

from tune_siamese.app.result import SearchResult
from tune_siamese.core import storage

ABSOLUTE = {"experiment": "/runs/exp", "export": "/runs/exp/export", "export_copy": "/elsewhere/copy",
            "ensemble": {"export": "/runs/exp/export-ensemble", "test": {"auc": 0.7}},
            "finalists": {"experiment": "/runs/exp/finalists", "winner": "a"}, "best_trial": "a"}
RELATIVE = {"experiment": ".", "export": "export", "export_copy": "/elsewhere/copy",
            "ensemble": {"export": "export-ensemble", "test": {"auc": 0.7}},
            "finalists": {"experiment": "finalists", "winner": "a"}, "best_trial": "a"}
MOVED = {"experiment": "/moved/exp", "export": "/moved/exp/export", "export_copy": "/elsewhere/copy",
         "ensemble": {"export": "/moved/exp/export-ensemble", "test": {"auc": 0.7}},
         "finalists": {"experiment": "/moved/exp/finalists", "winner": "a"}, "best_trial": "a"}


def test_paths_inside_the_experiment_are_written_relative_and_read_where_it_is_now():
    assert storage.record_as_written(ABSOLUTE, "/runs/exp") == RELATIVE
    assert storage.record_as_read(RELATIVE, "/moved/exp") == MOVED
    assert storage.record_as_read(ABSOLUTE, "/moved/exp") == MOVED  # an older record, absolute: moved with it
    assert storage.record_as_read(ABSOLUTE, "/runs/exp") == ABSOLUTE


def test_a_storage_uri_keeps_its_query_on_every_path_read_back():
    query = "?endpoint_override=127.0.0.1:9000&scheme=http"
    record = {"experiment": f"s3://b/runs/exp{query}", "export": f"s3://b/runs/exp/export{query}"}
    written = storage.record_as_written(record, f"s3://b/runs/exp{query}")
    assert written == {"experiment": ".", "export": "export"}
    assert storage.record_as_read(written, f"s3://b/moved/exp{query}") == {
        "experiment": f"s3://b/moved/exp{query}", "export": f"s3://b/moved/exp/export{query}"}


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """finish.py without Ray: nothing is built or exported, but the export's place is the real one."""
    from tune_siamese.app.search_command import parse_args
    from tune_siamese.final import finish
    from tune_siamese.final.policies import FinalModel
    from tune_siamese.searching.settings import settings_for

    def build(policy, size, config, epochs, data, checkpoint, options, member_options):
        return FinalModel("model", [config], 0.5, {"test": {"auc": 0.7, "threshold_logit": 0.5}},
                          {"policy": policy, "size": size, "members": [{}]})

    def export(final, settings, data, export_dir, epochs, suffix=""):
        return {**final.scores, "epochs": epochs, "final": final.record, "retrain_node": None,
                "export": storage.child(settings.experiment_path, f"export{suffix}")}

    monkeypatch.setattr(finish, "build_final_model", build)
    monkeypatch.setattr(finish, "export_final", export)
    monkeypatch.setattr(finish, "task_options", lambda settings: {"num_cpus": 1, "num_gpus": 0, "max_retries": 1})
    monkeypatch.setattr(finish, "check_checkpoint", lambda checkpoint, config: None, raising=False)
    settings, _ = settings_for(parse_args(["--space", "smoke", "--storage-path", str(tmp_path / "runs"),
                                           "--name", "exp"]))
    (tmp_path / "runs" / "exp").mkdir(parents=True)
    return SimpleNamespace(settings=settings, finish=finish)


def test_final_json_names_the_export_relative_and_a_moved_experiment_finds_its_own(stand_ins, synthetic_small,
                                                                                 tmp_path):
    rows = pd.DataFrame([{"epoch": 1, "val_loss": 0.6, "val_auc": 0.6}])
    results = [SimpleNamespace(path="/x/trial_a", error=None, config={"lr": 1e-3, "data": "synthetic"},
                               metrics_dataframe=rows, checkpoint=None)]
    summary, _ = stand_ins.finish.finish_search(stand_ins.settings, results, synthetic_small, None)
    experiment = tmp_path / "runs" / "exp"
    assert summary["experiment"] == str(experiment) and summary["export"] == str(experiment / "export")  # in memory
    written = json.loads((experiment / "final.json").read_text())
    assert written["experiment"] == "." and written["export"] == "export"  # the file: where it is, not where it was

    moved = tmp_path / "moved"
    shutil.move(experiment, moved)
    read = json.loads((moved / "final.json").read_text())
    assert SearchResult(read, str(moved), "").export == str(moved / "export")
    assert storage.record_as_read(read, str(moved))["experiment"] == str(moved)


def test_the_api_result_gives_absolute_current_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = SearchResult({"export": "export-trial", "test": None}, "runs/exp", "")
    assert result.experiment == str(tmp_path / "runs" / "exp")
    assert result.export == str(tmp_path / "runs" / "exp" / "export-trial")
    assert SearchResult({}, "runs/exp", "").export is None
    old = SearchResult({"experiment": "/gone/exp", "export": "/gone/exp/export"}, str(tmp_path / "exp"), "")
    assert old.export == str(tmp_path / "exp" / "export")  # an older record: the export moved with its folder


def test_analysis_reads_a_moved_experiments_final_json_where_it_is(smoke_search, tmp_path):
    import analysis

    copy = tmp_path / "moved"
    shutil.copytree(smoke_search["experiment"], copy, ignore=shutil.ignore_patterns("checkpoint_*", "mlruns"))
    exp = analysis.load(copy)
    assert exp.summary["experiment"] == str(copy) and exp.summary["export"] == str(copy / "export")
    assert exp.summary["ensemble"]["export"] == str(copy / "export-ensemble")

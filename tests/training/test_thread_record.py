"""The torch thread count is in the record (issue 34, threads in the record; case 6: the same configuration scored
test AUC 0.766 with 1 thread and 0.719 with 2, and nothing said which count was used): every epoch a trial or a
final fit reports says it, final.json's final fit says it, --reproducible fixes it, and a final fit with another
count than the search's own says that its scores may differ."""
from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from tune_siamese.final import finish, policies
from tune_siamese.searching.pareto import PickRule


def test_every_epoch_says_the_thread_count_it_ran_with(synthetic_small, tiny_config):
    from tune_siamese.training.engine import fit

    history = fit(tiny_config(max_epochs=1, threads=1), synthetic_small).history
    assert [row["torch_threads"] for row in history] == [1] == [torch.get_num_threads()]


def test_a_final_fit_member_records_its_thread_count(synthetic_small, tiny_config, monkeypatch):
    monkeypatch.setattr(policies, "ray", SimpleNamespace(
        get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: "node")))  # outside a Ray task
    out = policies._member_task(tiny_config(max_epochs=1, threads=1).to_dict(), synthetic_small,
                                synthetic_small.train, None, 1, "retrain")
    assert out["torch_threads"] == 1 and out["node"] == "node"


def settings(tmp_path, *more):
    from tune_siamese.app.search_command import parse_args
    from tune_siamese.searching.settings import settings_for

    argv = ["--space", "smoke", "--storage-path", str(tmp_path), "--name", "exp", "--max-concurrent", "8", *more]
    return settings_for(parse_args(argv))[0]


def test_reproducible_fixes_the_final_fits_cpus_whatever_the_cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(finish, "alive_nodes", lambda: [{"CPU": 64.0}])
    assert finish.task_options(settings(tmp_path))["num_cpus"] == 8  # a trial's CPU times the concurrency
    fixed = settings(tmp_path, "--reproducible")
    assert finish.task_options(fixed)["num_cpus"] == 1 == fixed.base["threads"]
    assert policies.member_threads(finish.member_options(fixed, 3)) == 1


def test_a_final_fit_with_another_thread_count_than_the_searchs_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(finish, "alive_nodes", lambda: [{"CPU": 2.0}])
    searched = settings(tmp_path)  # a retrain here takes 2 CPUs, so 2 threads
    retrain = finish.FinalPlan("retrain", 1, PickRule(), str(tmp_path / "exp" / "final-retrain.json"))
    assert finish.threads_warning(searched, retrain) is None  # no final.json: nothing recorded to differ from
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "final.json").write_text(json.dumps({"final": {"policy": "retrain", "torch_threads": 1}}))
    warning = finish.threads_warning(searched, retrain)
    assert warning is not None and warning.startswith("WARNING: the final model's fits run with 2 torch thread(s), "
                                                      "the search's own final fit with 1 (final.json)")
    assert "scores may differ" in warning and len(warning.splitlines()) == 1
    assert finish.threads_warning(searched, finish.FinalPlan("trial", 1, PickRule(), "x")) is None  # no fit
    (tmp_path / "exp" / "final.json").write_text(json.dumps({"final": {"policy": "retrain", "torch_threads": 2}}))
    assert finish.threads_warning(searched, retrain) is None

"""The final-model policies (tune_siamese.final.policies): identity-disjoint folds, each policy end to end on small
synthetic data with its members fitted as concurrent Ray tasks."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tune_siamese.core.errors import InputError
from tune_siamese.final.policies import build_final_model, identity_folds
from tune_siamese.searching.settings import check_final_policy


def test_folds_are_identity_disjoint_cover_every_pair_and_hold_both_labels(synthetic_small):
    data = synthetic_small
    trainval = np.concatenate([data.train, data.val])
    folds = identity_folds(trainval, data.identity, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(trainval)))
    people = [set(data.identity[trainval[rows, :2]].ravel().tolist()) for rows in folds]
    for i in range(3):
        assert set(trainval[folds[i], 2].tolist()) == {0, 1}
        for j in range(i + 1, 3):
            assert not people[i] & people[j]
    sizes = [len(rows) for rows in folds]
    assert max(sizes) - min(sizes) <= max(len(trainval) // 10, 2)  # small linked groups: nearly equal folds
    assert [r.tolist() for r in identity_folds(trainval, data.identity, 3, seed=0)] == [r.tolist() for r in folds]


def test_folds_that_cannot_hold_both_labels_are_refused(synthetic_small):
    data = synthetic_small
    same = data.train[data.train[:, 2] == 1][:3]
    with pytest.raises(InputError, match="fold"):
        identity_folds(same, data.identity, 2, seed=0)


@pytest.mark.parametrize("policy, size, message", [("best", 1, "not one of"), ("retrain", 3, "one model"),
                                                    ("folds", 1, ">= 2"), ("seeds", 0, ">= 1")])
def test_bad_policy_options_are_refused(policy, size, message):
    with pytest.raises(InputError, match=message):
        check_final_policy(policy, size)



@pytest.mark.parametrize("space", ["best", "best-mined"])
def test_the_best_presets_hand_back_three_seeds_averaged_and_an_option_beats_it(space, tmp_path):
    """The benchmark's choice (docs/results.md): seeds with K = 3 for best and best-mined; --final still rules."""
    from tune_siamese.app.search_command import parse_args
    from tune_siamese.searching.settings import settings_for

    def final(*options: str) -> tuple[str, int]:
        settings, _ = settings_for(parse_args(["--space", space, "--storage-path", str(tmp_path), *options]))
        return settings.final, settings.final_size

    assert final() == ("seeds", 3)
    assert final("--final", "retrain") == ("retrain", 1)
    assert final("--final-size", "5") == ("seeds", 5)
    settings, _ = settings_for(parse_args(["--space", "quick", "--storage-path", str(tmp_path)]))
    assert (settings.final, settings.final_size) == ("retrain", 1)


@pytest.mark.slow  # 12-18 s: three fits and a Ray task; the inner loop's smoke search retrains end to end
def test_retrain_is_one_model_on_train_and_val_with_the_trial_models_threshold(ray_session, synthetic_small,
                                                                                tiny_config):
    """The `retrain` policy is what a search handed back before the policies: a model fitted on train + val for the
    given epochs, scored at the threshold a train-only model chooses on the val pairs."""
    from dataclasses import replace

    from tune_siamese.training.device import resolve_device
    from tune_siamese.training.engine import fit
    from tune_siamese.training.scoring import evaluate, images_on, val_and_test

    config, data = tiny_config(max_epochs=2), synthetic_small
    final = build_final_model("retrain", 1, config, 2, data, None, {"num_cpus": 1}, {"num_cpus": 1})
    own = fit(config, data, validate=False, epochs=2).model
    images = images_on(resolve_device(config), data.images)
    threshold = val_and_test(own, images, data, config)["val"]["threshold_logit"]
    model = fit(config, replace(data, train=np.concatenate([data.train, data.val])), validate=False, epochs=2).model
    test = evaluate(model, images, data.test, config, threshold=threshold)
    assert final.threshold_logit == pytest.approx(threshold, abs=1e-6)
    assert final.scores["test"]["auc"] == pytest.approx(test["auc"], abs=1e-6)
    assert final.scores["test"]["auc_ci"][0] <= final.scores["test"]["auc"] <= final.scores["test"]["auc_ci"][1]
    assert final.record["policy"] == "retrain" and len(final.record["members"]) == 1


def test_a_member_that_diverges_ends_the_final_model_in_one_line(ray_session, synthetic_small, tiny_config,
                                                                  monkeypatch):
    """A diverged member came back as RayTaskError(Diverged), the worker's traceback in its message; now it is
    Diverged itself, naming the member (hand_back_final records it). Both members diverge in their first epoch,
    where a cancel of the one that ends second could meet its reply (Ray aborted the driver: the next test)."""
    import ray

    from tune_siamese.training.engine import Diverged

    cancels: list[dict] = []
    cancel = ray.cancel
    monkeypatch.setattr(ray, "cancel", lambda future, **options: cancels.append(options) or cancel(future, **options))
    config = tiny_config(optimizer="sgd", lr=1e30, max_epochs=1)  # NaN weights in the first epoch
    with pytest.raises(Diverged) as diverged:
        build_final_model("seeds", 2, config, 1, synthetic_small, None, {"num_cpus": 1}, {"num_cpus": 1})
    assert type(diverged.value) is Diverged and "\n" not in str(diverged.value)
    assert re.fullmatch(r"seed [12]/2: training loss is .* at epoch 1.*", str(diverged.value)), str(diverged.value)
    assert all(options == {"force": True} for options in cancels)  # none, unless the second one started late


def test_a_failed_member_cancels_only_the_siblings_still_running(ray_session, monkeypatch):
    """Ray aborts the driver when a cancel meets a task whose reply is on its way (the test above crashed its
    pytest worker so: "Tried to complete task that was not pending"). A sibling that ends within the grace is left
    to end; one still running after it is cancelled, forced, so that no worker interrupted mid-import is reused (a
    later member then failed on a half-imported sympy)."""
    import time

    import ray

    from tune_siamese.core.errors import InputError
    from tune_siamese.final import policies

    cancels: list[tuple] = []
    cancel = ray.cancel
    monkeypatch.setattr(ray, "cancel", lambda future, **options: cancels.append((future, options)) or
                        cancel(future, **options))

    def refused() -> None:
        raise InputError("bad member")

    def ending() -> int:
        time.sleep(0.5)
        return 1

    def running() -> int:
        time.sleep(120)
        return 2

    futures = [ray.remote(task).options(num_cpus=0).remote() for task in (refused, ending, running)]
    with pytest.raises(InputError, match="bad member"):
        policies.gathered(futures)
    assert cancels == [(futures[2], {"force": True})]
    assert ray.get(futures[1]) == 1


@pytest.mark.slow  # 13-18 s for seeds: two members side by side need a second Ray worker started
@pytest.mark.parametrize("policy", ["seeds", "folds"])
def test_members_fit_side_by_side_and_are_averaged(ray_session, synthetic_small, tiny_config, policy):
    from tune_siamese.training.model import EnsembleNet

    config = tiny_config(max_epochs=2, patience=2)
    final = build_final_model(policy, 2, config, 2, synthetic_small, None, {"num_cpus": 1}, {"num_cpus": 1})
    assert isinstance(final.model, EnsembleNet) and len(final.model.members) == 2
    members = final.record["members"]
    assert [m["seed"] for m in members] == [config.seed, config.seed + 1]
    test = final.scores["test"]
    assert 0 <= test["auc"] <= 1 and test["threshold_logit"] == final.threshold_logit
    if policy == "folds":
        assert sum(m["fold_pairs"] for m in members) == len(synthetic_small.train) + len(synthetic_small.val)
    # each member's own test score, at the ensemble's threshold, is recorded beside the ensemble's
    from tune_siamese.training.device import resolve_device
    from tune_siamese.training.scoring import evaluate, images_on

    images = images_on(resolve_device(config), synthetic_small.images)
    for member, member_config, record in zip(final.model.members, final.configs, members):
        alone = evaluate(member, images, synthetic_small.test, member_config, threshold=final.threshold_logit)
        assert record["test"]["auc"] == pytest.approx(alone["auc"], abs=1e-4)
        assert record["test"]["accuracy_at_threshold"] == pytest.approx(alone["accuracy_at_threshold"], abs=1e-4)


def test_every_member_is_submitted_before_any_is_waited_for(monkeypatch, synthetic_small, tiny_config):
    """The K fits are Ray tasks submitted together, so a cluster with room runs them side by side: a stand-in for
    Ray records the order of submissions and waits (wall-clock overlap would make a flaky test on 2 cores)."""
    from tune_siamese.final import policies

    events: list[str] = []
    member = {"state": {}, "epochs": 1, "node": "n", "started": 0.0, "ended": 1.0,
              "held_out_logits": None, "best_epoch": 1, "torch_threads": 1}

    class FakeRay:
        @staticmethod
        def put(value):
            return value

        @staticmethod
        def remote(function):
            class Task:
                def options(self, **_):
                    return self

                def remote(self, *args):
                    events.append(f"submit {function.__name__}")
                    return function.__name__
            return Task()

        @staticmethod
        def get(refs):
            events.append(f"wait {refs}")
            if isinstance(refs, list):
                return [member] * len(refs)
            return {"test": {"threshold_logit": 0.0}}, "node"

    monkeypatch.setattr(policies, "ray", FakeRay)
    monkeypatch.setattr(policies, "rebuilt", lambda config, state: None)
    monkeypatch.setattr(policies, "EnsembleNet", lambda models, configs: models)
    policies.build_final_model("seeds", 3, tiny_config(), 2, synthetic_small, None, {}, {"num_cpus": 0.5})
    assert events == ["submit _member_task"] * 3 + ["wait ['_member_task', '_member_task', '_member_task']",
                                                    "submit _score_task", "wait _score_task"]


@pytest.mark.parametrize("room, size, shares", [
    ((2.0, 0.0), 3, (2 / 3, 0.0)),  # a 2-core laptop: three members at once, one thread each
    ((2.0, 0.0), 1, (2.0, 0.0)),  # `retrain`: the whole room
    ((8.0, 1.0), 3, (2.0, 1 / 3)),  # Ray takes fractions below 1 only: 8/3 CPUs -> 2
])
def test_members_split_one_retrains_room_evenly(monkeypatch, room, size, shares):
    from tune_siamese.final import finish

    cpus, gpus = room
    monkeypatch.setattr(finish, "task_options", lambda settings: {"num_cpus": cpus, "num_gpus": gpus,
                                                                  "max_retries": 1})
    options = finish.member_options(None, size)
    assert (options["num_cpus"], options["num_gpus"]) == pytest.approx(shares)
    assert options["max_retries"] == 1


@pytest.mark.slow
def test_finalize_adds_final_models_beside_the_search_and_never_overwrites(smoke_search, capsys):
    """`tune-siamese finalize` on a finished search: each policy's record and export beside final.json and
    export/, which stay byte for byte; the same name twice is refused; intervals hold their point estimates."""
    from tune_siamese.app.cli import main

    experiment = smoke_search["experiment"]
    before = {path.name: path.read_bytes() for path in [experiment / "final.json", *(experiment / "export").iterdir()]}
    for policy, size, name in (("trial", None, "trial"), ("folds", "2", "folds2")):
        argv = ["finalize", str(experiment), "--final", policy, *(["--final-size", size] if size else [])]
        assert main(argv) == 0
        record = json.loads((experiment / f"final-{name}.json").read_text())
        assert record["final"]["policy"] == policy and (experiment / f"export-{name}" / "SHA256SUMS").is_file()
        test = record["test"]
        for score in ("accuracy", "accuracy_at_threshold", "auc", "tar_at_far_0.01"):
            low, high = test[f"{score}_ci"]
            assert low <= test[score] <= high, score
        assert main(argv) == 2
        assert "never writes over an earlier one" in capsys.readouterr().err
    from mlflow.tracking import MlflowClient  # the search logs to MLflow: finalize's models are runs there too

    client = MlflowClient(tracking_uri=(experiment.parent / "mlruns").as_uri())
    found = client.get_experiment_by_name("smoke")
    assert found is not None
    finalized = {run.info.run_name: run for run in client.search_runs(
        [found.experiment_id], "tags.`tune_siamese.role` = 'finalize'")}
    assert sorted(finalized) == ["smoke final-folds2", "smoke final-trial"]
    assert all(run.info.status == "FINISHED" and "test/auc" in run.data.metrics for run in finalized.values())
    after = {path.name: path.read_bytes() for path in [experiment / "final.json", *(experiment / "export").iterdir()]}
    assert after == before

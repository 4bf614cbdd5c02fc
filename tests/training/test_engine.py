"""Training engine: determinism, learning, early stopping, optimizers, divergence, resume, augmentation,
and the one-shot evaluation."""
from __future__ import annotations

import copy
import dataclasses
import io

import numpy as np
import pytest
import torch

from tune_siamese.artifacts.checkpoint import load_checkpoint, save_checkpoint
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.training.augment import koch_affine
from tune_siamese.training.engine import (
    DIVERGED_ABOVE,
    Diverged,
    epoch_line,
    fit,
    make_optimizer,
    print_epochs,
    train_and_test,
)
from tune_siamese.training.metrics import best_threshold, chance_check, pair_metrics, threshold_note
from tune_siamese.training.model import build_model
from tune_siamese.training.oneshot import one_shot_accuracy, one_shot_scores, one_shot_trials
from tune_siamese.training.preprocess import to_input
from tune_siamese.training.scoring import evaluate, images_on, predict


def comparable(history: list[dict]) -> list[dict]:
    """The history without the epoch's time and stops_here (it says where that run was set to end: the resume
    test's first part ran with max_epochs=1)."""
    return [{k: v for k, v in row.items() if k not in ("epoch_seconds", "stops_here")} for row in history]


def test_same_config_and_seed_give_identical_runs(synthetic_small, tiny_config):
    config = tiny_config(max_epochs=2, augment=True, mined_pairs=32)
    first, second = fit(config, synthetic_small), fit(config, synthetic_small)
    assert comparable(first.history) == comparable(second.history)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    other = fit(config.replace(seed=1), synthetic_small)
    assert comparable(other.history) != comparable(first.history)


@pytest.fixture(scope="module")
def learned(tiny_config):
    """4 epochs on 480 synthetic training pairs, validated on all 220 val pairs, tested on 400 test pairs."""
    from tune_siamese.data import load_data

    full = load_data(tiny_config())
    data = dataclasses.replace(full, train=full.train[:480], test=full.test[:400])
    result, report = train_and_test(tiny_config(max_epochs=4, lr=3e-3), data)
    return data, result, report


def test_tiny_model_learns_synthetic_faces(learned):
    # Measured for seed 0: val AUC 0.80, test AUC 0.81, val accuracy at threshold 0.73 (val AUC 0.71-0.80 over
    # seeds 0-3); chance is 0.5.
    _, result, report = learned
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] - 0.05
    assert report["val"]["auc"] > 0.65
    assert report["test"]["auc"] > 0.6
    assert report["val"]["accuracy_at_threshold"] > 0.6
    assert report["test"]["threshold_logit"] == report["val"]["threshold_logit"]
    assert len(report["test"]["roc_fpr"]) == len(report["test"]["roc_tpr"]) > 2


def test_early_stopping_when_validation_never_improves(synthetic_small, tiny_config):
    # lr 1e-12 is below float32 resolution of the weights: the val loss repeats exactly, epoch 2 is "worse".
    config = tiny_config(optimizer="sgd", lr=1e-12, batchnorm=False, patience=1, max_epochs=5)
    seen = []
    result = fit(config, synthetic_small, on_epoch=lambda metrics, state: seen.append(metrics["epoch"]))
    assert result.stopped_early and seen == [1, 2] and len(result.history) == 2
    assert result.best_epoch == 1


def test_no_validation_trains_every_epoch(synthetic_small, tiny_config):
    config = tiny_config(optimizer="sgd", lr=1e-12, batchnorm=False, patience=1, max_epochs=3)
    result = fit(config, synthetic_small, validate=False)
    assert len(result.history) == 3 and result.best_epoch == 3 and "val_loss" not in result.history[0]


def test_compiled_training_matches_eager(synthetic_small, tiny_config):
    # aot_eager traces forward and backward like inductor does, without building C++ kernels (fast on CI).
    config = tiny_config(max_epochs=1, precision="fp32")
    eager = fit(config, synthetic_small, validate=False)
    compiled = fit(config.replace(compile="aot_eager"), synthetic_small, validate=False)
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], rel=1e-4)
    with pytest.raises(InputError, match="option compile='nope'"):
        fit(config.replace(compile="nope"), synthetic_small)


def test_augmented_copies_and_mined_pairs_grow_the_epoch(synthetic_small, tiny_config):
    n = len(synthetic_small.train)
    copies = fit(tiny_config(max_epochs=1, augment=True, augment_copies=3), synthetic_small, validate=False)
    assert copies.history[0]["train_pairs"] == 3 * n
    mined = fit(tiny_config(max_epochs=1, mined_pairs=40), synthetic_small, validate=False)
    assert mined.history[0]["train_pairs"] == n + 40
    plain = fit(tiny_config(max_epochs=1, augment_copies=3), synthetic_small, validate=False)
    assert plain.history[0]["train_pairs"] == n  # copies only mean something with augmentation


def test_retraining_for_fewer_epochs_keeps_the_trials_schedule(synthetic_small, tiny_config):
    # A retrain repeats the best trial's first N epochs: a cosine schedule still spans max_epochs.
    config = tiny_config(lr=1e-3, lr_schedule="cosine", max_epochs=6)
    result = fit(config, synthetic_small, validate=False, epochs=2)
    lrs = [row["lr"] for row in result.history]
    assert len(lrs) == 2 and result.best_epoch == 2
    assert lrs[1] == pytest.approx(1e-3 * (1 + np.cos(np.pi / 6)) / 2)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_optimizer_by_name(tiny_config, name, cls):
    config = tiny_config(optimizer=name, lr=0.02, weight_decay=1e-4, momentum=0.5)
    optimizer = make_optimizer(config, build_model(config))
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["lr"] == 0.02 and optimizer.param_groups[0]["weight_decay"] == 1e-4
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.5


def test_unknown_optimizer(tiny_config):
    with pytest.raises(InputError, match="optimizer='rmsprop'"):
        tiny_config(optimizer="rmsprop")
    config = tiny_config()
    config.optimizer = "rmsprop"  # past validation, e.g. a Config mutated in place
    with pytest.raises(InputError, match="unknown optimizer 'rmsprop'"):
        make_optimizer(config, build_model(tiny_config()))


def test_nan_loss_raises_diverged(synthetic_small, tiny_config):
    with pytest.raises(Diverged, match="nan"):
        fit(tiny_config(optimizer="sgd", lr=1e30, max_epochs=3), synthetic_small)


def test_a_finite_but_exploding_loss_is_divergence_too(synthetic_small, tiny_config):
    """SGD at lr 1e10 keeps its losses finite (around 1e9 to 1e10) and its AUC at chance: without a ceiling the
    trial counted as trained, and the search could retrain and export it."""
    with pytest.raises(Diverged, match="above 69.3"):
        fit(tiny_config(optimizer="sgd", lr=1e10, max_epochs=2), synthetic_small)
    assert DIVERGED_ABOVE == pytest.approx(100 * np.log(2))  # 100 times a constant predictor's loss


def test_bad_device_is_input_error(synthetic_small, tiny_config):
    with pytest.raises(InputError, match="option device='gpu'"):
        fit(tiny_config(device="gpu"), synthetic_small)


def test_resume_continues_where_it_stopped(synthetic_small, tiny_config, tmp_path):
    config = tiny_config(max_epochs=3, augment=True, mined_pairs=32)
    full = fit(config, synthetic_small)

    saved = {}

    def keep_first(metrics, state):
        if metrics["epoch"] == 1:  # through a real checkpoint file, as the Ray layer does
            save_checkpoint(copy.deepcopy(state()), tmp_path / "epoch1.pt")
            saved["history"] = copy.deepcopy(metrics)

    fit(config.replace(max_epochs=1), synthetic_small, on_epoch=keep_first)
    state = load_checkpoint(tmp_path / "epoch1.pt")
    assert state["epoch"] == 1
    seen = []
    resumed = fit(config, synthetic_small, resume=state, on_epoch=lambda m, s: seen.append(m["epoch"]))
    assert seen == [2, 3]
    assert comparable(resumed.history) == comparable(full.history)
    assert resumed.best_epoch == full.best_epoch
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_zoom_keeps_the_centre_of_each_stored_image():
    images = torch.arange(4 * 100 * 100, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(4, 100, 100)
    index = torch.tensor([2, 0])
    same = to_input(images, index, Config(image_size=100, zoom=0.8, input_size=80))  # 80 px kept, no resize
    assert same.shape == (2, 1, 80, 80)
    assert torch.equal(same[:, 0], images[index][:, 10:90, 10:90].float() / 255)
    resized = to_input(images, index, Config(image_size=100, zoom=0.5, input_size=72))
    assert resized.shape == (2, 1, 72, 72)


def test_augmentation_keeps_shape_and_changes_pixels():
    x = torch.rand(16, 1, 72, 72)
    out = koch_affine(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = (out - x).abs().flatten(1).max(1).values > 1e-3
    assert changed.sum() >= 12  # each image is left alone only with probability 1/32
    again = koch_affine(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    flips_only = koch_affine(x, torch.Generator().manual_seed(1), strength=0.0)
    for image, flipped in zip(x, flips_only):  # strength 0 leaves only the horizontal flip
        assert torch.allclose(flipped, image, atol=1e-5) or torch.allclose(flipped, image.flip(-1), atol=1e-5)


def test_metrics_and_threshold():
    labels = np.array([1, 1, 1, 0, 0, 0])
    logits = np.array([3.0, 2.0, -0.5, -1.0, -2.0, 0.5])
    threshold = best_threshold(labels, logits)
    metrics = pair_metrics(labels, logits, threshold)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["accuracy_at_threshold"] == pytest.approx(5 / 6)
    assert metrics["auc"] == pytest.approx(8 / 9)
    perfect = pair_metrics(labels, np.array([5.0, 4, 3, -3, -4, -5]))
    assert perfect["auc"] == 1.0 and perfect["loss"] < 0.06


def test_a_val_set_without_signal_rejects_every_pair_and_says_so():
    """No threshold beats "reject every pair" on pairs a model scores alike (or backwards): best_threshold keeps
    that one, clipped to logit 1e6, and threshold_note says what it means."""
    labels = np.array([1, 1, 1, 0, 0, 0])
    for logits in (np.zeros(6), np.array([-3.0, -2, -1, 1, 2, 3])):
        threshold = best_threshold(labels, logits)
        assert threshold == 1e6
        assert pair_metrics(labels, logits, threshold)["accuracy_at_threshold"] == 0.5
        note = threshold_note(threshold)
        assert note is not None and "rejects every pair" in note and "no signal" in note
    assert threshold_note(best_threshold(labels, np.array([3.0, 2.0, -0.5, -1.0, -2.0, 0.5]))) is None


def test_chance_check_uses_the_auc_a_model_without_signal_reaches_one_time_in_twenty():
    labels = np.array([1] * 500 + [0] * 500)  # DevTest's 500 + 500 pairs
    check = chance_check(0.52, labels, "test")
    assert check["chance_bound"] == pytest.approx(0.5 + 1.645 * np.sqrt(1001 / (12 * 500 * 500)))  # 0.530
    assert check["no_better_than_chance"] and check["scored_on"] == "test" and check["auc"] == 0.52
    assert check["pairs"] == {"same": 500, "different": 500}
    assert not chance_check(0.60, labels, "test")["no_better_than_chance"]
    small = chance_check(0.55, np.array([1] * 110 + [0] * 110), "val")  # the given val pairs: bound 0.564
    assert small["no_better_than_chance"] and small["chance_bound"] == pytest.approx(0.564, abs=1e-3)
    assert chance_check(float("nan"), labels, "test")["no_better_than_chance"]  # no AUC at all


def test_tta_flip_is_symmetric_to_mirroring(synthetic_small, tiny_config):
    config = tiny_config(tta_flip=True)
    torch.manual_seed(0)
    model = build_model(config).eval()
    images = images_on(torch.device("cpu"), synthetic_small.images)
    mirrored = images_on(torch.device("cpu"), synthetic_small.images[:, :, ::-1].copy())
    pairs = synthetic_small.test[:20]
    np.testing.assert_allclose(predict(model, images, pairs, config), predict(model, mirrored, pairs, config),
                               rtol=1e-5, atol=1e-6)
    assert evaluate(model, images, pairs, config)["loss"] > 0


# --------------------------------------------------------------------------------------------------
# one-shot

def test_one_shot_trials_are_well_formed_and_seeded():
    identity = np.repeat(np.arange(30), [1 + i % 3 for i in range(30)])
    query, candidates, target = one_shot_trials(identity, ways=5, trials=200, seed=7)
    assert candidates.shape == (200, 5)
    for q, row, t in zip(query, candidates, target):
        assert row[t] != q and identity[row[t]] == identity[q]
        others = np.delete(row, t)
        assert len(set(identity[others].tolist())) == 4 and identity[q] not in identity[others]
    assert len(set(target.tolist())) == 5  # the true match is not always in one place
    again = one_shot_trials(identity, ways=5, trials=200, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip((query, candidates, target), again))
    assert not np.array_equal(query, one_shot_trials(identity, ways=5, trials=200, seed=8)[0])


def test_one_shot_trials_refuse_impossible_requests():
    identity = np.repeat(np.arange(4), 2)
    with pytest.raises(InputError, match="--ways=5 needs 5 identities but the data has 4"):
        one_shot_trials(identity, ways=5, trials=3, seed=0)
    with pytest.raises(InputError, match="at least 2 images"):
        one_shot_trials(np.arange(6), ways=3, trials=3, seed=0)


@pytest.mark.parametrize("tta_flip", [False, True])
def test_one_shot_scores_match_pairwise_predictions(synthetic_small, tiny_config, tta_flip):
    config = tiny_config(tta_flip=tta_flip, eval_batch_size=37)  # odd batches cross trial boundaries
    torch.manual_seed(0)
    model = build_model(config).eval()
    images = images_on(torch.device("cpu"), synthetic_small.images[:300])
    identity = synthetic_small.identity[:300]
    query, candidates, target = one_shot_trials(identity, ways=6, trials=25, seed=0)
    scores = one_shot_scores(model, images, query, candidates, config)
    pairs = np.stack([np.repeat(query, 6), candidates.ravel(), np.zeros(150, np.int64)], axis=1)
    np.testing.assert_allclose(scores.ravel(), predict(model, images, pairs, config), rtol=1e-4, atol=1e-5)


def test_one_shot_accuracy_of_a_trained_model_beats_chance(learned, tiny_config):
    data, result, _ = learned
    images = images_on(torch.device("cpu"), data.images)
    test_ids = np.array(sorted(data.identities_of(data.test)))
    keep = np.flatnonzero(np.isin(data.identity, test_ids))  # identities never trained on
    metrics = one_shot_accuracy(result.model, images[keep], data.identity[keep], tiny_config(), ways=5,
                                trials=300, seed=0)
    assert metrics["ways"] == 5 and metrics["trials"] == 300 and metrics["chance"] == 0.2
    assert metrics["accuracy"] > 0.3  # measured 0.56


def test_tar_at_far_reads_the_roc_at_the_false_accept_rate():
    from tune_siamese.training.metrics import pair_metrics, tar_at_far

    fpr, tpr = np.array([0.0, 0.005, 0.02, 1.0]), np.array([0.1, 0.4, 0.7, 1.0])
    assert tar_at_far(fpr, tpr, 1e-2) == 0.4 and tar_at_far(fpr, tpr, 1e-3) == 0.1
    assert tar_at_far(np.array([0.5, 1.0]), np.array([0.9, 1.0]), 1e-2) == 0.0  # no threshold that strict
    labels = np.array([1, 1, 0, 0])
    metrics = pair_metrics(labels, np.array([3.0, 1.0, 2.0, -1.0]), 0.0, with_roc=True)
    assert metrics["tar_at_far_0.01"] == 0.5 and metrics["tar_at_far_0.001"] == 0.5  # 3.0 beats every false pair


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_epoch_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere():
    metrics = [{"epoch": e, "train_loss": 0.5, "val_loss": 0.4, "best_val_loss": 0.4, "val_auc": 0.9,
                "epoch_seconds": 1.0} for e in (1, 2)]
    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        on_epoch = print_epochs("[retrain] ", 3, stream)
        for row in metrics:
            on_epoch(row, lambda: {})
    assert log.getvalue().splitlines() == [f"[retrain] {epoch_line(row, 3)}" for row in metrics]  # no bar in logs
    shown = terminal.getvalue()
    assert all(epoch_line(row, 3) in shown for row in metrics)  # the lines stay above the bar
    assert "2/3" in shown and "epoch" in shown and "\r" in shown  # the bar: epochs done of all, redrawn in place

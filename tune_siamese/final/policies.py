"""The model a search hands back (--final POLICY, --final-size K), built from the winning configuration:

- `retrain`: one model trained on train + val for the best trial's best epoch count (K = 1 of `seeds`);
- `trial`: the best trial's own model (trained on the train part, its epoch chosen on the val pairs);
- `seeds`: K such retrains with seeds seed, seed + 1, ..., their logits averaged;
- `folds`: K identity-disjoint folds of train + val; member k trains on the other folds and stops early on fold k;
  the K members are averaged, and the threshold is chosen on their out-of-fold logits, so every pair serves for
  training and for stopping.

Each member is fitted in a Ray task with an even share of one retrain's resources, all submitted at once so
they run side by side; a last task scores the test pairs (the same task scores run_search.py --ensemble's
average of the top trials' own models). Tasks return CPU weights; the driver exports.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayTaskError
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tune_siamese.artifacts.checkpoint import as_trained, load_checkpoint
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import STATE_FILE
from tune_siamese.data import PairData
from tune_siamese.training.device import resolve_device
from tune_siamese.training.engine import Diverged, fit, print_epochs
from tune_siamese.training.metrics import best_threshold
from tune_siamese.training.model import EnsembleNet, build_model
from tune_siamese.training.scoring import evaluate, images_on, predict, val_and_test


def identity_folds(pairs: np.ndarray, identity: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """K arrays of row indices into `pairs`, no person in two of them, every row in one.

    A pair links its two people; the linked groups (connected components) go whole into the fold with the fewest
    pairs so far, largest first (ties in a seeded order). On LFW's DevTrain the largest group holds 21 of 2200
    pairs, so the folds come out nearly equal; a fold without both kinds of pair is refused."""
    people_a, people_b = identity[pairs[:, 0]], identity[pairs[:, 1]]
    n = int(identity.max()) + 1
    graph = coo_matrix((np.ones(len(pairs)), (people_a, people_b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    group_of_pair = component[people_a]
    groups, sizes = np.unique(group_of_pair, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(groups))
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of_group: dict[int, int] = {}
    filled = np.zeros(k, dtype=np.int64)
    for g in order:
        fold = int(np.argmin(filled))
        fold_of_group[int(groups[g])] = fold
        filled[fold] += sizes[g]
    fold_of_pair = np.array([fold_of_group[int(g)] for g in group_of_pair], dtype=np.int64)
    folds = [np.flatnonzero(fold_of_pair == fold) for fold in range(k)]
    for fold, rows in enumerate(folds):
        labels = pairs[rows, 2]
        if not (labels == 1).any() or not (labels == 0).any():
            raise InputError(f"option --final-size={k}: fold {fold + 1} of the train + val pairs would hold "
                             f"{len(rows)} pairs without both same- and different-person pairs; use fewer folds")
    return folds


# ------------------------------------------------------------------------------------------------------
# Ray tasks: they return CPU weights (and a fold's out-of-fold logits); the driver rebuilds the models.

def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def rebuilt(config: Config, state: dict[str, torch.Tensor]) -> Any:
    model = build_model(config)
    model.load_state_dict(state)
    return as_trained(model, config)


def trial_model(checkpoint: Any, config: Config) -> Any:
    """A trial's own model at its best epoch, from its last checkpoint (trained on the train part only)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        state = load_checkpoint(Path(folder) / STATE_FILE)
    return rebuilt(config, state["best_model"])


def check_checkpoint(checkpoint: Any, config: Config) -> None:
    """The picked trial's checkpoint loads into its configuration's model, checked in the driver before any
    member trains: a truncated state.pt would otherwise surface in the scoring task, after every retrain, as a
    Ray traceback. Refused in one line naming the file."""
    if checkpoint is None:
        return
    where = f"{str(checkpoint.path).rstrip('/')}/{STATE_FILE}"
    try:
        trial_model(checkpoint, config)
    except InputError as exc:  # load_checkpoint's: the file is missing or not loadable
        reason = " ".join(str(exc).removeprefix(f"{exc.path}: ").split())
        raise InputError(f"the picked trial's checkpoint cannot be loaded ({reason}); nothing was built", where
                         ) from None
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:  # loads, but is no state of this model
        reason = " ".join(str(exc).split())[:200]
        raise InputError(f"the picked trial's checkpoint holds no model of its configuration ({reason}); nothing "
                         "was built", where) from None


# How long the siblings of a member that failed may take to end by themselves before they are cancelled.
SIBLING_GRACE_S = 5.0


def gathered(futures: Any) -> Any:
    """ray.get of a task or a list of them, where a task that diverged or met bad input ends the step with that
    exception's own one line (not Ray's RayTaskError, which carries the worker's traceback); siblings that do not
    end within SIBLING_GRACE_S are cancelled, so that their room is free."""
    try:
        return ray.get(futures)
    except RayTaskError as exc:
        if not isinstance(exc.cause, (Diverged, InputError)):
            raise
        siblings = futures if isinstance(futures, list) else [futures]
        # Members of one configuration often diverge in the same epoch, and Ray aborts the driver when a cancel
        # meets a task whose reply is on its way ("Tried to complete task that was not pending", a race in Ray's
        # task submitter of the kind of ray-project/ray#54846). So the siblings ending about now are left to end.
        _, running = ray.wait(siblings, num_returns=len(siblings), timeout=SIBLING_GRACE_S)
        for future in running:
            # force: the worker process ends. A plain cancel raises KeyboardInterrupt wherever the task is, also in
            # the middle of an import (torch imports sympy lazily at the first optimizer), and Ray reuses that
            # worker: its next task then met a half-imported module ("module 'sympy' has no attribute 'logic'").
            ray.cancel(future, force=True)
        raise exc.cause from None


def _member_task(config: dict[str, Any], data: PairData, train: np.ndarray, held_out: np.ndarray | None,
                 epochs: int, label: str) -> dict[str, Any]:
    """One member: `epochs` epochs on `train` without validation, or (with `held_out`) early stopping on it,
    returning its logits there for the out-of-fold threshold."""
    try:
        return _fit_member(config, data, train, held_out, epochs, label)
    except Diverged as exc:  # the record and the console name the member
        raise Diverged(f"{label}: {exc}") from None


def _fit_member(config: dict[str, Any], data: PairData, train: np.ndarray, held_out: np.ndarray | None,
                epochs: int, label: str) -> dict[str, Any]:
    started = time.time()
    cfg = Config.from_dict(config, source="final model member")
    out: dict[str, Any] = {}
    if held_out is None:
        model = fit(cfg, replace(data, train=train), validate=False, epochs=epochs,
                    on_epoch=print_epochs(f"[{label}] ", epochs)).model
        out["epochs"] = epochs
    else:
        # The held-out fold is this member's validation set as given; val_pairs="all" draws its own pairs from
        # data.val, which no longer describes the fold.
        cfg = cfg.replace(val_pairs="given")
        result = fit(cfg, replace(data, train=train, val=held_out, val_all=None),
                     on_epoch=print_epochs(f"[{label}] ", cfg.max_epochs))
        model = result.model
        images = images_on(resolve_device(cfg), data.images)
        out.update(epochs=len(result.history), best_epoch=result.best_epoch,
                   held_out_logits=predict(model, images, held_out, cfg))
    return {**out, "state": cpu_state(model), "node": ray.get_runtime_context().get_node_id(),
            "started": started, "ended": time.time(), "torch_threads": torch.get_num_threads()}  # what fit ran with


# How the scored model's decision threshold is chosen, one class per way (the policy picks one).

@dataclass(frozen=True)
class ChooseOnVal:
    """The scored model chooses its threshold on the val pairs: `trial` and an ensemble of the search's trials,
    whose members never trained on them."""


@dataclass(frozen=True)
class GivenThreshold:
    """A threshold chosen before scoring: `folds`, on the members' out-of-fold logits."""

    logit: float


@dataclass(frozen=True)
class TrialModelChooses:
    """The threshold the best trial's own model chooses on the val pairs (`retrain`, `seeds`: their members trained
    on those pairs); without a checkpoint that model is refitted on the train part for `epochs` epochs."""

    config: Config
    checkpoint: Any
    epochs: int


ThresholdChoice = ChooseOnVal | GivenThreshold | TrialModelChooses


def _score_task(members: list[tuple[dict[str, Any], dict[str, torch.Tensor]]], data: PairData,
                threshold: ThresholdChoice) -> tuple[dict[str, Any], str]:
    """Test scores of the members' mean logit (one member: itself) at the threshold `threshold` says, and the
    node it ran on. Chosen on val: the test and val scores; else the test scores, with each member's own at that
    threshold (several members) and the best trial's own model's (TrialModelChooses)."""
    configs = [Config.from_dict(values, source="final model member") for values, _ in members]
    models = [rebuilt(config, state) for config, (_, state) in zip(configs, members)]
    model = models[0] if len(models) == 1 else EnsembleNet(models, configs)
    config = configs[0] if len(models) == 1 else model.config
    device = resolve_device(config)
    images = images_on(device, data.images)
    model = model.to(device)
    node = ray.get_runtime_context().get_node_id()
    report: dict[str, Any] = {}
    match threshold:
        case ChooseOnVal():
            scores = val_and_test(model, images, data, config)
            return {"test": scores["test"], "val": scores["val"]}, node
        case GivenThreshold(logit):
            chosen = logit
        case TrialModelChooses(own_config, checkpoint, epochs):
            own = trial_model(checkpoint, own_config)
            if own is None:
                try:
                    own = fit(own_config, data, validate=False, epochs=epochs,
                              on_epoch=print_epochs("[threshold model] ", epochs)).model
                except Diverged as exc:
                    raise Diverged(f"threshold model: {exc}") from None
            own_scores = val_and_test(own.to(device), images, data, own_config)
            chosen = float(own_scores["val"]["threshold_logit"])
            report["searched_model_test"] = own_scores["test"]  # the best trial's own model, for the record
    report["test"] = evaluate(model, images, data.test, config, threshold=chosen, with_roc=True,
                              identity=data.identity)
    if len(models) > 1:  # each member alone at the same threshold: what averaging them gained
        report["members_test"] = [_headline(evaluate(member.to(device), images, data.test, member_config,
                                                     threshold=chosen))
                                  for member, member_config in zip(models, configs)]
    return report, node


def score_members(members: list[tuple[Config, dict[str, torch.Tensor]]], data: Any, threshold: ThresholdChoice,
                  options: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Score models (their configs and CPU weights; several: their mean logit) in one Ray task with `options`'
    resources; returns _score_task's report and node. `data`: the PairData or a reference to it."""
    task = ray.remote(_score_task).options(**options)
    report, node = gathered(task.remote([(config.to_dict(), state) for config, state in members], data, threshold))
    return report, node


def _headline(test: dict[str, Any]) -> dict[str, float]:
    return {key: round(float(test[key]), 4) for key in ("accuracy_at_threshold", "auc") if key in test}


def member_threads(member_options: dict[str, Any]) -> int:
    """The torch threads of each member's fit: as many as the CPUs it holds (more would oversubscribe the cores its
    neighbours use), at least one."""
    return max(1, int(member_options["num_cpus"]))


@dataclass
class FinalModel:
    """What a policy hands back: the model (a SiameseNet, or an EnsembleNet of K), its decision threshold, the
    test scores, and final.json's record of how it was made."""

    model: Any
    configs: list[Config]
    threshold_logit: float
    scores: dict[str, Any]
    record: dict[str, Any]


def build_final_model(policy: str, size: int, config: Config, epochs: int, data: PairData, checkpoint: Any,
                      options: dict[str, Any], member_options: dict[str, Any]) -> FinalModel:
    """Fit the policy's members as Ray tasks (member_options: each one's share of a retrain's resources), then
    score them in one task (options: the retrain's resources). `epochs`: the best trial's best epoch (retrain,
    seeds)."""
    data_ref = ray.put(data)
    started = time.time()
    if policy == "trial":
        if checkpoint is None:
            raise InputError("option --final trial: the best trial left no checkpoint to hand back")
        state = cpu_state(trial_model(checkpoint, config))
        scores, _ = score_members([(config, state)], data_ref, ChooseOnVal(), options)
        record = {"policy": policy, "size": 1, "members": [{"from": "best trial's own model"}]}
        return FinalModel(rebuilt(config, state), [config], float(scores["test"]["threshold_logit"]), scores,
                          {**record, "wall_seconds": round(time.time() - started, 1)})
    fit_member = ray.remote(_member_task).options(**member_options)
    config = config.replace(threads=member_threads(member_options))
    trainval = np.concatenate([data.train, data.val])
    folds: list[np.ndarray] = []
    if policy == "folds":
        folds = identity_folds(trainval, data.identity, size, config.seed)
        configs = [config.replace(seed=config.seed + k) for k in range(size)]
        futures = [fit_member.remote(c.to_dict(), data_ref, trainval[np.concatenate(folds[:k] + folds[k + 1:])],
                                     trainval[folds[k]], epochs, f"fold {k + 1}/{size}")
                   for k, c in enumerate(configs)]
    else:  # retrain (one member) and seeds
        configs = [config.replace(seed=config.seed + k) for k in range(size)]
        label = "retrain" if policy == "retrain" else "seed {}/{}"
        futures = [fit_member.remote(c.to_dict(), data_ref, trainval, None, epochs, label.format(k + 1, size))
                   for k, c in enumerate(configs)]
    fitted = gathered(futures)  # a member that diverged: Diverged, naming it (hand_back_final records it)
    threshold: ThresholdChoice = TrialModelChooses(config, checkpoint, epochs)
    if policy == "folds":
        labels = np.concatenate([trainval[fold, 2] for fold in folds])
        out_of_fold = np.concatenate([f["held_out_logits"] for f in fitted])
        threshold = GivenThreshold(best_threshold(labels, out_of_fold))
    scores, _ = score_members([(c, f["state"]) for c, f in zip(configs, fitted)], data_ref, threshold, options)
    members_test = scores.pop("members_test", [{}] * size)
    models = [rebuilt(c, f["state"]) for c, f in zip(configs, fitted)]
    model = models[0] if size == 1 else EnsembleNet(models, configs)
    record = {"policy": policy, "size": size, "wall_seconds": round(time.time() - started, 1),
              "torch_threads": fitted[0]["torch_threads"],  # each member's fit ran with as many
              "members": [{"seed": c.seed, "epochs": f["epochs"], "node": f["node"],
                           "started": f["started"], "ended": f["ended"], "torch_threads": f["torch_threads"],
                           **({"best_epoch": f["best_epoch"], "fold_pairs": len(folds[k])} if folds else {}),
                           **({"test": members_test[k]} if members_test[k] else {})}
                          for k, (c, f) in enumerate(zip(configs, fitted))]}
    return FinalModel(model, configs, float(scores["test"]["threshold_logit"]), scores, record)

"""The Ray Tune function trainable around the training core (engine.fit): it reads only its config, gets the data
once through Ray's object store, reports every epoch with a checkpoint (and the torch thread count it ran with), and
ends a diverged run with a finite stand-in loss above every usable one (names.DIVERGED_LOSS)."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tune_siamese.artifacts.checkpoint import load_checkpoint, save_checkpoint
from tune_siamese.core.config import Config
from tune_siamese.core.names import (
    BEST_VAL_LOSS,
    DIVERGED_LOSS,
    STATE_FILE,
    VAL_LOSS,
    VAL_LOSS_AVG3,
)
from tune_siamese.data import PairData
from tune_siamese.searching.objectives import model_costs
from tune_siamese.searching.settings import SearchSettings
from tune_siamese.training.engine import Diverged, fit
from tune_siamese.training.model import build_model

LIVE_TABLE_METRICS = (VAL_LOSS, BEST_VAL_LOSS, "val_auc", "val_accuracy")


def train_siamese(config: dict[str, Any], data: PairData, objectives: tuple[str, ...] = ()) -> None:
    """Ray Tune function trainable: fit one configuration, report every epoch, resume from a checkpoint.
    `objectives`: the costs a multi-objective search also minimises (searching.objectives), reported with every
    epoch."""
    cfg = Config.from_dict(config, source="trial config")
    costs = model_costs(build_model(cfg), cfg, list(objectives)) if objectives else {}
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / STATE_FILE)

    # The val losses so far (a resumed trial's from its checkpoint), for the moving average ASHA may judge by.
    val_losses = [epoch[VAL_LOSS] for epoch in resume["history"]] if resume is not None else []
    node = ray.get_runtime_context().get_node_id()
    # One line per trial per epoch saying a checkpoint was written buries the console; failures still log.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)

    def on_epoch(metrics: dict[str, Any], state: Any) -> None:
        # A checkpoint every epoch (Tune keeps only the newest), so a killed worker loses one epoch at most.
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state(), Path(folder) / STATE_FILE)
            # Tune's live table shows the first few metrics of a report: the ones the search ranks by first.
            shown = {key: metrics[key] for key in LIVE_TABLE_METRICS if key in metrics}
            val_losses.append(metrics[VAL_LOSS])
            average = sum(val_losses[-3:]) / len(val_losses[-3:])
            tune.report({**shown, **metrics, VAL_LOSS_AVG3: average, "node_id": node, **costs},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        fit(cfg, data, on_epoch=on_epoch, resume=resume)
    except Diverged as exc:
        # End cleanly with a bad-but-finite loss so the searcher learns "this region diverges".
        tune.report({VAL_LOSS: DIVERGED_LOSS, BEST_VAL_LOSS: DIVERGED_LOSS, VAL_LOSS_AVG3: DIVERGED_LOSS,
                     "val_accuracy": 0.5, "val_auc": 0.5, "diverged": 1,
                     "diverged_reason": str(exc), "torch_threads": torch.get_num_threads(), **costs})


def build_trainable(settings: SearchSettings, data: PairData) -> Any:
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    trainable = tune.with_parameters(train_siamese, data=data, objectives=tuple(settings.objectives[1:]))
    return tune.with_resources(trainable, resources)

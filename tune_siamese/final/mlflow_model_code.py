"""The MLflow model `pair_scorer` as code (MLflow's "models from code"): mlflow_record.log_pair_model stores this file
with the model, and loading the model runs it, then reads the export (safetensors and JSON, artifacts.checkpoint):
nothing is unpickled. It needs tune-siamese where the model is loaded."""
from __future__ import annotations

from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd


class PairScorer(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    """predict takes a DataFrame with columns image_a and image_b (image paths) and returns the probability that
    each pair shows the same person, as `verify` and ts.load do."""

    def load_context(self, context: Any) -> None:
        from tune_siamese.artifacts.verifier import FaceVerifier

        self.verifier = FaceVerifier(context.artifacts["export"])

    # The DataFrame hint: MLflow checks the input against the logged signature, and says nothing of the hint (a
    # list[...] hint would have it convert the input; none at all, or Any, and it warns on every load).
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[float]:
        return [self.verifier.score(a, b) for a, b in zip(model_input["image_a"], model_input["image_b"])]


mlflow.models.set_model(PairScorer())

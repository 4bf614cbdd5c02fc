"""tune-siamese: distributed hyperparameter search for Koch-style Siamese networks on face verification.

    import tune_siamese as ts
    result = ts.search(data="../shared/data/lfw-a", space="best", name="lfw")   # help(ts.search): the options
    result.best_params, result.test["auc"], result.analysis.trials
    ts.load(result.experiment).score_pairs([("a.jpg", "b.jpg")])

The layers, each importing only those before it: `core` (Config, errors, names, storage), `data`, `training` (pure
PyTorch), `artifacts` (checkpoints, exports, the verifier), `searching` (the thin Ray and Optuna layer), `final`
(the model handed back), `app` (the API and the command lines); docs/layout.md draws them.
Importing the package loads neither torch nor Ray: `search`, `load` and FaceVerifier do, when used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tune_siamese import _legacy
from tune_siamese.app.api import SearchResult, finalize, load, resume, search
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError, SearchInterrupted

if TYPE_CHECKING:
    from tune_siamese.artifacts.verifier import FaceVerifier

_legacy.install(__name__)  # experiments written by earlier versions name moved modules in their saved state

__all__ = ["Config", "FaceVerifier", "InputError", "SearchInterrupted", "SearchResult", "finalize", "load", "resume",
           "search"]
__version__ = "0.5.0"


def __getattr__(name: str) -> Any:
    if name == "FaceVerifier":  # imports torch: only when asked for
        from tune_siamese.artifacts.verifier import FaceVerifier

        return FaceVerifier
    raise AttributeError(f"module 'tune_siamese' has no attribute {name!r}")

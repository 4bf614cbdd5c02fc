"""tune-siamese: distributed hyperparameter search for Koch-style Siamese networks on face verification.

    import tune_siamese as ts
    result = ts.search(data="../shared/data/lfw-a", space="best", name="lfw")   # run_search.py's options
    ts.load(result.export).score("a.jpg", "b.jpg")

The layers, each importing only those before it: `core` (Config, errors, names, storage), `data`, `training` (pure
PyTorch), `artifacts` (checkpoints, exports, the verifier), `searching` (the thin Ray and Optuna layer), `final`
(the model handed back), `app` (the API and the command lines); docs/layout.md draws them.
Importing the package loads neither torch nor Ray: `search` and `load` do, when called.
"""
from tune_siamese import _legacy
from tune_siamese.app.api import SearchResult, load, search
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError

_legacy.install(__name__)  # experiments written by earlier versions name moved modules in their saved state

__all__ = ["Config", "InputError", "SearchResult", "load", "search"]
__version__ = "0.2.0"

"""tune-siamese: distributed hyperparameter search for Koch-style Siamese networks on face verification.

    import tune_siamese as ts
    result = ts.search(data="../shared/data/lfw-a", space="best", name="lfw")   # run_search.py's options
    ts.load(result.export).score("a.jpg", "b.jpg")

The core (config, data, model, engine, checkpoint) is pure PyTorch; `tune_siamese.tuning` is the thin Ray layer
(the trainable and the Tuner).
Importing the package loads neither torch nor Ray: `search` and `load` do, when called.
"""
import sys
import types

from .api import SearchResult, load, search
from .config import Config
from .errors import InputError


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package. Experiments saved before the Ray layer was
    renamed tuning.py unpickle through the submodule `tune_siamese.search` (an alias of it): that must not
    replace the API function `tune_siamese.search`."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "search" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["Config", "InputError", "SearchResult", "load", "search"]
__version__ = "0.1.0"

"""tune-siamese: distributed hyperparameter search for Koch-style Siamese networks on face verification.

    import tune_siamese as ts
    result = ts.search(data="../shared/data/lfw-a", space="best", name="lfw")   # run_search.py's options
    ts.load(result.export).score("a.jpg", "b.jpg")

The core (config, data, model, engine, checkpoint) is pure PyTorch; `tune_siamese.tuning` is the thin Ray layer
(the trainable and the Tuner).
Importing the package loads neither torch nor Ray: `search` and `load` do, when called.
"""
from .api import SearchResult, load, search
from .config import Config
from .errors import InputError

__all__ = ["Config", "InputError", "SearchResult", "load", "search"]
__version__ = "0.1.0"

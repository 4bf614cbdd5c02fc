"""tune-siamese: distributed hyperparameter search for Koch-style Siamese networks on face verification.

The core (config, data, model, engine, checkpoint) is pure PyTorch; `tune_siamese.search` is the thin Ray layer.
"""
from .config import Config
from .errors import InputError

__all__ = ["Config", "InputError"]
__version__ = "0.1.0"

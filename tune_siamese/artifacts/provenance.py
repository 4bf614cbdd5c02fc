"""What a model was trained on, said where it matters: a model trained on the synthetic faces (the offline
default) is a demonstration of the pipeline, and its answers on photographs mean nothing."""
from __future__ import annotations

SYNTHETIC = "synthetic"
REAL_DATA_COMMAND = "python run_search.py --data ../shared/data/lfw-a --space best"


def demonstration_note() -> str:
    return (f"This model was trained on the synthetic faces: a demonstration of the pipeline, not a face verifier. "
            f"For real faces: {REAL_DATA_COMMAND}")


def mismatch_warning(trained_on: str, images_from: str) -> str | None:
    """A warning when a model trained on the synthetic faces meets other images (None: nothing to say)."""
    if trained_on != SYNTHETIC or images_from == SYNTHETIC:
        return None
    return (f"WARNING: this model was trained on the synthetic faces (a demonstration), not on photographs; its "
            f"scores on {images_from} mean nothing. Train on real data: {REAL_DATA_COMMAND}")

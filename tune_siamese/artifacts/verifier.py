"""Two face images in, the probability that they show the same person out: what `tune-siamese verify` prints and
what `ts.load(EXPORT)` hands a notebook. Decoding (PIL, the config's crop and size) and the Verifier module are
the export's own, so both agree with the exported verifier.pt2 to float precision."""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from tune_siamese import data as data_mod
from tune_siamese.artifacts.checkpoint import LoadedModel, load
from tune_siamese.artifacts.people import TrainedPeople
from tune_siamese.artifacts.pipeline import Verifier
from tune_siamese.artifacts.provenance import mismatch_warning
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.training.metrics import best_threshold
from tune_siamese.training.scoring import images_on, validation_logits


def threshold_and_people(loaded: LoadedModel, config: Config, device: torch.device, source: str
                         ) -> tuple[float, TrainedPeople | None, dict[str, Any]]:
    """The decision threshold, whom the model trained on, and what the JSON should say about either. A search
    trial's state holds its best epoch's weights but no threshold: it is chosen on the trial's own validation
    pairs (which that model never trained on), as the search does for a trial's own model."""
    if loaded.threshold is not None:
        return loaded.threshold, loaded.trained_people, {}
    try:
        data = data_mod.load_data(config)
    except InputError as exc:
        raise InputError(f"a search trial's state holds no decision threshold, and choosing it on the trial's "
                         f"validation pairs needs the trial's data ({exc})", source) from None
    labels, logits, balanced = validation_logits(loaded.model.to(device), images_on(device, data.images), data,
                                                 config)
    threshold = best_threshold(labels, logits, balanced)
    print(f"note: {source}: a search trial's state: scoring its best epoch ({loaded.best_epoch}) at the decision "
          f"threshold chosen on its validation pairs ({threshold:.4g})", file=sys.stderr)
    return (threshold, TrainedPeople.of(data.training_people),
            {"best_epoch": loaded.best_epoch, "threshold_from": "validation pairs"})


class FaceVerifier:
    """A model from an export folder, a storage URI or a checkpoint file, on the CPU, with its threshold."""

    def __init__(self, source: str | Path):
        loaded = load(source)
        self.source = str(source)
        self.config = loaded.config.replace(device="cpu")
        self.threshold_logit, self.trained_people, _ = threshold_and_people(loaded, self.config, torch.device("cpu"),
                                                                            self.source)
        self._verifier = Verifier(loaded.model.eval(), self.config)
        # what it scores are image files, photographs: say so once if the model never saw one
        self.warning = mismatch_warning(self.config.data, "image files")
        if self.warning:
            warnings.warn(self.warning.removeprefix("WARNING: "), UserWarning, stacklevel=2)

    def __repr__(self) -> str:
        return f"FaceVerifier({self.source!r}, threshold_logit={self.threshold_logit:.4g})"

    def _decoded(self, image: str | Path) -> torch.Tensor:
        path = Path(image)
        if path.is_dir():
            raise InputError("is a folder, not an image", path)
        if not path.is_file():
            raise InputError("image not found", path)
        return torch.tensor(data_mod.decode_image(path, self.config.image_size, self.config.crop)).unsqueeze(0)

    def logit(self, image_a: str | Path, image_b: str | Path) -> float:
        # fp32 on purpose (not the bf16 autocast of batch scoring): one pair costs nothing, and verifier.pt2,
        # which runs the same Verifier, then agrees with this to float precision.
        a, b = self._decoded(image_a), self._decoded(image_b)
        with torch.no_grad():
            return float(self._verifier(a, b)[0])

    def score(self, image_a: str | Path, image_b: str | Path) -> float:
        """The probability that the two images show the same person."""
        return 1.0 / (1.0 + math.exp(-self.logit(image_a, image_b)))

    def verify(self, image_a: str | Path, image_b: str | Path) -> dict[str, Any]:
        """What `tune-siamese verify` prints: the probability, the logit, the threshold and the decision."""
        logit = self.logit(image_a, image_b)
        return {"probability_same": 1.0 / (1.0 + math.exp(-logit)), "logit": logit,
                "threshold_logit": self.threshold_logit, "same_person": logit >= self.threshold_logit}

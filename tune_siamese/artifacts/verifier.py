"""Face images in, the probability that two show the same person out: what `tune-siamese verify` prints and what
`ts.load(EXPORT)` hands a notebook, pair by pair or in batches, plus embeddings and Koch's one-shot identification.
Decoding (the data layer's, for every image kind) and the Verifier module are the export's own, so all of these
agree with the exported verifier.pt2 to float precision."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Iterable, Sequence, cast

import numpy as np
import torch

from tune_siamese import data as data_mod
from tune_siamese.artifacts.checkpoint import LoadedModel, experiment_export, load
from tune_siamese.artifacts.image_inputs import ImageLike, decode, described, image_list
from tune_siamese.artifacts.people import TrainedPeople
from tune_siamese.artifacts.pipeline import Verifier
from tune_siamese.artifacts.provenance import mismatch_warning
from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.training.metrics import best_threshold
from tune_siamese.training.model import EnsembleNet, SiameseNet
from tune_siamese.training.preprocess import center_crop, in_layout, resize
from tune_siamese.training.scoring import images_on, validation_logits

_PAIR_ROWS = 2 ** 22  # floats of pair differences held at once when scoring a probe against a whole gallery


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
    """A model from an export folder, an experiment folder (its export), a storage URI or a checkpoint file, on
    the CPU, with its decision threshold. All in float32: the batch methods (`score_pairs`, `embed`, `similarity`,
    `identify`) embed each distinct image once and agree with `score` pair by pair to float precision.

    An image (`ImageLike`) is a path, a PIL image, or a NumPy array / torch tensor of H x W (grayscale) or
    H x W x 3 (RGB) pixels, uint8 0..255 or floats in [0, 1] (a tensor also channels first, [1 or 3, H, W], as
    torchvision's ToTensor gives). Each is decoded as the data layer decodes a file (EXIF orientation, of a PIL
    image too; grayscale; the config's central crop; Lanczos resize), so a file, the PIL image opened from it and
    its pixels as an array score alike.

    Attributes:
        source, config: what was loaded, as given; the model's Config (device "cpu").
        threshold_logit: the decision threshold, as a logit (`verify` says "same person" at or above it).
        trained_people: whom the model trained or was selected on (salted digests), None if not recorded.
        embedding_size: the width of `embed`'s rows.
        warning: a warning line when the model was trained on the synthetic faces, else None.
    Example:
        verifier = FaceVerifier("results/lfw/export")   # or ts.load("results/lfw")
        verifier.score("a.jpg", "b.jpg")                 # 0.93
        verifier.score_pairs([("a.jpg", "b.jpg"), ("a.jpg", "c.jpg")])
    """

    def __init__(self, source: str | os.PathLike[str]):
        """Load `source`: an export folder (single or ensemble), an experiment folder (its export/), a storage
        URI of either, or a checkpoint file (`tune-siamese train`'s checkpoint.pt, a trial's state.pt).

        Raises:
            InputError: nothing loadable there (one line naming the file), or an experiment without an export.
        """
        self.source = os.fspath(source)
        loaded = load(experiment_export(self.source))
        self.config = loaded.config.replace(device="cpu")
        self.threshold_logit, self.trained_people, _ = threshold_and_people(loaded, self.config, torch.device("cpu"),
                                                                            self.source)
        model = loaded.model.eval()
        self._verifier = Verifier(model, self.config)
        # Embedding branches: one net, or each member of an ensemble with the input it sees (its zoom, size, layout)
        self._members: list[tuple[SiameseNet, Config | None]] = (
            [(cast(SiameseNet, member), config) for member, config in zip(model.members, model.configs)]
            if isinstance(model, EnsembleNet) else [(model, None)])
        # The columns of an embedding: each branch's, for the image and then (tta_flip) for its mirror image
        self._views = 2 if self.config.tta_flip else 1
        self._widths = [member.embed_dim for member, _ in self._members] * self._views
        self.embedding_size = sum(self._widths)
        self.warning = mismatch_warning(self.config.data, "image files")  # photographs: said once if never seen
        if self.warning:
            warnings.warn(self.warning.removeprefix("WARNING: "), UserWarning, stacklevel=2)

    def __repr__(self) -> str:
        people = ("people not recorded" if self.trained_people is None
                  else f"trained on {len(self.trained_people.digests)} people")
        ensemble = f", ensemble of {len(self._members)}" if len(self._members) > 1 else ""
        return (f"FaceVerifier({self.source!r}, threshold={_probabilities(np.array([self.threshold_logit]))[0]:.3g}, "
                f"image_size={self.config.image_size}{ensemble}, {people})")

    def logit(self, image_a: ImageLike, image_b: ImageLike) -> float:
        """The model's logit that the two images show the same person (> threshold_logit: same).

        Args:
            image_a, image_b: the two images, each of any kind the class takes (a path, a PIL image, ...).
        Returns:
            The logit in float32 (not training's bf16), as verifier.pt2 computes it (with tta_flip's averaging).
        Raises:
            InputError: an image is missing, unreadable or not an image (one line naming image_a or image_b).
        Example:
            verifier.logit("a.jpg", PIL.Image.open("b.jpg"))
        """
        decoded = torch.from_numpy(self._decode([image_a, image_b], ["image_a", "image_b"]))
        with torch.no_grad():
            return float(self._verifier(decoded[:1], decoded[1:])[0])

    def score(self, image_a: ImageLike, image_b: ImageLike) -> float:
        """The probability that the two images show the same person.

        Args:
            image_a, image_b: the two images, each of any kind the class takes (a path, a PIL image, ...).
        Returns:
            The probability, in [0, 1] (the sigmoid of `logit`).
        Raises:
            InputError: an image is missing, unreadable or not an image (one line naming image_a or image_b).
        Example:
            verifier.score("a.jpg", "b.jpg")   # 0.93
        """
        return float(_probabilities(np.array([self.logit(image_a, image_b)]))[0])

    def verify(self, image_a: ImageLike, image_b: ImageLike) -> dict[str, Any]:
        """What `tune-siamese verify` prints: the probability, the logit, the threshold and the decision.

        Args:
            image_a, image_b: the two images, each of any kind the class takes (a path, a PIL image, ...).
        Returns:
            {"probability_same": float, "logit": float, "threshold_logit": float, "same_person": bool}.
        Raises:
            InputError: an image is missing, unreadable or not an image (one line naming image_a or image_b).
        Example:
            verifier.verify("a.jpg", "b.jpg")["same_person"]   # True
        """
        logit = self.logit(image_a, image_b)
        return {"probability_same": float(_probabilities(np.array([logit]))[0]), "logit": logit,
                "threshold_logit": self.threshold_logit, "same_person": logit >= self.threshold_logit}

    def embed(self, images: Sequence[ImageLike], batch_size: int = 64) -> np.ndarray:
        """Each image's embedding, computed once, for `similarity` and `identify`. The columns are the twin
        network's embedding; with tta_flip the mirror image's follows (the score averages both); an ensemble's
        members' sit side by side. The model's head compares two rows, not a plain distance: use `similarity`.

        Args:
            images: a list (any iterable) of images; see the class. One image: [image].
            batch_size: images run through the network at once.
        Returns:
            float32 array [len(images), embedding_size].
        Raises:
            InputError: an image missing, unreadable or no image (one line naming images[i]); a bad batch_size.
        Example:
            gallery = verifier.embed(["ann.jpg", "bob.jpg", "cy.jpg"])   # shape (3, embedding_size)
            verifier.identify(["who.jpg"], gallery)                        # array([1])
        """
        listed = image_list(images, "images")
        distinct, index = self._embedded(listed, [f"images[{k}]" for k in range(len(listed))], _batch(batch_size))
        return distinct[index].numpy()

    def score_pairs(self, pairs: Iterable[tuple[ImageLike, ImageLike]], batch_size: int = 64) -> np.ndarray:
        """`score` for many pairs, faster: each distinct image (a path, or an object) is embedded once, in batches.

        Args:
            pairs: a list (any iterable) of (image_a, image_b); images as in the class, kinds may be mixed.
            batch_size: images run through the network at once.
        Returns:
            float64 array [len(pairs)]: what `score` returns for each pair, to float precision.
        Raises:
            InputError: a pair not two images, an image missing, unreadable or no image (naming pairs[i][j]).
        Example:
            verifier.score_pairs([("a.jpg", "b.jpg"), ("a.jpg", "c.jpg")])   # array([0.93, 0.08])
        """
        flat: list[Any] = []
        for k, pair in enumerate(image_list(pairs, "pairs")):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InputError(f"pairs[{k}]: must be a pair (image_a, image_b), not {described(pair)}")
            flat += pair
        batch = _batch(batch_size)
        distinct, index = self._embedded(flat, [f"pairs[{k // 2}][{k % 2}]" for k in range(len(flat))], batch)
        logits = [self._pair_logits(distinct[index[start:start + 2 * batch:2]],  # flat rows 2k, 2k + 1: pair k
                                    distinct[index[start + 1:start + 2 * batch:2]])
                  for start in range(0, len(flat), 2 * batch)]
        return _probabilities(torch.cat(logits).numpy() if logits else np.zeros(0))

    def similarity(self, probes: Sequence[ImageLike] | np.ndarray, gallery: Sequence[ImageLike] | np.ndarray,
                   batch_size: int = 64) -> np.ndarray:
        """The probability that probe i and gallery image j show the same person, for every i and j.

        Args:
            probes: a list of images, or their embeddings from `embed` (a NumPy array here is always embeddings).
            gallery: the same, for the images to compare with.
            batch_size: images run through the network at once.
        Returns:
            float64 array [len(probes), len(gallery)].
        Raises:
            InputError: a bad image (naming probes[i] or gallery[j]), or embeddings of the wrong shape.
        Example:
            verifier.similarity(["who.jpg"], ["ann.jpg", "bob.jpg"])   # array([[0.12, 0.91]])
        """
        return _probabilities(self._logit_matrix(probes, gallery, _batch(batch_size)).numpy())

    def identify(self, probes: Sequence[ImageLike] | np.ndarray, gallery: Sequence[ImageLike] | np.ndarray,
                 labels: Sequence[Any] | None = None, batch_size: int = 64) -> np.ndarray | list[Any]:
        """N-way one-shot identification (Koch et al.'s task): each probe goes to the gallery image (one per
        person) it scores highest with, however poor (no threshold: `similarity` tells how good).

        Args:
            probes, gallery: lists of images, or their embeddings from `embed`; one gallery image per person.
            labels: the gallery's labels (e.g. names), one per gallery image; None: return indices.
            batch_size: images run through the network at once.
        Returns:
            An int64 array [len(probes)] of gallery indices; with labels, a list of those images' labels.
        Raises:
            InputError: as `similarity`, an empty gallery, or labels not one per gallery image.
        Example:
            verifier.identify(["who.jpg"], ["ann.jpg", "bob.jpg"], labels=["Ann", "Bob"])   # ["Bob"]
        """
        logits = self._logit_matrix(probes, gallery, _batch(batch_size))
        if logits.shape[1] == 0:
            raise InputError("gallery: no images to identify the probes among")
        if labels is not None and len(labels) != logits.shape[1]:
            raise InputError(f"labels: {len(labels)} label(s) for {logits.shape[1]} gallery image(s); give one each")
        best = logits.argmax(dim=1).numpy() if logits.shape[0] else np.zeros(0, dtype=np.int64)
        return best if labels is None else [labels[int(k)] for k in best]

    def _logit_matrix(self, probes: Any, gallery: Any, batch: int) -> torch.Tensor:
        """Logits [P, G] of every probe against every gallery image, a few probes at a time."""
        p, g = self._rows(probes, "probes", batch), self._rows(gallery, "gallery", batch)
        if len(g) == 0:
            return torch.zeros(len(p), 0)
        per_chunk = max(1, _PAIR_ROWS // (len(g) * self.embedding_size))
        rows = [self._pair_logits(chunk.repeat_interleave(len(g), dim=0), g.repeat(len(chunk), 1)).view(-1, len(g))
                for chunk in p.split(per_chunk)]
        return torch.cat(rows) if rows else torch.zeros(0, len(g))

    def _rows(self, given: Any, name: str, batch: int) -> torch.Tensor:
        """Embeddings [N, embedding_size] of a list of images, or `embed`'s array as given."""
        if isinstance(given, np.ndarray):
            if given.ndim != 2 or given.shape[1] != self.embedding_size or not np.issubdtype(given.dtype, np.floating):
                raise InputError(f"{name}: a NumPy array is taken as embed()'s [N, {self.embedding_size}] floats; "
                                 f"this one is {given.dtype} {given.shape} (give images as a list)")
            if not np.isfinite(given).all():
                raise InputError(f"{name}: embeddings with non-finite values")
            return torch.from_numpy(np.ascontiguousarray(given, dtype=np.float32))
        listed = image_list(given, name)
        distinct, index = self._embedded(listed, [f"{name}[{k}]" for k in range(len(listed))], batch)
        return distinct[index]

    def _embedded(self, images: list[Any], wheres: list[str], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings of the distinct images, each image's row there); distinct: by path, or by object."""
        keys = [os.path.abspath(im) if isinstance(im, (str, os.PathLike)) else id(im) for im in images]
        first: dict[Any, int] = {}  # each distinct image's first place in `images`, in order
        for k, key in enumerate(keys):
            first.setdefault(key, k)
        rows = {key: row for row, key in enumerate(first)}
        decoded = self._decode([images[k] for k in first.values()], [wheres[k] for k in first.values()])
        with torch.no_grad():
            chunks = [self._embedding(torch.from_numpy(decoded[start:start + batch]))
                      for start in range(0, len(decoded), batch)]
        distinct = torch.cat(chunks) if chunks else torch.zeros(0, self.embedding_size)
        return distinct, torch.tensor([rows[key] for key in keys], dtype=torch.long)

    def _embedding(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [N, S, S] to embeddings [N, embedding_size] of the input the Verifier gives the model (an
        ensemble's members: each its own crop, size and layout, as EnsembleNet's), then (tta_flip) of its mirror."""
        plain = self._verifier._input(images)
        parts = []
        for view in (plain, plain.flip(-1))[:self._views]:
            for member, config in self._members:
                x = view if config is None else in_layout(resize(center_crop(view, config.zoom),
                                                                 config.model_input_size), config)
                parts.append(member.embed(x).float())
        return torch.cat(parts, dim=1)

    def _pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits [N] of embedding rows a[i], b[i]: as Verifier(EnsembleNet) / Verifier(SiameseNet) compute them."""
        parts_a, parts_b, n = a.split(self._widths, dim=1), b.split(self._widths, dim=1), len(self._members)
        with torch.no_grad():  # the mean over one member is that member's logit, exactly
            per_view = [torch.stack([member.score(parts_a[view * n + k], parts_b[view * n + k]).float()
                                     for k, (member, _) in enumerate(self._members)]).mean(0)
                        for view in range(self._views)]
        return per_view[0] if self._views == 1 else 0.5 * (per_view[0] + per_view[1])

    def _decode(self, images: list[Any], wheres: list[str]) -> np.ndarray:
        """uint8 [N, S, S] at this model's size and crop, as data.decode_image gives for a file."""
        return decode(images, wheres, self.config.image_size, self.config.crop)


def _batch(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be a whole number >= 1")
    return batch_size


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid in float64 without overflow for any logit."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


"""Any identity-folder dataset (ROOT/<identity>/<image>): seeded, balanced pairs inside identity groups that
never overlap between train, validation and test."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.data.images import (
    CACHE_VERSION,
    IMAGE_EXTENSIONS,
    cached,
    content_key,
    decode_images,
    file_bytes,
    odd_name,
)
from tune_siamese.data.pairs import RawData, pairs_from_identities


def identity_folder_files(root: Path) -> dict[str, list[Path]]:
    """ROOT/<identity>/<image>: the image files of each identity folder that holds any, sorted by name."""
    if not root.is_dir():
        raise InputError("data folder not found", root)
    found: dict[str, list[Path]] = {}
    try:
        for person in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(f for f in person.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if files:
                for entry in (person, *files):
                    if odd_name(entry.name):  # it would break the cache key, messages and exports downstream
                        raise InputError(f"name {os.fsencode(entry.name)!r} is not UTF-8 text or holds control "
                                         f"characters; rename it", entry.parent)
                found[person.name] = files
    except OSError as exc:
        raise InputError(f"cannot list the folder ({exc.strerror or exc})", exc.filename or root) from None
    usable = sum(1 for files in found.values() if len(files) >= 2)
    if usable < 3 or len(found) < 4:
        raise InputError(f"identity folder needs at least 4 identities (sub-folders with {', '.join(IMAGE_EXTENSIONS)} "
                         f"images), 3 of them with 2+ images; found {len(found)} identities, {usable} with 2+",
                         root)
    return found


def load_identity_folder(root: Path, config: Config) -> RawData:
    files = identity_folder_files(root)
    names = list(files)
    paths = [p for name in names for p in files[name]]
    identity = np.array([i for i, name in enumerate(names) for _ in files[name]], dtype=np.int32)
    key = "idf-" + content_key([f"idf v{CACHE_VERSION} {config.image_size} {config.crop}", *file_bytes(paths)])
    arrays = cached(key, lambda: {"images": decode_images(paths, config.image_size, config.crop)})
    n_pairs = config.drawn_pairs or int(min(6000, max(40, 2 * len(paths))))
    try:
        return pairs_from_identities(arrays["images"], identity, names, config, n_pairs, test_share=0.2,
                          info={"source": f"identity folder {root}"})
    except InputError as exc:  # a train/val/test identity group came out too small: say where and why
        raise InputError(f"{exc} in one of the train/val/test identity groups that {len(names)} identities "
                         f"split into (val_fraction={config.val_fraction}); add identities", root) from None

"""Data layer: every source becomes one compact, cached `PairData`.

Images are decoded once into a single uint8 array (N x S x S, grayscale); pairs are int64 rows
(image a, image b, label). This form is what Ray shares with trials, so no trial ever decodes an image.
One module per question: `images` (decoding and the cache), `pairs` (the compact form, splits, mining),
and one per source: `lfw` (pair lists, torchvision's download), `folders` (identity folders), `synthetic`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError
from tune_siamese.data.folders import identity_folder_files, load_identity_folder
from tune_siamese.data.images import IMAGE_EXTENSIONS, cache_dir, decode_image, decode_images, odd_name
from tune_siamese.data.lfw import (
    PairLine,
    default_lfw_root,
    find_pair_lists,
    index_pair_images,
    lfw_image_dir,
    lfw_image_path,
    load_lfw_folder,
    load_torchvision_lfw,
    pair_rows,
    parse_pair_list,
)
from tune_siamese.data.pairs import (
    DIFFERENT_PER_SAME,
    PairData,
    PairMiner,
    PairOrigin,
    RawData,
    all_validation_pairs,
    balanced_pairs,
    drop_repeated_pairs,
    identity_overlap,
    refuse_repeated_pairs,
    split_for_all_pairs,
    split_validation,
)
from tune_siamese.data.synthetic import load_synthetic, render_synthetic

__all__ = ["DIFFERENT_PER_SAME", "IMAGE_EXTENSIONS", "PairData", "PairLine", "PairMiner", "PairOrigin", "RawData",
           "all_validation_pairs", "balanced_pairs", "cache_dir",
           "decode_image", "decode_images", "default_lfw_root", "describe", "drop_repeated_pairs", "find_pair_lists",
           "identity_folder_files", "identity_overlap", "index_pair_images", "lfw_image_dir", "lfw_image_path",
           "load_data", "load_identity_folder", "load_lfw_folder", "load_raw", "load_synthetic",
           "load_torchvision_lfw", "odd_name", "pair_rows", "parse_pair_list", "refuse_repeated_pairs",
           "render_synthetic", "split_for_all_pairs", "split_validation"]


def load_raw(config: Config) -> RawData:
    source = config.data
    if source == "synthetic":
        return load_synthetic(config)
    if source == "lfw":
        refuse_drawn_pairs(config, "'lfw'")
        return load_torchvision_lfw(cache_dir() / "torchvision", config)
    root = Path(source).expanduser()
    if not root.exists():
        raise InputError("data folder not found (give a folder, 'synthetic' or 'lfw')", root)
    if not root.is_dir():
        raise InputError("data path is not a folder", root)
    if find_pair_lists(root) is not None:
        refuse_drawn_pairs(config, str(root))
        return load_lfw_folder(root, config)
    return load_identity_folder(root, config)


def refuse_drawn_pairs(config: Config, source: str) -> None:
    """Pair lists fix the pairs: a drawn_pairs count would be ignored, so it is refused."""
    if config.drawn_pairs:
        raise InputError(f"drawn_pairs={config.drawn_pairs}: {source} has pair lists, which fix the pairs; "
                         "drawn_pairs is for the synthetic faces and identity folders")


def load_data(config: Config) -> PairData:
    """Load (from cache when possible) and split into train / val / test pairs. Every source passes the same
    check: self-pairs and duplicates are refused in the test (and given validation) pairs and dropped, with a
    warning, from the training pairs before they are split."""
    raw = load_raw(config)
    refuse_repeated_pairs(raw.test, "test", raw.origin("test"))
    if raw.val is not None:
        refuse_repeated_pairs(raw.val, "validation", raw.origin("val"))
    trainval, repeated = drop_repeated_pairs(raw.trainval, "training", raw.origin("trainval"))
    if raw.val is not None:
        train, val, dropped = trainval, raw.val, 0
    else:
        rng = np.random.default_rng(config.data_seed + 2)
        if config.val_pairs == "all":
            train, val, dropped = split_for_all_pairs(trainval, raw.identity, config.val_fraction, rng)
        else:
            train, val, dropped = split_validation(trainval, raw.identity, config.val_fraction, config.val_split, rng)
    info = {**raw.info, "dropped_pairs": dropped, "repeated_pairs_dropped": repeated, "val_split": config.val_split}
    data = PairData(raw.images, raw.identity, raw.names, train, val, raw.test, info)
    if len(data.train) < 2 or len(data.val) < 2 or len(data.test) < 2:
        raise InputError(f"too few pairs after splitting: {data.summary()}")
    if config.val_pairs == "all":  # index rows over the images already loaded: milliseconds, shared with the data
        data.val_all = all_validation_pairs(data, config.data_seed + 3)
        data.info.update(val_pairs="all", val_scored_pairs=len(data.val_all),
                         val_scored_same=int(data.val_all[:, 2].sum()))
    return data


def describe(data: PairData) -> dict[str, Any]:
    return {"images": int(len(data.images)), "image_size": int(data.images.shape[1]),
            "identities": len(data.names), "train_pairs": int(len(data.train)), "val_pairs": int(len(data.val)),
            "test_pairs": int(len(data.test)), **{k: v for k, v in data.info.items() if isinstance(v, (int, str))}}

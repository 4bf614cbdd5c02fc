"""What FaceVerifier takes as an image (`ImageLike`) turned into the uint8 pixels the model sees: a path decoded
as the data layer decodes a file, a PIL image, NumPy array or torch tensor decoded the same way in memory, so that
a file, the PIL image opened from it and its pixels as an array score alike."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from PIL import Image, ImageOps

from tune_siamese import data as data_mod
from tune_siamese.core.errors import InputError
from tune_siamese.data.images import _grayscale  # the one definition of "as a viewer shows it" (16 bit, alpha)

ImageLike: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor"  # see FaceVerifier


def decode(images: list[Any], wheres: list[str], size: int, crop: float) -> np.ndarray:
    """uint8 [N, size, size] as data.decode_image gives for a file; files are decoded in parallel threads.
    `wheres` names each image in an error line (image_a, pairs[3][1], ...)."""
    out = np.empty((len(images), size, size), dtype=np.uint8)
    files: dict[int, Path] = {}
    for k, (image, where) in enumerate(zip(images, wheres)):
        if isinstance(image, (str, os.PathLike)):
            files[k] = _checked_path(image, where)
        else:
            out[k] = _decode_in_memory(image, where, size, crop)
    if files:
        try:
            out[list(files)] = data_mod.decode_images(list(files.values()), size, crop)
        except InputError as exc:  # it names the file: add which argument gave it
            where = next((wheres[k] for k, path in files.items() if str(path) == exc.path), "images")
            raise InputError(f"{where}: {exc}") from None
    return out


def _checked_path(image: str | os.PathLike[str], where: str) -> Path:
    path = Path(image)
    if not path.is_file():
        raise InputError(f"{where}: {path}: {'is a folder, not an image' if path.is_dir() else 'image not found'}")
    return path


def _decode_in_memory(image: Any, where: str, size: int, crop: float) -> np.ndarray:
    """A PIL image, NumPy array or tensor as data.images decodes a file: grayscale, central crop, Lanczos resize."""
    if not isinstance(image, (Image.Image, np.ndarray, torch.Tensor)):
        raise InputError(f"{where}: {described(image)} is not an image (give a path, a PIL image, a NumPy array or a "
                         f"torch tensor)")
    picture = image if isinstance(image, Image.Image) else Image.fromarray(_pixels(image, where))
    try:
        picture = _grayscale(ImageOps.exif_transpose(picture), Path(where))
        if crop < 1.0:  # as data.images._decode crops a file
            w, h = picture.size
            cw, ch = round(w * crop), round(h * crop)
            left, top = (w - cw) // 2, (h - ch) // 2
            picture = picture.crop((left, top, left + cw, top + ch))
        return np.asarray(picture.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    except InputError:
        raise
    except Exception as exc:  # PIL raises many types (a closed file, an empty image): all mean "unusable"
        reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())
        raise InputError(f"{where}: unusable PIL image ({reason})") from None


def _pixels(image: np.ndarray | torch.Tensor, where: str) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3] from an array or tensor of the documented shapes and values."""
    what = "a torch tensor" if isinstance(image, torch.Tensor) else "a NumPy array"
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3) and tensor.shape[2] not in (1, 3):
            tensor = tensor.permute(1, 2, 0)  # channels first, as torchvision's ToTensor gives
        array = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    else:
        array = image
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or 0 in array.shape:
        raise InputError(f"{where}: {what} of shape {tuple(image.shape)}; an image is H x W (grayscale) or "
                         f"H x W x 3 (RGB){', or 1 or 3 x H x W' if what == 'a torch tensor' else ''}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise InputError(f"{where}: {what} of floats must hold values in [0, 1] (or give uint8 0..255)")
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise InputError(f"{where}: {what} of {array.dtype}; give uint8 (0..255) or floats in [0, 1]")


def image_list(images: Any, name: str) -> list[Any]:
    """A list of images from any iterable; one image alone is refused (a path is an iterable of letters)."""
    if isinstance(images, (str, bytes, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):  # one image, not a list
        raise InputError(f"{name}: give a list, not {described(images)} (one image: [image])")
    try:
        return list(images)
    except TypeError:
        raise InputError(f"{name}: give a list, not {described(images)}") from None


def described(value: Any) -> str:
    """What `value` is, for an error line: one path, an array and its shape, or its type."""
    if isinstance(value, (str, os.PathLike)):
        return f"one path ({os.fspath(value)!r})"
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{'a NumPy array' if isinstance(value, np.ndarray) else 'a torch tensor'} {tuple(value.shape)}"
    return f"a value of type {type(value).__name__}"

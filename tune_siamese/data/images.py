"""How images become arrays: decoding (grayscale, as a viewer shows them) and the on-disk cache of decoded
arrays, keyed by the content of the files they come from."""
from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

from tune_siamese.core import storage
from tune_siamese.core.errors import InputError

CACHE_VERSION = 2  # 2: EXIF orientation, 16-bit scaling, transparency over white


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".bmp")


def cache_dir() -> Path:
    return Path(os.environ.get("TUNE_SIAMESE_CACHE", Path.home() / ".cache" / "tune-siamese"))


def decode_image(path: Path, size: int, crop: float) -> np.ndarray:
    """Decode as a viewer shows the image: EXIF orientation applied, 16-bit grayscale scaled by its depth,
    transparent pixels composited on white; then grayscale, central crop, antialiased resize to size x size.
    A damaged file or one over PIL.Image.MAX_IMAGE_PIXELS (a decompression bomb) is an InputError naming it."""
    with _bomb_warnings_as_errors():
        return _decode(path, size, crop)


def decode_images(paths: list[Path], size: int, crop: float, workers: int = 4) -> np.ndarray:
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    # Warning filters are process-wide and catch_warnings is not thread-safe: set them once, around the pool.
    with _bomb_warnings_as_errors(), ThreadPoolExecutor(max_workers=workers) as pool:
        for index, array in enumerate(pool.map(lambda p: _decode(p, size, crop), paths)):  # PIL frees the GIL
            out[index] = array
    return out


@contextmanager
def _bomb_warnings_as_errors() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _decode(path: Path, size: int, crop: float) -> np.ndarray:
    try:
        with Image.open(path) as opened:
            pixels, limit = opened.size[0] * opened.size[1], Image.MAX_IMAGE_PIXELS
            if limit and pixels > limit:  # the same refusal even where the warning filter is not in force
                raise Image.DecompressionBombError(f"Image size ({pixels} pixels) exceeds limit of {limit} pixels")
            image = _grayscale(ImageOps.exif_transpose(opened), path)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"refused as a possible decompression bomb ({exc})", path) from None
    except Exception as exc:  # decoders raise many types on damaged files; all of them mean "unreadable"
        reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())  # one line, whatever the decoder said
        raise InputError(f"unreadable or corrupt image ({reason})", path) from None
    if crop < 1.0:
        w, h = image.size
        cw, ch = round(w * crop), round(h * crop)
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def _grayscale(image: Image.Image, path: Path) -> Image.Image:
    """8-bit grayscale. convert("L") alone would clip 16-bit values (most pixels white) and drop alpha
    (transparent parts keep whatever colour they hide, often black)."""
    if image.mode == "I" or image.mode.startswith("I;16"):  # PIL scales 16-bit PNG/PGM to 0..65535
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"{image.mode} image with values outside 0..65535 (more than 16 bits) is not "
                             f"supported; convert it to 8 or 16 bits", path)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("L")


def content_key(parts: Iterable[bytes | str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def file_bytes(paths: Iterable[Path]) -> Iterable[bytes]:
    for path in paths:
        yield str(path.name).encode()
        yield path.read_bytes()


def cached(key: str, build: Any) -> dict[str, np.ndarray]:
    """Load arrays saved under `key`, or build and save them (whole or not at all: `storage.replacing`)."""
    path = cache_dir() / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # a broken cache file is rebuilt, never trusted
    arrays = build()
    try:
        with storage.replacing(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError:
        pass  # a read-only or full cache directory only costs speed
    return arrays


def odd_name(name: str) -> bool:
    """True for a name no image folder should have: control characters, or bytes that are not UTF-8
    (os.listdir hands those over as lone surrogates)."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in name)

"""Data layer: every source becomes one compact, cached `PairData`.

Images are decoded once into a single uint8 array (N x S x S, grayscale); pairs are int64 rows
(image a, image b, label). This form is what Ray shares with trials, so no trial ever decodes an image.
Sources: an LFW-a/LFW folder with pair lists, torchvision's LFWPairs download, any identity-folder
dataset, and a procedural synthetic dataset (the offline default).
"""
from __future__ import annotations

import codecs
import hashlib
import os
import re
import sys
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

from .config import Config
from .errors import InputError

CACHE_VERSION = 2  # 2: EXIF orientation, 16-bit scaling, transparency over white
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".bmp")
DEFAULT_LFW_ROOT = "../shared/data/lfw-a"


def default_lfw_root() -> Path:
    """The real LFW-a folder used by tests and benchmarks: $TUNE_SIAMESE_LFW, else ../shared/data/lfw-a beside
    the repository root (found from this source checkout, so it does not depend on the working directory)."""
    if "TUNE_SIAMESE_LFW" in os.environ:
        return Path(os.environ["TUNE_SIAMESE_LFW"])
    beside_checkout = (Path(__file__).resolve().parents[1] / DEFAULT_LFW_ROOT).resolve()
    return beside_checkout if beside_checkout.is_dir() else Path(DEFAULT_LFW_ROOT)


def cache_dir() -> Path:
    return Path(os.environ.get("TUNE_SIAMESE_CACHE", Path.home() / ".cache" / "tune-siamese"))


@dataclass
class PairData:
    """The whole dataset in compact form. Pair arrays are int64 [M, 3]: image a, image b, label (1 = same)."""

    images: np.ndarray  # uint8 [N, S, S]
    identity: np.ndarray  # int32 [N], index into `names`
    names: list[str]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def identities_of(self, pairs: np.ndarray) -> set[int]:
        return set(self.identity[pairs[:, 0]].tolist()) | set(self.identity[pairs[:, 1]].tolist())

    @property
    def mining_identities(self) -> np.ndarray:
        """Identities of the training part that appear in neither validation nor test pairs."""
        allowed = self.identities_of(self.train) - self.identities_of(self.val) - self.identities_of(self.test)
        return np.array(sorted(allowed), dtype=np.int64)

    def summary(self) -> str:
        def count(p: np.ndarray) -> str:
            return f"{len(p)} ({int(p[:, 2].sum())} same)"
        return (f"{self.info.get('source', '?')}: {len(self.images)} images {self.images.shape[1]}px, "
                f"{len(self.names)} identities; train {count(self.train)}, val {count(self.val)}, "
                f"test {count(self.test)}; dropped {self.info.get('dropped_pairs', 0)} pairs for disjointness")


# --------------------------------------------------------------------------------------------------
# Decoding and caching

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


def _content_key(parts: Iterable[bytes | str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def _file_bytes(paths: Iterable[Path]) -> Iterable[bytes]:
    for path in paths:
        yield str(path.name).encode()
        yield path.read_bytes()


def _cached(key: str, build: Any) -> dict[str, np.ndarray]:
    """Load arrays saved under `key`, or build and save them (atomically: a half-written cache never loads)."""
    path = cache_dir() / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # a broken cache file is rebuilt, never trusted
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache directory only costs speed
    return arrays


# --------------------------------------------------------------------------------------------------
# LFW pair lists

@dataclass
class PairLine:
    name_a: str
    index_a: int
    name_b: str
    index_b: int
    same: bool
    line: int


def parse_pair_list(path: Path) -> list[list[PairLine]]:
    """Parse DevTrain/DevTest (header `N`) or View 2 pairs.txt (header `folds N`); returns the folds."""
    if not path.is_file():
        raise InputError("pair list not found", path)
    lines = _text_lines(path)
    if not lines or not lines[0].strip():
        raise InputError("empty pair list (first line must be `N` or `folds N`)", path, 1)
    header = lines[0].split()
    try:
        numbers = [int(x) for x in header]
    except ValueError:
        raise InputError(f"header {lines[0]!r} is not `N` or `folds N`", path, 1) from None
    if len(numbers) == 1:
        folds, per = 1, numbers[0]
    elif len(numbers) == 2:
        folds, per = numbers
    else:
        raise InputError(f"header {lines[0]!r} is not `N` or `folds N`", path, 1)
    if folds < 1 or per < 1:
        raise InputError(f"header {lines[0]!r} must hold positive counts", path, 1)

    body = [(number, text.split()) for number, text in enumerate(lines[1:], start=2) if text.strip()]
    expected = folds * per * 2
    if len(body) != expected:
        raise InputError(f"header promises {folds} fold(s) of {per} same + {per} different pairs "
                         f"({expected} lines) but the file has {len(body)} pair lines", path, 1)
    result: list[list[PairLine]] = []
    for fold in range(folds):
        chunk = body[fold * 2 * per:(fold + 1) * 2 * per]
        pairs = []
        for position, (number, parts) in enumerate(chunk):
            same = position < per
            pairs.append(_parse_pair_line(path, number, parts, same))
        result.append(pairs)
    return result


def _text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file as an editor numbers them (str.splitlines would also break at form
    feeds, U+2028 and other separators, and the line numbers in messages would drift)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror or exc})", path) from None
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); names must be plain text", path,
                         line) from None
    return re.split(r"\r\n|\r|\n", text)


def odd_name(name: str) -> bool:
    """True for a name no image folder should have: control characters, or bytes that are not UTF-8
    (os.listdir hands those over as lone surrogates)."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in name)


def _parse_pair_line(path: Path, number: int, parts: list[str], same: bool) -> PairLine:
    want = 3 if same else 4
    kind = "same-person `name i j`" if same else "different-person `name1 i name2 j`"
    if len(parts) != want:
        raise InputError(f"expected a {kind} line, got {' '.join(parts)!r}", path, number)
    for name in (parts[0],) if same else (parts[0], parts[2]):
        if "/" in name or name in (".", "..") or odd_name(name):  # it becomes a folder name under the images
            raise InputError(f"{name!r} cannot be a person's folder name", path, number)
    try:
        if same:
            return PairLine(parts[0], int(parts[1]), parts[0], int(parts[2]), True, number)
        return PairLine(parts[0], int(parts[1]), parts[2], int(parts[3]), False, number)
    except ValueError:
        raise InputError(f"image numbers must be integers in {' '.join(parts)!r}", path, number) from None


def lfw_image_dir(root: Path) -> Path:
    for candidate in (root / "lfw2", root / "lfw"):
        if candidate.is_dir():
            return candidate
    return root


def lfw_image_path(image_dir: Path, name: str, index: int) -> Path:
    return image_dir / name / f"{name}_{index:04d}.jpg"


def find_pair_lists(root: Path) -> tuple[Path, Path | None] | None:
    if (root / "pairsDevTrain.txt").is_file():
        test = root / "pairsDevTest.txt"
        return root / "pairsDevTrain.txt", test if test.is_file() else None
    if (root / "pairs.txt").is_file():
        return root / "pairs.txt", None
    return None


def index_pair_images(image_dir: Path, sources: list[tuple[Path, list[PairLine]]]
                      ) -> tuple[dict[tuple[str, int], int], list[Path]]:
    """Number every image the pair lines name, once; a missing image is an error naming its list and line."""
    index: dict[tuple[str, int], int] = {}
    paths: list[Path] = []
    for source, lines in sources:
        for pair in lines:
            for key in ((pair.name_a, pair.index_a), (pair.name_b, pair.index_b)):
                if key in index:
                    continue
                path = lfw_image_path(image_dir, *key)
                try:
                    found = path.is_file()
                except OSError as exc:  # a name or number too long for the file system, say
                    raise InputError(f"pair names image {path} which cannot be looked up ({exc.strerror})",
                                     source, pair.line) from None
                if not found:
                    raise InputError(f"pair names image {path} which does not exist", source, pair.line)
                index[key] = len(paths)
                paths.append(path)
    return index, paths


def pair_rows(lines: list[PairLine], index: dict[tuple[str, int], int]) -> np.ndarray:
    rows = [(index[(p.name_a, p.index_a)], index[(p.name_b, p.index_b)], int(p.same)) for p in lines]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def load_lfw_folder(root: Path, config: Config) -> "RawData":
    """LFW-a / LFW folder with DevTrain + DevTest lists, or View 2 pairs.txt (folds 1-9 train, fold 10 test)."""
    lists = find_pair_lists(root)
    if lists is None:
        raise InputError("no pairsDevTrain.txt or pairs.txt in the LFW folder", root)
    train_path, test_path = lists
    folds = parse_pair_list(train_path)
    if test_path is not None:
        test_lines = [p for fold in parse_pair_list(test_path) for p in fold]
        trainval_lines = [p for fold in folds for p in fold]
    elif len(folds) > 1:
        trainval_lines = [p for fold in folds[:-1] for p in fold]
        test_lines = folds[-1]
    else:
        raise InputError("a single-fold pair list needs pairsDevTest.txt beside it for the test pairs", train_path)

    index, paths = index_pair_images(lfw_image_dir(root), [(train_path, trainval_lines),
                                                            (test_path or train_path, test_lines)])

    names = sorted({name for name, _ in index})
    name_id = {name: i for i, name in enumerate(names)}
    identity = np.array([name_id[name] for name, _ in index], dtype=np.int32)  # index is in `paths` order
    trainval, test = pair_rows(trainval_lines, index), pair_rows(test_lines, index)
    info: dict[str, Any] = {"source": f"LFW folder {root}"}
    # Checked on every load, before decoding: the image cache holds images only, never this decision.
    overlap = identity_overlap(identity, names, trainval, test)
    if overlap is not None:
        first = test_lines[int(np.argmax(_touches_trainval(identity, trainval, test)))].line
        trained = "fold 1" if len(folds) == 2 else f"folds 1-{len(folds) - 1}"
        against = (f"the training/validation pairs of {train_path}" if test_path is not None
                   else f"the training/validation {trained} (the test pairs are fold {len(folds)})")
        _refuse_or_record_overlap(overlap, config, info, test_path or train_path, first, against)
    key_parts: list[bytes | str] = [f"lfw v{CACHE_VERSION} {config.image_size} {config.crop}",
                                    train_path.read_bytes(), test_path.read_bytes() if test_path else b""]
    key = "lfw-" + _content_key([*key_parts, *_file_bytes(paths)])
    arrays = _cached(key, lambda: {"images": decode_images(paths, config.image_size, config.crop)})
    return RawData(arrays["images"], identity, names, trainval, test, info)


def _touches_trainval(identity: np.ndarray, trainval: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Mask of the test pairs with a person who also appears in a train/val pair."""
    return np.isin(identity[test[:, :2]], identity[trainval[:, :2]]).any(axis=1)


def identity_overlap(identity: np.ndarray, names: list[str], trainval: np.ndarray, test: np.ndarray
                     ) -> dict[str, Any] | None:
    """None when no person of a test pair appears in a train/val pair; else the overlap, as recorded in
    PairData.info["identity_overlap"]: shared and test identity counts, test pairs also in train/val (the
    same two images, either order), and a few of the shared names."""
    test_ids = set(identity[test[:, :2]].ravel().tolist())
    shared = test_ids & set(identity[trainval[:, :2]].ravel().tolist())
    if not shared:
        return None
    seen = {(min(a, b), max(a, b)) for a, b in trainval[:, :2].tolist()}
    identical = sum((min(a, b), max(a, b)) in seen for a, b in test[:, :2].tolist())
    return {"shared_identities": len(shared), "test_identities": len(test_ids), "identical_pairs": identical,
            "examples": sorted(names[i] for i in shared)[:5]}


def _refuse_or_record_overlap(overlap: dict[str, Any], config: Config, info: dict[str, Any], where: Path,
                              line: int, against: str) -> None:
    """Refuse test pairs whose people were trained on, unless allow_identity_overlap: then warn and record."""
    text = (f"{overlap['shared_identities']} of the {overlap['test_identities']} test identities also appear in "
            f"{against}, and {overlap['identical_pairs']} test pair(s) are identical to training pairs "
            f"(e.g. {', '.join(overlap['examples'])})")
    if not config.allow_identity_overlap:
        raise InputError(f"{text}; the test score would not measure unseen people. "
                         f"--set allow_identity_overlap=true scores it anyway", where, line)
    print(f"warning: {where}:{line}: {text}; scored anyway (allow_identity_overlap=true)", file=sys.stderr)
    info["identity_overlap"] = overlap


def load_torchvision_lfw(root: Path, config: Config, download: bool = True) -> "RawData":
    """torchvision's LFWPairs (DevTrain/DevTest splits) turned into the same compact form."""
    from torchvision.datasets import LFWPairs

    try:
        splits = {split: LFWPairs(str(root), split=split, image_set="deepfunneled", download=download)
                  for split in ("train", "test")}
    except (RuntimeError, OSError) as exc:
        raise InputError(f"torchvision LFWPairs could not be loaded or downloaded ({exc})", root) from None
    index: dict[str, int] = {}
    paths: list[Path] = []
    pair_arrays = {}
    for split, dataset in splits.items():
        rows = []
        for (a, b), target in zip(dataset.data, dataset.targets):
            for p in (a, b):
                if p not in index:
                    index[p] = len(paths)
                    paths.append(Path(p))
            rows.append((index[a], index[b], int(target)))
        pair_arrays[split] = np.array(rows, dtype=np.int64)
    names = sorted({p.parent.name for p in paths})
    name_id = {name: i for i, name in enumerate(names)}
    identity = np.array([name_id[p.parent.name] for p in paths], dtype=np.int32)
    key = "tvlfw-" + _content_key([f"tv v{CACHE_VERSION} {config.image_size} {config.crop}",
                                   *(str(p) for p in paths)])
    arrays = _cached(key, lambda: {"images": decode_images(paths, config.image_size, config.crop)})
    return RawData(arrays["images"], identity, names, pair_arrays["train"], pair_arrays["test"],
                   {"source": f"torchvision LFWPairs in {root}"})


# --------------------------------------------------------------------------------------------------
# Identity folders and the synthetic set: pairs generated per identity group

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


def balanced_pairs(identity: np.ndarray, group: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` pairs (half same, half different, distinct rows where possible) among the identities in `group`."""
    members = [np.flatnonzero(identity == g) for g in group]
    multi = [m for m in members if len(m) >= 2]
    if not multi or len(members) < 2:
        raise InputError("too few identities to make both same and different pairs")
    half = count // 2
    seen: set[tuple[int, int]] = set()
    rows: list[tuple[int, int, int]] = []
    for label, target in ((1, half), (0, count - half)):
        tries = 0
        made = 0
        while made < target and tries < target * 20:
            tries += 1
            if label:
                m = multi[rng.integers(len(multi))]
                a, b = rng.choice(m, size=2, replace=False)
            else:
                ga, gb = rng.choice(len(members), size=2, replace=False)
                a, b = rng.choice(members[ga]), rng.choice(members[gb])
            key = (int(min(a, b)), int(max(a, b)))
            if key in seen and tries < target * 10:
                continue
            seen.add(key)
            rows.append((int(a), int(b), label))
            made += 1
    order = rng.permutation(len(rows))
    return np.array(rows, dtype=np.int64)[order]


def split_identity_groups(n_identities: int, fractions: tuple[float, float, float],
                          rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n_identities)
    cuts = np.cumsum([round(f * n_identities) for f in fractions[:-1]])
    return [np.sort(part) for part in np.split(order, cuts)]


def load_identity_folder(root: Path, config: Config) -> "RawData":
    files = identity_folder_files(root)
    names = list(files)
    paths = [p for name in names for p in files[name]]
    identity = np.array([i for i, name in enumerate(names) for _ in files[name]], dtype=np.int32)
    key = "idf-" + _content_key([f"idf v{CACHE_VERSION} {config.image_size} {config.crop}", *_file_bytes(paths)])
    arrays = _cached(key, lambda: {"images": decode_images(paths, config.image_size, config.crop)})
    n_pairs = int(min(6000, max(40, 2 * len(paths))))
    try:
        return _generated(arrays["images"], identity, names, config, n_pairs, test_share=0.2,
                          info={"source": f"identity folder {root}"})
    except InputError as exc:  # a train/val/test identity group came out too small: say where and why
        raise InputError(f"{exc} in one of the train/val/test identity groups that {len(names)} identities "
                         f"split into (val_fraction={config.val_fraction}); add identities", root) from None


def _generated(images: np.ndarray, identity: np.ndarray, names: list[str], config: Config, n_pairs: int,
               test_share: float, info: dict[str, Any]) -> "RawData":
    """Pairs for sources without pair lists: identities split into train / val / test groups first, then
    balanced pairs drawn inside each group, so the identity-disjoint split drops nothing."""
    rng = np.random.default_rng(config.data_seed + 1)
    n_test = round(n_pairs * test_share)
    n_trainval = n_pairs - n_test
    if config.val_split == "identity":
        val_share = (1 - test_share) * config.val_fraction
        train_ids, val_ids, test_ids = split_identity_groups(
            len(names), (1 - test_share - val_share, val_share, test_share), rng)
        n_val = round(n_trainval * config.val_fraction)
        raw = RawData(images, identity, names, balanced_pairs(identity, train_ids, n_trainval - n_val, rng),
                      balanced_pairs(identity, test_ids, n_test, rng), info,
                      val=balanced_pairs(identity, val_ids, n_val, rng))
    else:
        trainval_ids, test_ids = split_identity_groups(len(names), (1 - test_share, test_share), rng)
        raw = RawData(images, identity, names, balanced_pairs(identity, trainval_ids, n_trainval, rng),
                      balanced_pairs(identity, test_ids, n_test, rng), info)
    seen = raw.trainval if raw.val is None else np.concatenate([raw.trainval, raw.val])
    assert identity_overlap(identity, names, seen, raw.test) is None, "generated test identities were trained on"
    return raw


def render_synthetic(n_identities: int, per_identity: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Procedural 'faces': each identity is a fixed set of blobs on a shared face template; every image of it
    is rendered under a new pose (rotation, scale, shift), lighting gradient, contrast and noise."""
    rng = np.random.default_rng(seed)
    n_blobs = 10
    # A shared template (head, eyes, nose, mouth) plus identity-specific perturbations keeps identities similar.
    template_xy = np.array([[0, 0], [-0.32, -0.2], [0.32, -0.2], [0, 0.08], [0, 0.38]], dtype=np.float32)
    template_sigma = np.array([0.55, 0.09, 0.09, 0.07, 0.1], dtype=np.float32)
    template_amp = np.array([0.6, -0.7, -0.7, -0.3, -0.5], dtype=np.float32)
    ident_xy = template_xy[None] + rng.normal(0, 0.05, (n_identities, 5, 2)).astype(np.float32)
    ident_sigma = template_sigma[None] * rng.uniform(0.75, 1.3, (n_identities, 5)).astype(np.float32)
    ident_amp = template_amp[None] * rng.uniform(0.6, 1.4, (n_identities, 5)).astype(np.float32)
    extra_xy = rng.uniform(-0.5, 0.5, (n_identities, n_blobs, 2)).astype(np.float32)
    extra_sigma = rng.uniform(0.04, 0.14, (n_identities, n_blobs)).astype(np.float32)
    extra_amp = rng.normal(0, 0.3, (n_identities, n_blobs)).astype(np.float32)
    xy = np.concatenate([ident_xy, extra_xy], 1)
    sigma = np.concatenate([ident_sigma, extra_sigma], 1)
    amp = np.concatenate([ident_amp, extra_amp], 1)

    n = n_identities * per_identity
    identity = np.repeat(np.arange(n_identities, dtype=np.int32), per_identity)
    angle = rng.uniform(-0.3, 0.3, n).astype(np.float32)
    scale = rng.uniform(0.85, 1.15, n).astype(np.float32)
    shift = rng.uniform(-0.08, 0.08, (n, 2)).astype(np.float32)
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    images = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        c, s = np.cos(angle[i]), np.sin(angle[i])
        # inverse pose: image coordinates -> identity coordinates
        u = (c * (gx - shift[i, 0]) + s * (gy - shift[i, 1])) / scale[i]
        v = (-s * (gx - shift[i, 0]) + c * (gy - shift[i, 1])) / scale[i]
        k = identity[i]
        d2 = (u[None] - xy[k, :, 0, None, None]) ** 2 + (v[None] - xy[k, :, 1, None, None]) ** 2
        face = (amp[k, :, None, None] * np.exp(-d2 / (2 * sigma[k, :, None, None] ** 2))).sum(0)
        light = rng.normal(0, 0.35, 2).astype(np.float32)
        img = face + light[0] * gx + light[1] * gy
        img = img * rng.uniform(0.7, 1.3) + rng.normal(0, 0.15) + rng.normal(0, 0.12, img.shape)
        images[i] = np.clip(127.5 + 80 * img, 0, 255).astype(np.uint8)
    return images, identity


def load_synthetic(config: Config, n_identities: int = 500, per_identity: int = 6) -> "RawData":
    key = "syn-" + _content_key([f"syn v{CACHE_VERSION} {config.image_size} {config.data_seed} "
                                 f"{n_identities} {per_identity}"])
    arrays = _cached(key, lambda: dict(zip(("images", "identity"), render_synthetic(
        n_identities, per_identity, config.image_size, config.data_seed))))
    names = [f"synthetic_{i:04d}" for i in range(n_identities)]
    # 3200 pairs: the sizes of LFW's DevTrain (2200) and DevTest (1000) lists.
    return _generated(arrays["images"], arrays["identity"].astype(np.int32), names, config, 3200,
                      test_share=1000 / 3200, info={"source": f"synthetic (seed {config.data_seed})"})


# --------------------------------------------------------------------------------------------------
# Validation split and assembly

@dataclass
class RawData:
    images: np.ndarray
    identity: np.ndarray
    names: list[str]
    trainval: np.ndarray
    test: np.ndarray
    info: dict[str, Any]
    val: np.ndarray | None = None  # set when the loader already made identity-disjoint val pairs


def split_validation(pairs: np.ndarray, identity: np.ndarray, fraction: float, mode: str,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Split pairs into (train, val, dropped count). `identity` mode: no identity of a val pair appears in any
    train pair; pairs that would straddle the two are dropped. Val is label-balanced in both modes."""
    n_val_each = max(1, round(len(pairs) * fraction / 2))
    same_idx, diff_idx = np.flatnonzero(pairs[:, 2] == 1), np.flatnonzero(pairs[:, 2] == 0)
    if mode == "random":
        val = np.concatenate([rng.permutation(same_idx)[:n_val_each], rng.permutation(diff_idx)[:n_val_each]])
        mask = np.zeros(len(pairs), bool)
        mask[val] = True
        return pairs[~mask], pairs[rng.permutation(val)], 0

    ids_a, ids_b = identity[pairs[:, 0]], identity[pairs[:, 1]]
    val_ids: set[int] = set()

    def inside(rows: np.ndarray) -> np.ndarray:
        chosen = np.fromiter(val_ids, dtype=np.int64, count=len(val_ids))
        return rows[np.isin(ids_a[rows], chosen) & np.isin(ids_b[rows], chosen)]

    # Grow the val identity set from randomly ordered pairs of whichever label is short, cheapest pairs first
    # (identities that occur in few pairs drop fewer train pairs).
    occurrences = np.bincount(np.concatenate([ids_a, ids_b]), minlength=identity.max() + 1)
    queues = {}
    for label, idx in ((1, same_idx), (0, diff_idx)):
        idx = rng.permutation(idx)
        cost = occurrences[ids_a[idx]] + occurrences[ids_b[idx]]
        queues[label] = list(idx[np.argsort(cost, kind="stable")])
    counts = {1: 0, 0: 0}
    while min(counts.values()) < n_val_each and any(queues.values()):
        label = 1 if counts[1] <= counts[0] and queues[1] else 0
        if not queues[label]:
            label = 1 - label
        row = queues[label].pop(0)
        val_ids.update((int(ids_a[row]), int(ids_b[row])))
        members = inside(np.arange(len(pairs)))
        counts = {1: int((pairs[members, 2] == 1).sum()), 0: int((pairs[members, 2] == 0).sum())}
    members = inside(np.arange(len(pairs)))
    val_same = members[pairs[members, 2] == 1][:n_val_each]
    val_diff = members[pairs[members, 2] == 0][:n_val_each]
    val = rng.permutation(np.concatenate([val_same, val_diff]))
    chosen = np.fromiter(val_ids, dtype=np.int64, count=len(val_ids))
    touches = np.isin(ids_a, chosen) | np.isin(ids_b, chosen)
    train = pairs[~touches]
    dropped = len(pairs) - len(train) - len(val)
    return train, pairs[val], dropped


def load_raw(config: Config) -> RawData:
    source = config.data
    if source == "synthetic":
        return load_synthetic(config)
    if source == "lfw":
        return load_torchvision_lfw(cache_dir() / "torchvision", config)
    root = Path(source).expanduser()
    if not root.exists():
        raise InputError("data folder not found (give a folder, 'synthetic' or 'lfw')", root)
    if not root.is_dir():
        raise InputError("data path is not a folder", root)
    if find_pair_lists(root) is not None:
        return load_lfw_folder(root, config)
    return load_identity_folder(root, config)


def load_data(config: Config) -> PairData:
    """Load (from cache when possible) and split into train / val / test pairs."""
    raw = load_raw(config)
    if raw.val is not None:
        train, val, dropped = raw.trainval, raw.val, 0
    else:
        rng = np.random.default_rng(config.data_seed + 2)
        train, val, dropped = split_validation(raw.trainval, raw.identity, config.val_fraction, config.val_split,
                                               rng)
    info = {**raw.info, "dropped_pairs": dropped, "val_split": config.val_split}
    data = PairData(raw.images, raw.identity, raw.names, train, val, raw.test, info)
    if len(data.train) < 2 or len(data.val) < 2 or len(data.test) < 2:
        raise InputError(f"too few pairs after splitting: {data.summary()}")
    return data


# --------------------------------------------------------------------------------------------------
# Mined pairs

class PairMiner:
    """Draws fresh balanced pairs each epoch from training identities only (never val or test identities)."""

    def __init__(self, data: PairData, rng: np.random.Generator):
        allowed = data.mining_identities
        forbidden = data.identities_of(data.val) | data.identities_of(data.test)
        assert not forbidden.intersection(allowed.tolist()), "mining would touch a val/test identity"
        self.identity = data.identity
        self.allowed = allowed
        self.rng = rng

    def sample(self, count: int) -> np.ndarray:
        if count <= 0 or len(self.allowed) < 2:
            return np.empty((0, 3), dtype=np.int64)
        return balanced_pairs(self.identity, self.allowed, count, self.rng)


def describe(data: PairData) -> dict[str, Any]:
    return {"images": int(len(data.images)), "image_size": int(data.images.shape[1]),
            "identities": len(data.names), "train_pairs": int(len(data.train)), "val_pairs": int(len(data.val)),
            "test_pairs": int(len(data.test)), **{k: v for k, v in data.info.items() if isinstance(v, (int, str))}}


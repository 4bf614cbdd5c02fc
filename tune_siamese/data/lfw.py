"""LFW and LFW-a with their pair lists (pairsDevTrain.txt + pairsDevTest.txt, or View 2 pairs.txt), and
torchvision's LFWPairs download turned into the same form."""
from __future__ import annotations

import codecs
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError, quoted
from tune_siamese.data.images import CACHE_VERSION, cached, content_key, decode_images, file_bytes, odd_name
from tune_siamese.data.pairs import PairOrigin, RawData, identity_overlap, touches_trainval

DEFAULT_LFW_ROOT = "../shared/data/lfw-a"


def default_lfw_root() -> Path:
    """The real LFW-a folder used by tests and benchmarks: $TUNE_SIAMESE_LFW, else ../shared/data/lfw-a beside
    the repository root (found from this source checkout, so it does not depend on the working directory)."""
    if "TUNE_SIAMESE_LFW" in os.environ:
        return Path(os.environ["TUNE_SIAMESE_LFW"])
    beside_checkout = (Path(__file__).resolve().parents[2] / DEFAULT_LFW_ROOT).resolve()
    return beside_checkout if beside_checkout.is_dir() else Path(DEFAULT_LFW_ROOT)


@dataclass
class PairLine:
    name_a: str
    index_a: int
    name_b: str
    index_b: int
    same: bool
    line: int


# The most characters a pair-list line may hold: two folder names (at most 255 bytes each), two image numbers and
# the spaces between them fit with room to spare. A longer line is refused before it is split, so that a line of
# hundreds of megabytes costs one pass, not a copy per word, and never goes whole into a message.
MAX_LINE = 1024
MAX_NAME_BYTES = 255  # a folder name's limit on Linux, macOS and Windows file systems


def parse_pair_list(path: Path) -> list[list[PairLine]]:
    """Parse DevTrain/DevTest (header `N`) or View 2 pairs.txt (header `folds N`); returns the folds."""
    if not path.is_file():
        raise InputError("pair list not found", path)
    lines = _text_lines(path)
    if not lines or not lines[0].strip():
        raise InputError("empty pair list (first line must be `N` or `folds N`)", path, 1)
    header = lines[0].split() if len(lines[0]) <= MAX_LINE else []  # a longer one is refused, not split
    try:
        numbers = [int(x) for x in header]
    except ValueError:
        raise InputError(f"header {quoted(lines[0])} is not `N` or `folds N`", path, 1) from None
    if len(numbers) == 1:
        folds, per = 1, numbers[0]
    elif len(numbers) == 2:
        folds, per = numbers
    else:
        raise InputError(f"header {quoted(lines[0])} is not `N` or `folds N`", path, 1)
    if folds < 1 or per < 1:
        raise InputError(f"header {quoted(lines[0])} must hold positive counts", path, 1)

    body = [(number, _refuse_long(text, path, number).split())
            for number, text in enumerate(lines[1:], start=2) if text.strip()]
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


def _refuse_long(text: str, path: Path, number: int) -> str:
    if len(text) > MAX_LINE:
        raise InputError(f"a line of {len(text)} characters is no pair line (at most {MAX_LINE}): "
                         f"{quoted(text)}", path, number)
    return text


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


def _parse_pair_line(path: Path, number: int, parts: list[str], same: bool) -> PairLine:
    want = 3 if same else 4
    kind = "same-person `name i j`" if same else "different-person `name1 i name2 j`"
    if len(parts) != want:
        raise InputError(f"expected a {kind} line, got {quoted(' '.join(parts))}", path, number)
    for name in (parts[0],) if same else (parts[0], parts[2]):
        if "/" in name or name in (".", "..") or odd_name(name):  # it becomes a folder name under the images
            raise InputError(f"{quoted(name)} cannot be a person's folder name", path, number)
        if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise InputError(f"{quoted(name)} is longer than a folder name may be ({MAX_NAME_BYTES} bytes)", path,
                             number)
    if not same and parts[0] == parts[2]:  # scored as different people, it would teach and test a wrong label
        raise InputError(f"a different-person line names {quoted(parts[0])} twice; two images of one person make "
                         "a same-person line `name i j`", path, number)
    try:
        if same:
            return PairLine(parts[0], int(parts[1]), parts[0], int(parts[2]), True, number)
        return PairLine(parts[0], int(parts[1]), parts[2], int(parts[3]), False, number)
    except ValueError:
        raise InputError(f"image numbers must be integers in {quoted(' '.join(parts))}", path, number) from None


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


def load_lfw_folder(root: Path, config: Config) -> RawData:
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
        first = test_lines[int(np.argmax(touches_trainval(identity, trainval, test)))].line
        trained = "fold 1" if len(folds) == 2 else f"folds 1-{len(folds) - 1}"
        against = (f"the training/validation pairs of {train_path}" if test_path is not None
                   else f"the training/validation {trained} (the test pairs are fold {len(folds)})")
        _refuse_or_record_overlap(overlap, config, info, test_path or train_path, first, against)
    key_parts: list[bytes | str] = [f"lfw v{CACHE_VERSION} {config.image_size} {config.crop}",
                                    train_path.read_bytes(), test_path.read_bytes() if test_path else b""]
    key = "lfw-" + content_key([*key_parts, *file_bytes(paths)])
    arrays = cached(key, lambda: {"images": decode_images(paths, config.image_size, config.crop)})
    origins = {"trainval": PairOrigin(train_path, [p.line for p in trainval_lines]),
               "test": PairOrigin(test_path or train_path, [p.line for p in test_lines])}
    return RawData(arrays["images"], identity, names, trainval, test, info, origins=origins)


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


def load_torchvision_lfw(root: Path, config: Config, download: bool = True) -> RawData:
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
    key = "tvlfw-" + content_key([f"tv v{CACHE_VERSION} {config.image_size} {config.crop}",
                                   *(str(p) for p in paths)])
    arrays = cached(key, lambda: {"images": decode_images(paths, config.image_size, config.crop)})
    return RawData(arrays["images"], identity, names, pair_arrays["train"], pair_arrays["test"],
                   {"source": f"torchvision LFWPairs in {root}"})

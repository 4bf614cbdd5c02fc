"""Fuzz: pair lists, identity-folder layouts and image files of any content either load or end in one
InputError line naming the file, never in another exception (which would reach the user as a traceback).

Bounded: a fixed number of examples per property, no deadline (2 shared cores); a few seconds in all.
"""
from __future__ import annotations

import atexit
import io
import os
import re
import shutil
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

from tune_siamese.core.errors import InputError
from tune_siamese.data import (
    IMAGE_EXTENSIONS,
    decode_image,
    identity_folder_files,
    index_pair_images,
    odd_name,
    parse_pair_list,
)

# Derandomized: the same examples each run. Hypothesis' caches and patch files go to a temporary folder, not
# into the (shared) working tree.
HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="hypothesis-")
atexit.register(shutil.rmtree, HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(HYPOTHESIS_HOME)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None)

LINE_BREAKS = re.compile(r"\r\n|\r|\n")  # how an editor numbers lines


def assert_one_line_naming(exc: InputError, path: Path, lines: int | None = None) -> None:
    assert exc.path is not None and exc.path.startswith(str(path)), str(exc)
    assert "\n" not in str(exc) and "\r" not in str(exc), str(exc)
    if lines is not None:
        assert exc.line is None or 1 <= exc.line <= lines, str(exc)


# --------------------------------------------------------------------------------------------------
# pair lists

GOOD_NAMES = st.sampled_from(["Ann", "Bob_Cid", "José", "O'Neil", "Zoë-Marie"])
ODD_NAMES = st.one_of(st.sampled_from(["A/B", "..", "x\x00y", "bell\x07", "B" * 300]), st.text(max_size=12))
GOOD_NUMBERS = st.integers(1, 9999).map(str)
ODD_NUMBERS = st.one_of(st.integers(-3, 0).map(str), st.integers(10**250, 10**260).map(str),
                        st.sampled_from(["x", "1.5", "٣", "1_0", "0001", ""]))
GOOD_SEPARATORS = st.sampled_from(["\t", " "])
ODD_SEPARATORS = st.sampled_from(["  ", "\x0c", "\u2028", "\x85", "\xa0", "\t\t", "\x1c"])
GOOD_BREAKS = st.sampled_from(["\n", "\r\n"])
ODD_BREAKS = st.sampled_from(["\r", "\n\n", "\n \t\n", "\u2028", "\x0c\n", "\x85"])


@st.composite
def pair_list_bytes(draw: st.DrawFn) -> bytes:
    """Mostly well-formed lists (so a good share parse) with damaged headers, tokens, separators and bytes."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=200))

    def pick(good: st.SearchStrategy[str], odd: st.SearchStrategy[str]) -> str:
        return draw(odd if draw(st.integers(0, 24)) == 0 else good)

    folds, per = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    header = pick(st.sampled_from([f"{folds} {per}"] + [str(per)] * (folds == 1)),
                  st.sampled_from([f"{folds} {per} 1", "x", "", f"-{per}", f"{per + 1}", "0 1"]))
    lines = [header]
    for _ in range(folds):
        for same in [True] * per + [False] * per:
            tokens = [pick(GOOD_NAMES, ODD_NAMES), pick(GOOD_NUMBERS, ODD_NUMBERS)]
            other = GOOD_NAMES.filter(lambda name, first=tokens[0]: name != first)  # a different person, mostly
            tokens += ([] if same else [pick(other, ODD_NAMES)]) + [pick(GOOD_NUMBERS, ODD_NUMBERS)]
            if draw(st.integers(0, 24)) == 0:
                tokens = tokens[:draw(st.integers(0, len(tokens)))]
            lines.append(pick(GOOD_SEPARATORS, ODD_SEPARATORS).join(tokens))
    raw = "".join(line + pick(GOOD_BREAKS, ODD_BREAKS) for line in lines).encode("utf-8")
    if draw(st.integers(0, 9)) == 0:  # a stray byte, often not UTF-8
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at:]
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + raw


@settings(FUZZ, max_examples=400)  # cheap examples; fewer miss line-numbering and folder-name bugs
@given(raw=pair_list_bytes())
def test_any_pair_list_parses_and_indexes_or_is_refused(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.txt"
        path.write_bytes(raw)
        lines = LINE_BREAKS.split(raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace"))
        try:
            folds = parse_pair_list(path)
        except InputError as exc:
            assert_one_line_naming(exc, path, len(lines))
            return
        # parsed: every pair is what its line says, and its names can be folder names
        for fold in folds:
            assert [p.same for p in fold] == [True] * (len(fold) // 2) + [False] * (len(fold) // 2)
            for p in fold:
                parts = lines[p.line - 1].split()
                want = [p.name_a, p.index_a, p.index_b] if p.same else [p.name_a, p.index_a, p.name_b, p.index_b]
                assert [int(x) if isinstance(w, int) else x for x, w in zip(parts, want)] == want
                for name in (p.name_a, p.name_b):
                    assert "/" not in name and name not in (".", "..") and not odd_name(name)
                assert p.same or p.name_a != p.name_b  # one person's two images are no different-person pair
        # and looking its images up fails only as bad input (none exist here), whatever the names and numbers
        try:
            index_pair_images(Path(tmp) / "images", [(path, [p for fold in folds for p in fold])])
        except InputError as exc:
            assert_one_line_naming(exc, path, len(lines))


# --------------------------------------------------------------------------------------------------
# identity-folder layouts

NAME_BYTES = st.one_of(st.sampled_from([b"Ann", b"Ren\xe9", b"new\nline", b"tab\t", b"caf\xc3\xa9", b".hidden"]),
                       st.binary(min_size=1, max_size=10)).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
SUFFIXES = st.sampled_from([b".png", b".JPG", b".jpeg", b".pgm", b".bmp", b".txt", b"", b".png.bak"])
ENTRY = st.tuples(NAME_BYTES, SUFFIXES, st.sampled_from(["file", "file", "file", "dir", "dangling", "loop"]))
LAYOUT = st.lists(st.tuples(NAME_BYTES, st.sampled_from(["dir", "dir", "dir", "file", "dangling", "loop"]),
                            st.lists(ENTRY, max_size=4)), max_size=7)


def build(root: bytes, layout: list) -> None:
    """Create the layout; names that collide with an earlier entry are skipped."""
    def make(path: bytes, kind: str) -> None:
        if os.path.lexists(path):
            return
        if kind == "file":
            with open(path, "wb") as fh:
                fh.write(b"not decoded by the lister")
        elif kind == "dir":
            os.mkdir(path)
        elif kind == "dangling":
            os.symlink(b"nowhere", path)
        else:  # a link to itself: stat() fails with ELOOP
            os.symlink(os.path.basename(path), path)

    for person, kind, entries in layout:
        make(os.path.join(root, person), kind)
        if os.path.islink(os.path.join(root, person)) or not os.path.isdir(os.path.join(root, person)):
            continue
        for name, suffix, entry_kind in entries:
            make(os.path.join(root, person, name + suffix), entry_kind)


@FUZZ
@given(layout=LAYOUT, valid=st.integers(0, 5))
def test_any_identity_folder_layout_lists_or_is_refused(layout, valid):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "faces"
        root.mkdir()
        # `valid` well-formed identities first, so that some layouts pass the size check
        build(os.fsencode(root), [(f"id{k}".encode(), "dir", [(b"a", b".png", "file"), (b"b", b".jpg", "file")])
                                  for k in range(valid)] + layout)
        try:
            found = identity_folder_files(root)
        except InputError as exc:
            assert_one_line_naming(exc, root)
            return
        # independently: every folder directly under root holding a file with an image suffix (links followed)
        expected = {}
        for person in (os.path.join(os.fsencode(root), p) for p in os.listdir(os.fsencode(root))):
            if os.path.isdir(person):
                files = sorted(os.fsdecode(os.path.join(person, f)) for f in os.listdir(person)
                               if os.path.isfile(os.path.join(person, f))
                               and os.path.splitext(f)[1].lower().decode("latin-1") in IMAGE_EXTENSIONS)
                if files:
                    expected[os.fsdecode(os.path.basename(person))] = files
        assert {name: [str(f) for f in files] for name, files in found.items()} == expected
        assert len(found) >= 4 and sum(len(files) >= 2 for files in found.values()) >= 3
        for name, files in found.items():  # every name is text that messages, keys and exports can carry
            assert not odd_name(name) and not any(odd_name(f.name) for f in files)
            name.encode("utf-8")


# --------------------------------------------------------------------------------------------------
# image files

def sample_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 28), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    samples = {}
    for name, image, fmt, options in [
            ("png", Image.fromarray(gray), "PNG", {}),
            ("rgba", Image.fromarray(np.dstack([gray] * 4)), "PNG", {}),
            ("deep", Image.fromarray(gray.astype(np.uint16) * 257), "PNG", {}),
            ("jpeg", Image.fromarray(gray), "JPEG", {"exif": exif}),
            ("bmp", Image.fromarray(gray).convert("RGB"), "BMP", {}),
            ("pgm", Image.fromarray(gray), "PPM", {})]:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        samples[name] = buffer.getvalue()
    return samples


SAMPLES = sample_images()


def claim_size(name: str, raw: bytearray, width: int, height: int) -> bytearray:
    """The header rewritten to claim width x height pixels (the pixel data stays as it is)."""
    if name in ("png", "rgba", "deep"):  # IHDR, then its checksum
        raw[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
    elif name == "bmp":
        raw[18:26] = width.to_bytes(4, "little") + height.to_bytes(4, "little")
    elif name == "pgm":
        header = b"P5\n28 20\n255\n"
        raw[:len(header)] = b"P5\n%d %d\n255\n" % (width, height)
    else:  # JPEG: the start-of-frame segment
        at = raw.index(b"\xff\xc0")
        raw[at + 5:at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return raw


@FUZZ
@given(name=st.sampled_from(sorted(SAMPLES)), cut=st.integers(0, 1000),
       size=st.one_of(st.none(), st.tuples(st.integers(1, 65535), st.integers(1, 65535))),
       changes=st.lists(st.tuples(st.integers(0, 80), st.binary(min_size=1, max_size=4)), max_size=4))
def test_any_damaged_image_decodes_or_is_refused(name, cut, size, changes):
    raw = bytearray(SAMPLES[name])
    if size is not None:
        raw = claim_size(name, raw, *size)
    for at, value in changes:  # headers live in the first bytes: sizes, depths, EXIF
        raw[at:at + len(value)] = value
    raw = raw[:len(raw) - cut] if cut < len(raw) else raw
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100_000  # a mangled size over this must be refused, not decoded into memory
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image"
            path.write_bytes(bytes(raw))
            try:
                decoded = decode_image(path, 16, 0.9)
            except InputError as exc:
                assert_one_line_naming(exc, path)
                return
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as image:
                    width, height = image.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    assert decoded.shape == (16, 16) and decoded.dtype == np.uint8
    assert width * height <= 100_000  # decoded only if within the limit

"""SHA256SUMS of an export: written last, checked before anything loads (every file read must be listed and
match, every listed file must match and lie inside the folder)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Collection

from tune_siamese.core import storage
from tune_siamese.core.errors import InputError

CHECKSUMS = "SHA256SUMS"
_SUMS_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")  # sha256sum's text ("  ") and binary (" *") forms


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(out: Path, files: list[str]) -> None:
    storage.write_text(out / CHECKSUMS, "".join(f"{file_sha256(out / name)}  {name}\n" for name in files))


def verify_checksums(folder: Path, needed: Collection[str]) -> dict[str, bytes]:
    """Check every entry of folder/SHA256SUMS, and that each of `needed` is listed; return the bytes of the
    needed files as they were hashed, so what loads is what was checked."""
    sums = folder / CHECKSUMS
    contents: dict[str, bytes] = {}
    for name, (number, digest) in listed_files(folder, needed).items():
        try:
            if name in needed:
                contents[name] = (folder / name).read_bytes()
                actual = hashlib.sha256(contents[name]).hexdigest()
            else:  # listed, not loaded (model.pt2): streamed, not kept
                actual = file_sha256(folder / name)
        except OSError as exc:
            raise InputError(f"{name} listed in {CHECKSUMS} cannot be read ({exc.strerror})", sums, number) from None
        if actual != digest:
            raise InputError(f"checksum mismatch for {name}: the export was modified or corrupted", sums, number)
    return contents


def listed_files(folder: Path, needed: Collection[str]) -> dict[str, tuple[int, str]]:
    entries = read_checksums(folder)
    for name in needed:
        if name not in entries:
            raise InputError(f"{name} is not listed; every file the export loads must be", folder / CHECKSUMS)
    return entries


def read_checksums(folder: Path) -> dict[str, tuple[int, str]]:
    """{file name: (line number, lower-case digest)} of folder/SHA256SUMS, every entry a file in the folder."""
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise InputError(f"no {CHECKSUMS} in the export; refusing to load it", folder)
    try:
        text = sums.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", sums) from None
    root = folder.resolve()
    entries: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _SUMS_LINE.fullmatch(line)
        if match is None:
            raise InputError("not a checksum line (want: 64 hex digits, two spaces, a file name)", sums, number)
        digest, name = match.group(1).lower(), match.group(2)
        parts = name.split("/")
        if name.startswith("/") or ".." in parts:
            raise InputError(f"{name} leaves the export folder", sums, number)
        if "" in parts or "." in parts:
            raise InputError(f"{name} is not a plain relative path", sums, number)
        if name in entries:
            raise InputError(f"{name} is listed twice (first on line {entries[name][0]})", sums, number)
        try:
            target = (folder / name).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise InputError(f"{name} cannot be resolved (a symbolic link loop?)", sums, number) from None
        if not target.is_relative_to(root):  # a symlink, of the file or of a folder on its way
            raise InputError(f"{name} resolves outside the export folder (a symbolic link)", sums, number)
        if not target.is_file():
            raise InputError(f"{name} listed in {CHECKSUMS} is missing or not a file", sums, number)
        entries[name] = (number, digest)
    if not entries:
        raise InputError("holds no checksums; refusing to load an export nothing vouches for", sums)
    return entries

"""Whom a model trained on: names are not stored (a face model's training people can be private), only a salted
SHA-256 digest of each, enough to tell whether a person to be scored was among them (identities.json)."""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tune_siamese.core.errors import InputError

PEOPLE_SCHEME = "sha256(bytes.fromhex(salt) + name.encode('utf-8')).hexdigest()"
PEOPLE_KEYS = {"scheme", "salt", "people", "digests"}
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def person_digest(salt: str, name: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + name.encode("utf-8")).hexdigest()


def people_record(names: Iterable[str]) -> dict[str, Any]:
    """The record of whom a model trained or was selected on (identities.json, checkpoint.pt's "trained_people"):
    a fresh random salt and each person's salted digest, sorted. Whoever guesses a name can still test it."""
    salt = secrets.token_hex(16)
    digests = sorted({person_digest(salt, name) for name in names})
    return {"scheme": PEOPLE_SCHEME, "salt": salt, "people": len(digests), "digests": digests}


@dataclass(frozen=True)
class TrainedPeople:
    """A loaded people record: which of some names were among the people a model trained or was selected on."""
    salt: str
    digests: frozenset[str]

    @classmethod
    def of(cls, names: Iterable[str]) -> "TrainedPeople":
        record = people_record(names)
        return cls(record["salt"], frozenset(record["digests"]))

    def __repr__(self) -> str:  # the digests themselves (thousands) tell a reader nothing
        return f"TrainedPeople({len(self.digests)} people)"

    def among(self, names: Iterable[str]) -> list[str]:
        return sorted(name for name in set(names) if person_digest(self.salt, name) in self.digests)


def parse_people_record(record: Any, path: Path) -> TrainedPeople:
    """Parse a people record; anything but what `people_record` writes is refused, naming the file."""
    if not isinstance(record, dict) or set(record) != PEOPLE_KEYS:
        raise InputError(f"the training people record must be a JSON object with keys {', '.join(sorted(PEOPLE_KEYS))}",
                         path)
    if record["scheme"] != PEOPLE_SCHEME:
        raise InputError(f"unknown digest scheme {record['scheme']!r} of the training people", path)
    salt, digests = record["salt"], record["digests"]
    if not isinstance(salt, str) or not re.fullmatch(r"(?:[0-9a-f]{2})+", salt):
        raise InputError("salt must be a string of hex digits", path)
    if (not isinstance(digests, list) or not all(isinstance(d, str) and _HEX_DIGEST.fullmatch(d) for d in digests)
            or digests != sorted(set(digests))):
        raise InputError("digests must be a sorted list of distinct sha256 hex digests", path)
    if record["people"] != len(digests) or isinstance(record["people"], bool):
        raise InputError(f"people={record['people']!r} is not the number of digests ({len(digests)})", path)
    return TrainedPeople(salt, frozenset(digests))

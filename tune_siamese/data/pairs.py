"""The compact dataset (`PairData`: one uint8 image array, int64 pair rows) and how pairs are made and split:
balanced pairs inside identity groups, self-pairs and duplicates (refused in test pairs, dropped from training
pairs), the identity-disjoint validation split, the larger validation set of all pairs among the validation
identities, the overlap check between test and training people, and the pairs mined each epoch from training
identities."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError


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
    val_all: np.ndarray | None = None  # with val_pairs="all": what validation scores instead of `val`

    @property
    def val_scored(self) -> np.ndarray:
        """The pairs each epoch's validation (val loss, model selection, the threshold) scores: the given `val`
        pairs, or with val_pairs="all" every pair among the validation identities (`all_validation_pairs`)."""
        return self.val if self.val_all is None else self.val_all

    def identities_of(self, pairs: np.ndarray) -> set[int]:
        return set(self.identity[pairs[:, 0]].tolist()) | set(self.identity[pairs[:, 1]].tolist())

    @property
    def training_people(self) -> list[str]:
        """Sorted names of everyone a model trained on this data has seen: the people of the train and val pairs
        (a retrain fits both; a trial selects its epoch on val; mined pairs come from train people)."""
        return sorted({self.names[i] for i in self.identities_of(self.train) | self.identities_of(self.val)})

    @property
    def mining_identities(self) -> np.ndarray:
        """Identities of the training part that appear in neither validation nor test pairs."""
        allowed = self.identities_of(self.train) - self.identities_of(self.val) - self.identities_of(self.test)
        return np.array(sorted(allowed), dtype=np.int64)

    def summary(self) -> str:
        def count(p: np.ndarray) -> str:
            return f"{len(p)} ({int(p[:, 2].sum())} same)"
        scored = "" if self.val_all is None else f" (scored on all {count(self.val_all)} among its people)"
        return (f"{self.info.get('source', '?')}: {len(self.images)} images {self.images.shape[1]}px, "
                f"{len(self.names)} identities; train {count(self.train)}, val {count(self.val)}{scored}, "
                f"test {count(self.test)}; dropped {self.info.get('dropped_pairs', 0)} pairs for disjointness"
                + (f", {repeated} repeated" if (repeated := self.info.get("repeated_pairs_dropped")) else ""))


def touches_trainval(identity: np.ndarray, trainval: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Mask of the test pairs with a person who also appears in a train/val pair."""
    return np.asarray(np.isin(identity[test[:, :2]], identity[trainval[:, :2]]).any(axis=1))


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


def balanced_pairs(identity: np.ndarray, group: np.ndarray, count: int, rng: np.random.Generator,
                   repeats: bool = False) -> np.ndarray:
    """`count` pairs (half same, half different) among the identities in `group`, never an image with itself.
    Distinct pairs (either order), fewer than `count` where the group holds too few; `repeats=True` (pairs mined
    for training) fills up with repeats instead."""
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
            if key in seen and (not repeats or tries < target * 10):
                continue
            seen.add(key)
            rows.append((int(a), int(b), label))
            made += 1
    order = rng.permutation(len(rows))
    return np.array(rows, dtype=np.int64)[order]


def split_identity_groups(n_identities: int, fractions: tuple[float, ...],
                          rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n_identities)
    cuts = np.cumsum([round(f * n_identities) for f in fractions[:-1]])
    return [np.sort(part) for part in np.split(order, cuts)]


def pairs_from_identities(images: np.ndarray, identity: np.ndarray, names: list[str], config: Config, n_pairs: int,
               test_share: float, info: dict[str, Any]) -> RawData:
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


@dataclass
class PairOrigin:
    """Where a part's pair rows came from, for messages: a pair list and each row's line in it, or (no lines) a
    source without a file, whose rows are named by position."""
    where: str | Path
    lines: list[int] | None = None

    def line(self, row: int) -> int | None:
        return None if self.lines is None else self.lines[row]

    def name(self, row: int) -> str:
        return f"pair {row + 1}" if self.lines is None else f"line {self.lines[row]}"


@dataclass
class RawData:
    images: np.ndarray
    identity: np.ndarray
    names: list[str]
    trainval: np.ndarray
    test: np.ndarray
    info: dict[str, Any]
    val: np.ndarray | None = None  # set when the loader already made identity-disjoint val pairs
    origins: dict[str, PairOrigin] = field(default_factory=dict)  # "trainval", "test": where the rows came from

    def origin(self, part: str) -> PairOrigin:
        return self.origins.get(part) or PairOrigin(f"{self.info.get('source', 'data')} ({part} pairs)")


def repeated_rows(pairs: np.ndarray) -> list[tuple[int, int | None]]:
    """(row, the earlier row it repeats, or None where it pairs an image with itself) for every row that does
    either; a duplicate is the same two images in either order."""
    first: dict[tuple[int, int], int] = {}
    found: list[tuple[int, int | None]] = []
    for row, (a, b) in enumerate(pairs[:, :2].tolist()):
        key = (min(a, b), max(a, b))
        if a == b:
            found.append((row, None))
        elif key in first:
            found.append((row, first[key]))
        else:
            first[key] = row
    return found


def _repeats_text(found: list[tuple[int, int | None]], origin: PairOrigin, shown: int = 5) -> str:
    selves = sum(earlier is None for _, earlier in found)
    examples = ", ".join(f"{origin.name(row)} ({'self-pair' if earlier is None else '= ' + origin.name(earlier)})"
                         for row, earlier in found[:shown])
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    unit = "pair" if origin.lines is None else "line"
    return (f"{selves} self-pair(s) (one image twice) and {len(found) - selves} duplicate(s) (the same two images "
            f"as an earlier {unit}, either order): {examples}{more}")


def refuse_repeated_pairs(pairs: np.ndarray, part: str, origin: PairOrigin) -> None:
    """Scored pairs (test, validation, a list given to evaluate) must not pair an image with itself (trivially the
    same person) or repeat a pair (it would count twice): refused, naming the first offender's line."""
    found = repeated_rows(pairs)
    if found:
        raise InputError(f"the {part} pairs hold {_repeats_text(found, origin)}; a self-pair is trivially the same "
                         f"person and a duplicate counts twice in the score: remove them", origin.where,
                         origin.line(found[0][0]))


def drop_repeated_pairs(pairs: np.ndarray, part: str, origin: PairOrigin) -> tuple[np.ndarray, int]:
    """(the pairs without self-pairs and later duplicates, how many went), with a one-line warning. Done before
    the validation split, so no pair can land in both the training and the validation part."""
    found = repeated_rows(pairs)
    if not found:
        return pairs, 0
    line = origin.line(found[0][0])
    where = origin.where if line is None else f"{origin.where}:{line}"
    print(f"warning: {where}: dropped {len(found)} {part} pair(s) before the validation split: "
          f"{_repeats_text(found, origin)}", file=sys.stderr)
    keep = np.ones(len(pairs), dtype=bool)
    keep[[row for row, _ in found]] = False
    return pairs[keep], len(found)


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


# val_pairs="all": different-person pairs drawn per same-person pair. On LFW-a the s.e. of the val loss hardly
# falls past 4 (the same-person half limits it; benchmarks/val_signal.py); 10 keeps a margin, and scoring embeds
# each image once, so the count costs almost nothing.
DIFFERENT_PER_SAME = 10


def all_validation_pairs(data: PairData, seed: int, different_per_same: int = DIFFERENT_PER_SAME) -> np.ndarray:
    """Every same-person pair of images among the validation identities (the people of `data.val`), plus a seeded
    sample of `different_per_same` times as many distinct different-person pairs among them (all of them when
    fewer exist), as pair rows in a seeded order. Refused when a validation identity appears in a train or test
    pair: then these pairs would score people the model trained on or the test measures."""
    people = np.array(sorted(data.identities_of(data.val)), dtype=np.int64)
    for part, pairs in (("test", data.test), ("training", data.train)):
        shared = data.identities_of(pairs).intersection(people.tolist())
        if shared:
            raise InputError(f"option val_pairs='all': {len(shared)} validation identities also appear in the "
                             f"{part} pairs (e.g. {data.names[min(shared)]}); use val_pairs=given")
    rng = np.random.default_rng(seed)
    members = np.flatnonzero(np.isin(data.identity, people))  # every image the data has of those people
    owner = data.identity[members]
    same = [group[np.stack(np.triu_indices(len(group), 1), axis=1)] for group in
            (members[owner == person] for person in people)]
    same_pairs = np.concatenate(same).astype(np.int64)
    n_total = len(members) * (len(members) - 1) // 2 - len(same_pairs)
    if not len(same_pairs) or not n_total:
        raise InputError("option val_pairs='all': the validation identities hold no two images of one person, or "
                         "only one person; use val_pairs=given")
    wanted = min(n_total, different_per_same * len(same_pairs))
    if wanted * 4 >= n_total:  # a large share of all of them: list them and choose
        a, b = np.triu_indices(len(members), 1)
        keep = owner[a] != owner[b]
        chosen = rng.choice(int(keep.sum()), size=wanted, replace=False)
        diff_pairs = np.stack([members[a[keep][chosen]], members[b[keep][chosen]]], axis=1)
    else:  # few of many: draw, keep distinct different-person pairs in the order drawn
        found: dict[tuple[int, int], None] = {}
        while len(found) < wanted:
            a, b = rng.integers(len(members), size=(2, 2 * (wanted - len(found)) + 16))
            for i, j in zip(a.tolist(), b.tolist()):
                if owner[i] != owner[j] and len(found) < wanted:
                    found.setdefault((members[min(i, j)], members[max(i, j)]), None)
        diff_pairs = np.array(list(found), dtype=np.int64)
    rows = np.concatenate([np.column_stack([same_pairs, np.ones(len(same_pairs), np.int64)]),
                           np.column_stack([diff_pairs, np.zeros(len(diff_pairs), np.int64)])])
    return rows[rng.permutation(len(rows))]


def split_for_all_pairs(pairs: np.ndarray, identity: np.ndarray, fraction: float, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray, int]:
    """The identity split for val_pairs="all": (train, val, dropped count) like `split_validation`'s, but the
    validation people are chosen for their same-person pairs alone, those in the fewest pairs first, until as many
    pairs as the default split holds out have left training (theirs, and pairs shared with them, dropped). The
    different-person pairs come from all pairs among their images (`all_validation_pairs`), so holding out people
    for them would only take training pairs: the same-person half is what limits the signal."""
    budget = 2 * max(1, round(len(pairs) * fraction / 2))
    ids = identity[pairs[:, :2]]
    rows_of: dict[int, list[int]] = {}
    for row, (a, b) in enumerate(ids.tolist()):
        rows_of.setdefault(a, []).append(row)
        if b != a:
            rows_of.setdefault(b, []).append(row)
    people = rng.permutation(np.unique(ids[pairs[:, 2] == 1, 0])).tolist()
    people.sort(key=lambda k: len(rows_of[k]))  # stable: seeded order among equally cheap people
    chosen, touched, taken = np.zeros(identity.max() + 1, bool), np.zeros(len(pairs), bool), 0
    for person in people:
        new = [row for row in rows_of[person] if not touched[row]]
        if taken + len(new) <= budget:
            chosen[person], touched[new], taken = True, True, taken + len(new)
        if taken == budget:
            break
    inside = np.flatnonzero(chosen[ids].all(axis=1))
    return pairs[~touched], pairs[rng.permutation(inside)], taken - len(inside)


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
        return balanced_pairs(self.identity, self.allowed, count, self.rng, repeats=True)

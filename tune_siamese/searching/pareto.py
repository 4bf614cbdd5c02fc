"""The Pareto front of a multi-objective search and the rule that picks one point of it (--pick).

Every objective is minimised (val loss, parameters, FLOPs, latency). A trial is on the front when no other trial
is at least as good in every objective and better in one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from tune_siamese.core.errors import InputError

BEST = "best"
SMALLEST_WITHIN = "smallest-within"


def front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, in their order."""
    def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


@dataclass(frozen=True)
class PickRule:
    """`best`: the lowest val loss; `smallest-within=D`: the lowest second objective among the trials whose val
    loss is within D of the lowest (ties: the lower val loss)."""

    kind: str = BEST
    within: float = 0.0

    def __str__(self) -> str:
        return BEST if self.kind == BEST else f"{SMALLEST_WITHIN}={self.within:g}"

    def choose(self, points: Sequence[Sequence[float]]) -> int:
        """The index of the picked point; points[i][0] is the val loss, points[i][1] the second objective."""
        if not points:
            raise ValueError("no point to pick from")
        lowest = min(p[0] for p in points)
        if self.kind == BEST:
            return min(range(len(points)), key=lambda i: points[i][0])
        near = [i for i, p in enumerate(points) if p[0] <= lowest + self.within]
        return min(near, key=lambda i: (points[i][1], points[i][0]))


def parse_pick(text: str, objectives: Sequence[str], source: str = "option --pick") -> PickRule:
    if text == BEST:
        return PickRule()
    kind, sep, value = text.partition("=")
    if kind != SMALLEST_WITHIN or not sep:
        raise InputError(f"{source}={text!r} is not {BEST} or {SMALLEST_WITHIN}=D (e.g. {SMALLEST_WITHIN}=0.01)")
    try:
        within = float(value)
    except ValueError:
        raise InputError(f"{source}={text!r}: D must be a number (a val-loss margin, e.g. 0.01)") from None
    if not math.isfinite(within) or within < 0:
        raise InputError(f"{source}={text!r}: D must be a finite number >= 0")
    if len(objectives) < 2:
        raise InputError(f"{source}={text!r} needs a second objective to be smallest in (--objectives "
                         "val_loss,params, for example)")
    return PickRule(SMALLEST_WITHIN, within)

"""The analysis tests fit fANOVA over three seeds, not the ten a report averages: a mean over three is as much a
mean (test_analysis.py checks it against the single seeds), and each report here costs a third of the forests."""
from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def three_fanova_seeds() -> Iterator[None]:
    from analysis import importance

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importance, "FANOVA_SEEDS", (0, 1, 2))
        yield

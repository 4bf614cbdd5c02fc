"""benchmarks/search_efficiency.py's pure parts: the method grammar, the budget arithmetic and the verdict lines
(no Ray, no training)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import search_efficiency as se  # noqa: E402


def test_methods_are_parsed_and_bad_ones_refused() -> None:
    method = se.parse_method("TPE+asha:rung=avg3:finalists=2x3:val=all")
    assert (method.searcher, method.asha, method.rung, method.finalists, method.finalist_seeds, method.val_pairs) == \
        ("tpe", True, "avg3", 2, 3, "all")
    assert se.parse_method("random").asha is False
    assert se.parse_method("tpe:reproducible").reproducible
    assert [m.name for m in se.parse_methods("all,tpe+asha")] == se.BASIC + se.VARIANTS  # no duplicates
    for bad in ("tpe+asha:reproducible", "tpe:rung=best", "hyperband", "tpe+hb", "tpe+asha:finalists=0x2",
                "tpe+asha:rung=worst"):
        with pytest.raises(argparse.ArgumentTypeError):
            se.parse_method(bad)


def test_budget_sets_trials_and_finalists_come_out_of_it() -> None:
    args = argparse.Namespace(budget=36, max_epochs=6, grace_period=1, num_samples=0)
    assert se.num_samples(args, se.parse_method("tpe+asha")) == 36  # one-epoch trials could use it all
    assert se.num_samples(args, se.parse_method("random")) == 6  # every trial runs max_epochs
    finalists = se.parse_method("tpe+asha:finalists=2x2")
    assert se.search_budget(args, finalists) == 36 - 2 * 2 * 6
    assert se.num_samples(args, finalists) == 12


def runs(aucs: list[float], epochs: int = 36) -> list[dict]:
    return [{"seed": s, "epochs": epochs, "finalist_epochs": 0, "test": {"auc": a}} for s, a in enumerate(aucs)]


def test_verdict_counts_seeds_within_a_point_of_the_oracle() -> None:
    args = argparse.Namespace(auc_points=1.0)
    oracle = {"auc": 0.80}
    tpe = runs([0.80, 0.795, 0.79, 0.801, 0.785])  # 0.79 is exactly one point away: near; 0.785 is not
    scored = {"grid": runs([0.78], 144), se.TPE: tpe, se.RANDOM: runs([0.78] * 5)}
    lines = "\n".join(se.verdicts(args, scored, oracle, 144, 0.01))
    assert "in 4 of 5 seeds (target ≥ 4 of 5): met" in lines
    assert "0.25 of the grid's 144 (target ≤ 0.25): met" in lines
    assert "all targets met" in lines
    assert f"- {se.RANDOM}: 0/5 near the oracle" in lines

    tpe[1]["test"]["auc"] = 0.78  # a second seed falls away
    scored[se.RANDOM] = runs([0.80] * 5, epochs=40)  # and random+ASHA is ahead on the mean
    lines = "\n".join(se.verdicts(args, scored, oracle, 144, 0.01))
    assert "in 3 of 5 seeds (target ≥ 4 of 5): MISSED" in lines
    assert "(target > 0): MISSED" in lines
    assert "all targets NOT met" in lines

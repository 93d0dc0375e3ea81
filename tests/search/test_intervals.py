"""Accuracies with 95% intervals, and the rule that calls a difference inside its interval a tie."""

from __future__ import annotations

import pytest

from search.analysis.intervals import Accuracy
from search.analysis.intervals import Comparison
from search.analysis.intervals import compare_accuracy
from search.analysis.intervals import compare_cost
from search.analysis.intervals import difference_interval
from search.analysis.intervals import measured
from search.analysis.intervals import wilson


def test_wilson_interval_matches_published_values() -> None:
    assert wilson(50.0, 100) == pytest.approx((40.383, 59.617), abs=1e-3)
    lo, hi = wilson(0.0, 10)  # no success in 10: the upper end is z^2 / (n + z^2), not 0 as the Wald interval says
    assert lo == 0.0 and hi == pytest.approx(100 * 1.959964**2 / (10 + 1.959964**2), abs=1e-3)
    # Newcombe (1998), Table II, example (a): 56/70 - 48/80, method 10 gives 0.0524 to 0.3339.
    d = difference_interval(Accuracy(100 * 56 / 70, 70), Accuracy(100 * 48 / 80, 80))
    assert d == pytest.approx((5.24, 33.39), abs=0.01)
    assert str(Accuracy(97.2, 10_000)) == "97.20 [96.86, 97.51]"


def test_a_difference_inside_its_interval_is_a_tie() -> None:
    assert compare_accuracy(Accuracy(90.26, 10_000), Accuracy(90.0, 10_000)) == Comparison.TIE  # the 0.26 "win"
    assert compare_accuracy(Accuracy(92.0, 10_000), Accuracy(90.0, 10_000)) == Comparison.BETTER
    assert compare_accuracy(Accuracy(90.0, 10_000), Accuracy(92.0, 10_000)) == Comparison.WORSE
    assert compare_accuracy(Accuracy(92.0, 200), Accuracy(90.0, 200)) == Comparison.TIE  # fewer images: wider
    assert compare_cost(0.995, 1.0) == Comparison.TIE and compare_cost(0.9, 1.0) == Comparison.BETTER


def test_a_seed_spread_is_reported_where_seeds_were_run() -> None:
    one = measured({"accuracy": 90.0, "accuracy_images": 1000})
    assert one.seed_spread is None and "seed" not in str(one)
    three = measured({"accuracy": 90.0, "accuracy_images": 1000, "accuracy_seeds": [89.0, 90.0, 91.0]})
    assert three.seed_spread == pytest.approx(1.0) and str(three).endswith("seed sd 1.00")

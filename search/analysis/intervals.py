"""Accuracies with their 95% intervals, and the one rule that says when two of them differ.

Why: an accuracy is a proportion of the images scored, so it carries binomial noise that shrinks with the
number of images (about +-0.6 points at 95% on 2,000 images near 90%). A front that "beats" a baseline by less
than that has not shown anything; the report must say "ties" instead.

- The interval of one accuracy is Wilson's score interval: unlike the normal ("Wald") interval it stays inside
  [0, 100] and keeps its coverage near 0% and 100%, where compressed models and chance-level failures live.
- Two accuracies differ when the 95% interval of their *difference* excludes 0 (Newcombe's hybrid score
  interval, method 10 of Newcombe 1998, built from the two Wilson intervals). Non-overlap of the two 95%
  intervals would be a test at about the 99.5% level: it calls real differences ties. Both models are scored
  on the same images, so their errors are positively correlated and a paired interval would be narrower still;
  that needs per-image predictions, which are not stored, so this interval errs on the side of "ties".
- Seeds: when a recipe was trained with several seeds, `seeds` (from `<key>_seeds` in its metrics) holds each
  seed's accuracy and the spread is reported next to the binomial interval. No study runs seeds today; this is
  the hook, and `compare_accuracy` does not use the spread yet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson(percent: float, images: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on `images` images, in percent."""
    if images <= 0:
        return (float("nan"), float("nan"))
    p = percent / 100.0
    denom = 1.0 + z * z / images
    centre = (p + z * z / (2 * images)) / denom
    half = z * math.sqrt(p * (1 - p) / images + z * z / (4 * images * images)) / denom
    return (100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half))


@dataclass(frozen=True)
class Accuracy:
    """One measured accuracy (%), the number of images it was measured on, and (when run) per-seed values."""

    percent: float
    images: int
    seeds: tuple[float, ...] = ()

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.percent, self.images)

    @property
    def seed_spread(self) -> float | None:
        """Sample standard deviation over seeds, or None when fewer than two seeds were run."""
        if len(self.seeds) < 2:
            return None
        mean = sum(self.seeds) / len(self.seeds)
        return math.sqrt(sum((s - mean) ** 2 for s in self.seeds) / (len(self.seeds) - 1))

    def __str__(self) -> str:
        lo, hi = self.interval
        seeds = f", seed sd {self.seed_spread:.2f}" if self.seed_spread is not None else ""
        return f"{self.percent:.2f} [{lo:.2f}, {hi:.2f}]{seeds}"


def measured(metrics: Mapping[str, Any], key: str = "accuracy") -> Accuracy:
    """The accuracy `key` of an evaluator result with its image count (`<key>_images`, 0 when unknown) and, where
    an evaluator ran several seeds, their accuracies (`<key>_seeds`)."""
    return Accuracy(float(metrics[key]), int(metrics.get(f"{key}_images", 0)),
                    tuple(float(s) for s in metrics.get(f"{key}_seeds", ())))


def difference_interval(a: Accuracy, b: Accuracy) -> tuple[float, float]:
    """95% interval of a - b in points (Newcombe's hybrid score interval for independent proportions)."""
    la, ua = a.interval
    lb, ub = b.interval
    d = a.percent - b.percent
    return (d - math.sqrt((a.percent - la) ** 2 + (ub - b.percent) ** 2),
            d + math.sqrt((ua - a.percent) ** 2 + (b.percent - lb) ** 2))


class Comparison(StrEnum):
    BETTER = "better"
    TIE = "ties"
    WORSE = "worse"


def compare_accuracy(a: Accuracy, b: Accuracy) -> Comparison:
    """BETTER or WORSE only when the difference's 95% interval excludes 0; unknown image counts tie."""
    lo, hi = difference_interval(a, b)
    if math.isnan(lo) or lo <= 0 <= hi:
        return Comparison.TIE
    return Comparison.BETTER if lo > 0 else Comparison.WORSE


COST_RELEVANCE = 0.02  # a modelled cost that moves by less than 2% of the larger value has not changed


def compare_cost(a: float, b: float, relevance: float = COST_RELEVANCE) -> Comparison:
    """For costs (lower is better): BETTER when `a` is below `b` by more than `relevance` of the larger one."""
    if abs(a - b) <= relevance * max(abs(a), abs(b)):
        return Comparison.TIE
    return Comparison.BETTER if a < b else Comparison.WORSE

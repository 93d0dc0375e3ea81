"""Fitting a cascade's thresholds on the validation split, and reporting it on the test split.

The fit sees the stages' probabilities on validation images only (`fit` takes no test data at all; `score`
reads `splits.val` to fit and `splits.test` only afterwards, to report): choosing thresholds by test accuracy
would make the test split part of model selection, the thesis's mistake. Goals are a registry:

- `accuracy_within`: the cheapest thresholds (least expected cost on one target) whose validation accuracy is
  within `points` of the top stage's own validation accuracy;
- `budget`: the most accurate thresholds on validation whose expected cost is within the budget.

Candidate thresholds are the quantiles of each stage's validation scores (every distinct escalation rate the
split can show, up to 200 per boundary), plus 0 (never escalate) and 1 (always).
"""

from __future__ import annotations

import hashlib
import itertools
import weakref
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.datasets import ImageSet
from evaluators.data.splits import Splits
from search.cascade.model import SCORES
from search.cascade.model import Cascade
from search.cascade.model import CascadeError
from search.cascade.model import Outcome
from search.cascade.model import run

Cost = Callable[[Sequence[float]], float]  # reach shares -> expected cost in the goal's unit
CANDIDATES = 200


@dataclass(frozen=True)
class Goal:
    kind: str      # a key of GOALS
    value: float   # points (accuracy_within) or the budget (budget)

    def __post_init__(self) -> None:
        if self.kind not in GOALS:
            raise CascadeError(f"unknown cascade goal {self.kind!r}; known: {', '.join(sorted(GOALS))}")
        if self.value < 0:
            raise CascadeError(f"cascade goal {self.kind} needs a value >= 0, got {self.value:g}")


@dataclass(frozen=True)
class Fitted:
    cascade: Cascade       # with the fitted thresholds
    val: Outcome
    goal: Goal
    val_cost: float        # expected cost on validation in the goal's cost unit


Chooser = Callable[[list[tuple[Outcome, float]], Goal], int]


def _accuracy_within(options: list[tuple[Outcome, float]], goal: Goal) -> int:
    top = options[0][0].stage_accuracy[-1]
    ok = [i for i, (o, _) in enumerate(options) if o.accuracy >= top - goal.value]
    if not ok:  # escalating every input reproduces the top stage: only ties in its scores can make this empty
        ok = [max(range(len(options)), key=lambda i: options[i][0].accuracy)]
    return min(ok, key=lambda i: (options[i][1], -options[i][0].accuracy))


def _budget(options: list[tuple[Outcome, float]], goal: Goal) -> int:
    ok = [i for i, (_, cost) in enumerate(options) if cost <= goal.value]
    if not ok:
        raise CascadeError(f"no thresholds meet the budget {goal.value:g}: even never escalating costs "
                           f"{min(c for _, c in options):.4g}; raise the budget")
    return max(ok, key=lambda i: (options[i][0].accuracy, -options[i][1]))


GOALS: dict[str, Chooser] = {"accuracy_within": _accuracy_within, "budget": _budget}


def candidate_thresholds(scores: np.ndarray, count: int = CANDIDATES) -> np.ndarray:
    """Up to `count` thresholds that each give a different escalation rate on these scores, with 0 and 1."""
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, count)) if len(scores) else np.array([])
    return np.unique(np.clip(np.concatenate([[0.0, 1.0], quantiles]), 0.0, 1.0))


def fit(cascade: Cascade, val_probs: Sequence[np.ndarray], val_labels: np.ndarray, goal: Goal,
        cost: Cost) -> Fitted:
    """The thresholds of `cascade` that best meet `goal` on the validation probabilities given.

    Takes validation data only, by signature: there is no way to hand it the test split by accident."""
    boundaries = len(cascade.stages) - 1
    grids = [candidate_thresholds(SCORES[cascade.policy.score](p)) for p in val_probs[:boundaries]]
    if boundaries > 1:  # a triple: a coarser grid per boundary keeps the product small
        grids = [g[np.linspace(0, len(g) - 1, min(len(g), 60)).astype(int)] for g in grids]
    tried = [cascade.with_thresholds(ts) for ts in itertools.product(*grids)]
    options = []
    for candidate in tried:
        outcome = run(candidate, val_probs, val_labels, "val")
        options.append((outcome, cost(outcome.reach)))
    best = GOALS[goal.kind](options, goal)
    return Fitted(tried[best], options[best][0], goal, options[best][1])


# Probabilities per model (by identity, held weakly) and per image set (by a hash of its pixels and labels): a
# study scores several cascades that share the teacher, whose forward passes over validation and test would
# otherwise be repeated for each (minutes for a ResNet-50 on a CPU). Stage models are final (F3) and not trained
# further, so a cached answer stays right.
_PROBS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, int], np.ndarray]] = weakref.WeakKeyDictionary()


def _data_key(data: ImageSet, batcher: Batcher) -> tuple[str, int]:
    digest = hashlib.sha256(data.digest())
    digest.update(data.labels.numpy().tobytes())
    return digest.hexdigest(), batcher.resolution


@torch.no_grad()
def stage_probs(model: nn.Module, data: ImageSet, batcher: Batcher, batch_size: int = 500) -> np.ndarray:
    """Softmax probabilities of `model` on every image of `data` (float64, so scores compare exactly)."""
    key = _data_key(data, batcher)
    cached = _PROBS.setdefault(model, {})
    if key not in cached:
        model = model.eval().cpu()
        out = [torch.softmax(model(x).double(), dim=1).numpy() for x, _ in batcher.eval_batches(data, batch_size)]
        cached[key] = np.concatenate(out) if out else np.zeros((0, 0))
    return cached[key]


def labels_of(data: ImageSet) -> np.ndarray:
    return data.labels.numpy().astype(np.int64)


def fit_on_validation(cascade: Cascade, models: Sequence[nn.Module], splits: Splits, batcher: Batcher, goal: Goal,
                      cost: Cost, val_images: int = 0) -> Fitted:
    """`fit` on the stages' outputs over the validation split (its first `val_images`, 0: all). Reads
    `splits.val` and nothing else."""
    val = splits.val if not val_images else splits.val.first(val_images)
    return fit(cascade, [stage_probs(m, val, batcher) for m in models], labels_of(val), goal, cost)


def report_on_test(cascade: Cascade, models: Sequence[nn.Module], test: ImageSet, batcher: Batcher) -> Outcome:
    """The fitted cascade applied to test images: the numbers a report may quote."""
    return run(cascade, [stage_probs(m, test, batcher) for m in models], labels_of(test), "test")

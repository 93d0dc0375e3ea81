"""After the search: the front chosen on validation metrics gets the full fine-tune (F3), and so do the
baseline recipes (the thesis's table), through the same pipeline and the same budgets.

The front is selected with F2 *validation* numbers only; F3 then reports test accuracy for those
recipes. Selecting on test would leak it into model selection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from evaluators import metric_names as names
from evaluators.candidate import Evaluator
from evaluators.candidate import Fidelity
from search.analysis.intervals import measured
from search.analysis.objectives import direction
from search.analysis.pareto import pareto_mask
from search.analysis.reference import ReferenceBox
from search.analysis.reference import knee
from search.engine.loop import BaselineSet
from search.engine.loop import told_at_f2
from spaces.recipe import Recipe
from spaces.thesis_recipes import survey_quantization_recipes
from spaces.thesis_recipes import thesis_table_recipes

BASELINES: dict[BaselineSet, Callable[[str], list[Recipe]]] = {
    BaselineSet.THESIS: thesis_table_recipes,
    BaselineSet.SURVEY: lambda teacher: survey_quantization_recipes(),
    BaselineSet.NONE: lambda teacher: [],
}


@dataclass(frozen=True)
class Candidate:
    """One recipe with its metrics per fidelity (`f1`, `f2`, `f3`), from the search or a baseline."""

    recipe: Recipe
    source: str  # "trial 12" or "baseline"
    metrics: dict[str, dict[str, Any]]
    trial: int | None = None
    feasible: bool = True
    failure: str = ""  # why its final level is no result ("collapsed: ..."); such a candidate is not a point


def scored(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates whose numbers count: a collapsed one is a failure, not a (cheap, "optimal") point."""
    return [c for c in candidates if not c.failure]


def completed(study: optuna.Study) -> list[Candidate]:
    """The trials scored at F2: F1-only and F0-rejected trials are COMPLETE for the sampler, not candidates."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if not told_at_f2(t):
            continue
        metrics = {k: t.user_attrs[k] for k in ("f1", "f2") if k in t.user_attrs}
        out.append(Candidate(Recipe.from_json(t.user_attrs["recipe"]), f"trial {t.number}", metrics, t.number,
                             bool(t.user_attrs.get("feasible", True))))
    return _unique(out)


def _unique(candidates: list[Candidate]) -> list[Candidate]:
    """The same recipe sampled twice is one candidate (the first trial that found it)."""
    seen: dict[str, Candidate] = {}
    for c in candidates:
        seen.setdefault(c.recipe.hash(), c)
    return list(seen.values())


def objective_key(objective: str, accuracy_key: str = "accuracy") -> str:
    """The result key an objective is read from: `accuracy_key` for `accuracy` (`test_accuracy` at F3), and for
    another target's accuracy its test-split name when `accuracy_key` reads the test split."""
    if objective == "accuracy":
        return accuracy_key
    return names.on_test(objective) if accuracy_key.startswith("test_") and names.is_accuracy(objective) else objective


def points(candidates: list[Candidate], objectives: tuple[str, ...], level: str,
           accuracy_key: str = "accuracy") -> np.ndarray:
    return np.array([[float(c.metrics[level][objective_key(o, accuracy_key)]) for o in objectives]
                     for c in candidates], dtype=float).reshape(len(candidates), len(objectives))


def front(candidates: list[Candidate], objectives: tuple[str, ...], level: str = "f2") -> list[Candidate]:
    """Feasible, non-dominated candidates at `level` (validation metrics)."""
    pool = [c for c in candidates if c.feasible and level in c.metrics]
    if not pool:
        return []
    mask = pareto_mask(points(pool, objectives, level), [direction(o) for o in objectives])
    return [c for c, keep in zip(pool, mask, strict=True) if keep]


def front_knee(front_: list[Candidate], box: ReferenceBox, level: str = "f2", accuracy_key: str = "accuracy") -> int:
    """The knee of `front_` (an index into it) among its scored members, measured in the study's box."""
    alive = [i for i, c in enumerate(front_) if not c.failure and level in c.metrics]
    if not alive:
        return -1
    costs = [o for o in box.objectives if not names.is_accuracy(o)]
    kinds = [o for o in box.objectives if names.is_accuracy(o)] or ["accuracy"]
    accuracies = [tuple(measured(front_[i].metrics[level], objective_key(o, accuracy_key)) for o in kinds)
                  for i in alive]
    cost_points = np.array([[float(front_[i].metrics[level][o]) for o in costs] for i in alive])
    return alive[knee(accuracies, cost_points, box)]


def spread(front_: list[Candidate], limit: int, box: ReferenceBox) -> list[Candidate]:
    """At most `limit` front members: the knee, the most accurate, then evenly spaced along accuracy."""
    if len(front_) <= limit:
        return front_
    knee_ = front_[front_knee(front_, box)]
    ordered = sorted(front_, key=lambda c: c.metrics["f2"]["accuracy"], reverse=True)
    picks = {knee_.recipe.hash(): knee_}
    for i in [0, *np.linspace(0, len(ordered) - 1, limit).round().astype(int)]:
        if len(picks) >= limit:
            break
        picks.setdefault(ordered[i].recipe.hash(), ordered[i])
    return list(picks.values())


def finish(candidate: Candidate, evaluator: Evaluator, levels: tuple[Fidelity, ...]) -> Candidate:
    """`candidate` scored at every level of `levels`; marked failed when the last one ended at chance level."""
    metrics = dict(candidate.metrics)
    for level in levels:
        if level.value not in metrics:
            metrics[level.value] = evaluator.evaluate(candidate.recipe, level)
    last = metrics[levels[-1].value] if levels else {}
    failure = (evaluator.collapsed(last) or "") if "accuracy" in last else ""
    return Candidate(candidate.recipe, candidate.source, metrics, candidate.trial, candidate.feasible, failure)


Job = tuple[Candidate, tuple[Fidelity, ...]]
# (job index, the finished candidate or why it failed, seconds it took): results arrive as they finish
Finished = tuple[int, "Candidate | Exception", float]


def attempt(candidate: Candidate, evaluator: Evaluator,
            levels: tuple[Fidelity, ...]) -> tuple[Candidate | Exception, float]:
    """`finish`, timed, with its failure returned as a value: one broken recipe must not lose the report."""
    t0 = time.monotonic()
    try:
        result: Candidate | Exception = finish(candidate, evaluator, levels)
    except Exception as err:  # noqa: BLE001 - the caller logs it and goes on
        result = err
    return result, time.monotonic() - t0


def finish_serially(jobs: list[Job], evaluator: Evaluator) -> Iterator[Finished]:
    for i, (candidate, levels) in enumerate(jobs):
        yield i, *attempt(candidate, evaluator, levels)


def baselines(which: BaselineSet, teacher_arch: str) -> list[Candidate]:
    return [Candidate(r, "baseline", {}) for r in BASELINES[which](teacher_arch)]

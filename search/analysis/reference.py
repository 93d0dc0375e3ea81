"""The study's reference box: where the hypervolume and the knee measure a front, fixed before any trial runs.

Why a box fixed by the study: a hypervolume in raw units (ms x MB x %) depends on a reference point, and a
reference taken from the run's own worst candidate moves with every run, so two runs of one study could not be
compared. Here accuracy runs from chance (100 / classes: what a collapsed network scores) to the teacher's
accuracy, and every cost from 0 to the unmodified teacher's own modelled cost (the costlier of its fp32 and 8-bit
forms: `search.pipeline.study.teacher_costs` says why). Both ends are properties of the study (its classes, its teacher,
its targets), so the normalised hypervolume lies in [0, 1] and means the same in every run: 1 would be a free
model as accurate as the teacher. A recipe costlier than the teacher on some target adds nothing.

The knee is measured in the same box, so a cost is judged against the teacher's cost rather than against the
front's own spread: on a front whose latencies differ by 0.5%, scaling by the front's span stretched that 0.5%
to full weight and chose a recipe 3 points less accurate than its neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluators import metric_names as names
from search.analysis.intervals import Accuracy
from search.analysis.intervals import Comparison
from search.analysis.intervals import compare_accuracy
from search.analysis.intervals import compare_cost
from search.analysis.pareto import hypervolume


@dataclass(frozen=True)
class ReferenceBox:
    """Accuracy from `chance` to `teacher_accuracy` (%), each cost objective from 0 to the teacher's cost. Every
    accuracy objective (`accuracy`, and `accuracy_<target>` under a target's own arithmetic) spans the same
    extent: the teacher's float accuracy is what each arithmetic tries to keep."""

    objectives: tuple[str, ...]
    chance: float
    teacher_accuracy: float
    teacher_costs: tuple[tuple[str, float], ...]  # (cost objective, the teacher's cost): each cost's far edge

    @classmethod
    def of_study(cls, objectives: Sequence[str], classes: int, teacher_accuracy: float,
                 teacher_metrics: Mapping[str, Any]) -> ReferenceBox:
        """The box of a study: its classes, its teacher's accuracy and the teacher recipe's F0 cost metrics."""
        costs = tuple((o, float(teacher_metrics[o])) for o in objectives if not names.is_accuracy(o))
        return cls(tuple(objectives), 100.0 / classes, float(teacher_accuracy), costs)

    def with_accuracy(self, teacher_accuracy: float) -> ReferenceBox:
        """The same box measured against the teacher's accuracy on another split (test instead of validation)."""
        return ReferenceBox(self.objectives, self.chance, float(teacher_accuracy), self.teacher_costs)

    def unit(self, points: np.ndarray) -> np.ndarray:
        """Points (n x objectives, original units) as minimisation coordinates: 0 is the teacher's accuracy or
        a free model, 1 chance accuracy or the teacher's cost. Accuracy above the teacher's counts as the teacher's."""
        p = np.asarray(points, dtype=float).reshape(-1, len(self.objectives))
        out = np.empty_like(p)
        span = self.teacher_accuracy - self.chance
        edge = dict(self.teacher_costs)
        for j, objective in enumerate(self.objectives):
            if names.is_accuracy(objective):
                out[:, j] = np.clip(1.0 - (p[:, j] - self.chance) / span, 0.0, None) if span > 0 else np.nan
            else:
                out[:, j] = p[:, j] / edge[objective]
        return out

    def hypervolume(self, points: np.ndarray) -> float:
        """Normalised hypervolume in [0, 1]: the box's fraction that `points` dominate (nan when the teacher is
        no better than chance, which leaves the box no accuracy extent)."""
        unit = self.unit(points)
        if len(unit) and np.isnan(unit).any():
            return float("nan")
        return hypervolume(unit, [1.0] * len(self.objectives), ["min"] * len(self.objectives))

    def as_dict(self) -> dict[str, list[float]]:
        """objective -> [low end, high end]: [chance, the teacher's accuracy]; [0, the teacher's cost] for a cost."""
        accuracies = {o: [self.chance, self.teacher_accuracy] for o in self.objectives if names.is_accuracy(o)}
        return {"accuracy": [self.chance, self.teacher_accuracy], **accuracies,
                **{o: [0.0, c] for o, c in self.teacher_costs}}


Accuracies = Accuracy | tuple[Accuracy, ...]  # a point's accuracy, or one per accuracy objective (box order)


def _row(accuracy: Accuracies) -> tuple[Accuracy, ...]:
    return accuracy if isinstance(accuracy, tuple) else (accuracy,)


def relevantly_dominates(a: int, b: int, accuracies: Sequence[Accuracies], costs: np.ndarray) -> bool:
    """Point `a` is no worse than `b` beyond relevance in any objective and better beyond it in one: an accuracy
    beyond the difference's 95% interval, a cost by more than `intervals.COST_RELEVANCE` of its value."""
    verdicts = [*(compare_accuracy(x, y) for x, y in zip(_row(accuracies[a]), _row(accuracies[b]), strict=True)),
                *(compare_cost(float(x), float(y)) for x, y in zip(costs[a], costs[b], strict=True))]
    return Comparison.WORSE not in verdicts and Comparison.BETTER in verdicts


def knee(accuracies: Sequence[Accuracies], costs: np.ndarray, box: ReferenceBox) -> int:
    """The best compromise of a front, as an index: among the points no other point beats beyond relevance, the
    one closest to the utopia corner of the study's box (accuracy weighs as much as all costs together).

    `costs` is n x (objectives without accuracy), in the box's objective order. Differences that are noise (an
    accuracy inside its interval) or irrelevant (a cost within 2%) cannot make a point the knee. Where the box
    has several accuracy objectives (one per target arithmetic), each point gives a tuple of them in box order
    and they share the accuracy's weight equally.
    """
    n = len(accuracies)
    if n == 0:
        return -1
    costs = np.asarray(costs, dtype=float).reshape(n, -1)
    alive = [i for i in range(n) if not any(relevantly_dominates(j, i, accuracies, costs) for j in range(n) if j != i)]
    alive = alive or list(range(n))  # ties are not transitive: never leave the front without a knee
    accuracy_names = tuple(o for o in box.objectives if names.is_accuracy(o)) or ("accuracy",)
    points = np.column_stack([[[x.percent for x in _row(a)] for a in accuracies], costs])
    order = (*accuracy_names, *(o for o in box.objectives if not names.is_accuracy(o)))
    unit = ReferenceBox(order, box.chance, box.teacher_accuracy, box.teacher_costs).unit(points)
    share = max(len(order) - len(accuracy_names), 1) / len(accuracy_names)
    weights = np.array([share if names.is_accuracy(o) else 1.0 for o in order])
    distances = np.linalg.norm(unit[alive] * np.sqrt(weights), axis=1)
    return alive[int(np.argmin(distances))]


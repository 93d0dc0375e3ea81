"""Pareto fronts, hypervolume and the knee point, for objectives with mixed directions.

Every function takes a points array (n x m) and a direction per objective ("max" or "min"); points are
first turned into a minimisation problem, so the geometry is written once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Directions = Sequence[str]


def to_minimisation(points: np.ndarray, directions: Directions) -> np.ndarray:
    signs = np.array([{"min": 1.0, "max": -1.0}[d] for d in directions])
    return np.asarray(points, dtype=float) * signs


def dominated_by_any(point: np.ndarray, others: np.ndarray) -> bool:
    """`point` is dominated by at least one row of `others` (all minimised): that row is no worse in every
    objective and better in at least one.

    The one dominance rule: the front (`pareto_mask`) and the report's "which baselines does the front
    beat" both call it, so they cannot disagree about what dominating means.
    """
    if len(others) == 0:
        return False
    no_worse = np.all(others <= point, axis=1)
    better = np.any(others < point, axis=1)
    return bool(np.any(no_worse & better))


def pareto_mask(points: np.ndarray, directions: Directions) -> np.ndarray:
    """True for every non-dominated point; duplicates of a front point are all kept."""
    p = to_minimisation(points, directions)
    return np.array([not dominated_by_any(p[i], p) for i in range(len(p))], dtype=bool)


def hypervolume(points: np.ndarray, reference: Sequence[float], directions: Directions) -> float:
    """Exact hypervolume dominated by `points` and bounded by `reference` (given in the original units).

    Recursive slicing on the first objective (HSO): exponential in the number of objectives in the worst
    case but exact and fast for the fronts a study produces (tens of points, two to five objectives).
    """
    p = to_minimisation(points, directions)
    ref = to_minimisation(np.asarray([reference], dtype=float), directions)[0]
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    return _hso(p[pareto_mask(p, ["min"] * p.shape[1])], ref)


def _hso(p: np.ndarray, ref: np.ndarray) -> float:
    if p.shape[1] == 1:
        return float(ref[0] - p[:, 0].min())
    order = np.argsort(p[:, 0])
    p = p[order]
    volume = 0.0
    for i in range(len(p)):
        upper = p[i + 1, 0] if i + 1 < len(p) else ref[0]
        width = upper - p[i, 0]
        if width <= 0:
            continue
        slab = p[: i + 1, 1:]
        slab = slab[pareto_mask(slab, ["min"] * slab.shape[1])]
        volume += width * _hso(slab, ref[1:])
    return volume


def knee_index(points: np.ndarray, directions: Directions, weights: Sequence[float] | None = None) -> int:
    """The front point closest to the utopia point after scaling every objective to [0, 1].

    A simple, scale-free notion of "the best compromise"; returned as an index into `points`. `weights`
    scale each objective's axis (e.g. accuracy as heavy as all the cost objectives together).
    """
    p = to_minimisation(points, directions)
    lo, hi = p.min(axis=0), p.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (p - lo) / span * np.sqrt(np.asarray(weights if weights is not None else np.ones(p.shape[1])))
    candidates = np.flatnonzero(pareto_mask(points, directions))
    distances = np.linalg.norm(scaled[candidates], axis=1)
    return int(candidates[np.argmin(distances)])


def knee_weights(objectives: Sequence[str]) -> list[float]:
    """Accuracy weighs as much as all the cost objectives together, so five costs do not drown it."""
    costs = max(len(objectives) - 1, 1)
    return [float(costs) if o == "accuracy" else 1.0 for o in objectives]

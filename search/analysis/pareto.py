"""Pareto fronts, hypervolume and 2-D staircases, for objectives with mixed directions (the knee, which needs the
study's reference box and accuracy intervals, is in `search.analysis.reference`).

Every function takes a points array (n x m) and a direction per objective ("max" or "min"); points are
first turned into a minimisation problem, so the geometry is written once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from optuna._hypervolume import compute_hypervolume

Directions = Sequence[str]


def to_minimisation(points: np.ndarray, directions: Directions) -> np.ndarray:
    signs = np.array([{"min": 1.0, "max": -1.0}[d] for d in directions])
    return np.asarray(points, dtype=float) * signs


def dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`d[i, j]`: row i of `a` dominates row j of `b` (all minimised): no worse in every objective and better
    in at least one.

    The one dominance rule: the front (`pareto_mask`), the report's "which baselines does the front beat"
    (`dominated_by_any`) and MO-ASHA's non-dominated ranks (`search.engine.promotion`) all call it, so they cannot
    disagree about what dominating means.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    no_worse = np.all(a[:, None, :] <= b[None, :, :], axis=2)
    better = np.any(a[:, None, :] < b[None, :, :], axis=2)
    return no_worse & better


def dominated_by_any(point: np.ndarray, others: np.ndarray) -> bool:
    """`point` is dominated by at least one row of `others` (all minimised)."""
    if len(others) == 0:
        return False
    return bool(dominates(others, np.asarray(point, dtype=float)[None, :]).any())


def pareto_mask(points: np.ndarray, directions: Directions) -> np.ndarray:
    """True for every non-dominated point; duplicates of a front point are all kept."""
    p = to_minimisation(points, directions)
    return ~dominates(p, p).any(axis=0) if len(p) else np.zeros(0, dtype=bool)


def hypervolume(points: np.ndarray, reference: Sequence[float], directions: Directions) -> float:
    """Exact hypervolume dominated by `points` and bounded by `reference` (given in the original units).

    optuna's WFG implementation (optuna is pinned, so its private module is a fixed dependency): the recursive
    slicing written here before took 9 s for 40 points in 6 objectives, and the report's hypervolume-over-time
    curve needs one value per trial; WFG takes 0.1 s.
    """
    p = to_minimisation(points, directions)
    ref = to_minimisation(np.asarray([reference], dtype=float), directions)[0]
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    return float(compute_hypervolume(p, ref))


def staircase(accuracy: Sequence[float], cost: Sequence[float]) -> list[int]:
    """Indices of the points non-dominated in the 2-D projection (accuracy up, cost down), in increasing cost.

    A many-objective front projected onto two axes is not a curve: joining all its members in cost order
    zig-zags through points that other objectives keep on the front. A panel joins only these points.
    """
    pts = np.column_stack([np.asarray(accuracy, dtype=float), np.asarray(cost, dtype=float)]).reshape(-1, 2)
    keep = np.flatnonzero(pareto_mask(pts, ["max", "min"]))
    return sorted(keep.tolist(), key=lambda i: (pts[i, 1], -pts[i, 0]))

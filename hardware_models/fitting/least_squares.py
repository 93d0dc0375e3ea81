"""Least squares on relative error, written with numpy only (scipy is not a dependency).

Latencies span four orders of magnitude (0.01 ms to 6 s), so the fit minimises squared *log* errors:
every row counts by its relative error, as MAPE and "within 10%" score it. Parameters are positive
physical quantities (rates, bandwidths, overheads), so the optimiser works on log(value - floor): a
floor of 1 keeps an "efficiency divisor" physical (no unit faster than its peak).

Levenberg-Marquardt with a forward-difference Jacobian converges in tens of iterations for our
5-15 parameters; a few deterministic restarts guard against the kinks that `max()` rooflines create.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ParamSpec:
    """A named positive parameter: value = floor + exp(theta)."""

    name: str
    default: float
    floor: float = 0.0
    unit: str = ""
    doc: str = ""

    def to_theta(self, value: float) -> float:
        return float(np.log(max(value - self.floor, 1e-12)))

    def from_theta(self, theta: float) -> float:
        return float(self.floor + np.exp(np.clip(theta, -40.0, 40.0)))


def to_theta(specs: Sequence[ParamSpec], values: dict[str, float]) -> np.ndarray:
    return np.array([s.to_theta(values.get(s.name, s.default)) for s in specs])


def from_theta(specs: Sequence[ParamSpec], theta: np.ndarray) -> dict[str, float]:
    return {s.name: s.from_theta(t) for s, t in zip(specs, theta, strict=True)}


def _jacobian(residual: Callable[[np.ndarray], np.ndarray], x: np.ndarray, r: np.ndarray,
              free: np.ndarray, step: float = 1e-6) -> np.ndarray:
    jac = np.zeros((r.size, x.size))
    for k in np.flatnonzero(free):
        dx = x.copy()
        dx[k] += step
        jac[:, k] = (residual(dx) - r) / step
    return jac


def levenberg_marquardt(residual: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, free: np.ndarray,
                        max_iter: int = 200) -> np.ndarray:
    """Minimise ||residual(x)||^2 over the `free` coordinates of x."""
    x = np.asarray(x0, float).copy()
    r = residual(x)
    cost = float(r @ r)
    damping = 1e-2
    for _ in range(max_iter):
        jac = _jacobian(residual, x, r, free)
        normal = jac.T @ jac
        gradient = jac.T @ r
        scale = np.diag(np.diag(normal) + 1e-9) + 1e-9 * np.eye(x.size)
        improved = False
        while damping < 1e10:
            step = np.linalg.solve(normal + damping * scale, -gradient)
            step[~free] = 0.0
            candidate = np.clip(x + step, -40.0, 40.0)
            r_new = residual(candidate)
            cost_new = float(r_new @ r_new)
            if np.isfinite(cost_new) and cost_new < cost:
                x, r, cost, improved = candidate, r_new, cost_new, True
                damping = max(damping / 3.0, 1e-9)
                break
            damping *= 4.0
        if not improved or np.max(np.abs(step)) < 1e-9:
            break
    return x


def fit_log(predict: Predict, y: np.ndarray, theta0: np.ndarray, free: np.ndarray, *, restarts: int = 4,
            seed: int = 0, prior: np.ndarray | None = None, prior_weight: float = 0.0) -> np.ndarray:
    """Best of `restarts` LM runs (first from theta0, the others jittered deterministically).

    With `prior` (log-parameters) and `prior_weight` > 0 this is a maximum a posteriori fit: a parameter
    moving by a factor e from its physical default costs as much as one row off by `prior_weight` in
    log terms. It keeps parameters the data barely constrain physical instead of drifting to 0 or infinity.
    """
    y = np.asarray(y, float)
    log_y = np.log(y)
    anchor = theta0 if prior is None else prior

    def residual(theta: np.ndarray) -> np.ndarray:
        prediction = predict(theta)
        errors = np.log(np.maximum(prediction, 1e-12)) - log_y
        if prior_weight <= 0:
            return errors
        return np.concatenate([errors, prior_weight * (theta - anchor)[free]])

    rng = np.random.default_rng(seed)
    best_theta, best_cost = theta0, np.inf
    for attempt in range(max(restarts, 1)):
        start = theta0 + (rng.normal(0.0, 0.7, theta0.size) * free if attempt else 0.0)
        theta = levenberg_marquardt(residual, start, free)
        r = residual(theta)
        cost = float(r @ r)
        if cost < best_cost:
            best_theta, best_cost = theta, cost
    return best_theta


def identifiable(predict: Predict, theta: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Free parameters the data actually constrain (a parameter no row depends on keeps its default)."""
    base = np.log(np.maximum(predict(theta), 1e-12))
    keep = free.copy()
    for k in np.flatnonzero(free):
        probe = theta.copy()
        probe[k] += 1.0
        keep[k] = bool(np.any(np.abs(np.log(np.maximum(predict(probe), 1e-12)) - base) > 1e-9))
    return keep


# -- scores ----------------------------------------------------------------------------------------
def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    return np.asarray(predicted, float) / np.asarray(measured, float) - 1.0


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    return float(np.mean(np.abs(relative_errors(predicted, measured))) * 100.0)


def within(predicted: Sequence[float], measured: Sequence[float], tolerance: float = 0.10) -> float:
    return float(np.mean(np.abs(relative_errors(predicted, measured)) <= tolerance + 1e-12))


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size)
    sorted_values = values[order]
    start = 0
    while start < values.size:
        stop = start
        while stop + 1 < values.size and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2.0
        start = stop + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb / denominator) if denominator else 0.0


def kfold_indices(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic shuffled folds."""
    order = np.random.default_rng(seed).permutation(n)
    return [order[k::folds] for k in range(folds)]

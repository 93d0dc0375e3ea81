"""90% prediction intervals from held-out calibration residuals (split conformal, in log space).

Latency errors are relative (a model 10% off on a 1 ms and on a 100 ms network is equally wrong), so an
interval is prediction x exp(+-q), with q the conformal quantile of the |log(predicted / measured)| of
held-out rows: the ceil((n + 1) x level)-th smallest of n residuals covers a new exchangeable point with
probability >= level. The residuals come from leave-family-out refits (`calibrate`), so q describes
networks unlike the fitted ones, and it is kept per parameter group (ARM: runtime x precision), because
ncnn fp32 and PyTorch int8 rows are not equally well predicted.

Where the data cannot back an interval (a board, DPU configuration or runtime/precision with no
measurements, or too few residuals for a finite quantile), the half-width is widened and the result
says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.9
# No residual backs a configuration that was never measured: double the log half-width of the nearest
# measured one (a 90% band of +-20% becomes roughly +-45%). A judgement, written down, not a fit.
UNMEASURED_WIDENING = 2.0
# Too few residuals for a finite conformal quantile at this level: the largest one, widened by half.
FEW_RESIDUALS_WIDENING = 1.5
# A network with more than this factor fewer (or more) MACs than every calibrated network of its group is
# an extrapolation: fixed per-layer costs fitted on ImageNet-sized networks may dominate a tiny one.
EXTRAPOLATION_FACTOR = 4.0
METHOD = "split conformal on leave-family-out |log(predicted/measured)|"


def conformal_halfwidth(log_residuals: Sequence[float] | np.ndarray, level: float = LEVEL) -> float:
    """The ceil((n+1) level)-th smallest |residual|, or the largest x FEW_RESIDUALS_WIDENING when n is small."""
    r = np.sort(np.abs(np.asarray(log_residuals, float)))
    if r.size == 0:
        return math.inf
    k = math.ceil((r.size + 1) * level)
    return float(r[k - 1]) if k <= r.size else float(r[-1] * FEW_RESIDUALS_WIDENING)


def interval_summary(log_residuals: np.ndarray, groups: Sequence[str], macs: Sequence[int],
                     level: float = LEVEL) -> dict[str, Any]:
    """What a profile stores: the half-width per group (and over all rows, for unmeasured groups), and the
    range of network sizes (MACs) each group's rows span."""
    residuals = np.abs(np.asarray(log_residuals, float))
    members = {g: [i for i, k in enumerate(groups) if k == g] for g in sorted(set(groups))}
    return {"level": level, "method": METHOD,
            "log_halfwidth": {g: conformal_halfwidth(residuals[m], level) for g, m in members.items()},
            "rows": {g: len(m) for g, m in members.items()},
            "macs_range": {g: [int(min(macs[i] for i in m)), int(max(macs[i] for i in m))]
                           for g, m in members.items()},
            "log_halfwidth_all": conformal_halfwidth(residuals, level)}


def size_extrapolation(macs: int, summary: Mapping[str, Any], group: str) -> list[str]:
    """A reason to widen when the network is far smaller or larger than every calibrated one."""
    known = summary.get("macs_range", {}).get(group)
    if not known or macs <= 0:
        return []
    low, high = known
    if macs * EXTRAPOLATION_FACTOR < low:
        return [f"{macs / 1e6:.3g} M MACs, far below the smallest calibrated network ({low / 1e6:.3g} M): "
                "fixed per-layer costs fitted on large networks may dominate this prediction"]
    if macs > high * EXTRAPOLATION_FACTOR:
        return [f"{macs / 1e9:.3g} G MACs, far above the largest calibrated network ({high / 1e9:.3g} G)"]
    return []


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float
    note: str


def latency_interval(latency_ms: float, calibration: Mapping[str, Any], group: str,
                     unmeasured: Sequence[str] = (), macs: int = 0) -> Interval:
    """The interval of one prediction; `unmeasured` lists what about this setting no measurement covers
    (the profile's `unmeasured_groups` add theirs)."""
    borrowed = calibration.get("unmeasured_groups", {}).get(group)
    if borrowed:
        unmeasured = (*unmeasured, borrowed[1])
    summary = calibration.get("interval")
    if not summary:
        q, level = math.log(2.0), LEVEL
        note = ("this profile carries no calibration residuals (recalibrate with python -m "
                "hardware_models.calibrate): the interval is a nominal factor of 2 either way")
    else:
        level = float(summary["level"])
        known = summary["log_halfwidth"]
        q = float(known[group]) if group in known else float(summary["log_halfwidth_all"])
        rows = summary["rows"].get(group, sum(summary["rows"].values()))
        note = f"{100 * level:.0f}% interval: {METHOD} over {rows} held-out rows"
        if group not in known:
            unmeasured = (*unmeasured, f"no {group.strip('.') or 'such'} rows")
        unmeasured = (*unmeasured, *size_extrapolation(macs, summary, group))
    if unmeasured:  # each independent unknown widens again
        factor = UNMEASURED_WIDENING ** len(unmeasured)
        q *= factor
        note += (f"; widened x{factor:g} in log terms because no measurement covers this setting "
                 f"({'; '.join(unmeasured)})")
    return Interval(latency_ms * math.exp(-q), latency_ms * math.exp(q), level, note)


def borrow_interval(summary: Mapping[str, Any], borrowed: Mapping[str, str],
                    source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The interval summary with each borrowed group given its source group's half-width, rows and sizes
    (from `source`, another profile's summary, or from `summary` itself).

    `latency_interval` still widens it (the profile lists the group under `unmeasured_groups`): the source's
    residuals say how well the source is predicted, not how well it stands in for the borrowed setting.
    """
    source = summary if source is None else source
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in summary.items()}
    for group, origin in borrowed.items():
        for key in ("log_halfwidth", "rows", "macs_range"):
            if origin in source.get(key, {}):
                out[key][group] = source[key][origin]
    return out

"""Fitting onnxruntime's int8 speed factor on a CPU board from rows timed at both precisions.

No public measurement gives onnxruntime int8 timings on a Raspberry Pi. Without int8 rows a profile prices an
onnxruntime int8 layer with the fp32 fit's parameters and 1-byte tensors: an int8 speed factor of 1, which the
profile, every int8 estimate (and so a bundle's metrics.json) and a study's report.md call an assumption.

With int8 rows - `run_onnx.py --benchmark` times both files of a bundle, model.onnx and model_int8.onnx - the
calibration fits that factor instead of a dozen free int8 parameters that a handful of rows cannot pin: int8
runs `factor` times as fast as the fp32 fit prices the same network - compute rates and bandwidths times the
factor, per-layer and per-inference fixed costs divided by it - with the fp32 group's thread scaling. All of the
time moves, not only the arithmetic: in a QDQ graph the work that makes int8 slow or fast sits around the kernels
too (DequantizeLinear before a float kernel, requantization after an integer one, quantizing the input), and on a
small network the fixed costs are most of the latency (this host's 32x32 bundles ran their int8 files about 1.6x
*slower* than their fp32 files). Fitted after the fp32 group, to the rows' int8 / fp32 latency ratios where a
network was timed at both precisions (`ratio_targets`): what decides between an int8 and an fp32 recipe is that
ratio, so the factor must not absorb the fp32 fit's error on the same networks. The prior is the factor the
calibration's prior implies (1 when adapting the built-in profile), with its weight. `summarize` stores the
factor with the rows behind it and, for networks timed at both precisions, the measured and fitted fp32 / int8
latency ratios, so a user sees whether their int8 files run faster at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import Protocol

import numpy as np

from hardware_models.estimators.arm import INT8_FROM_FP32
from hardware_models.estimators.costmodel import Case
from hardware_models.estimators.costmodel import CostModel
from hardware_models.estimators.costmodel import LayerTable
from hardware_models.estimators.int8_speed import tied_source
from hardware_models.fitting.least_squares import fit_log
from hardware_models.measurements.table import Measurement
from hardware_models.measurements.table import MeasurementTable

RATE = "_per_cycle"


class FittedRows(Protocol):
    """What `ratio_targets` reads of a calibration (`hardware_models.calibration.fit.Calibration`)."""

    table: MeasurementTable
    model: CostModel
    cases: tuple[Case, ...]

    def predict(self, theta: np.ndarray, rows: Sequence[int]) -> np.ndarray: ...


_DIRECTION = ((RATE, 1.0), ("_gbps", 1.0), ("_us", -1.0), ("_ms", -1.0))


def _direction(name: str) -> float:
    return next((d for suffix, d in _DIRECTION if name.endswith(suffix)), 0.0)


def _tie(model: CostModel, group: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the group's parameters, of their fp32 sources, and how each follows the factor (+1, -1, 0)."""
    source = tied_source(group)
    names = [s.name for s in model.params]
    mine = [i for i, n in enumerate(names) if n.startswith(group)]
    if source is None or any(model.params[i].floor for i in mine):
        raise ValueError(f"{group} is not an int8 group tied to its fp32 group")
    return (
        np.array(mine),
        np.array([names.index(source + names[i][len(group) :]) for i in mine]),
        np.array([_direction(names[i]) for i in mine]),
    )


def fit_factor(
    model: CostModel,
    stacked: LayerTable,
    y: np.ndarray,
    theta: np.ndarray,
    group: str,
    prior: np.ndarray,
    prior_weight: float,
    restarts: int = 2,
) -> np.ndarray:
    """`theta` with `group`'s parameters set to its fp32 group's moved by one factor (see _DIRECTION), fitted (log
    least squares) to the group's rows `y`; the prior is the factor `prior`'s compute rates imply."""
    mine, source, direction = _tie(model, group)
    rate = np.array([model.params[i].name.endswith(RATE) for i in mine])
    start = np.array([float(np.mean(prior[mine][rate] - prior[source][rate]))])

    def tied(log_factor: float) -> np.ndarray:
        out = theta.copy()
        out[mine] = theta[source] + direction * log_factor
        return out

    best = fit_log(
        lambda v: model.predict_theta(tied(float(v[0])), stacked),
        y,
        start,
        np.array([True]),
        restarts=restarts,
        prior=start,
        prior_weight=prior_weight,
    )
    return tied(float(best[0]))


def ratio_targets(
    calibration: FittedRows, group: str, members: Sequence[int], train: Sequence[int], theta: np.ndarray
) -> np.ndarray:
    """The int8 rows' latencies, each one whose network was also timed in fp32 (among `train`) scaled by its fp32
    partner's fit error: the factor then fits what the rows say about int8 against fp32 (the issue's question),
    not how well the fp32 fit happened to match that network. Unpaired int8 rows count as measured."""
    rows = calibration.table.rows
    y = np.array([rows[i].latency_ms for i in members])
    fp32 = [i for i in train if calibration.model.group_key(calibration.cases[i]) == tied_source(group)]
    pairs = both_precisions(rows, [*fp32, *members])
    if pairs:
        position = {b: k for k, b in enumerate(members)}
        predicted = calibration.predict(theta, [a for a, _ in pairs])
        for (a, b), fitted in zip(pairs, predicted, strict=True):
            y[position[b]] *= fitted / rows[a].latency_ms
    return y


def factor_of(params: Mapping[str, float], runtime: str) -> float:
    """The int8 compute rates over the fp32 ones (geometric mean: the factor when the group is tied)."""
    logs = [
        math.log(v / params[f"{runtime}.fp32.{n[len(runtime) + 6 :]}"])
        for n, v in params.items()
        if n.startswith(f"{runtime}.int8.") and n.endswith(RATE)
    ]
    return float(math.exp(sum(logs) / len(logs))) if logs else 1.0


def _pair_key(row: Measurement) -> tuple:
    """Rows of one network at both precisions: the same spec, or two ONNX files of one bundle folder."""
    scheme, _, argument = row.spec.partition(":")
    network = f"onnx:{Path(argument).parent}" if scheme == "onnx" else row.spec
    return network, row.input_shape, row.threads, row.clock_ghz


def both_precisions(rows: Sequence[Measurement], indices: Sequence[int]) -> list[tuple[int, int]]:
    """(fp32 row, int8 row) index pairs among `indices` that time one network at both precisions."""
    found: dict[tuple, dict[str, list[int]]] = {}
    for i in indices:
        found.setdefault(_pair_key(rows[i]), {}).setdefault(rows[i].precision or "fp32", []).append(i)
    return [
        (p["fp32"][0], p["int8"][0])
        for p in found.values()
        if len(p.get("fp32", ())) == 1 and len(p.get("int8", ())) == 1
    ]


def _geomean(values: Sequence[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def summarize(
    params: Mapping[str, float],
    groups: Sequence[str],
    rows: Sequence[Measurement],
    measured: np.ndarray,
    fitted: np.ndarray,
    borrowed: Mapping[str, tuple[str, str]],
    source: str,
) -> dict[str, dict[str, Any]]:
    """Per tied runtime of the profile: the factor, whether it was measured or assumed, and why.

    `groups` is each row's parameter group (`onnxruntime.int8.`), `borrowed` the unmeasured groups with
    their reasons, `source` the measurement file(s) named in the note."""
    out = {}
    for runtime in INT8_FROM_FP32:
        group = f"{runtime}.int8."
        mine = [i for i, g in enumerate(groups) if g.startswith(f"{runtime}.")]
        int8 = [i for i in mine if groups[i] == group]
        if group in borrowed:
            out[runtime] = {
                "factor": 1.0,
                "basis": "assumed",
                "rows": 0,
                "note": f"no {runtime} int8 rows in {source}; {borrowed[group][1]}",
            }
        elif int8:
            out[runtime] = {
                "factor": factor_of(params, runtime),
                "basis": "measured",
                "rows": len(int8),
                **_ratios(both_precisions(rows, mine), measured, fitted),
                "note": f"fitted on {len(int8)} {runtime} int8 rows of {source}",
            }
    return out


def _ratios(pairs: Sequence[tuple[int, int]], measured: np.ndarray, fitted: np.ndarray) -> dict[str, Any]:
    if not pairs:
        return {"networks_at_both": 0}
    return {
        "networks_at_both": len(pairs),
        "measured_fp32_over_int8": _geomean([measured[a] / measured[b] for a, b in pairs]),
        "fitted_fp32_over_int8": _geomean([fitted[a] / fitted[b] for a, b in pairs]),
    }

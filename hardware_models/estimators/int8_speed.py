"""onnxruntime's int8 speed on a CPU board, as a profile states it: one factor fitted from the board's own rows
(`hardware_models.calibration.int8_fit`), or a stated assumption.

No public measurement gives onnxruntime int8 timings on a Raspberry Pi. Without int8 rows a profile prices an
onnxruntime int8 layer with the fp32 fit's parameters and 1-byte tensors: an int8 speed factor of 1, which the
profile, every int8 estimate (and so a bundle's metrics.json) and a study's report.md call an assumption.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from hardware_models.estimators.arm import INT8_FROM_FP32


def tied_source(group: str) -> str | None:
    """`onnxruntime.int8.` -> `onnxruntime.fp32.` for the runtimes whose int8 speed is one factor; else None."""
    runtime, _, precision = group.rstrip(".").partition(".")
    return f"{runtime}.fp32." if runtime in INT8_FROM_FP32 and precision == "int8" else None


def of_profile(calibration: Mapping[str, Any], runtime: str) -> dict[str, Any] | None:
    """A profile's int8 speed entry for `runtime`; profiles written before the factor existed get one from their
    groups (borrowed: assumed; fitted: measured, per layer class)."""
    if runtime not in INT8_FROM_FP32:
        return None
    stored = calibration.get("int8_speed", {}).get(runtime)
    if stored:
        return dict(stored)
    group = f"{runtime}.int8."
    borrowed = calibration.get("unmeasured_groups", {}).get(group)
    if borrowed:
        return {"factor": 1.0, "basis": "assumed", "rows": 0, "note": borrowed[1]}
    if group in calibration.get("fitted_groups", ()):
        return {
            "factor": None,
            "basis": "measured",
            "rows": None,
            "note": "fitted per layer class by an older calibration (recalibrate to get one factor)",
        }
    return None


def describe(runtime: str, entry: Mapping[str, Any]) -> str:
    """One line for the calibration report and report.md."""
    factor = "per layer class" if entry.get("factor") is None else f"x{entry['factor']:.2f} the fp32 speed"
    if entry["basis"] == "assumed":
        return (
            f"{runtime} int8 speed: ASSUMED {factor} (int8 priced with the fp32 fit and 1-byte tensors), not "
            f"measured ({entry['note']})"
        )
    text = f"{runtime} int8 speed: {factor}, {entry['note']}"
    if entry.get("networks_at_both"):
        text += (
            f"; {entry['networks_at_both']} network(s) timed at both precisions ran fp32/int8 "
            f"x{entry['measured_fp32_over_int8']:.2f} (the fit: x{entry['fitted_fp32_over_int8']:.2f})"
        )
    return text


def transferred(entries: Mapping[str, Mapping[str, Any]], runtimes: Sequence[str], why: str) -> dict[str, Any]:
    """Another board's entries for `runtimes`, their notes saying how they were carried over."""
    return {r: {**entries[r], "note": f"{entries[r]['note']}; {why}"} for r in runtimes if r in entries}

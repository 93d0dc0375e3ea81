"""`estimate(model, input_shape, target)`: what a network costs on a board.

One call traces the network once (cached by structure), applies what the target's runtime does with
it (dead branches removed, batch norm folded), and then either predicts with the target's calibrated
profile (zcu104, zcu102, kv260, rpi4, rpi5, or a profile JSON) or measures (host). The result is a plain dict
so that it serialises to JSON and into a trials table unchanged.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from hardware_models.estimators import families
from hardware_models.estimators.host import available_cores
from hardware_models.estimators.registry import Options
from hardware_models.graph.executed import Network
from hardware_models.graph.executed import extract
from hardware_models.graph.executed import with_policy
from hardware_models.graph.networks import count_parameters
from hardware_models.graph.precision import PrecisionSpec
from hardware_models.graph.precision import resolve
from hardware_models.graph.precision import unknown_layers
from hardware_models.power import host_power
from hardware_models.profiles import Profile
from hardware_models.profiles import builtin_profile_path
from hardware_models.profiles import load_profile
from hardware_models.targets import TARGETS
from hardware_models.targets import get_target


@functools.lru_cache(maxsize=32)
def _load(path: str, mtime: float) -> Profile:
    return load_profile(path)


def resolve_profile(target: str | Path) -> Profile:
    """A built-in target name or the path of a profile JSON."""
    name = str(target)
    if name in TARGETS:
        spec = get_target(name)
        if spec.family == "host":
            return Profile(target="host", family="host", board="host", params={},
                           power=host_power(available_cores()), default_runtime="onnxruntime",
                           default_threads=1, default_precision="fp32")
        path = builtin_profile_path(name)
    elif name.endswith(".json") or Path(name).is_file():
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"profile {name} does not exist; built-in targets: "
                                    f"{', '.join(sorted(TARGETS))}")
    else:
        get_target(name)  # raises the KeyError that lists the targets
        raise AssertionError("unreachable")
    return _load(str(path), path.stat().st_mtime)


def profile_source(target: str | Path) -> str:
    """Which profile a result came from: `built-in rpi4`, or the absolute path of a user's profile JSON."""
    name = str(target)
    return f"built-in {name}" if name in TARGETS else str(Path(name).resolve())


def _input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """(C, H, W), or (1, C, H, W) as nn-Meter and torchinfo take it; every estimate is at batch 1."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        if shape[0] != 1:
            raise ValueError(f"input_shape {shape}: batch {shape[0]} is not supported; every estimate is for one "
                             f"image at a time (batch 1): pass (1, {', '.join(map(str, shape[1:]))}) or "
                             f"({', '.join(map(str, shape[1:]))})")
        shape = shape[1:]
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"input_shape must be (C, H, W) or (1, C, H, W) with positive sizes, got {tuple(input_shape)}")
    return shape


def estimate(model: nn.Module, input_shape: Sequence[int], target: str | Path, *,
             precision: PrecisionSpec = None, per_layer: bool = False, threads: int | None = None,
             runtime: str | None = None, as_int8: bool = False, clock_ghz: float | None = None,
             use_cache: bool = True) -> dict[str, Any]:
    """Latency (ms), throughput (fps) and energy (mJ) of one inference at batch 1 on `target`.

    `precision`: "fp32", "int8", a bit width, or {layer name: bits, "*": default}. The DPU runs only
    INT8: other widths make the result `deployable: False` unless `as_int8=True` (quantize to INT8 on
    deployment; the thesis saw 5-bit models stored and run as 8-bit). `threads`/`runtime`/`clock_ghz`
    override the target's defaults (CPU targets). `per_layer=True` adds a per-layer breakdown.
    Every result lists its `assumptions`, and `measured` says whether latency was measured or modelled.
    """
    shape = _input_shape(input_shape)
    profile = resolve_profile(target)
    options = Options(precision=precision, per_layer=per_layer, threads=threads, runtime=runtime, as_int8=as_int8,
                      clock_ghz=clock_ghz, use_cache=use_cache)
    network = with_policy(extract(model, shape, use_cache=use_cache), profile.graph_policy)
    plan = resolve(precision, profile.default_precision)
    typos = unknown_layers(plan, network)
    if typos:
        raise KeyError(f"precision map names layers the network does not have: {', '.join(typos[:5])}")
    result = families.estimator(profile)(model, network, profile, options)
    common = _common(network, model, profile)
    common["profile"] = profile_source(target)
    common["assumptions"] += result.pop("assumptions", [])
    return {**common, **result}


def _basis(profile: Profile) -> str:
    """One line saying whether the numbers are measured or modelled, and on what the model rests."""
    if profile.family == "host":
        return "measured on this machine with onnxruntime (latency); energy is an assumption"
    cal = profile.calibration
    text = (f"modelled: {profile.family} cost model calibrated on {cal.get('measurements', '?')} "
            f"({cal.get('rows_used', '?')} rows")
    if "loo_mape_pct" in cal:
        text += f", leave-one-out MAPE {cal['loo_mape_pct']:.1f}%"
    text += ")"
    if profile.target != profile.calibration.get("calibrated_board", profile.target):
        text += f"; transferred to {profile.target}, which has no measurements of its own"
    return text


def _common(network: Network, model: nn.Module, profile: Profile) -> dict[str, Any]:
    statuses = Counter(s.value for s in network.status)
    removed = sorted({layer.name for layer, s in zip(network.layers, network.status, strict=True)
                      if s.value in ("removed", "folded") and layer.kind.value != "input"})
    notes = []
    if removed:
        notes.append(f"{len(removed)} layers cannot affect the output (dead branches, zero edges, constants) "
                     "and are removed as a deployment runtime's graph optimiser does")
    if statuses.get("fused"):
        notes.append(f"{statuses['fused']} batch-norm/activation layers are folded into the preceding "
                     "convolution, as on deployment")
    if network.output_is_constant:
        notes.append("the output does not depend on the input: the whole network folds to a constant")
    if network.policy != "optimised":
        notes.append(f"graph policy {network.policy!r}: this profile's runtime computes operations whose inputs "
                     "are constant (it fitted the calibration data better than full constant folding)")
    return {"target": profile.target, "board": profile.board, "family": profile.family, "basis": _basis(profile),
            "macs": network.macs, "macs_total": network.macs_literal, "params": count_parameters(model),
            "layers": dict(sorted(statuses.items())), "removed_layers": removed,
            "assumptions": notes}


def check_profile(path: str | Path) -> None:
    """A profile JSON a study names, checked when the study is loaded rather than in every trial: it must load and
    predict a finite latency and energy for a tiny network (ValueError in one line naming the file otherwise)."""
    import torch

    probe = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    try:
        with torch.device("meta"):
            result = estimate(probe.to("meta"), (3, 16, 16), path, use_cache=False)
        latency, energy = float(result["latency_ms"]), float(result["energy_mj"])
    except Exception as error:  # noqa: BLE001 - any way the file breaks the model is reported the same way
        text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
        why = (text.splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"profile {path} cannot be used ({why}); regenerate it with python -m "
                         "hardware_models.calibrate --out PATH") from None
    if not (math.isfinite(latency) and latency > 0 and math.isfinite(energy) and energy >= 0):
        raise ValueError(f"profile {path} predicts latency {latency} ms, energy {energy} mJ for a small network; "
                         "regenerate it with python -m hardware_models.calibrate --out PATH")

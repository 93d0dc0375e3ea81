"""Cost a network at the precision a board executes, layer by layer where it mixes int8 and float kernels.

The CPU model (`hardware_models.arm`) costs a whole network with one kernel family - int8 when most MACs are
8-bit or less. For a recipe that keeps some layers in float on a Raspberry Pi that would credit those float
layers with int8 speed, a gain the board cannot realise. Here each layer with weights is costed with the
kernels it really runs on (its `Deployment` precision), each layer without weights (pooling, elementwise) with
the slower of the two (which one the runtime picks depends on where it converts: the cautious choice), plus the
per-inference overhead of the slower family. Uniform networks and the DPU (INT8 only) go straight to
`estimate`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hardware_models import estimate
from hardware_models import get_target
from hardware_models.capability import Deployment

FAMILIES = ("int8", "fp32")  # the kernel families the CPU model has parameters for


def estimate_executed(model: nn.Module, shape: tuple[int, int, int], target: str, plan: Deployment) -> dict[str, Any]:
    """`estimate` of `model` on `target` at the per-layer precision `plan` says the board executes."""
    family = get_target(target).family
    if family == "arm" and "int8" in plan.runs_as.split("/") and plan.runs_as != "int8":
        return _layerwise(model, shape, target, plan)
    return estimate(model, shape, target, precision=plan.precision_map(), as_int8=family == "dpu")


def _layerwise(model: nn.Module, shape: tuple[int, int, int], target: str, plan: Deployment) -> dict[str, Any]:
    runs = {f: estimate(model, shape, target, precision=f, per_layer=True) for f in FAMILIES}
    layers = {f: {row["name"]: row["latency_ms"] for row in r["per_layer"]} for f, r in runs.items()}
    bits = plan.precision_map()
    total = 0.0
    for name, int8_ms in layers["int8"].items():
        float_ms = layers["fp32"][name]
        total += max(int8_ms, float_ms) if name not in bits else int8_ms if bits[name] <= 8 else float_ms
    overhead = max(r["latency_ms"] - sum(layers[f].values()) for f, r in runs.items())
    latency = total + overhead
    base = {k: v for k, v in runs["fp32"].items() if k != "per_layer"}
    scale = latency / base["latency_ms"] if base["latency_ms"] else 1.0
    return {**base, "precision": plan.runs_as, "latency_ms": latency, "fps": 1000.0 / latency if latency else 0.0,
            "energy_mj": base["power_w"] * latency,
            "latency_ms_low": base["latency_ms_low"] * scale, "latency_ms_high": base["latency_ms_high"] * scale,
            "assumptions": [*base["assumptions"],
                            f"mixed {plan.runs_as}: each layer with weights costed with the kernels it runs on, "
                            "layers without weights with the slower family, the per-inference overhead of the "
                            "slower one (interval scaled from the fp32 estimate)"]}

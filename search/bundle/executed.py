"""metrics.json's record of what onnxruntime executes from the deployed file, beside what the search priced.

The search priced each layer on each onnxruntime target at the precision `hardware_models.capability` gives it
(`predicted[target]["runs_as_layers"]`). Here the shipped file itself is opened by onnxruntime with the
Raspberry Pi runner's portable optimizations (`hardware_models.graph.ort_executed`), and every Conv/Gemm is read back as
an integer kernel or a float one: the bundle states both and whether they agree, so a front member priced as
int8 where onnxruntime runs it in float cannot go unnoticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardware_models.graph.ort_executed import INTEGER_KERNELS
from hardware_models.graph.ort_executed import executed
from search.bundle.qdq import QdqExport

KERNELS_SHOWN = (
    *sorted(INTEGER_KERNELS),
    "QLinearAdd",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "Conv",
    "FusedConv",
    "Gemm",
    "MatMul",
    "DequantizeLinear",
    "QuantizeLinear",
)


def onnxruntime_targets(predicted: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The predicted targets whose runtime is onnxruntime (the Pi runner's, and the measured host)."""
    return [
        t
        for t, p in predicted.items()
        if str(p.get("runtime", "onnxruntime" if t == "host" else "")).startswith("onnxruntime")
        and "runs_as_layers" in p
    ]


def executed_section(path: Path, predicted: Mapping[str, Mapping[str, Any]], qdq: QdqExport | None) -> dict[str, Any]:
    """`onnxruntime_executes`: per layer the precision onnxruntime runs `path` at, its int8 share, the kernel
    counts, and per onnxruntime target whether the search priced every layer at that precision."""
    import onnxruntime as ort

    known = {layer.name for layer in qdq.layers} if qdq else set()
    for target in predicted.values():
        known |= set(target.get("runs_as_layers", {}))
    graph = executed(path)
    layers = dict(sorted(graph.layers(known).items()))
    mismatches = {
        t: sorted(n for n, p in predicted[t]["runs_as_layers"].items() if layers.get(n) != p)
        for t in onnxruntime_targets(predicted)
    }
    share = sum(p == "int8" for p in layers.values()) / len(layers) if layers else None
    return {
        "onnxruntime_executes": {
            "file": path.name,
            "optimization": "ORT_ENABLE_EXTENDED (the portable fusions; what runs on ARM too)",
            "threads": 1,
            "onnxruntime": ort.__version__,
            "layers": layers,
            "int8_share": None if share is None else round(share, 4),
            "kernels": {k: graph.ops[k] for k in KERNELS_SHOWN if graph.ops.get(k)},
            "priced_as_executed": {t: not m for t, m in mismatches.items()},
            "mismatched_layers": {t: m for t, m in mismatches.items() if m},
        }
    }

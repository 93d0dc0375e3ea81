"""What onnxruntime really executes: each Conv/Gemm of a model, integer kernel or float, from its optimized graph.

onnxruntime rewrites a QDQ model when a session starts: DequantizeLinear -> Conv -> QuantizeLinear becomes
QLinearConv, DQ -> Gemm becomes QGemm, and a Conv whose surroundings do not match the pattern stays a float
Conv on dequantized tensors. The graph after those rewrites is the truth about a file's precision, so it is
read here from `SessionOptions.optimized_model_filepath` rather than predicted. The optimization level is
ORT_ENABLE_EXTENDED: the fusions every execution provider build applies on every CPU, the Raspberry Pi's
ARM included (ORT_ENABLE_ALL adds x86-only layout transforms on top, which change no precision).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import onnx

INTEGER_KERNELS = frozenset(
    {
        "QLinearConv",
        "QGemm",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
    }
)
FLOAT_KERNELS = frozenset({"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "NhwcFusedConv"})
# Where the weight is among an operator's inputs (QLinearConv: x, x_scale, x_zero_point, w, ...).
WEIGHT_INPUT = {
    "QLinearConv": 3,
    "QGemm": 3,
    "QLinearMatMul": 3,
    "ConvInteger": 1,
    "MatMulInteger": 1,
    "MatMulIntegerToFloat": 1,
    "DynamicQuantizeMatMul": 1,
}
# Nodes a weight passes through before it reaches its operator in a not-fused graph.
WEIGHT_PATH = frozenset({"DequantizeLinear", "Cast", "Transpose", "Identity"})


@dataclass(frozen=True)
class ExecutedGraph:
    """Per Conv/Gemm/MatMul node (by name), the precision it runs at; and every operator type's count."""

    nodes: dict[str, str]  # node name -> "int8" | "fp32"
    ops: dict[str, int]
    level: str

    def layers(self, known: Collection[str]) -> dict[str, str]:
        """The same by layer name: a node named after a layer (`search.bundle.qdq` names the quantized ones), or
        named by the exporter's module scope (`/layer1/layer1.0/conv1/Conv` -> layer1.0.conv1). Nodes of no known
        layer are left out."""
        out: dict[str, str] = {}
        for name, precision in self.nodes.items():
            layer = name if name in known else scope_layer(name)
            if layer in known:
                out[layer] = precision
        return out

    @property
    def integer_share(self) -> float:
        """Share of the Conv/Gemm/MatMul operators that run as integer kernels (1.0 when there are none)."""
        return sum(p == "int8" for p in self.nodes.values()) / len(self.nodes) if self.nodes else 1.0


def scope_layer(node_name: str) -> str:
    """The module a TorchScript-exported node belongs to: `/features/features.0/features.0.0/Conv` ->
    features.0.0, `/layer2/layer2.0/downsample/downsample.0/Conv` -> layer2.0.downsample.0."""
    parts = [p for p in node_name.split("/") if p][:-1]
    current, previous = "", ""
    for part in parts:  # a child of a container is written `container.child` after the container's own segment
        if previous and part.startswith(previous + "."):
            current += part[len(previous) :]
        else:
            current = f"{current}.{part}" if current else part
        previous = part
    return current


def optimized_model(path: Path, level: str = "extended") -> onnx.ModelProto:
    """The graph onnxruntime (CPU, one thread) executes for the ONNX file at `path`."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if level not in levels:
        raise ValueError(f"optimization level {level!r}: use one of {', '.join(levels)}")
    with tempfile.TemporaryDirectory(prefix="ort_graph_") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def executed(path: Path, level: str = "extended") -> ExecutedGraph:
    """Each Conv/Gemm/MatMul with a constant weight in onnxruntime's optimized graph of `path`, by node name."""
    model = optimized_model(path, level)
    made_by = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    nodes: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in INTEGER_KERNELS:
            index, precision = WEIGHT_INPUT[node.op_type], "int8"
        elif node.op_type in FLOAT_KERNELS:
            index, precision = 1, "fp32"
        else:
            continue
        if len(node.input) > index and _weight_source(node.input[index], made_by, constants) is not None:
            nodes[node.name] = precision
    return ExecutedGraph(nodes, dict(Counter(n.op_type for n in model.graph.node)), level)


def _weight_source(name: str, made_by: dict[str, onnx.NodeProto], constants: set[str]) -> str | None:
    """The initializer a weight input comes from, through dequantization, casts and transposes (None: computed)."""
    for _ in range(8):
        if name in constants:
            return name
        node = made_by.get(name)
        if node is None or node.op_type not in WEIGHT_PATH:
            return None
        name = node.input[0]
    return None

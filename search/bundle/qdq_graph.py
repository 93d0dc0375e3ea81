"""Exact rewrites of a QDQ ONNX graph into the form onnxruntime fuses into integer kernels.

`search.bundle.qdq` writes one QuantizeLinear -> DequantizeLinear pair per quantizer of the fake-quantized model. The
PyTorch model also keeps modules that are no-ops on quantized codes (the ReLU after a conv whose output
quantizer absorbed it, a second reader's quantizer tied to the first's). onnxruntime's QDQ fusions need the
pattern its own quantizer writes: DequantizeLinear directly in front of an operator, QuantizeLinear directly
behind it. Every rewrite here leaves each output value unchanged (or changes it by at most one float32 ulp):

- a ReLU or Clip next to a Q/DQ pair whose representable range lies inside the activation's is dropped
  (a zero point of 0 already clamps what ReLU would);
- DequantizeLinear(P) -> QuantizeLinear(P) with the same parameters P is the identity on codes: dropped;
- shape operators and max-pooling commute with quantization, so a pair is copied across them (in front of a
  Flatten that feeds a pair, behind a MaxPool whose input comes from one), which lets the operator on the other
  side (GlobalAveragePool, a residual Add) see the DequantizeLinear/QuantizeLinear it needs;
- identical pairs on one tensor are merged, and what no longer feeds anything is removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper

SHAPE_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "MaxPool"})
RANGE_SLACK = 1e-6  # relative: (255 - zp) * scale in float32 may exceed the Clip bound by one rounding


@dataclass(frozen=True)
class QParams:
    """A Q or DQ node's parameters, comparable by value (scale, zero point, dtype, axis)."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    dtype: int
    axis: int

    @property
    def low(self) -> float:
        return min(
            float(np.float32(qmin(self.dtype) - z) * np.float32(s))
            for s, z in zip(self.scale, self.zero_point, strict=True)
        )

    @property
    def high(self) -> float:
        return max(
            float(np.float32(qmax(self.dtype) - z) * np.float32(s))
            for s, z in zip(self.scale, self.zero_point, strict=True)
        )


def qmin(dtype: int) -> int:
    return int(np.iinfo(helper.tensor_dtype_to_np_dtype(dtype)).min) if dtype in _INTS else 0


def qmax(dtype: int) -> int:
    return int(np.iinfo(helper.tensor_dtype_to_np_dtype(dtype)).max) if dtype in _INTS else 0


_INTS = frozenset(
    {
        onnx.TensorProto.UINT8,
        onnx.TensorProto.INT8,
        onnx.TensorProto.INT32,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.INT16,
    }
)


class Graph:
    """A mutable view of an ONNX graph: producers, consumers and initializer values by name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.counter = 0

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return next((n for n in self.graph.node if tensor in n.output), None)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if tensor in n.input]

    def is_output(self, tensor: str) -> bool:
        return any(o.name == tensor for o in self.graph.output)

    def value(self, name: str) -> np.ndarray | None:
        """A constant's value: an initializer, or the output of a Constant node (the exporter writes both)."""
        init = self.inits.get(name)
        if init is not None:
            return numpy_helper.to_array(init)
        node = self.producer(name)
        if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def params(self, node: onnx.NodeProto) -> QParams | None:
        """The parameters of a Q/DQ node whose scale and zero point are initializers."""
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            return None
        scale, zero = self.value(node.input[1]), self.value(node.input[2])
        if scale is None or zero is None:
            return None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        return QParams(
            tuple(scale.astype(np.float32).flatten().tolist()),
            tuple(zero.flatten().tolist()),
            helper.np_dtype_to_tensor_dtype(zero.dtype),
            axis if scale.size > 1 else 1,
        )

    def rename_uses(self, old: str, new: str) -> None:
        """Every reader of `old` reads `new` instead (graph outputs keep their name: they are skipped)."""
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_qdq{self.counter}"

    def add_pair(self, source: str, like_q: onnx.NodeProto, like_dq: onnx.NodeProto, index: int) -> str:
        """Insert Q -> DQ with `like_q`'s parameters on `source` at node position `index`; returns the DQ output."""
        q_out, dq_out = self.fresh(source + "_q"), self.fresh(source + "_dq")
        q = helper.make_node("QuantizeLinear", [source, *like_q.input[1:]], [q_out], name=q_out, **_attrs(like_q))
        dq = helper.make_node("DequantizeLinear", [q_out, *like_dq.input[1:]], [dq_out], name=dq_out, **_attrs(like_dq))
        self.graph.node.insert(index, dq)
        self.graph.node.insert(index, q)
        return dq_out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def simplify(model: onnx.ModelProto, keep: frozenset[str] = frozenset(), max_rounds: int = 50) -> onnx.ModelProto:
    """Apply the rewrites of the module docstring until none applies (bounded: each round removes or moves work).

    Nodes named in `keep` stay even where they are no-ops: the Clip of a narrower quantizer that requantizes an
    8-bit tensor. Without it the graph reads Q -> DQ -> Q' -> DQ', which onnxruntime's DoubleQDQPairsRemover
    merges into one pair with new parameters: a different rounding than the model's, and a scale that no longer
    matches the int32 bias, so the convolution behind it falls back to float."""
    graph = Graph(model)
    for _ in range(max_rounds):
        changed = any(
            [
                _drop_activations(graph, keep),
                _drop_identity_requantize(graph),
                _copy_across_shape_ops(graph),
                _merge_duplicates(graph),
            ]
        )
        _remove_dead(graph)
        if not changed:
            break
    return model


def _activation_range(graph: Graph, node: onnx.NodeProto) -> tuple[float, float] | None:
    if node.op_type == "Relu":
        return 0.0, float("inf")
    if node.op_type == "Clip" and len(node.input) == 3:
        low, high = graph.value(node.input[1]), graph.value(node.input[2])
        if low is not None and high is not None:
            return float(low), float(high)
    return None


def _inside(params: QParams, bounds: tuple[float, float]) -> bool:
    low, high = bounds
    return params.low >= low - abs(low) * RANGE_SLACK and params.high <= high + abs(high) * RANGE_SLACK


def _drop_activations(graph: Graph, keep: frozenset[str]) -> bool:
    """ReLU/Clip after a DQ, or before Qs only, whose range covers the pair's: the identity on the codes."""
    changed = False
    for node in list(graph.graph.node):
        bounds = _activation_range(graph, node)
        if bounds is None or node.name in keep:
            continue
        before = graph.producer(node.input[0])
        readers = graph.consumers(node.output[0])
        if (
            before is not None
            and before.op_type == "DequantizeLinear"
            and (p := graph.params(before))
            and _inside(p, bounds)
            and not graph.is_output(node.output[0])
        ):
            graph.rename_uses(node.output[0], node.input[0])
            changed = True
            continue
        quantizers = [r for r in readers if r.op_type == "QuantizeLinear"]
        for q in quantizers:
            p = graph.params(q)
            if p is not None and _inside(p, bounds):
                q.input[0] = node.input[0]
                changed = True
    return changed


def _drop_identity_requantize(graph: Graph) -> bool:
    """Q(P) reading DQ(P): its codes are the DQ's input codes."""
    changed = False
    for node in list(graph.graph.node):
        if node.op_type != "QuantizeLinear":
            continue
        before = graph.producer(node.input[0])
        if before is None or before.op_type != "DequantizeLinear" or graph.is_output(node.output[0]):
            continue
        p, q = graph.params(before), graph.params(node)
        if p is not None and p == q:
            graph.rename_uses(node.output[0], before.input[0])
            changed = True
    return changed


def _copy_across_shape_ops(graph: Graph) -> bool:
    changed = False
    for node in list(graph.graph.node):
        if node.op_type not in SHAPE_OPS or not node.input:
            continue
        before = graph.producer(node.input[0])
        readers = graph.consumers(node.output[0])
        if before is not None and before.op_type == "DequantizeLinear" and graph.params(before) is not None:
            float_readers = [r for r in readers if r.op_type != "QuantizeLinear"]
            q_before = graph.producer(before.input[0])
            if float_readers and q_before is not None and q_before.op_type == "QuantizeLinear":
                position = list(graph.graph.node).index(node) + 1
                dq_out = graph.add_pair(node.output[0], q_before, before, position)
                for reader in float_readers:
                    reader.input[:] = [dq_out if name == node.output[0] else name for name in reader.input]
                changed = True
            continue
        quantizers = [r for r in readers if r.op_type == "QuantizeLinear"]
        if (
            readers
            and len(quantizers) == len(readers)
            and len({graph.params(q) for q in quantizers}) == 1
            and graph.params(quantizers[0]) is not None
            and not graph.is_output(node.output[0])
        ):
            dq = next((r for r in graph.consumers(quantizers[0].output[0]) if r.op_type == "DequantizeLinear"), None)
            if dq is not None:
                position = list(graph.graph.node).index(node)
                node.input[0] = graph.add_pair(node.input[0], quantizers[0], dq, position)
                changed = True
    return changed


def _merge_duplicates(graph: Graph) -> bool:
    """Q or DQ nodes reading one tensor with equal parameters compute the same thing: keep the first."""
    changed = False
    seen: dict[tuple, str] = {}
    for node in list(graph.graph.node):
        p = graph.params(node)
        if p is None:
            continue
        key = (node.op_type, node.input[0], p)
        if key in seen and not graph.is_output(node.output[0]):
            graph.rename_uses(node.output[0], seen[key])
            changed = True
        else:
            seen.setdefault(key, node.output[0])
    return changed


def _remove_dead(graph: Graph) -> None:
    """Nodes whose outputs nobody reads, then initializers nobody reads (repeated until stable)."""
    while True:
        used = {name for node in graph.graph.node for name in node.input} | {o.name for o in graph.graph.output}
        dead = [n for n in graph.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.graph.node.remove(node)
    used = {name for node in graph.graph.node for name in node.input}
    for init in list(graph.graph.initializer):
        if init.name not in used:
            graph.graph.initializer.remove(init)
            graph.inits.pop(init.name, None)


def nodes_of(model: onnx.ModelProto, op_type: str) -> Iterator[onnx.NodeProto]:
    return (n for n in model.graph.node if n.op_type == op_type)

"""An ONNX file as a torch module of the same layers, so the cost models can trace what a board really ran.

A benchmark row of `rpi/run_onnx.py` names the ONNX file it timed (`onnx:model_int8.onnx`, relative to the
CSV): a pruned network has no spec string, but its ONNX graph has every channel count. This module rebuilds
that graph as torch layers (Conv2d, Linear, pooling, activations; Add/Mul/Concat/Reshape as functions) that
the tracer sees exactly as it sees a torchvision network. Only shapes matter: weights are never copied, and
the calibration builds it on the `meta` device. QuantizeLinear/DequantizeLinear pairs are pass-throughs (the
row's precision column says int8), so the fp32 and the int8 QDQ file give the same layers.

Operators outside the registry raise an error naming the operator and the file.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Node:
    """One ONNX node: its inputs resolved to runtime values (tensors) or constants (numpy arrays)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: Mapping[str, Any]


# An op handler returns the module that computes the node (or None for a function-only op) and the forward
# step: (module, arguments) -> output. Constants are numpy arrays, activations torch tensors.
Step = Callable[[nn.Module | None, list[Any]], Any]
Handler = Callable[[Node, list[Any]], tuple[nn.Module | None, Step]]
OPS: dict[str, Handler] = {}


def register_op(*names: str) -> Callable[[Handler], Handler]:
    def decorate(handler: Handler) -> Handler:
        for name in names:
            OPS[name] = handler
        return handler

    return decorate


def _call(module: nn.Module | None, args: list[Any]) -> Any:
    assert module is not None
    return module(args[0])


def _pair(values: Any, default: int) -> tuple[int, int]:
    values = list(values) if values is not None else [default, default]
    return int(values[0]), int(values[-1])


def _padding(node: Node) -> tuple[int, int]:
    pads = list(node.attributes.get("pads", [0, 0, 0, 0]))
    if node.attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"ONNX node {node.name} ({node.op}) uses auto_pad; re-export with explicit pads")
    if pads[:2] != pads[2:]:
        raise ValueError(f"ONNX node {node.name} ({node.op}) has asymmetric pads {pads}; not supported")
    return int(pads[0]), int(pads[1])


@register_op("Conv")
def _conv(node: Node, args: list[Any]) -> tuple[nn.Module, Step]:
    weight = args[1]
    groups = int(node.attributes.get("group", 1))
    out_channels, in_per_group, *kernel = weight.shape
    module = nn.Conv2d(in_per_group * groups, out_channels, tuple(kernel), _pair(node.attributes.get("strides"), 1),
                       _padding(node), _pair(node.attributes.get("dilations"), 1), groups, bias=len(args) > 2)
    return module, _call


@register_op("Gemm", "MatMul")
def _linear(node: Node, args: list[Any]) -> tuple[nn.Module, Step]:
    weight = args[1]
    if not isinstance(weight, np.ndarray) or weight.ndim != 2:
        raise ValueError(f"ONNX node {node.name} ({node.op}) multiplies two activations; only a constant "
                         "weight matrix (a fully connected layer) is supported")
    transposed = node.op == "Gemm" and int(node.attributes.get("transB", 0)) == 1
    out_features, in_features = weight.shape if transposed else weight.shape[::-1]
    return nn.Linear(in_features, out_features, bias=len(args) > 2), _call


@register_op("BatchNormalization")
def _batchnorm(node: Node, args: list[Any]) -> tuple[nn.Module, Step]:
    return nn.BatchNorm2d(args[1].shape[0]), _call


def _pool(node: Node, cls: type[nn.Module]) -> nn.Module:
    kernel = _pair(node.attributes.get("kernel_shape"), 1)
    ceil = bool(node.attributes.get("ceil_mode", 0))
    return cls(kernel, _pair(node.attributes.get("strides"), 1), _padding(node), ceil_mode=ceil)


@register_op("MaxPool")
def _maxpool(node: Node, args: list[Any]) -> tuple[nn.Module, Step]:
    return _pool(node, nn.MaxPool2d), _call


@register_op("AveragePool")
def _avgpool(node: Node, args: list[Any]) -> tuple[nn.Module, Step]:
    return _pool(node, nn.AvgPool2d), _call


_ELEMENTWISE: dict[str, Callable[[], nn.Module]] = {
    "Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "HardSigmoid": nn.Hardsigmoid, "HardSwish": nn.Hardswish,
    "GlobalAveragePool": lambda: nn.AdaptiveAvgPool2d(1), "Softmax": lambda: nn.Softmax(dim=-1),
    "Tanh": nn.Tanh}


@register_op(*_ELEMENTWISE)
def _elementwise(node: Node, args: list[Any]) -> tuple[nn.Module, Step]:
    return _ELEMENTWISE[node.op](), _call


@register_op("Clip")
def _clip(node: Node, args: list[Any]) -> tuple[nn.Module, Step]:
    low = float(args[1]) if len(args) > 1 and args[1] is not None else float(node.attributes.get("min", -np.inf))
    high = float(args[2]) if len(args) > 2 and args[2] is not None else float(node.attributes.get("max", np.inf))
    return (nn.ReLU6() if (low, high) == (0.0, 6.0) else nn.Hardtanh(low, high)), _call


@register_op("Flatten")
def _flatten(node: Node, args: list[Any]) -> tuple[nn.Module, Step]:
    return nn.Flatten(int(node.attributes.get("axis", 1))), _call


@register_op("Identity", "Dropout", "QuantizeLinear", "DequantizeLinear")
def _identity(node: Node, args: list[Any]) -> tuple[None, Step]:
    return None, lambda _, a: a[0]


def _binary(fn: Callable[[Any, Any], Any]) -> Handler:
    def handler(node: Node, args: list[Any]) -> tuple[None, Step]:
        return None, lambda _, a: fn(*[torch.as_tensor(v) if isinstance(v, np.ndarray) else v for v in a[:2]])

    return handler


register_op("Add")(_binary(torch.add))
register_op("Mul")(_binary(torch.mul))
register_op("Sub")(_binary(torch.sub))


@register_op("Concat")
def _concat(node: Node, args: list[Any]) -> tuple[None, Step]:
    axis = int(node.attributes["axis"])
    return None, lambda _, a: torch.cat(a, dim=axis)


@register_op("Reshape")
def _reshape(node: Node, args: list[Any]) -> tuple[None, Step]:
    shape = [int(s) for s in args[1]]
    return None, lambda _, a: a[0].reshape([a[0].shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class OnnxNetwork(nn.Module):
    """The layers of an ONNX graph as torch modules, run in the graph's order."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(path)).graph
        constants: dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.input_name = next(i.name for i in graph.input if i.name not in constants)
        self.output_names = [o.name for o in graph.output]
        self.layers = nn.ModuleDict()
        self.steps: list[tuple[Node, str | None, Step]] = []
        for index, proto in enumerate(graph.node):
            node = Node(proto.name or f"{proto.op_type}_{index}", proto.op_type, tuple(proto.input),
                        tuple(proto.output), _attributes(proto))
            if node.op == "Constant":
                constants[node.outputs[0]] = numpy_helper.to_array(node.attributes["value"])
                continue
            if node.op not in OPS:
                raise ValueError(f"{path}: ONNX operator {node.op} (node {node.name}) is not supported by the "
                                 f"cost models; supported: {', '.join(sorted(OPS))}")
            args = [constants.get(name) for name in node.inputs]
            if node.op in ("Identity", "QuantizeLinear", "DequantizeLinear") and isinstance(args[0], np.ndarray):
                constants[node.outputs[0]] = args[0]   # a weight behind a DequantizeLinear is still a weight
                continue
            module, step = OPS[node.op](node, args)
            key = None
            if module is not None:
                key = f"n{index}_{node.op.lower()}"
                self.layers[key] = module
            self.steps.append((node, key, step))
        self.constants = constants

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, Any] = {self.input_name: x}
        for node, key, step in self.steps:
            args = [values.get(n, self.constants.get(n)) if n else None for n in node.inputs]
            values[node.outputs[0]] = step(self.layers[key] if key else None, args)
        return values[self.output_names[0]]

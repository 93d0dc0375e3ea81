"""What the ZCU104's DPU computes, as QDQ ONNX: `model_dpu.onnx`, run by onnxruntime anywhere.

`spaces.quant.dpu_emulation.emulate` turns the float network into a torch.fx GraphModule whose fix-point quantizers
(`FixQuantizer`) compute the DPU's arithmetic: signed int8 codes at power-of-two steps 2^-p, one fix position p per
tensor. This module writes that model as ONNX with every quantizer a QuantizeLinear/DequantizeLinear pair:

- each quantizer is swapped for a marker (`spaces.quant.marks`, as `search.bundle.qdq` does for the per-channel
  model) and the traced export's markers are replaced by the quantizer's own parameters;
- weights and biases become int8 codes (`codes`: the DPU's half-away-from-zero rounding, narrow range) and a
  DequantizeLinear at scale 2^-p, zero point 0, per tensor;
- activations (the input, every conv/linear output after its fused ReLU, residual adds, pools, concats) become
  QuantizeLinear -> DequantizeLinear at scale 2^-p, zero point 0, int8;
- the DPU's operator arithmetic (average pooling's k/2^s factor, hard-swish, LeakyReLU 26/256) is plain ONNX
  arithmetic from the trace.

One difference is left, and measured (`search.bundle.dpu_handoff` records it): ONNX's QuantizeLinear rounds halves
to even, the DPU's requantization rounds them up (`RoundMode.HALF_UP`). Only values exactly halfway between two
codes differ, by one code.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper
from onnx import numpy_helper
from torch import nn

from search.bundle.qdq import OPSET
from search.bundle.qdq import export_marked
from search.bundle.qdq import replace_marks
from search.bundle.qdq_graph import simplify
from spaces.quant.dpu_arithmetic import FixQuantizer
from spaces.quant.dpu_arithmetic import codes
from spaces.quant.dpu_emulation import activation_quantizers
from spaces.quant.dpu_emulation import layers
from spaces.quant.marks import export_mark

ACT, WEIGHT, BIAS = "FixAct", "FixWeight", "FixBias"
MAX_BITS = 8  # the codes are stored as int8


class DpuExportError(RuntimeError):
    """The emulated DPU model cannot be written as QDQ ONNX; the message names the tensor."""


class _Mark(nn.Module):
    """Stands for one fix-point quantizer in the export (the trace needs shapes only)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__()
        self.kind, self.name = kind, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return export_mark(x, self.kind, self.name)


def _marked(emulated: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy whose quantizers are markers named after the tensors they quantize."""
    net = copy.deepcopy(emulated).cpu().eval()
    for name, layer in layers(net).items():
        layer.weight_quant = _Mark(WEIGHT, f"{name}.weight")
        if layer.bias is not None:
            layer.bias_quant = _Mark(BIAS, f"{name}.bias")
    for name in activation_quantizers(net):
        setattr(net, name, _Mark(ACT, name))
    return net


def export_dpu(emulated: torch.fx.GraphModule, shape: tuple[int, ...], path: Path) -> Path:
    """Write the calibrated emulated model `emulated` as QDQ ONNX (batch dynamic) with power-of-two scales."""
    positions = _positions(emulated)
    net = _marked(emulated)
    proto = export_marked(net, shape)
    _replace_markers(proto, emulated, positions)
    simplify(proto)
    del proto.opset_import[:]
    proto.opset_import.append(helper.make_opsetid("", OPSET))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return Path(path)


def quantizers(emulated: nn.Module) -> dict[str, FixQuantizer]:
    """Every fix-point quantizer of an emulated model under the name `fix_positions` gives its tensor."""
    found = {
        f"{name}.{kind}": getattr(layer, f"{kind}_quant")
        for name, layer in layers(emulated).items()
        for kind in ("weight", "bias")
        if getattr(layer, kind) is not None
    }
    return {**found, **activation_quantizers(emulated)}


def _positions(emulated: torch.fx.GraphModule) -> dict[str, tuple[int, int]]:
    """(bits, fix position) of every quantizer, refusing uncalibrated ones and codes wider than int8."""
    found: dict[str, tuple[int, int]] = {}
    for name, q in quantizers(emulated).items():
        if not q.calibrated:
            raise DpuExportError(f"{name}: fix position not calibrated; run spaces.quant.dpu_emulation.calibrate")
        if q.bits > MAX_BITS:
            raise DpuExportError(f"{name}: {q.bits}-bit codes do not fit the int8 QDQ of model_dpu.onnx")
        found[name] = (q.bits, q.position())
    return found


def _scale(graph: onnx.GraphProto, made: set[str], name: str, position: int) -> list[str]:
    """The scale 2^-p (float32, exact) and int8 zero point 0 of tensor `name`, added once."""
    if name not in made:
        graph.initializer.append(numpy_helper.from_array(np.array(2.0**-position, np.float32), f"{name}.scale"))
        graph.initializer.append(numpy_helper.from_array(np.array(0, np.int8), f"{name}.zero_point"))
        made.add(name)
    return [f"{name}.scale", f"{name}.zero_point"]


def _replace_markers(
    proto: onnx.ModelProto, emulated: torch.fx.GraphModule, positions: dict[str, tuple[int, int]]
) -> None:
    graph, made = proto.graph, set()

    def nodes_for(node: onnx.NodeProto, name: str) -> list[onnx.NodeProto]:
        if name not in positions:
            raise DpuExportError(f"the export marks an unknown quantizer {name!r}")
        bits, position = positions[name]
        params, out = _scale(graph, made, name, position), node.output[0]
        if node.op_type == ACT:
            return [
                helper.make_node("QuantizeLinear", [node.input[0], *params], [f"{out}_q"], name=f"{out}_Q"),
                helper.make_node("DequantizeLinear", [f"{out}_q", *params], [out], name=f"{out}_DQ"),
            ]
        kind = "weight" if node.op_type == WEIGHT else "bias"
        layer = emulated.get_submodule(name.rsplit(".", 1)[0])
        quantizer = getattr(layer, f"{kind}_quant")
        stored = codes(
            getattr(layer, kind).detach().cpu(),
            position,
            bits,
            round_mode=quantizer.round_mode,
            narrow=quantizer.narrow,
        )
        graph.initializer.append(numpy_helper.from_array(stored.numpy().astype(np.int8), f"{name}_quantized"))
        return [helper.make_node("DequantizeLinear", [f"{name}_quantized", *params], [out], name=f"{name}_DQ")]

    replace_marks(proto, nodes_for)


def qdq_scales(path: Path) -> dict[str, float]:
    """Every QuantizeLinear/DequantizeLinear scale of an ONNX file, by initializer name."""
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    found = {}
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            init = inits.get(node.input[1])
            if init is None:
                raise DpuExportError(f"{Path(path).name}: {node.name}'s scale is not an initializer")
            found[init.name] = float(numpy_helper.to_array(init))
    return found

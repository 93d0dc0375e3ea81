"""The recipe's own quantizers written into ONNX as QuantizeLinear/DequantizeLinear (QDQ) nodes.

What the search scored is a fake-quantized PyTorch model (`spaces.quant.fake_quant`): per layer, an input
activation quantizer (per tensor, unsigned codes 0..2^b-1 with a zero point) and a weight quantizer
(symmetric, signed, narrow range, per channel or per tensor), whose scales were set by PTQ calibration or
trained by QAT. Re-quantizing the float network with onnxruntime would replace those scales (and the
calibration method) with its own; this module instead exports the float network and inserts, in front of
every quantized Conv/Gemm, the very scales and zero points of its quantizers:

- weights become integer codes (an initializer) + DequantizeLinear(scale, 0, axis 0): the codes are
  `clamp(round(w / s), -qmax, qmax)`, the arithmetic of `WeightQuantizer`, computed once here;
- the layer's input goes through QuantizeLinear -> DequantizeLinear with the activation quantizer's
  scale and zero point.

Encodings, per layer (`LayerEncoding.kind`):
- `int8`: 8-bit weights and activations in INT8/UINT8 QDQ, what onnxruntime's int8 kernels execute;
- `int4`: 4-bit weights stored as INT4 (opset 21, half the bytes of int8), which onnxruntime's CPU provider
  loads and dequantizes; activations narrower than 8 bits use the 8-bit container below (onnxruntime 1.31's
  QDQ propagation moves a UINT4 QuantizeLinear past MaxPool, which has no UINT4 kernel, so UINT4
  activations would not load);
- `simulated`: other integer widths (2, 3, 5, 6, 7 bits), whose codes are stored in an 8-bit container with
  a float Clip that keeps them inside the b-bit range: the arithmetic is exactly the recipe's, but any
  runtime executes the layer as int8 (labelled so in metrics.json);
- `fp16`: the weights stored as float16 and the input rounded through Cast nodes (onnxruntime computes in
  fp32 on x86; the rounding is the recipe's);
- unquantized layers stay fp32.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto
from onnx import helper
from onnx import numpy_helper
from torch import nn

from hardware_models.estimators import host
from spaces.quant.fake_quant import QUANT_LAYERS
from spaces.quant.fake_quant import ActQuantizer
from spaces.quant.fake_quant import WeightQuantizer
from spaces.recipe import INT_BITS

OPSET = 21  # INT4/UINT4 QuantizeLinear/DequantizeLinear
INT4_BITS = 4


class QdqError(RuntimeError):
    """The quantized model cannot be written as QDQ ONNX; the message names the layer."""


@dataclass(frozen=True)
class LayerEncoding:
    name: str
    kind: str  # int8 | int4 | simulated | fp16 | fp32
    weight_bits: int
    act_bits: int


@dataclass(frozen=True)
class QdqExport:
    path: Path
    layers: tuple[LayerEncoding, ...]

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.kind] = counts.get(layer.kind, 0) + 1
        return counts

    @property
    def simulated(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers if layer.kind in ("simulated", "fp16"))

    def summary(self) -> dict[str, object]:
        return {"file": self.path.name, "opset": OPSET, "layers": self.kinds(),
                "simulated_layers": list(self.simulated),
                "per_layer": {layer.name: layer.kind for layer in self.layers}}


def encoding_of(weight_bits: int, act_bits: int) -> str:
    if (weight_bits, act_bits) == (32, 32):
        return "fp32"
    if weight_bits == act_bits == 16:
        return "fp16"
    if weight_bits == act_bits == 8:
        return "int8"
    if weight_bits == INT4_BITS and act_bits in INT_BITS:
        return "int4"
    if weight_bits in INT_BITS and act_bits in INT_BITS:
        return "simulated"
    raise QdqError(f"no QDQ encoding for {weight_bits}-bit weights with {act_bits}-bit activations")


def float_network(model: nn.Module) -> nn.Module:
    """A copy with the fake quantizers removed: the (BN-folded) float network they wrap, plain torch classes."""
    plain = copy.deepcopy(model)
    for layer in plain.modules():
        if isinstance(layer, QUANT_LAYERS):
            del layer.weight_quant, layer.act_quant
            layer.__class__ = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
    return plain.eval()


def export_float(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """The float model as it computes in eval mode, batch dynamic, each weight an initializer named as in torch."""
    return host.export_onnx(model, shape, path, dynamic_batch=True, fold_constants=False)


def export_qdq(model: nn.Module, shape: tuple[int, ...], path: Path) -> QdqExport:
    """Write `model` (fake-quantized, calibrated) as an ONNX graph carrying its own quantizers' parameters."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QUANT_LAYERS)}
    export_float(float_network(model), shape, path)
    graph_model = onnx.load(str(path))
    graph_model = onnx.version_converter.convert_version(graph_model, OPSET)
    graph = graph_model.graph
    inits = {init.name: init for init in graph.initializer}
    consumers = _weight_consumers(graph)
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    encodings = []
    for name, layer in layers.items():
        wq, aq = layer.weight_quant, layer.act_quant
        kind = encoding_of(wq.bits, aq.bits)
        encodings.append(LayerEncoding(name, kind, wq.bits, aq.bits))
        if kind == "fp32":
            continue
        weight_name = f"{name}.weight"
        if weight_name not in inits or weight_name not in consumers:
            raise QdqError(f"layer {name}: its weight is not an initializer of the exported graph")
        index, node = consumers[weight_name]
        before = [*_weight_nodes(graph, inits[weight_name], layer.weight.detach(), wq, kind, node),
                  *_act_nodes(graph, node, aq, kind, name)]
        new_nodes[index] = before
    nodes = list(graph.node)
    del graph.node[:]
    for index, node in enumerate(nodes):
        graph.node.extend(new_nodes.get(index, []))
        graph.node.append(node)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))
    return QdqExport(Path(path), tuple(encodings))


def _weight_consumers(graph: onnx.GraphProto) -> dict[str, tuple[int, onnx.NodeProto]]:
    return {node.input[1]: (i, node) for i, node in enumerate(graph.node)
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 1}


def _const(graph: onnx.GraphProto, name: str, array: np.ndarray, dtype: int | None = None) -> str:
    """An initializer; INT4 values are packed two to a byte by onnx's helper, everything else is stored raw."""
    if dtype == TensorProto.INT4:
        graph.initializer.append(helper.make_tensor(name, dtype, list(array.shape), array.flatten().tolist()))
    else:
        graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _weight_nodes(graph: onnx.GraphProto, init: onnx.TensorProto, weight: torch.Tensor, wq: WeightQuantizer,
                  kind: str, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Replace the float weight initializer by codes (or fp16) + the node that turns them back into floats."""
    base = init.name
    float_name = f"{base}_dequantized"
    graph.initializer.remove(init)
    node.input[1] = float_name
    if kind == "fp16":
        half = weight.numpy().astype(np.float16)
        _const(graph, f"{base}_fp16", half)
        return [helper.make_node("Cast", [f"{base}_fp16"], [float_name], to=TensorProto.FLOAT, name=f"{base}_cast")]
    scale = wq.scale.detach().flatten().numpy().astype(np.float32)
    shape = (-1, *[1] * (weight.dim() - 1))
    codes = np.clip(np.round(weight.numpy() / scale.reshape(shape)), -wq.qmax, wq.qmax).astype(np.int8)
    dtype = TensorProto.INT4 if kind == "int4" else TensorProto.INT8
    per_channel = scale.size > 1
    scale_name = _const(graph, f"{base}_scale", scale if per_channel else scale.reshape(()))
    zero = np.zeros(scale.shape if per_channel else (), dtype=np.int8)
    zero_name = _const(graph, f"{base}_zero_point", zero, dtype)
    codes_name = _const(graph, f"{base}_quantized", codes, dtype)
    attrs = {"axis": 0} if per_channel else {}
    return [helper.make_node("DequantizeLinear", [codes_name, scale_name, zero_name], [float_name],
                             name=f"{base}_DequantizeLinear", **attrs)]


def _act_nodes(graph: onnx.GraphProto, node: onnx.NodeProto, aq: ActQuantizer, kind: str,
               layer: str) -> list[onnx.NodeProto]:
    """QuantizeLinear -> DequantizeLinear on the layer's input, with the activation quantizer's parameters."""
    source, base = node.input[0], f"{layer}.input"
    out = f"{base}_dequantized"
    node.input[0] = out
    if kind == "fp16":
        return [helper.make_node("Cast", [source], [f"{base}_fp16"], to=TensorProto.FLOAT16, name=f"{base}_cast16"),
                helper.make_node("Cast", [f"{base}_fp16"], [out], to=TensorProto.FLOAT, name=f"{base}_cast32")]
    if not aq.is_calibrated:
        raise QdqError(f"layer {layer}: its activation quantizer is not calibrated")
    scale, zero_point = float(aq.scale), int(round(float(aq.zero_point)))
    qmax = 2**aq.bits - 1
    dtype = TensorProto.UINT8
    scale_name = _const(graph, f"{base}_scale", np.array(scale, dtype=np.float32))
    zero_name = _const(graph, f"{base}_zero_point", np.array(zero_point, dtype=np.uint8), dtype)
    nodes = []
    if aq.bits < 8:  # an 8-bit container: clip in float so that codes stay inside 0..2^b-1
        low = _const(graph, f"{base}_clip_low", np.array((0 - zero_point) * scale, dtype=np.float32))
        high = _const(graph, f"{base}_clip_high", np.array((qmax - zero_point) * scale, dtype=np.float32))
        nodes.append(helper.make_node("Clip", [source, low, high], [f"{base}_clipped"], name=f"{base}_Clip"))
        source = f"{base}_clipped"
    nodes += [helper.make_node("QuantizeLinear", [source, scale_name, zero_name], [f"{base}_quantized"],
                               name=f"{base}_QuantizeLinear"),
              helper.make_node("DequantizeLinear", [f"{base}_quantized", scale_name, zero_name], [out],
                               name=f"{base}_DequantizeLinear")]
    return nodes

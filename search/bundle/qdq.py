"""The recipe's own quantizers written into ONNX as QuantizeLinear/DequantizeLinear (QDQ) nodes.

What the search scored is a fake-quantized PyTorch model (`spaces.quant.fake_quant`): per layer an input quantizer
(per tensor, unsigned codes 0..2^b-1 with a zero point) and a weight quantizer (symmetric, signed, narrow
range, per channel or per tensor), and where the runtime requantizes between layers (`spaces.quant.scheme`:
conv outputs, residual adds, concats) an output quantizer, with scales set by PTQ calibration or trained by
QAT. Re-quantizing the float network with onnxruntime would replace those scales with its own; this module
exports the fake-quantized model itself, each quantizer as a marker node (`Mode.EXPORT`), and replaces every
marker by the quantizer's own parameters:

- weights become integer codes `clamp(round(w / s), -qmax, qmax)` (an initializer) + DequantizeLinear;
- biases of integer layers become int32 codes at scale s_input * s_weight + DequantizeLinear, as the integer
  kernels add them;
- an activation quantizer becomes QuantizeLinear -> DequantizeLinear with its scale and zero point (behind the
  ReLU it absorbed); a quantizer tied to another writes the other's parameters;
- then `search.bundle.qdq_graph.simplify` removes what is a no-op on codes, so onnxruntime (its portable
  ORT_ENABLE_EXTENDED fusions) runs every integer Conv/Gemm as QLinearConv/QGemm, residual Adds as QLinearAdd.

Encodings, per layer (`LayerEncoding.kind`):
- `int8`: 8-bit weights and activations;
- `int8_container`: other integer widths (2..7 bits): the b-bit codes stored in int8 (weights) and uint8
  (activations, with a Clip to 0..2^b-1 in front of the QuantizeLinear), executed by the same int8 kernels:
  exactly the recipe's arithmetic, at int8 speed. This is the weight form that runs fastest without changing
  the codes: ONNX INT4 weights (`weight_container="int4"`, opset 21) load but have no integer kernel in
  onnxruntime 1.31 (`benchmarks.int8_execution` measures both);
- `int4`: 4-bit weights stored as INT4, only when asked for;
- `fp16`: weights stored as float16, the input rounded through Cast nodes (fp32 kernels on the CPUs);
- `fp32`: unquantized layers.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable
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
from search.bundle.qdq_graph import simplify
from spaces.quant.fake_quant import QUANT_LAYERS
from spaces.quant.fake_quant import ActQuantizer
from spaces.quant.fake_quant import Mode
from spaces.quant.fake_quant import WeightQuantizer
from spaces.quant.fake_quant import quantizer_mode
from spaces.quant.marks import BIAS_BOUND
from spaces.quant.marks import MARK_DOMAIN
from spaces.quant.target_arithmetic import float_copy
from spaces.recipe import INT_BITS

OPSET, INT4_OPSET = 17, 21  # INT4 initializers need opset 21
INT4_BITS = 4
WEIGHT_CONTAINERS = ("int8", "int4")
CLIP_SUFFIX = "_bits_Clip"  # the Clip of a sub-8-bit activation quantizer (kept by simplify)
CONTAINER_WHY = (
    "sub-8-bit codes in int8 containers run on onnxruntime's int8 kernels (QLinearConv/QGemm); ONNX "
    "INT4 weights have no integer kernel in onnxruntime 1.31 and are dequantized to float on every "
    "call (benchmarks.int8_execution: docs/results/int8-execution)"
)


class QdqError(RuntimeError):
    """The quantized model cannot be written as QDQ ONNX; the message names the layer."""


@dataclass(frozen=True)
class LayerEncoding:
    name: str
    kind: str  # int8 | int8_container | int4 | fp16 | fp32
    weight_bits: int
    act_bits: int


@dataclass(frozen=True)
class QdqExport:
    path: Path
    layers: tuple[LayerEncoding, ...]
    weight_container: str = "int8"

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.kind] = counts.get(layer.kind, 0) + 1
        return counts

    @property
    def simulated(self) -> tuple[str, ...]:
        """Layers whose own width has no kernel of that width: they run at int8 (sub-8-bit) or fp32 (fp16)."""
        return tuple(layer.name for layer in self.layers if layer.kind in ("int8_container", "int4", "fp16"))

    def summary(self) -> dict[str, object]:
        return {
            "file": self.path.name,
            "opset": INT4_OPSET if self.weight_container == "int4" else OPSET,
            "layers": self.kinds(),
            "simulated_layers": list(self.simulated),
            "per_layer": {layer.name: layer.kind for layer in self.layers},
            "weight_container": self.weight_container,
            "weight_container_why": CONTAINER_WHY
            if self.weight_container == "int8"
            else "INT4 weights as asked: stored at half the bytes, dequantized to float by onnxruntime",
        }


def encoding_of(weight_bits: int, act_bits: int, weight_container: str = "int8") -> str:
    if (weight_bits, act_bits) == (32, 32):
        return "fp32"
    if weight_bits == act_bits == 16:
        return "fp16"
    if weight_bits in INT_BITS and act_bits in INT_BITS:
        if weight_container == "int4" and weight_bits <= INT4_BITS:
            return "int4"
        return "int8" if weight_bits == act_bits == 8 else "int8_container"
    raise QdqError(f"no QDQ encoding for {weight_bits}-bit weights with {act_bits}-bit activations")


def float_network(model: nn.Module) -> nn.Module:
    """A copy with the fake quantizers removed: the (BN-folded) float network they wrap, plain torch classes
    (`spaces.quant.target_arithmetic.float_copy`: the DPU accuracy re-quantizes the same network)."""
    return float_copy(model)


def export_float(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """The float model as it computes in eval mode, batch dynamic, each weight an initializer named as in torch."""
    return host.export_onnx(model, shape, path, dynamic_batch=True, fold_constants=False)


def export_qdq(model: nn.Module, shape: tuple[int, ...], path: Path, *, weight_container: str = "int8") -> QdqExport:
    """Write `model` (fake-quantized, calibrated) as an ONNX graph carrying its own quantizers' parameters."""
    if weight_container not in WEIGHT_CONTAINERS:
        raise ValueError(f"weight_container {weight_container!r}: use one of {', '.join(WEIGHT_CONTAINERS)}")
    net = copy.deepcopy(model).cpu().eval()
    host.require_real_weights(net)
    quantizers = _name_quantizers(net)
    encodings = tuple(
        LayerEncoding(
            name,
            encoding_of(m.weight_quant.bits, m.act_quant.bits, weight_container),
            m.weight_quant.bits,
            m.act_quant.bits,
        )
        for name, m in net.named_modules()
        if isinstance(m, QUANT_LAYERS)
    )
    with quantizer_mode(net, Mode.EXPORT):
        proto = export_marked(net, shape)
    _replace_markers(proto, quantizers, {e.name: e.kind for e in encodings})
    simplify(proto, keep=frozenset(n.name for n in proto.graph.node if n.name.endswith(CLIP_SUFFIX)))
    del proto.opset_import[:]
    proto.opset_import.append(helper.make_opsetid("", OPSET))
    if weight_container == "int4":
        proto = onnx.version_converter.convert_version(proto, INT4_OPSET)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return QdqExport(Path(path), encodings, weight_container)


def export_marked(net: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    """The traced ONNX export (opset 17, batch dynamic) of a network whose quantizers emit marker nodes
    (`spaces.quant.marks`), for the caller to replace by each quantizer's own parameters."""
    with tempfile.TemporaryDirectory(prefix="qdq_") as tmp:
        marked = Path(tmp) / "marked.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.zeros((1, *shape)),),
                str(marked),
                input_names=["input"],
                output_names=["output"],
                opset_version=OPSET,
                do_constant_folding=False,
                dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                custom_opsets={MARK_DOMAIN: 1},
            )
        return onnx.load(str(marked))


def _name_quantizers(net: nn.Module) -> dict[str, nn.Module]:
    """Give each quantizer its export name (weights: the layer's name) and return them by that name."""
    named: dict[str, nn.Module] = {}
    for name, module in net.named_modules():
        if isinstance(module, QUANT_LAYERS):
            module.weight_quant.export_name = name
            named[name] = module
        elif isinstance(module, ActQuantizer):
            module.export_name = name
            named[name] = module
    return named


def replace_marks(proto: onnx.ModelProto, nodes_for: Callable[[onnx.NodeProto, str], list[onnx.NodeProto]]) -> None:
    """Each marker node replaced, in place, by what `nodes_for(marker, quantizer name)` returns; the marker domain
    is dropped from the opsets."""
    graph = proto.graph
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        if node.domain != MARK_DOMAIN:
            graph.node.append(node)
            continue
        graph.node.extend(nodes_for(node, helper.get_attribute_value(node.attribute[0]).decode()))
    for opset in list(proto.opset_import):
        if opset.domain == MARK_DOMAIN:
            proto.opset_import.remove(opset)


def _replace_markers(proto: onnx.ModelProto, quantizers: dict[str, nn.Module], kinds: dict[str, str]) -> None:
    graph = proto.graph
    made: set[str] = set()
    weight_of: dict[str, str] = {}

    def nodes_for(node: onnx.NodeProto, name: str) -> list[onnx.NodeProto]:
        module = quantizers.get(name)
        if module is None:
            raise QdqError(f"the export marks an unknown quantizer {name!r}")
        if node.op_type == "Act":
            return _act_nodes(graph, node, module, made)
        if node.op_type == "Weight":
            weight_of[node.output[0]] = name
            return _weight_nodes(graph, node, module, kinds[name])
        if node.op_type == "Bias":
            return _bias_nodes(graph, node, module)
        raise QdqError(f"unknown export marker {node.op_type} for {name}")

    replace_marks(proto, nodes_for)
    for node in graph.node:  # each quantized Conv/Gemm named after its layer: onnxruntime keeps the name when it fuses
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in weight_of:
            node.name = weight_of[node.input[1]]


def _const(graph: onnx.GraphProto, name: str, array: np.ndarray, dtype: int | None = None) -> str:
    """An initializer; INT4 values are packed two to a byte by onnx's helper, everything else is stored raw."""
    if dtype == TensorProto.INT4:
        graph.initializer.append(helper.make_tensor(name, dtype, list(array.shape), array.flatten().tolist()))
    else:
        graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _weight_nodes(graph: onnx.GraphProto, node: onnx.NodeProto, layer: nn.Module, kind: str) -> list[onnx.NodeProto]:
    """The weight as codes (or fp16) + the node that turns them back into floats. The codes come from the
    module's own weight: the marker's input (an initializer, or an Identity of an identical one that the exporter
    deduplicated) is left for `simplify` to drop."""
    name = node.attribute[0].s.decode()
    wq: WeightQuantizer = layer.weight_quant
    weight = layer.weight.detach().cpu()
    base, out = f"{name}.weight", node.output[0]
    if wq.bits == 16:
        _const(graph, f"{base}_fp16", weight.numpy().astype(np.float16))
        return [helper.make_node("Cast", [f"{base}_fp16"], [out], to=TensorProto.FLOAT, name=f"{base}_cast")]
    scale = wq.scale.detach().flatten().cpu().numpy().astype(np.float32)
    shape = (-1, *[1] * (weight.dim() - 1))
    codes = np.clip(np.round(weight.numpy() / scale.reshape(shape)), -wq.qmax, wq.qmax).astype(np.int8)
    dtype = TensorProto.INT4 if kind == "int4" else TensorProto.INT8
    per_channel = scale.size > 1
    scale_name = _const(graph, f"{base}_scale", scale if per_channel else scale.reshape(()))
    zero_name = _const(graph, f"{base}_zero_point", np.zeros(scale.shape if per_channel else (), np.int8), dtype)
    codes_name = _const(graph, f"{base}_quantized", codes, dtype)
    attrs = {"axis": 0} if per_channel else {}
    return [
        helper.make_node(
            "DequantizeLinear", [codes_name, scale_name, zero_name], [out], name=f"{base}_DequantizeLinear", **attrs
        )
    ]


def _bias_nodes(graph: onnx.GraphProto, node: onnx.NodeProto, layer: nn.Module) -> list[onnx.NodeProto]:
    """int32 codes at scale s_input * s_weight (per output channel when the weights are)."""
    name = node.attribute[0].s.decode()
    act = layer.act_quant.source.scale.detach().cpu().numpy().astype(np.float32)
    scale = (act * layer.weight_quant.scale.detach().flatten().cpu().numpy().astype(np.float32)).astype(np.float32)
    scale = np.maximum(scale, np.float32(1e-30))
    bias = layer.bias.detach().cpu().numpy().astype(np.float32)
    codes = np.clip(np.round(bias / scale), -BIAS_BOUND, BIAS_BOUND).astype(np.int32)
    per_channel = scale.size > 1
    base = f"{name}.bias"
    scale_name = _const(graph, f"{base}_scale", scale if per_channel else scale.reshape(()))
    zero_name = _const(graph, f"{base}_zero_point", np.zeros(scale.shape if per_channel else (), np.int32))
    codes_name = _const(graph, f"{base}_quantized", codes)
    attrs = {"axis": 0} if per_channel else {}
    return [
        helper.make_node(
            "DequantizeLinear",
            [codes_name, scale_name, zero_name],
            [node.output[0]],
            name=f"{base}_DequantizeLinear",
            **attrs,
        )
    ]


def _act_nodes(
    graph: onnx.GraphProto, node: onnx.NodeProto, quantizer: ActQuantizer, made: set[str]
) -> list[onnx.NodeProto]:
    """[the absorbed activation ->] [Clip to b bits ->] QuantizeLinear -> DequantizeLinear, or the fp16 Casts."""
    name = node.attribute[0].s.decode()
    source, out = node.input[0], node.output[0]
    nodes: list[onnx.NodeProto] = []
    if quantizer.activation:
        nodes.append(_activation_node(graph, quantizer.activation, source, f"{name}.{quantizer.activation}", made))
        source = nodes[-1].output[0]
    if quantizer.bits == 16:
        return [
            *nodes,
            helper.make_node("Cast", [source], [f"{name}_fp16"], to=TensorProto.FLOAT16, name=f"{name}_c16"),
            helper.make_node("Cast", [f"{name}_fp16"], [out], to=TensorProto.FLOAT, name=f"{name}_c32"),
        ]
    owner = quantizer.source
    if not owner.is_calibrated:
        raise QdqError(f"quantizer {name}: not calibrated")
    base = getattr(owner, "export_name", name)
    scale, zero_point = float(owner.scale), int(round(float(owner.zero_point)))
    if base not in made:
        _const(graph, f"{base}.scale", np.array(scale, dtype=np.float32))
        _const(graph, f"{base}.zero_point", np.array(zero_point, dtype=np.uint8))
        made.add(base)
    if quantizer.bits < 8:  # an 8-bit container: clip in float so that codes stay inside 0..2^b-1
        low = _const(graph, f"{name}.clip_low", np.array((0 - zero_point) * scale, dtype=np.float32))
        high = _const(
            graph, f"{name}.clip_high", np.array((2**quantizer.bits - 1 - zero_point) * scale, dtype=np.float32)
        )
        nodes.append(helper.make_node("Clip", [source, low, high], [f"{name}_clipped"], name=name + CLIP_SUFFIX))
        source = f"{name}_clipped"
    inputs = [f"{base}.scale", f"{base}.zero_point"]
    return [
        *nodes,
        helper.make_node("QuantizeLinear", [source, *inputs], [f"{name}_quantized"], name=f"{name}_Q"),
        helper.make_node("DequantizeLinear", [f"{name}_quantized", *inputs], [out], name=f"{name}_DQ"),
    ]


def _activation_node(graph: onnx.GraphProto, activation: str, source: str, name: str, made: set[str]) -> onnx.NodeProto:
    if activation == "relu":
        return helper.make_node("Relu", [source], [f"{name}_out"], name=name)
    if "relu6.bounds" not in made:
        _const(graph, "relu6.low", np.array(0.0, np.float32))
        _const(graph, "relu6.high", np.array(6.0, np.float32))
        made.add("relu6.bounds")
    return helper.make_node("Clip", [source, "relu6.low", "relu6.high"], [f"{name}_out"], name=name)

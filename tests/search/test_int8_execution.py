"""What onnxruntime executes is what the search prices: the rule equals onnxruntime's optimized graph.

The search prices each layer at the precision `hardware_models.capability` gives it (integer codes: int8; fp16 on
a Pi: fp32; fp32: fp32). These tests export real networks of the space (random weights, BN folded, PTQ-calibrated)
with the recipe's own quantizers (`search.bundle.qdq`), let onnxruntime 1.31 optimize them as the Pi runner does
(ORT_ENABLE_EXTENDED, one thread) and read back which Conv/Gemm became an integer kernel: for every network and
a mix of every width the space offers (8, sub-8-bit weights, sub-8-bit activations, fp16, fp32 layers, per-tensor
and per-channel), the two must agree layer by layer, and the file must compute what PyTorch computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evaluators.candidate import layer_precisions
from hardware_models.graph.ort_executed import executed
from hardware_models.graph.ort_executed import scope_layer
from hardware_models.targets import deployment
from search.bundle.onnx_files import session
from search.bundle.qdq import export_qdq
from spaces.models.architectures import create_model
from spaces.quant.fake_quant import ActQuantizer
from spaces.quant.quantization import bit_widths
from spaces.quant.quantization import calibrate
from spaces.quant.quantization import layer_groups
from spaces.quant.quantization import quantize_model
from spaces.recipe import Quantization
from spaces.recipe import QuantKind

pytestmark = pytest.mark.usefixtures("one_thread")

NETWORKS = {
    "resnet18": (3, 32),
    "resnet50": (3, 32),
    "mobilenet_v2": (3, 32),
    "squeezenet1_0": (3, 32),
    "squeezenet1_1": (3, 32),
    "mlp": (1, 28),
    "small_cnn": (1, 28),
}
# Cycled over a network's groups: int8, sub-8-bit weights, sub-8-bit activations, fp16, fp32, 2-bit weights.
MIXED = ((8, 8), (4, 8), (6, 4), (16, 16), (32, 32), (2, 8))


def _quantized(arch: str, quant: Quantization) -> tuple[torch.nn.Module, tuple[int, int, int], torch.Tensor]:
    channels, size = NETWORKS[arch]
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=channels, resolution=size).eval()
    with torch.no_grad():  # BN statistics of real-looking activations: torchvision's init leaves them at 0/1
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    qmodel = quantize_model(model, quant).eval()
    x = torch.randn(16, channels, size, size)
    calibrate(qmodel, [x[:8], x[8:]], "minmax")
    return qmodel, (channels, size, size), x


def _mixed(arch: str) -> Quantization:
    channels, size = NETWORKS[arch]
    groups = layer_groups(create_model(arch, num_classes=10, in_channels=channels, resolution=size))
    bits = tuple((name, *MIXED[i % len(MIXED)]) for i, name in enumerate(groups))
    return Quantization(kind=QuantKind.PTQ, layer_bits=bits, per_channel=len(groups) % 2 == 0)


@pytest.mark.parametrize("arch", list(NETWORKS))
@pytest.mark.parametrize("mixed", [False, True], ids=["int8", "mixed"])
def test_onnxruntime_executes_each_layer_at_the_priced_precision(arch: str, mixed: bool, tmp_path: Path) -> None:
    quant = _mixed(arch) if mixed else Quantization(kind=QuantKind.PTQ)
    qmodel, shape, x = _quantized(arch, quant)
    exported = export_qdq(qmodel, shape, tmp_path / "model_int8.onnx")
    bits = bit_widths(qmodel)
    graph = executed(exported.path)
    ran = graph.layers(set(bits))
    priced = {}
    for target in ("rpi4", "rpi5", "host"):
        priced[target] = layer_precisions(deployment(target, bits, runtime="onnxruntime"))["runs_as_layers"]
    assert priced["rpi4"] == priced["rpi5"] == priced["host"]
    assert ran == priced["rpi4"], {k: (ran.get(k), v) for k, v in priced["rpi4"].items() if ran.get(k) != v}
    integer = [name for name, (w, a) in bits.items() if w <= 8 and a <= 8]
    assert integer and all(ran[name] == "int8" for name in integer)
    if not mixed:
        assert graph.ops.get("Conv", 0) + graph.ops.get("Gemm", 0) + graph.ops.get("FusedConv", 0) == 0, graph.ops
    with torch.no_grad():
        expected = qmodel(x).numpy()
    runner = session(exported.path)
    got = runner.run(None, {"input": x.numpy()})[0]
    # The same arithmetic up to float rounding: PyTorch's fp32 convolutions and onnxruntime's exact int32 sums differ
    # by an ulp, which moves a requantized code by one step where the value sits on a rounding boundary; a step of a
    # coarse (2-bit) grid moves the logits more. (Prediction agreement on trained networks:
    # tests/search/test_bundle.py.) Random weights through 50 layers with 2-bit, fp16 and fp32 groups amplify such
    # steps most (ResNet-50 mixed: median 0.9% of the logits' range).
    error = np.abs(got - expected).max(1) / float(np.abs(expected).max())
    assert np.median(error) <= (0.03 if mixed else 0.01) and (mixed or error.max() <= 0.1), error


def test_residual_adds_and_concats_run_in_integers(tmp_path: Path) -> None:
    """The scheme's block quantizers make onnxruntime's QLinearAdd (ResNet, MobileNetV2) and QLinearConcat
    (SqueezeNet's Fire modules): one per block with the operation."""
    counts = {}
    for arch, blocks in (("resnet18", 8), ("mobilenet_v2", 10), ("squeezenet1_1", 8)):
        qmodel, shape, _ = _quantized(arch, Quantization(kind=QuantKind.PTQ))
        ops = executed(export_qdq(qmodel, shape, tmp_path / f"{arch}.onnx").path).ops
        counts[arch] = ops.get("QLinearAdd", 0) + ops.get("QLinearConcat", 0)
        assert counts[arch] == blocks, (arch, ops)


def test_a_consumer_reads_its_producers_codes(tmp_path: Path) -> None:
    """One scale per tensor, as onnxruntime's quantizer assigns them: a conv reading another's output is tied to
    that output quantizer (no second rounding), and an absorbed ReLU leaves a zero point of 0."""
    qmodel, _, _ = _quantized("resnet18", Quantization(kind=QuantKind.PTQ))
    conv2 = qmodel.get_submodule("layer1.0.conv2")
    assert conv2.act_quant.owner is qmodel.get_submodule("layer1.0.conv1").out_quant
    assert qmodel.get_submodule("layer1.0.conv1").out_quant.activation == "relu"
    assert float(qmodel.get_submodule("layer1.0.conv1").out_quant.zero_point) == 0.0
    assert qmodel.get_submodule("layer2.0.downsample.0").act_quant.owner is qmodel.get_submodule("layer1.1").out_quant
    own = [
        n
        for n, m in qmodel.named_modules()
        if isinstance(m, ActQuantizer) and m.owner is None and n.endswith("act_quant")
    ]
    assert own == ["conv1.act_quant", "fc.0.act_quant"]  # the network's input, and the global average pool's output
    assert qmodel.get_submodule("fc.2").act_quant.owner is qmodel.get_submodule("fc.0").out_quant
    assert "out_quant" not in qmodel.get_submodule("fc.2")._modules  # the logits stay float (QGemm writes float)


def test_scope_names_map_to_layers() -> None:
    assert scope_layer("/layer4/layer4.0/downsample/downsample.0/Conv") == "layer4.0.downsample.0"
    assert scope_layer("/features/features.3/conv/conv.1/conv.1.0/Conv") == "features.3.conv.1.0"
    assert scope_layer("/fc/fc.0/Gemm") == "fc.0" and scope_layer("/1/Gemm") == "1"


def test_a_float_layer_between_int8_layers_pays_its_conversions() -> None:
    """A layer left in float costs as float plus the DequantizeLinear in front of it and the QuantizeLinear in front
    of the next int8 layer (onnxruntime on the Pi 4)."""
    import hardware_models

    model = create_model("small_cnn", num_classes=10, in_channels=1).eval()
    layers = list(bit_widths(model))
    mixed = {name: 8 for name in layers} | {layers[1]: 32}
    latency = {
        name: hardware_models.estimate(
            model, (1, 224, 224), "rpi4", precision=spec, runtime="onnxruntime", per_layer=True
        )
        for name, spec in (("int8", "int8"), ("fp32", "fp32"), ("mixed", mixed))
    }
    rows = {row["name"]: row["latency_ms"] for row in latency["mixed"]["per_layer"]}
    converted = {name: ms for name, ms in rows.items() if name.endswith(":convert")}
    assert set(converted) == {f"{layers[1]}:convert", f"{layers[2]}:convert"}  # DQ in front, Q behind
    assert min(converted.values()) > 0
    layers_only = latency["mixed"]["latency_ms"] - sum(converted.values())
    assert latency["int8"]["latency_ms"] < layers_only < latency["fp32"]["latency_ms"]
    assert not any(row["name"].endswith(":convert") for row in latency["int8"]["per_layer"])


def test_the_bundle_names_a_layer_priced_as_int8_that_runs_in_float(tmp_path: Path) -> None:
    """metrics.json's `onnxruntime_executes` compares the priced precision with onnxruntime's graph of the file."""
    from search.bundle.executed import executed_section

    qmodel, shape, _ = _quantized("small_cnn", _mixed("small_cnn"))
    exported = export_qdq(qmodel, shape, tmp_path / "model_int8.onnx")
    bits = bit_widths(qmodel)
    priced = layer_precisions(deployment("rpi4", bits, runtime="onnxruntime"))["runs_as_layers"]
    section = executed_section(exported.path, {"rpi4": {"runtime": "onnxruntime", "runs_as_layers": priced}}, exported)[
        "onnxruntime_executes"
    ]
    assert section["priced_as_executed"] == {"rpi4": True} and section["layers"] == priced
    float_layer = next(name for name, p in priced.items() if p == "fp32")
    wrong = {**priced, float_layer: "int8"}  # a front member priced as int8 where onnxruntime runs float
    section = executed_section(
        exported.path,
        {"rpi4": {"runtime": "onnxruntime", "runs_as_layers": wrong}, "zcu104": {"runs_as_layers": wrong}},
        exported,
    )["onnxruntime_executes"]
    assert section["priced_as_executed"] == {"rpi4": False}  # the DPU's runtime is not onnxruntime: not compared
    assert section["mismatched_layers"] == {"rpi4": [float_layer]}

"""Quantization: exact fake-quant arithmetic first, then BN folding, bit resolution, export, and real MNIST."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from evaluators.metrics import accuracy
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from spaces.models.architectures import create_model
from spaces.models.architectures import list_architectures
from spaces.quant.fake_quant import QuantConv2d
from spaces.quant.fake_quant import QuantLinear
from spaces.quant.fake_quant import _amax_mse_clip
from spaces.quant.fake_quant import _sym_error
from spaces.quant.fake_quant import fake_quant
from spaces.quant.fake_quant import float_mode
from spaces.quant.quantization import bit_widths
from spaces.quant.quantization import calibrate
from spaces.quant.quantization import fold_batchnorm
from spaces.quant.quantization import layer_groups
from spaces.quant.quantization import quantizable_layers
from spaces.quant.quantization import quantize_model
from spaces.quant.quantization import resolve_bits
from spaces.recipe import Quantization

ARCHS = list_architectures()
PTQ = Quantization(kind="ptq", weight_bits=8, act_bits=8)


def _example(name: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    shape = (1, 28, 28) if name == "mlp" else (3, 32, 32)
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels=1 if name == "mlp" else 3).eval()


def _identity_layer(act_bits: int) -> nn.Module:
    """y = x through one Linear whose weights stay fp32: only the input quantizer acts."""
    layer = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(4))
    return quantize_model(nn.Sequential(layer), Quantization(kind="ptq", weight_bits=32, act_bits=act_bits))


# --- exact arithmetic ------------------------------------------------------------------------------------

def test_unsigned_activation_grid_is_exact() -> None:
    model = _identity_layer(4)
    calibrate(model, [torch.tensor([[0.0, 15.0, 3.0, 7.0]])], "minmax")  # range [0, 15] -> scale 1, zero point 0
    out = model(torch.tensor([[0.4, 3.6, 20.0, -2.0]]))
    assert torch.equal(out, torch.tensor([[0.0, 4.0, 15.0, 0.0]]))


def test_signed_activation_range_uses_a_zero_point() -> None:
    model = _identity_layer(4)
    calibrate(model, [torch.tensor([[-8.0, 7.0, 0.0, 1.0]])], "minmax")  # 16 codes for [-8, 7]: scale 1
    assert float(model[0].act_quant.zero_point) == 8.0
    out = model(torch.tensor([[-3.4, -9.0, 6.6, 0.0]]))
    assert torch.equal(out, torch.tensor([[-3.0, -8.0, 7.0, 0.0]]))


@pytest.mark.parametrize("per_channel", [True, False])
def test_weights_lie_on_a_symmetric_grid(per_channel: bool) -> None:
    conv = nn.Conv2d(3, 8, 3)
    model = quantize_model(nn.Sequential(conv), Quantization(kind="ptq", weight_bits=4, per_channel=per_channel))
    layer = model[0]
    scale = layer.weight_quant.scale
    assert scale.numel() == (8 if per_channel else 1)
    with torch.no_grad():
        codes = layer.weight_quant(layer.weight) / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 7 + 1e-4
    # min-max keeps the largest weight of each channel (of the tensor) exactly representable
    dims = (1, 2, 3) if per_channel else (0, 1, 2, 3)
    assert torch.allclose(codes.abs().amax(dim=dims), torch.full_like(codes.abs().amax(dim=dims), 7.0))


def test_fp16_kind_rounds_weights_and_activations_to_half() -> None:
    model = _model("mlp")
    q = quantize_model(model, Quantization(kind="fp16"))
    assert set(bit_widths(q).values()) == {(16, 16)}
    x = _example("mlp")
    with torch.no_grad():
        first = q.get_submodule(quantizable_layers(q)[0])
        assert torch.equal(first.weight_quant(first.weight), first.weight.half().float())
        assert torch.allclose(q(x), model(x), atol=1e-2)


def test_percentile_and_mse_clip_an_outlier_that_minmax_keeps() -> None:
    bulk = torch.linspace(0, 1, 100_000)
    data = torch.cat([bulk, torch.tensor([50.0])]).view(-1, 1).repeat(1, 4)
    scales, errors = {}, {}
    for method in ("minmax", "percentile", "mse"):
        model = _identity_layer(4)
        calibrate(model, [data], method)
        scales[method] = float(model[0].act_quant.scale)
        with torch.no_grad():
            errors[method] = float((model(bulk.view(-1, 1).repeat(1, 4)) - bulk.view(-1, 1)).pow(2).mean())
    assert scales["minmax"] == pytest.approx(50.0 / 15)
    assert scales["percentile"] < scales["minmax"] / 10 and scales["mse"] < scales["minmax"] / 10
    assert errors["mse"] < errors["minmax"] / 100


def test_weight_mse_clip_only_at_8_bits() -> None:
    """Below 8 bits `mse` keeps min-max weights: at 4 bits the weight-space clip lost accuracy to min-max (issue
    27). The clip itself still lowers the weight error there; at 8 bits it never does worse than min-max."""
    torch.manual_seed(0)
    layer = nn.Linear(256, 16, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.distributions.StudentT(2.0).sample(layer.weight.shape))  # heavy tails
    err = {}
    for bits in (8, 4):
        for method in ("minmax", "mse"):
            quant = Quantization(kind="ptq", weight_bits=bits, calibration=method)
            q = quantize_model(nn.Sequential(layer), quant)[0]
            with torch.no_grad():
                err[bits, method] = float((q.weight_quant(q.weight) - layer.weight).pow(2).sum())
    assert err[8, "mse"] <= err[8, "minmax"]
    assert err[4, "mse"] == err[4, "minmax"]
    rows = layer.weight.detach()
    clipped = _sym_error(rows, _amax_mse_clip(rows, 7), 7).sum()
    assert clipped < _sym_error(rows, rows.abs().amax(1), 7).sum()


# --- BN folding, layers, groups, bits --------------------------------------------------------------------

def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics, so folding is actually exercised (fresh BN is the identity)."""
    gen = torch.Generator().manual_seed(1)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        n = bn.num_features
        bn.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
        bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            bn.bias.copy_(torch.rand(n, generator=gen) - 0.5)


@pytest.mark.parametrize("name", ARCHS)
def test_fold_batchnorm_preserves_outputs(name: str) -> None:
    model = _model(name)
    _randomize_bn(model)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())  # every BN follows a conv here
    x = _example(name)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert quantizable_layers(folded) == quantizable_layers(model)


def test_fold_batchnorm_leaves_the_original_alone() -> None:
    model = _model("small_cnn")
    fold_batchnorm(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3


@pytest.mark.parametrize("name", ARCHS)
def test_groups_partition_the_quantizable_layers_contiguously(name: str) -> None:
    model = _model(name)
    layers = quantizable_layers(model)
    assert len(layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    flat = [n for group in layer_groups(model).values() for n in group]
    assert flat == layers  # each exactly once, in order: groups are contiguous


def test_known_group_names() -> None:
    assert list(layer_groups(_model("resnet18"))) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    # Groups are resolution stages: at 32 px the small stem leaves features.2 unstrided, so 1-3 are one stage.
    assert list(layer_groups(_model("mobilenet_v2"))) == [
        "stem", "features.1-3", "features.4-6", "features.7-13", "features.14-18", "head"]
    assert list(layer_groups(create_model("mobilenet_v2", resolution=224))) == [
        "stem", "features.1", "features.2-3", "features.4-6", "features.7-13", "features.14-18", "head"]
    assert layer_groups(_model("mlp")) == {"stem": ["1"], "block1": ["3"], "head": ["5"]}


def test_resolve_bits_applies_group_then_layer_overrides_in_order() -> None:
    model = _model("resnet18")
    quant = Quantization(kind="qat", weight_bits=4, act_bits=8,
                         layer_bits=(("stem", 8, 8), ("layer4", 2, 4), ("layer4.1.conv2", 6, 6)))
    bits = resolve_bits(model, quant)
    assert bits["conv1"] == (8, 8) and bits["layer1.0.conv1"] == (4, 8)
    assert bits["layer4.0.conv1"] == (2, 4) and bits["layer4.1.conv2"] == (6, 6)
    assert set(resolve_bits(model, Quantization(kind="none")).values()) == {(32, 32)}


def test_unknown_override_names_it_and_lists_the_groups() -> None:
    with pytest.raises(ValueError, match=r"'layer9'.*groups: stem, layer1, layer2, layer3, layer4, head"):
        resolve_bits(_model("resnet18"), Quantization(kind="ptq", layer_bits=(("layer9", 4, 4),)))


@pytest.mark.parametrize("bits", [1, 9, 12, 64])
def test_unsupported_bits_are_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match=f"{bits} bits is not supported"):
        resolve_bits(_model("mlp"), Quantization(kind="ptq", weight_bits=bits))


def test_quantize_model_copies_keeps_names_and_reports_bits() -> None:
    model = _model("mlp")
    assert quantize_model(model, Quantization(kind="none")) is model
    q = quantize_model(model, Quantization(kind="ptq", weight_bits=4, act_bits=6, layer_bits=(("head", 32, 32),)))
    assert bit_widths(q) == {"1": (4, 6), "3": (4, 6), "5": (32, 32)}
    assert isinstance(q.get_submodule("1"), QuantLinear) and type(q.get_submodule("5")) is nn.Linear
    assert type(model.get_submodule("1")) is nn.Linear  # the original is untouched
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(q, PTQ)


def test_uncalibrated_activations_refuse_to_run_but_float_mode_does() -> None:
    q = quantize_model(_model("small_cnn"), PTQ)
    with pytest.raises(RuntimeError, match="not calibrated"):
        q(_example("small_cnn"))
    with float_mode(q):
        q(_example("small_cnn"))
    with pytest.raises(ValueError, match="no batches"):
        calibrate(q, [], "minmax")


def test_calibrated_state_survives_a_state_dict_round_trip() -> None:
    model = _model("small_cnn")
    q = quantize_model(model, PTQ)
    calibrate(q, [_example("small_cnn", 8, seed=1)], "percentile")
    fresh = quantize_model(model, PTQ)
    fresh.load_state_dict(q.state_dict())
    x = _example("small_cnn")
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))


# --- gradients and export --------------------------------------------------------------------------------

def test_gradients_flow_through_4bit_fake_quant() -> None:
    q = quantize_model(_model("small_cnn"), Quantization(kind="qat", weight_bits=4, act_bits=4))
    calibrate(q, [_example("small_cnn", 16, seed=1)], "minmax")
    q.train()
    x = _example("small_cnn", 8).requires_grad_(True)
    q(x).logsumexp(1).sum().backward()
    layers = [m for m in q.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(layers) == 4
    for layer in layers:
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_quantized_model_exports_to_onnx_and_runs_in_onnxruntime() -> None:
    q = quantize_model(_model("small_cnn"), Quantization(kind="ptq", weight_bits=4, act_bits=8,
                                                         layer_bits=(("head", 16, 16),)))
    calibrate(q, [_example("small_cnn", 16, seed=1)], "mse")
    x = _example("small_cnn", 4)
    buffer = io.BytesIO()
    torch.onnx.export(q, (x,), buffer, dynamo=False, input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(buffer.getvalue())
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = q(x).numpy()
    assert np.allclose(got, want, atol=1e-4)


# --- real data: MNIST ------------------------------------------------------------------------------------

SPLIT = SplitConfig(val_size=5000, calib_size=1000, train_size=10000, seed=0)
FLOAT_TRAIN = TrainConfig(epochs=2, batch_size=128, optimizer="adam", lr=3e-3, weight_decay=0.0, augment=False)
QAT_TRAIN = TrainConfig(epochs=1, batch_size=128, optimizer="adam", lr=5e-4, weight_decay=0.0, augment=False,
                        schedule="cosine")
QAT_STEPS = 60


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist_cnn(mnist_root: Path):  # noqa: ANN201
    splits, batcher = prepare_data(DataConfig(dataset=Dataset.MNIST, resolution=28, split=SPLIT), mnist_root,
                                   allow_download=False)
    torch.manual_seed(0)
    model = create_model("small_cnn", in_channels=1)
    train(model, splits.train, batcher, FLOAT_TRAIN, progress=False)
    return model, splits, batcher


def _ptq(model: nn.Module, splits, batcher, bits: int) -> nn.Module:  # noqa: ANN001
    q = quantize_model(model, Quantization(kind="ptq", weight_bits=bits, act_bits=bits))
    calibrate(q, batcher.eval_batches(splits.calib, 250), "minmax")  # the calibration split, nothing else
    return q


@pytest.mark.slow
def test_bn_folding_preserves_a_trained_cnn_on_real_images(mnist_cnn) -> None:  # noqa: ANN001
    model, splits, batcher = mnist_cnn
    x, _ = next(batcher.eval_batches(splits.val, 256))
    with torch.no_grad():
        assert torch.allclose(fold_batchnorm(model)(x), model.eval()(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_ptq8_keeps_accuracy_and_qat4_beats_ptq4_on_mnist(mnist_cnn) -> None:  # noqa: ANN001
    model, splits, batcher = mnist_cnn
    fp32 = accuracy(model, splits.val, batcher)
    ptq8 = accuracy(_ptq(model, splits, batcher, 8), splits.val, batcher)
    ptq4_model = _ptq(model, splits, batcher, 4)
    ptq4 = accuracy(ptq4_model, splits.val, batcher)
    train(ptq4_model, splits.train, batcher, QAT_TRAIN, max_steps=QAT_STEPS, progress=False)  # QAT through the STE
    qat4 = accuracy(ptq4_model, splits.val, batcher)
    print(f"validation accuracy: fp32 {fp32:.2f}  ptq8 {ptq8:.2f}  ptq4 {ptq4:.2f}  qat4 {qat4:.2f}")
    assert fp32 > 90.0
    assert ptq8 >= fp32 - 1.5
    assert qat4 > ptq4 + 0.5


def test_evaluation_fake_quant_is_bit_identical_to_the_training_path() -> None:
    """Evaluation takes an in-place path (about 2x faster for a fake-quantized MobileNetV2); it must give exactly
    what the straight-through training path gives, or F1-F3 scores would depend on whether gradients are on."""
    torch.manual_seed(0)
    x = torch.randn(4, 16, 8, 8) * 3
    scale, before = torch.tensor(0.037), x.clone()
    for qmin, qmax, zp in ((0, 255, 117.0), (-127, 127, 0.0), (0, 15, 7.0)):
        trained = fake_quant(x.clone().requires_grad_(True), scale, torch.tensor(zp), qmin, qmax)
        with torch.no_grad():
            evaluated = fake_quant(x, scale, torch.tensor(zp), qmin, qmax)
        assert trained.requires_grad and not evaluated.requires_grad
        assert torch.equal(trained.detach(), evaluated)
    assert torch.equal(x, before)  # the input is left as it was

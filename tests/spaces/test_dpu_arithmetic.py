"""The DPU's fix-point arithmetic (spaces.quant.dpu_arithmetic), its whole-network emulation
(spaces.quant.dpu_emulation), and the cross-check against Brevitas's fixed-point quantizers
(benchmarks.dpu_brevitas)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.dpu_brevitas import brevitas_twin
from benchmarks.dpu_brevitas import calibrate_twin
from benchmarks.dpu_brevitas import cross_check
from benchmarks.dpu_brevitas import twin_fix_positions
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from spaces.models.architectures import create_model
from spaces.quant.dpu_arithmetic import FixCalibration
from spaces.quant.dpu_arithmetic import FixQuantizer
from spaces.quant.dpu_arithmetic import RoundMode
from spaces.quant.dpu_arithmetic import avgpool_factor
from spaces.quant.dpu_arithmetic import bias_fix_pos
from spaces.quant.dpu_arithmetic import dpu_avg_pool
from spaces.quant.dpu_arithmetic import dpu_hardsigmoid
from spaces.quant.dpu_arithmetic import dpu_leaky_relu
from spaces.quant.dpu_arithmetic import fix_pos_diffs
from spaces.quant.dpu_arithmetic import fix_pos_maxmin
from spaces.quant.dpu_arithmetic import fix_quantize
from spaces.quant.dpu_arithmetic import modal
from spaces.quant.dpu_emulation import DpuConfig
from spaces.quant.dpu_emulation import activation_quantizers
from spaces.quant.dpu_emulation import calibrate
from spaces.quant.dpu_emulation import emulate
from spaces.quant.dpu_emulation import fix_positions
from spaces.quant.dpu_emulation import layers
from spaces.quant.dpu_emulation import set_fix_positions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cifar_images(cifar_root: Path) -> torch.Tensor:
    """384 real CIFAR-10 images (the calibration split of a small split config), normalized."""
    split = SplitConfig(val_size=100, calib_size=384, train_size=64, seed=0)
    splits, batcher = prepare_data(
        DataConfig(dataset=Dataset.CIFAR10, resolution=32, split=split), cifar_root, allow_download=False
    )
    return torch.cat([x for x, _ in batcher.eval_batches(splits.calib)])


def _trained_like(arch: str, seed: int = 0) -> nn.Module:
    """A registry network with BatchNorm statistics and biases of a trained one's spread (no zero tensors)."""
    torch.manual_seed(seed)
    model = create_model(arch, resolution=32).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.3, 1.5)
            m.bias.data.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
        elif isinstance(m, nn.Linear):
            m.bias.data.normal_(0.0, 0.1)
    return model


def _on_grid(x: torch.Tensor, position: int) -> bool:
    codes = x * 2.0**position
    return bool(torch.allclose(codes, codes.round(), atol=1e-3))


def test_rounding_modes_and_ranges_follow_vai_q():
    x = torch.tensor([-2.5, -1.5, 0.5, 1.5, 2.5, 500.0, -500.0])
    assert fix_quantize(x, 0, round_mode=RoundMode.STD).tolist() == [-3, -2, 1, 2, 3, 127, -128]
    assert fix_quantize(x, 0, round_mode=RoundMode.HALF_UP).tolist() == [-2, -1, 1, 2, 3, 127, -128]
    assert fix_quantize(x, 0, round_mode=RoundMode.HALF_EVEN).tolist() == [-2, -2, 0, 2, 2, 127, -128]
    assert fix_quantize(x, 0, narrow=True).min() == -127
    assert fix_quantize(torch.tensor([0.3]), 2).item() == 0.25  # 2 fractional bits: steps of 1/4


def test_maxmin_position_covers_the_range_without_clipping():
    for top in (1.0, 0.99, 3.7, 127.6, 0.0123):
        x = torch.tensor([-top / 3, top])
        p = fix_pos_maxmin(x)
        assert (x * 2.0**p).round().max() <= 127  # nothing clips...
        assert (x * 2.0 ** (p + 1)).round().max() > 127  # ...and one finer position would
    assert fix_pos_maxmin(torch.tensor([-1.0, 0.5])) == 7  # -128/128 fits exactly


def test_diffs_prefers_a_finer_grid_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(10_000) * 0.1, torch.tensor([8.0])])
    p_max, p_diffs = fix_pos_maxmin(x), fix_pos_diffs(x)
    assert p_diffs > p_max
    error = [(fix_quantize(x, p) - x).pow(2).sum() for p in (p_max, p_diffs)]
    assert error[1] < error[0]


def test_modal_and_bias_constraint():
    assert modal([3, 4, 4, 3, 5]) == 3  # a tie goes to the coarser position
    assert modal([6, 6, 5]) == 6
    with pytest.raises(ValueError, match="no fix positions"):
        modal([])
    assert bias_fix_pos(12, 7, 4) == 11 and bias_fix_pos(9, 7, 4) == 9


def test_operator_arithmetic():
    assert avgpool_factor(9) == 7 / 64 and avgpool_factor(49) == 21 / 1024 and avgpool_factor(16) == 1 / 16
    assert abs(avgpool_factor(10) - 0.1) < 1e-3
    x = torch.ones(1, 1, 3, 3)
    assert dpu_avg_pool(x, 3).item() == pytest.approx(9 * 7 / 64)  # the DPU's 3x3 mean of ones is 0.984
    assert dpu_leaky_relu(torch.tensor([-1.0])).item() == -26 / 256
    assert dpu_hardsigmoid(torch.tensor([0.0])).item() == pytest.approx(3 * 2731 / 16384)


def test_quantizer_refuses_to_run_uncalibrated_and_survives_a_state_dict():
    q = FixQuantizer()
    with pytest.raises(RuntimeError, match="not calibrated"):
        q(torch.ones(2))
    q.set_fix_pos(5)
    fresh = FixQuantizer()
    fresh.load_state_dict(q.state_dict())
    assert fresh.position() == 5 and fresh.calibrated


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "squeezenet1_0"])
def test_emulation_puts_every_requantized_tensor_on_its_grid(arch: str):
    model = _trained_like(arch)
    x = torch.randn(8, 3, 32, 32)
    emulated = emulate(model)
    calibrate(emulated, [x[:4], x[4:]])
    positions = fix_positions(emulated)
    assert len(layers(emulated)) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    outputs: dict[str, list[torch.Tensor]] = {}
    for name, q in activation_quantizers(emulated).items():
        q.register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, []).append(o))
    with torch.no_grad():
        logits, reference = emulated(x), model(x)
    assert all(_on_grid(out, positions[name]) for name, outs in outputs.items() for out in outs)
    sqnr = 10 * math.log10(float(reference.pow(2).mean() / (logits - reference).pow(2).mean()))
    assert sqnr > 10, f"{arch}: logit SQNR {sqnr:.1f} dB"
    for name, layer in layers(emulated).items():
        assert _on_grid(layer.weight_quant(layer.weight), positions[f"{name}.weight"])


def test_residual_adds_and_concats_get_their_fix_points():
    resnet = emulate(_trained_like("resnet18"))
    code = resnet.code
    # each BasicBlock's add + ReLU is requantized once, after the ReLU, at its own position
    assert code.count("self.dpu_q_layer") >= 16 and "dpu_q_layer1_0_relu_1" in code
    squeeze = emulate(_trained_like("squeezenet1_0"))
    # both expand branches of a fire module are written at the concat's own position
    assert squeeze.code.count("self.dpu_q_cat(") == 3


def test_positions_round_trip_and_unknown_names_are_refused():
    model = _trained_like("resnet18")
    a, b = emulate(model), emulate(model)
    calibrate(a, [torch.randn(4, 3, 32, 32)])
    set_fix_positions(b, fix_positions(a))
    assert fix_positions(b) == fix_positions(a)
    with pytest.raises(KeyError, match="no quantized tensor"):
        set_fix_positions(b, {"nonsense.weight": 3})


def test_untraceable_network_is_a_one_line_error():
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match="cannot trace Branchy"):
        emulate(Branchy())


def test_brevitas_computes_the_same_arithmetic(cifar_images: torch.Tensor):
    """Brevitas's fixed-point quantizers at the same places: the same fix positions on >= 95% of tensors (they
    differ only where max|x| sits within half a code of a power of two), bit-identical logits when both round
    half to even, and >= 99% top-1 agreement with the DPU's own rounding."""
    model = _trained_like("resnet18")
    calib, test = cifar_images[:128], cifar_images[128:]
    ours = emulate(model, DpuConfig(method=FixCalibration.MAXMIN, bias_constraint=False))
    calibrate(ours, [calib])
    twin = brevitas_twin(ours)
    calibrate_twin(twin, [calib])
    result = cross_check(ours, twin, test.split(128))
    assert result.position_agreement >= 95.0, result.differing
    set_fix_positions(ours, twin_fix_positions(twin))
    for q in ours.modules():
        if isinstance(q, FixQuantizer):
            q.round_mode = RoundMode.HALF_EVEN
    with torch.no_grad():
        assert torch.equal(ours(test[:32]), twin(test[:32]))

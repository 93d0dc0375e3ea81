"""Cross-check of the DPU emulation (`spaces.quant.dpu_emulation`) against Brevitas's fixed-point quantizers.

Why Brevitas: it is AMD/Xilinx's own quantization library, its `*FixedPoint` quantizers implement the DPU's
arithmetic (signed int8, per tensor, power-of-two scales) independently of our code, and it installs beside
torch 2.14 with three small dependencies. AMD Quark, the other candidate, pins onnx<=1.22 (the project pins
1.23.2) and pulls a dozen more packages (evaluate, sentencepiece, plotly...).

How: the twin is the emulated network with each of our quantizers replaced by Brevitas's at the same place:
every Conv2d/Linear becomes a `brevitas.nn.QuantConv2d/QuantLinear` with `Int8WeightPerTensorFixedPoint` weights
and `Int8BiasPerTensorFixedPointInternalScaling` biases, every activation quantizer a `QuantIdentity` with
`Int8ActPerTensorFixedPoint` statistics set to the absolute max. Brevitas then calibrates itself
(`calibration_mode`) on the same batches. What is compared is the arithmetic and the choice of scales (ours:
`maxmin` fix positions, std_round/half_up; Brevitas's: ceil-log2 of max/127, round half to even), not the graph.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from brevitas.graph.calibrate import calibration_mode
from brevitas.inject.enum import FloatToIntImplType
from brevitas.inject.enum import StatsOp
from brevitas.nn import QuantConv2d
from brevitas.nn import QuantIdentity
from brevitas.nn import QuantLinear
from brevitas.quant import Int8ActPerTensorFixedPoint
from brevitas.quant import Int8BiasPerTensorFixedPointInternalScaling
from brevitas.quant import Int8WeightPerTensorFixedPoint
from torch import nn

from spaces.quant.dpu_emulation import activation_quantizers
from spaces.quant.dpu_emulation import fix_positions
from spaces.quant.dpu_emulation import layers

ActFixedPointMax = Int8ActPerTensorFixedPoint.let(scaling_stats_op=StatsOp.MAX)


def _position(scale: torch.Tensor) -> int:
    return int(round(-math.log2(float(scale))))


def _quant_layer(layer: nn.Module, weight_bits: int) -> nn.Module:
    weight_quant = Int8WeightPerTensorFixedPoint.let(bit_width=weight_bits)
    bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d):
        twin = QuantConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            bias=bias,
            weight_quant=weight_quant,
            bias_quant=Int8BiasPerTensorFixedPointInternalScaling,
        )
    else:
        twin = QuantLinear(
            layer.in_features,
            layer.out_features,
            bias=bias,
            weight_quant=weight_quant,
            bias_quant=Int8BiasPerTensorFixedPointInternalScaling,
        )
    with torch.no_grad():
        twin.weight.copy_(layer.weight)
        if bias:
            twin.bias.copy_(layer.bias)
    return twin


def brevitas_twin(emulated: torch.fx.GraphModule, *, dpu_rounding: bool = False) -> torch.fx.GraphModule:
    """The emulated network with Brevitas's fixed-point quantizers in place of ours (uncalibrated).

    `dpu_rounding` rounds activations with Brevitas's `FloatToIntImplType.DPU` (its model of the DPU's rounding:
    negative ties up, positive ties to even) instead of its default, round half to even."""
    twin = copy.deepcopy(emulated)
    weight_bits = emulated.dpu_config.weight_bits
    act_quant = (
        ActFixedPointMax.let(float_to_int_impl_type=FloatToIntImplType.DPU) if dpu_rounding else ActFixedPointMax
    )
    for name, layer in layers(twin).items():
        twin.set_submodule(name, _quant_layer(layer, weight_bits))
    for name in activation_quantizers(twin):
        setattr(twin, name, QuantIdentity(act_quant=act_quant, return_quant_tensor=False))
    return twin.eval()


@torch.no_grad()
def calibrate_twin(twin: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    with calibration_mode(twin):
        for x in batches:
            twin(x)
    twin.eval()


def twin_fix_positions(twin: nn.Module) -> dict[str, int]:
    """Brevitas's fix positions, named as `spaces.quant.dpu_emulation.fix_positions` names ours."""
    out: dict[str, int] = {}
    for name, module in twin.named_modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            out[f"{name}.weight"] = _position(module.weight_quant.scale())
            if module.bias is not None:
                out[f"{name}.bias"] = _position(module.bias_quant.scale())
    for name, module in twin.named_children():
        if isinstance(module, QuantIdentity):
            out[name] = _position(module.act_quant.scale())
    return out


@dataclass(frozen=True, kw_only=True)
class CrossCheck:
    tensors: int
    same_position: int
    differing: tuple[tuple[str, int, int], ...]  # (tensor, ours, Brevitas's)
    images: int
    same_top1: int

    @property
    def position_agreement(self) -> float:
        return 100.0 * self.same_position / self.tensors

    @property
    def top1_agreement(self) -> float:
        return 100.0 * self.same_top1 / self.images


@torch.no_grad()
def cross_check(emulated: torch.fx.GraphModule, twin: nn.Module, images: Iterable[torch.Tensor]) -> CrossCheck:
    """Fix positions tensor by tensor, and top-1 agreement of the two calibrated networks on `images`."""
    ours, theirs = fix_positions(emulated), twin_fix_positions(twin)
    if set(ours) != set(theirs):
        raise ValueError(f"the twin's tensors differ from the emulation's: {sorted(set(ours) ^ set(theirs))[:5]}")
    differing = tuple((k, ours[k], theirs[k]) for k in sorted(ours) if ours[k] != theirs[k])
    same = total = 0
    for x in images:
        same += int((emulated(x).argmax(1) == twin(x).argmax(1)).sum())
        total += len(x)
    return CrossCheck(
        tensors=len(ours), same_position=len(ours) - len(differing), differing=differing, images=total, same_top1=same
    )

"""Quantization schemes: where a runtime holds tensors in integers, so the fake-quantized model can simulate it.

A recipe says how many bits each Conv/Linear layer's weights and input get (`spaces.quant.quantization`). What a
runtime then executes also depends on the tensors *between* layers: onnxruntime fuses
DequantizeLinear -> Conv -> QuantizeLinear into an integer kernel (QLinearConv) only when the convolution's
output is quantized too, and runs a residual Add or a Concat in integers (QLinearAdd, QLinearConcat) only
when its inputs and output are. Each such extra quantizer rounds the network's activations; the searched
accuracy is the deployed one only if the PyTorch model rounds at exactly the same places.

A `QuantScheme` is that placement, as data, plus the arithmetic of the activation quantizers it adds:

- `output_layers`: layer types whose output gets its own quantizer (a requantization at every conv output);
  an activation that alone consumes it (ReLU, ReLU6) is folded into the quantizer's range, as onnxruntime's
  quantizer and Vitis AI both do;
- `float_outputs`: of those, the types whose integer kernel can also write float (onnxruntime's QGemm): where
  one produces the network's output (the logits), it stays float; a Conv there is still requantized, since
  QLinearConv cannot write float;
- `blocks`: residual/concat blocks whose output (the Add or Concat, after its activation) gets one;
- `grid_preserving`: modules through which a quantized tensor stays on its grid (max-pool, flatten,
  dropout, identity): a consumer behind them reads the producer's codes, so its input quantizer is *tied* to
  the producer's (one scale per tensor, as onnxruntime's quantizer assigns them) instead of re-rounding;
- `make_quantizer`: the arithmetic of an activation quantizer (onnxruntime: per tensor, asymmetric uint8).

`onnxruntime` is the scheme of the Raspberry Pi bundle. The ZCU104 DPU's arithmetic plugs in as a second
registration: signed symmetric int8 with power-of-two scales (a `make_quantizer` of its own), requantizing
at conv outputs, residual adds and concatenations (the same `output_layers` and `blocks`), BN folded (done by
`spaces.quant.quantization.quantize_model` for every scheme). Placement (`spaces.quant.placement`) reads only
these fields, so a new scheme is one `register_scheme` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

import torchvision.models.mobilenetv2 as tv_mobilenet
import torchvision.models.resnet as tv_resnet
import torchvision.models.squeezenet as tv_squeezenet
from torch import nn

from hardware_models.registry import register_once
from spaces.quant.fake_quant import ActQuantizer

DEFAULT_SCHEME = "onnxruntime"
CONTAINER_BITS = 8  # the width of every quantizer a scheme adds (layer inputs keep the recipe's own widths)


@dataclass(frozen=True, kw_only=True)
class BlockRule:
    """A block whose last operation is not a module (a residual Add, a Concat) and gets an output quantizer.

    `applies` tells instances that have the operation apart from those that do not (a MobileNetV2 inverted
    residual adds its input only when shapes allow); `non_negative` says the output is never negative (a ReLU
    after the Add, a Concat of ReLU outputs), so its grid passes unchanged through a following ReLU.
    """

    block: type[nn.Module]
    applies: Callable[[nn.Module], bool] = lambda block: True
    non_negative: bool = False
    why: str = ""


@dataclass(frozen=True, kw_only=True)
class QuantScheme:
    """Where a runtime requantizes, and with what arithmetic (see the module docstring)."""

    name: str
    description: str
    output_layers: tuple[type[nn.Module], ...]
    float_outputs: tuple[type[nn.Module], ...]
    blocks: tuple[BlockRule, ...]
    grid_preserving: tuple[type[nn.Module], ...]
    absorbed: dict[type[nn.Module], str] = field(default_factory=dict)  # activation module -> quantizer activation
    make_quantizer: Callable[[int], ActQuantizer] = ActQuantizer

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"scheme name {self.name!r}: use letters, digits and '_'")
        unknown = sorted(set(self.absorbed.values()) - set(ActQuantizer.ACTIVATIONS))
        if unknown:
            raise ValueError(f"scheme {self.name}: cannot absorb {unknown}; known: {sorted(ActQuantizer.ACTIVATIONS)}")

    def block_rule(self, module: nn.Module) -> BlockRule | None:
        return next((r for r in self.blocks if isinstance(module, r.block) and r.applies(module)), None)

    def is_block(self, module: nn.Module) -> bool:
        return any(isinstance(module, r.block) for r in self.blocks)


SCHEMES: dict[str, QuantScheme] = {}


def register_scheme(scheme: QuantScheme) -> QuantScheme:
    """Add a scheme under its name (once); `quantize_model(..., scheme=name)` and bundles then find it."""
    register_once(SCHEMES, scheme.name, scheme, "quantization scheme")
    return scheme


def get_scheme(name: str) -> QuantScheme:
    """The registered scheme `name`; the KeyError lists the known ones (a bundle may name one this install lacks)."""
    if name not in SCHEMES:
        raise KeyError(f"unknown quantization scheme {name!r}; known: {', '.join(sorted(SCHEMES))}")
    return SCHEMES[name]


_RESIDUAL = "torchvision adds the shortcut, then applies ReLU: QLinearAdd needs the sum quantized"
TORCHVISION_BLOCKS = (
    BlockRule(block=tv_resnet.BasicBlock, non_negative=True, why=_RESIDUAL),
    BlockRule(block=tv_resnet.Bottleneck, non_negative=True, why=_RESIDUAL),
    BlockRule(
        block=tv_mobilenet.InvertedResidual,
        applies=lambda block: bool(block.use_res_connect),
        why="x + conv(x) when stride 1 and equal channels (a linear bottleneck: the sum may be negative)",
    ),
    BlockRule(
        block=tv_squeezenet.Fire,
        non_negative=True,
        why="Concat of the two expand branches, each after its ReLU: QLinearConcat",
    ),
)
GRID_PRESERVING = (nn.MaxPool2d, nn.Identity, nn.Flatten, nn.Dropout)

register_scheme(
    QuantScheme(
        name="onnxruntime",
        description="onnxruntime's QDQ placement (its own quantizer's): per-tensor asymmetric uint8 activations with "
        "a zero point, requantized at every Conv output and at residual Adds and Concats; per-channel or "
        "per-tensor symmetric int8 weights; int32 biases at scale s_input * s_weight",
        output_layers=(nn.Conv2d, nn.Linear),
        float_outputs=(nn.Linear,),
        blocks=TORCHVISION_BLOCKS,
        grid_preserving=GRID_PRESERVING,
        absorbed={nn.ReLU: "relu", nn.ReLU6: "relu6"},
    )
)

"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"): learn, layer by
layer, whether each weight rounds up or down so that the layer's output on calibration images stays closest to
the float layer's.

Why: rounding to nearest minimises each weight's error, not the layer's output error; at 4 bits per tensor the
difference is most of the accuracy. Per layer, in forward order: the layer's input is taken from the quantized
network (earlier layers already rounded), its target output from the float network; a continuous relaxation
h(V) in [0, 1] of the rounding offset is trained with Adam on the output MSE plus a regulariser that pushes h to
0 or 1 (its exponent annealed from 20 to 2 after a warm-up), then rounded. The learned weights replace the
layer's weights: they sit exactly on the layer's grid, so its quantizer reproduces them (the grid must not be
re-derived afterwards). vai_q's "fast finetune" is AdaQuant, the close cousin that also moves the weights.

The layer's grid comes from a registry keyed by the quantized layer's class (`GRIDS`): the project's per-channel
`QuantConv2d/QuantLinear` and the DPU emulation's power-of-two `DpuConv2d/DpuLinear`. Uses calibration images only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spaces.quant.dpu_arithmetic import code_range
from spaces.quant.dpu_arithmetic import fix_scale
from spaces.quant.dpu_emulation import DPU_LAYER_TYPES
from spaces.quant.fake_quant import QUANT_LAYERS
from spaces.quant.quantization import fold_batchnorm

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound's defaults)


@dataclass(frozen=True, kw_only=True)
class AdaRoundConfig:
    iterations: int = 500  # per layer; the paper uses 10-20k on a GPU
    batch_size: int = 32
    lr: float = 1e-2
    reg_weight: float = 0.01
    warmup: float = 0.2  # fraction of iterations without the rounding regulariser
    beta: tuple[float, float] = (20.0, 2.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or not 0 <= self.warmup < 1:
            raise ValueError("AdaRoundConfig: iterations and batch_size must be >= 1 and warmup in [0, 1)")


@dataclass(frozen=True)
class Grid:
    """A layer's weight grid: values scale * q for integer codes q in [qmin, qmax]; scale broadcasts to W."""

    scale: torch.Tensor
    qmin: int
    qmax: int


def _dpu_grid(layer: nn.Module) -> Grid:
    q = layer.weight_quant
    lo, hi = code_range(q.bits, narrow=q.narrow)
    return Grid(fix_scale(q.position()), lo, hi)


def _per_channel_grid(layer: nn.Module) -> Grid:
    q = layer.weight_quant
    return Grid(q.scale.detach().clone(), -q.qmax, q.qmax)


GRIDS: dict[type, Callable[[nn.Module], Grid]] = {cls: _dpu_grid for cls in DPU_LAYER_TYPES}
GRIDS.update({cls: _per_channel_grid for cls in QUANT_LAYERS})


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def _init_v(rest: torch.Tensor) -> torch.Tensor:
    """V such that h(V) equals the fractional part (the soft start is the float weight)."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def _layer_output(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The quantized layer's output with `weight` in place of its (quantized) weight: input quantizer and bias
    as the layer applies them."""
    act = getattr(layer, "act_quant", None)
    x = act(x) if act is not None else x
    bias_quant = getattr(layer, "bias_quant", None)
    bias = layer.bias if bias_quant is None or layer.bias is None else bias_quant(layer.bias)
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, bias)
    return F.linear(x, weight, bias)


def round_layer(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, config: AdaRoundConfig) -> float:
    """Learn the rounding of one quantized layer's weights in place; returns the final output MSE."""
    grid = GRIDS[type(layer)](layer)
    w = layer.weight.detach()
    scaled = w / grid.scale
    floor = torch.floor(scaled)
    v = nn.Parameter(_init_v(scaled - floor))
    opt = torch.optim.Adam([v], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    warm = int(config.warmup * config.iterations)
    with torch.enable_grad():
        for step in range(config.iterations):
            idx = torch.randint(len(inputs), (min(config.batch_size, len(inputs)),), generator=gen)
            soft = (floor + rectified_sigmoid(v)).clamp(grid.qmin, grid.qmax) * grid.scale
            loss = F.mse_loss(_layer_output(layer, inputs[idx], soft), targets[idx])
            if step >= warm:
                frac = (step - warm) / max(1, config.iterations - warm)
                beta = config.beta[0] + (config.beta[1] - config.beta[0]) * frac
                h = rectified_sigmoid(v)
                loss = loss + config.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        hard = (floor + (rectified_sigmoid(v) >= 0.5).float()).clamp(grid.qmin, grid.qmax) * grid.scale
        layer.weight.copy_(hard)
        return float(F.mse_loss(_layer_output(layer, inputs, hard), targets))


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


@torch.no_grad()
def capture(model: nn.Module, name: str, images: torch.Tensor, *, output: bool) -> torch.Tensor:
    """The input (or output) of layer `name` when `model` runs on `images`; stops the pass there."""
    found: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor | None = None) -> None:
        found.append((out if output else args[0]).detach())
        raise _Stop

    layer = model.get_submodule(name)
    handle = layer.register_forward_hook(hook) if output else layer.register_forward_pre_hook(hook)
    try:
        model(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    return found[0]


def adaround(
    qmodel: nn.Module,
    reference: nn.Module,
    images: torch.Tensor,
    config: AdaRoundConfig | None = None,
    *,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, float]:
    """AdaRound every quantized Conv2d/Linear of `qmodel` in forward (registration) order, in place.

    `reference` is the float model `qmodel` was made from (BN folded here if needed); `images` come from the
    calibration split. Returns each layer's output MSE after rounding.
    """
    config = config or AdaRoundConfig()
    reference = fold_batchnorm(reference).eval()
    qmodel.eval()
    names = [n for n, m in qmodel.named_modules() if type(m) in GRIDS]
    result: dict[str, float] = {}
    for name in names:
        inputs = capture(qmodel, name, images, output=False)
        targets = capture(reference, name, images, output=True)
        result[name] = round_layer(qmodel.get_submodule(name), inputs, targets, config)
        if progress is not None:
            progress(name, result[name])
    return result

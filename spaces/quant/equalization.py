"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction"): rescale consecutive convolutions so that per-tensor weight grids fit every channel.

Why: after BatchNorm folding, the output channels of one convolution can differ in range by 100x (MobileNetV2's
depthwise layers are the textbook case). A per-tensor grid (the DPU's) sized for the widest channel rounds the
narrow ones to a few levels. For a positive scale s_i, relu(x / s_i) = relu(x) / s_i, so dividing output channel
i of conv A (weights and bias) by s_i and multiplying input channel i of the next conv B by s_i leaves the network
unchanged; s_i = sqrt(r_A,i / r_B,i) makes both channel ranges sqrt(r_A,i * r_B,i). Repeated over a chain, the
ranges converge.

ReLU6 is not scale-equivariant (its clip at 6 moves with s_i). Like AIMET (and vai_q's `convert_relu6_to_relu`),
`equalize` replaces the ReLU6 between an equalized pair by ReLU, which changes the float network slightly where
activations exceed 6; `relu6_to_relu=False` leaves such pairs alone instead. Needs no data.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from spaces.quant.quantization import fold_batchnorm

ITERATIONS = 20  # Nagel et al. iterate until the scales stop changing; a few passes suffice on CNNs
Pair = tuple[str, str, str | None]  # (conv A, conv B, the activation module between them or None)


def _depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _chainable(a: nn.Module, b: nn.Module) -> bool:
    return (
        isinstance(a, nn.Conv2d)
        and isinstance(b, nn.Conv2d)
        and a.out_channels == b.in_channels
        and (a.groups == 1 or _depthwise(a))
        and (b.groups == 1 or _depthwise(b))
    )


def _only_user(node: torch.fx.Node, modules: dict[str, nn.Module]) -> torch.fx.Node | None:
    """The single consumer of `node`, looking through nn.Identity (a folded BatchNorm); None if it has several."""
    while len(node.users) == 1:
        node = next(iter(node.users))
        if not (node.op == "call_module" and isinstance(modules[node.target], nn.Identity)):
            return node
    return None


def equalization_pairs(model: nn.Module) -> list[Pair]:
    """Consecutive convolutions A -> [ReLU / ReLU6] -> B where A's output feeds only B, in forward order."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs: list[Pair] = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        nxt, act = _only_user(node, modules), None
        if nxt is not None and nxt.op == "call_module" and isinstance(modules[nxt.target], (nn.ReLU, nn.ReLU6)):
            nxt, act = _only_user(nxt, modules), nxt.target
        if nxt is not None and nxt.op == "call_module" and _chainable(modules[node.target], modules[nxt.target]):
            pairs.append((node.target, nxt.target, act))
    return pairs


def _output_ranges(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().abs().flatten(1).amax(1)


def _input_ranges(conv: nn.Conv2d) -> torch.Tensor:
    w = conv.weight.detach().abs()
    return w.flatten(1).amax(1) if _depthwise(conv) else w.transpose(0, 1).flatten(1).amax(1)


@torch.no_grad()
def equalize_pair(a: nn.Conv2d, b: nn.Conv2d) -> torch.Tensor:
    """Equalize one pair in place; returns the scales used (1 where a channel is all zero)."""
    r_a, r_b = _output_ranges(a), _input_ranges(b)
    scale = torch.where((r_a > 0) & (r_b > 0), torch.sqrt(r_a / r_b.clamp_min(1e-12)), torch.ones_like(r_a))
    a.weight.div_(scale.view(-1, *[1] * (a.weight.dim() - 1)))
    if a.bias is not None:
        a.bias.div_(scale)
    if _depthwise(b):
        b.weight.mul_(scale.view(-1, 1, 1, 1))
    else:
        b.weight.mul_(scale.view(1, -1, 1, 1))
    return scale


def equalize(model: nn.Module, *, iterations: int = ITERATIONS, relu6_to_relu: bool = True) -> nn.Module:
    """A BN-folded, equalized copy of `model` (the input is not modified). Data-free."""
    folded = fold_batchnorm(model).eval()
    pairs = [
        (a, b, act)
        for a, b, act in equalization_pairs(folded)
        if act is None or relu6_to_relu or not isinstance(folded.get_submodule(act), nn.ReLU6)
    ]
    for _, _, act in pairs:
        if act is not None and isinstance(folded.get_submodule(act), nn.ReLU6):
            folded.set_submodule(act, nn.ReLU(inplace=False))
    for _ in range(iterations):
        scales = [equalize_pair(folded.get_submodule(a), folded.get_submodule(b)) for a, b, _ in pairs]
        if all(torch.allclose(s, torch.ones_like(s), atol=1e-3) for s in scales):
            break
    return folded


def channel_range_spread(model: nn.Module) -> float:
    """The median over convolutions of max/min output-channel weight range: how badly one per-tensor grid fits
    (1 = every channel spans the same range)."""
    spreads = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.out_channels > 1:
            r = _output_ranges(m)
            r = r[r > 0]
            if len(r) > 1:
                spreads.append(float(r.max() / r.min()))
    return float(torch.tensor(spreads).median()) if spreads else 1.0

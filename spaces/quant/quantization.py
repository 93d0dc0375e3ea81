"""Quantization of a network as a Recipe describes it: BN folding, per-layer bit-widths, PTQ calibration.

PTQ = `quantize_model` + `calibrate` on the calibration split. QAT = the same, then `evaluators.training.loop.train`
through the straight-through estimator (the fake-quant arithmetic is in `spaces.quant.fake_quant`). Bit-widths can be
set per layer or per coarse group (`layer_groups`): a search over 50 layers x 9 widths is hopeless, over
5 groups it is not.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from collections.abc import Iterable

import torch
import torch.fx
from torch import nn

from spaces.quant.fake_quant import QUANT_LAYERS
from spaces.quant.fake_quant import ActQuantizer
from spaces.quant.fake_quant import Mode
from spaces.quant.fake_quant import attach_quantizers
from spaces.quant.fake_quant import check_bits
from spaces.quant.fake_quant import float_mode
from spaces.quant.fake_quant import quantizer_mode
from spaces.quant.placement import place_quantizers
from spaces.quant.scheme import DEFAULT_SCHEME
from spaces.quant.scheme import get_scheme
from spaces.recipe import VALID_BITS
from spaces.recipe import Allocation
from spaces.recipe import Calibration
from spaces.recipe import Quantization
from spaces.recipe import QuantKind

__all__ = ["QUANTIZABLE", "VALID_BITS", "attach_layer_quantizers", "bit_widths", "calibrate", "float_mode",
           "fold_batchnorm",
           "is_quantized", "layer_groups", "quantizable_layers", "quantize_model", "resolve_bits"]

QUANTIZABLE = (nn.Conv2d, nn.Linear)
Bits = tuple[int, int]  # (weight_bits, act_bits)


# --- batch-norm folding --------------------------------------------------------------------------------------

def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy with each BatchNorm2d that consumes a Conv2d's output folded into that conv.

    Deployment toolchains (Vitis AI, TFLite, onnxruntime) fold BN before quantizing, so the weights that get
    quantized are the folded ones: quantizing unfolded weights would simulate the wrong grid. The BN becomes
    `nn.Identity`; the folded copy matches the original in eval mode (running statistics are used).
    """
    folded = copy.deepcopy(model)
    for conv_name, bn_name in _conv_bn_pairs(folded):
        _fold_into(folded.get_submodule(conv_name), folded.get_submodule(bn_name))
        folded.set_submodule(bn_name, nn.Identity())
    return folded


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
            and bn.num_features == conv.out_channels)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Conv -> BN pairs from the traced data flow; module order only when the model cannot be traced."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure (data-dependent control flow) -> the fallback
        return _registration_pairs(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        src = node.args[0] if node.op == "call_module" and node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and calls[src.target] == calls[node.target] == 1
                and _foldable(modules[src.target], modules[node.target])):
            pairs.append((src.target, node.target))
    return pairs


def _registration_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """A BN registered right after a conv in the same parent (how Sequential/torchvision blocks are built)."""
    named = list(model.named_modules())
    return [(a, b) for (a, conv), (b, bn) in zip(named, named[1:], strict=False)
            if _foldable(conv, bn) and a.rpartition(".")[0] == b.rpartition(".")[0]]


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    factor = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else 0.0
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + shift
    conv.weight.mul_(factor.view(-1, *[1] * (conv.weight.dim() - 1)))
    conv.bias = nn.Parameter(new_bias.detach().clone())


# --- which layers, in which groups -----------------------------------------------------------------------

def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the Conv2d/Linear modules, in registration order.

    Registration order is forward order for every registered architecture (a ResNet's downsample branch,
    which runs in parallel with the block's main path, is listed after it) and needs no example input.
    """
    return [name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


GroupRule = Callable[[nn.Module, list[str]], dict[str, list[str]]]


def _top(name: str) -> str:
    return name.split(".")[0]


def _resnet_groups(model: nn.Module, layers: list[str]) -> dict[str, list[str]]:
    rename = {"conv1": "stem", "fc": "head"}
    groups: dict[str, list[str]] = {}
    for name in layers:
        groups.setdefault(rename.get(_top(name), _top(name)), []).append(name)
    return groups


def _downsamples(block: nn.Module) -> bool:
    pools = (nn.MaxPool2d, nn.AvgPool2d)
    return isinstance(block, pools) or any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in block.modules())


def _features_groups(model: nn.Module, layers: list[str]) -> dict[str, list[str]]:
    """stem = features.0; then one group per resolution stage (split where a block downsamples); head = rest."""
    stages: list[list[int]] = [[]]
    for index, block in list(model.features.named_children())[1:]:
        if _downsamples(block) and stages[-1]:
            stages.append([])
        if any(n.startswith(f"features.{index}.") or n == f"features.{index}" for n in layers):
            stages[-1].append(int(index))
    groups = {"stem": [n for n in layers if n.startswith("features.0.") or n == "features.0"]}
    for stage in filter(None, stages):
        label = f"features.{stage[0]}" + (f"-{stage[-1]}" if len(stage) > 1 else "")
        groups[label] = [n for n in layers if _top(n) == "features" and int(n.split(".")[1]) in stage]
    groups["head"] = [n for n in layers if _top(n) != "features"]
    return {k: v for k, v in groups.items() if v}


def _sequential_groups(model: nn.Module, layers: list[str]) -> dict[str, list[str]]:
    """Small flat networks (mlp, small_cnn): first layer = stem, last = head, each one between its own block."""
    groups = {"stem": layers[:1]}
    groups.update({f"block{i}": [name] for i, name in enumerate(layers[1:-1], start=1)})
    groups["head"] = layers[-1:] if len(layers) > 1 else []
    return {k: v for k, v in groups.items() if v}


# Tried in order; the first whose predicate holds builds the groups. The last one applies to anything.
GROUP_RULES: tuple[tuple[str, Callable[[nn.Module], bool], GroupRule], ...] = (
    ("resnet", lambda m: all(hasattr(m, f"layer{i}") for i in range(1, 5)) and hasattr(m, "fc"), _resnet_groups),
    ("features", lambda m: isinstance(getattr(m, "features", None), nn.Sequential), _features_groups),
    ("sequential", lambda m: isinstance(m, nn.Sequential), _sequential_groups),
    ("top-level", lambda m: True, lambda m, layers: _resnet_groups(m, layers)),
)


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Coarse, contiguous groups of quantizable layers; every layer is in exactly one group."""
    layers = quantizable_layers(model)
    rule = next(build for _, applies, build in GROUP_RULES if applies(model))
    return rule(model, layers)


# --- bit-widths ---------------------------------------------------------------------------------------------

UNIFORM_BITS: dict[QuantKind, Bits] = {QuantKind.NONE: (32, 32), QuantKind.FP16: (16, 16)}


def resolve_bits(model: nn.Module, quant: Quantization) -> dict[str, Bits]:
    """(weight_bits, act_bits) per quantizable layer.

    none -> 32/32 and fp16 -> 16/16 everywhere (overrides are ignored: those kinds have no integer grid);
    ptq/qat -> the defaults, then `layer_bits` overrides applied in the order given (so a layer override
    placed after its group's override wins). An override names a group (see `layer_groups`) or a layer.
    Sensitivity allocation is resolved to overrides by `apply` (it needs data), so it is refused here.
    """
    layers = quantizable_layers(model)
    kind = QuantKind(quant.kind)
    if kind not in UNIFORM_BITS and quant.allocation == Allocation.SENSITIVITY:
        raise ValueError("sensitivity allocation has no bits until a sensitivity is measured: apply() resolves "
                         "it (spaces.compress.sensitivity.resolve)")
    if kind in UNIFORM_BITS:
        return dict.fromkeys(layers, UNIFORM_BITS[kind])
    bits = dict.fromkeys(layers, (check_bits(quant.weight_bits), check_bits(quant.act_bits)))
    groups = layer_groups(model)
    for name, wbits, abits in quant.layer_bits:
        targets = groups.get(name) or ([name] if name in bits else None)
        if targets is None:
            raise ValueError(f"layer_bits names {name!r}, which is neither a group nor a quantizable layer; "
                             f"groups: {', '.join(groups)}")
        bits.update(dict.fromkeys(targets, (check_bits(wbits), check_bits(abits))))
    return bits


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANT_LAYERS) for m in model.modules())


def quantize_model(model: nn.Module, quant: Quantization, scheme: str = DEFAULT_SCHEME) -> nn.Module:
    """A fake-quantized copy (BN folded first when `quant.fold_bn`); kind none returns `model` itself.

    Layers resolved to 32/32 stay plain modules. `scheme` (`spaces.quant.scheme`) adds the quantizers the
    runtime puts between layers (conv outputs, residual adds, concats), so the model computes what that runtime
    will. Integer activation quantizers must be calibrated before the model runs (`calibrate`); weight scales are
    set here already (weights need no data).
    """
    if QuantKind(quant.kind) == QuantKind.NONE:
        return model
    if is_quantized(model):
        raise ValueError("model is already quantized; quantize the float model")
    bits = resolve_bits(model, quant)
    qmodel = fold_batchnorm(model) if quant.fold_bn else copy.deepcopy(model)
    attach_layer_quantizers(qmodel, bits, per_channel=quant.per_channel, method=Calibration(quant.calibration),
                            scheme=scheme)
    return qmodel


def attach_layer_quantizers(model: nn.Module, bits: dict[str, Bits], *, per_channel: bool, method: Calibration,
                            scheme: str = DEFAULT_SCHEME) -> None:
    """Quantizers of every layer not at 32/32, then `scheme`'s between layers (in place; uncalibrated).

    What `quantize_model` does after folding, and what a bundle's model.pt loader repeats on the rebuilt
    network before loading the saved scales (the placement depends on the network and the bits only)."""
    chosen = get_scheme(scheme)
    for name, (wbits, abits) in bits.items():
        if (wbits, abits) != (32, 32):
            attach_quantizers(model.get_submodule(name), wbits, abits, per_channel=per_channel, method=method,
                              make_act=chosen.make_quantizer)
    if any(pair != (32, 32) for pair in bits.values()):
        place_quantizers(model, chosen)


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
              method: Calibration | str) -> None:
    """Set every scale of a quantized model: activations from `batches`, weights from the weights.

    Pass the calibration split only (validation and test must not shape the model). Items may be tensors
    or (x, y) tuples as `Batcher.eval_batches` yields. Statistics are collected with all quantizers off
    (float activations), then ranges are chosen by min-max, the 99.99th percentile or the MSE-optimal clip.
    """
    method = Calibration(method)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seen = 0
    with torch.no_grad(), quantizer_mode(model, Mode.OBSERVE):
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            seen += 1
    if seen == 0:
        raise ValueError("calibrate() got no batches")
    for name, module in model.named_modules():
        if isinstance(module, ActQuantizer):
            _finish(name, module, method)
        if isinstance(module, QUANT_LAYERS):
            module.weight_quant.calibrate(module.weight, method)
    for module in model.modules():
        if isinstance(module, ActQuantizer):
            module.copy_owner()
    model.train(was_training)


def _finish(name: str, quantizer: ActQuantizer, method: Calibration) -> None:
    try:
        quantizer.finish_calibration(method)
    except RuntimeError as err:
        raise RuntimeError(f"layer {name.removesuffix('.act_quant')}: {err} (is it used in forward?)") from None


def bit_widths(model: nn.Module) -> dict[str, Bits]:
    """(weight_bits, act_bits) per quantizable layer of a (possibly) quantized model; 32 where unquantized."""
    return {name: (m.weight_quant.bits, m.act_quant.bits) if isinstance(m, QUANT_LAYERS) else (32, 32)
            for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}

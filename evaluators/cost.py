"""Static cost of a (pruned, quantized) network: parameters, MACs, BOPs and stored bytes under a storage rule.

Conventions, chosen to match how the literature and the targets count:
- MACs are those of Conv2d and Linear layers at batch 1, measured with forward hooks on real output shapes
  (grouped and depthwise convolutions are exact: out_elements x in_channels/groups x kernel area) by
  `spaces.compress.macs.count_macs`, the counter pruning's MAC model uses too. They are
  dense MACs: zero weights are still multiplied by a dense kernel. `sparse_macs` scales each layer by its
  fraction of non-zero weights (exact: every weight is used once per output position), i.e. what a runtime
  that skips zeros would execute. BN, pooling and residual adds are not counted (torchvision's convention).
- BOPs = sum over layers of MACs x weight_bits x act_bits (Baskin et al.; unquantized layers count 32 x 32).
- Bytes: conv/linear weights as the storage rule says; biases and every other parameter (unfolded BN) as
  fp32 in every rule. Quantization scales are overhead outside `size_bytes`: fp32 per output channel
  (or per tensor) for weights and scale + zero point for activations, reported in `size_bytes_with_scales`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from spaces.compress.macs import count_macs
from spaces.quant.fake_quant import ActQuantizer
from spaces.quant.fake_quant import WeightQuantizer
from spaces.quant.quantization import bit_widths
from spaces.recipe import INT_BITS

FP32_BYTES = 4
INDEX_BYTES = 2  # CSR column index: 16 bits while a row has < 65536 columns, else 32
ROW_POINTER_BYTES = 4


def _packed(bits: int, numel: int) -> int:
    return math.ceil(numel * bits / 8)


def _fp32_rule(weight: torch.Tensor, bits: int) -> int:
    """Float deployment: 4 bytes per weight whatever the simulated bit-width."""
    return weight.numel() * FP32_BYTES


def _packed_rule(weight: torch.Tensor, bits: int) -> int:
    """Sub-byte weights packed densely: b bits each, rounded up to whole bytes per layer."""
    return _packed(bits, weight.numel())


def _dpu_int8_rule(weight: torch.Tensor, bits: int) -> int:
    """The ZCU104 DPU executes INT8 only: 2..8-bit weights are stored as 8 bits (a 5-bit model is as
    large as an 8-bit one, as the thesis observed). 16/32 bits cannot run on the DPU; stored as given."""
    return _packed(8 if bits in INT_BITS else bits, weight.numel())


def _sparse_rule(weight: torch.Tensor, bits: int) -> int:
    """Non-zero weights packed, plus the cheapest index per layer: a 1-bit-per-weight bitmap, or CSR over the
    (out_channels x fan_in) matrix (16-bit column indices + 32-bit row pointers), or none (store dense
    when that is smaller, which a sensible format does for weakly sparse layers)."""
    numel, nonzero = weight.numel(), int(torch.count_nonzero(weight))
    rows, cols = weight.shape[0], numel // max(weight.shape[0], 1)
    index = INDEX_BYTES if cols < 2**16 else 4
    bitmap = math.ceil(numel / 8)
    csr = nonzero * index + (rows + 1) * ROW_POINTER_BYTES
    return min(_packed(bits, numel), _packed(bits, nonzero) + min(bitmap, csr))


StorageRule = Callable[[torch.Tensor, int], int]
STORAGE_RULES: dict[str, StorageRule] = {
    "packed": _packed_rule,
    "dpu_int8": _dpu_int8_rule,
    "fp32": _fp32_rule,
    "packed_sparse": _sparse_rule,
}
FLOAT_STORAGE = frozenset({"fp32"})  # rules that store no quantization scales


def storage_rule(name: str) -> StorageRule:
    try:
        return STORAGE_RULES[name]
    except KeyError:
        raise KeyError(f"unknown storage rule {name!r}; known: {', '.join(sorted(STORAGE_RULES))}") from None


@dataclass(frozen=True, kw_only=True)
class LayerCost:
    name: str
    params: int  # weights + bias
    macs: int
    weight_bits: int
    act_bits: int
    weight_bytes: int
    scale_bytes: int
    numel: int  # weights
    nonzero: int  # non-zero weights


@dataclass(frozen=True, kw_only=True)
class Cost:
    params: int
    macs: int  # dense, batch 1
    bops: int
    size_bytes: int  # weights by the rule + biases/other parameters as fp32; no quantization scales
    sparsity: float  # fraction of zero conv/linear weights
    storage: str
    weight_bytes: int  # conv/linear weights only, by the rule
    size_bytes_with_scales: int
    sparse_macs: int  # MACs on non-zero weights only
    per_layer: tuple[LayerCost, ...] = ()


def _scale_bytes(module: nn.Module, wbits: int, abits: int, per_channel: bool) -> int:
    weight_quant = getattr(module, "weight_quant", None)
    if isinstance(weight_quant, WeightQuantizer):
        per_channel = weight_quant.per_channel
    weight_scales = (module.weight.shape[0] if per_channel else 1) if wbits in INT_BITS else 0
    act_params = 2 if abits in INT_BITS else 0  # scale + zero point
    return (weight_scales + act_params) * FP32_BYTES


def _own_params(module: nn.Module) -> int:
    if isinstance(module, (WeightQuantizer, ActQuantizer)):
        return 0  # learned quantizer state is not a model parameter
    return sum(p.numel() for p in module.parameters(recurse=False))


def _layer_costs(model: nn.Module, input_shape: tuple[int, ...], bits: dict[str, tuple[int, int]],
                 rule: StorageRule, per_channel: bool) -> list[LayerCost]:
    macs = count_macs(model, input_shape)
    costs = []
    for name, (wbits, abits) in bits.items():
        module = model.get_submodule(name)
        weight = module.weight.detach()
        costs.append(LayerCost(
            name=name, params=_own_params(module), macs=macs[name], weight_bits=wbits, act_bits=abits,
            weight_bytes=rule(weight, wbits), scale_bytes=_scale_bytes(module, wbits, abits, per_channel),
            numel=weight.numel(), nonzero=int(torch.count_nonzero(weight))))
    return costs


def _bits_for(model: nn.Module, bits: dict[str, tuple[int, int]] | None) -> dict[str, tuple[int, int]]:
    resolved = bit_widths(model)
    unknown = sorted(set(bits or {}) - set(resolved))
    if unknown:
        raise ValueError(f"bits given for {unknown}, which are not conv/linear layers of the model")
    return {**resolved, **(bits or {})}


def model_cost(model: nn.Module, input_shape: tuple[int, int, int], *, storage: str = "packed",
               bits: dict[str, tuple[int, int]] | None = None, per_channel: bool = True) -> Cost:
    """Cost of `model` at batch 1 for a C x H x W input.

    Bit-widths come from `bits` (layer name -> (weight_bits, act_bits)), else from the model's quantizers,
    else 32/32. `per_channel` only sizes the scale overhead of layers that carry no quantizer of their own.
    """
    rule = storage_rule(storage)
    layers = _layer_costs(model, tuple(input_shape), _bits_for(model, bits), rule, per_channel)
    params = sum(_own_params(m) for m in model.modules())
    weights = sum(c.numel for c in layers)
    other_bytes = (params - weights) * FP32_BYTES  # biases, unfolded BN, anything else: fp32
    weight_bytes = sum(c.weight_bytes for c in layers)
    scale_bytes = 0 if storage in FLOAT_STORAGE else sum(c.scale_bytes for c in layers)
    nonzero = sum(c.nonzero for c in layers)
    return Cost(
        params=params,
        macs=sum(c.macs for c in layers),
        bops=sum(c.macs * c.weight_bits * c.act_bits for c in layers),
        size_bytes=weight_bytes + other_bytes,
        sparsity=1.0 - nonzero / weights if weights else 0.0,
        storage=storage,
        weight_bytes=weight_bytes,
        size_bytes_with_scales=weight_bytes + other_bytes + scale_bytes,
        sparse_macs=sum(c.macs * c.nonzero // c.numel for c in layers if c.numel),
        per_layer=tuple(layers),
    )

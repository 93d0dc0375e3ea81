"""Per-layer precision by sensitivity: which layers stay at the higher precision under a MAC budget.

A board runs each layer at one of a few precisions (the Raspberry Pi: int8 or fp32 in one onnxruntime QDQ
graph; the Pi 5 adds fp16). Searching one categorical per layer (50+ for a ResNet-50) is hopeless for a
sampler, so the recipe carries two numbers only: the higher precision and the share of MACs it may use.
Which layers get it is decided here, once per network, by how much each layer hurts when it alone is
quantized to the low precision.

The measure: the mean KL divergence KL(p_float || p_quantized) of the softmax outputs over the first
`Budget.sensitivity_images` images of the *calibration* split, with one layer at a time quantized (weights and input
activations, at the recipe's low bits, calibration method and granularity; BN folded as deployment does) and
every other layer in float. Why this one:
- Accuracy drop on a few hundred images moves in steps of 1/N and is 0 for most single layers, so most
  layers would tie; the KL is smooth, needs no labels and still ranks the layers that change predictions.
- A HAWQ-style Hessian trace needs tens of Hutchinson iterations, each a backward pass, and sees only the
  weights; the KL costs one forward pass per layer and includes the activation quantizer, which on a
  network with a wide-ranged input (the stem) or a narrow head is often what hurts most.
- Calibration images only: validation must stay an unbiased selection signal (tests poison val/test).
The cost is (layers + 2) forward passes over those images (one to calibrate, one for the float reference);
the result is cached per (network weights, low precision settings, images, method), in memory and under
`cache_dir/sensitivity/`, so each student or pruned network is measured once and every budget reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spaces.compress.distillation import weights_digest
from spaces.quant.fake_quant import QUANT_LAYERS
from spaces.quant.fake_quant import Mode
from spaces.quant.fake_quant import quantizer_mode
from spaces.quant.quantization import calibrate
from spaces.quant.quantization import quantize_model
from spaces.recipe import Allocation
from spaces.recipe import Quantization

METHOD = "kl-one-layer-v1"  # part of every cache key: a changed measure never reuses old numbers
_MEMORY: dict[str, dict[str, float]] = {}


@dataclass(frozen=True)
class Sensitivity:
    """Per-layer scores (higher: quantizing that layer alone hurts more) and what measuring them cost."""

    scores: dict[str, float]
    seconds: float
    from_cache: bool


def low_precision(quant: Quantization) -> Quantization:
    """Every layer at the recipe's low bits: the model whose layers are measured one at a time."""
    return replace(quant, allocation=Allocation.EXPLICIT, high_bits=32, high_fraction=0.0, layer_bits=())


def cache_key(model: nn.Module, quant: Quantization, batches: Sequence[torch.Tensor]) -> str:
    """The network's current weights, the low-precision settings, the exact images and the method."""
    low = low_precision(quant)
    h = hashlib.sha256(f"{METHOD}|{low.weight_bits}|{low.act_bits}|{low.per_channel}|{low.calibration}|"
                       f"{low.fold_bn}".encode())
    h.update(weights_digest(model, memo=False).encode())
    for x in batches:
        h.update(str(tuple(x.shape)).encode())
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def measure(model: nn.Module, quant: Quantization, batches: Sequence[torch.Tensor], *,
            cache_dir: Path | None = None) -> Sensitivity:
    """Per-layer sensitivity of `model` (float, not modified), from memory or disk when known."""
    t0 = time.monotonic()
    key = cache_key(model, quant, batches)
    path = None if cache_dir is None else Path(cache_dir) / "sensitivity" / f"{key}.json"
    if key not in _MEMORY and path is not None and path.exists():
        _MEMORY[key] = json.loads(path.read_text())
    if key in _MEMORY:
        return Sensitivity(dict(_MEMORY[key]), round(time.monotonic() - t0, 3), True)
    scores = one_layer_kl(model, quant, batches)
    _MEMORY[key] = scores
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(scores, indent=1))
        tmp.replace(path)
    return Sensitivity(dict(scores), round(time.monotonic() - t0, 3), False)


@torch.no_grad()
def one_layer_kl(model: nn.Module, quant: Quantization, batches: Sequence[torch.Tensor]) -> dict[str, float]:
    """Mean KL(float || one layer quantized) per quantizable layer, in forward (registration) order."""
    if not batches:
        raise ValueError("sensitivity needs at least one calibration batch")
    qmodel = quantize_model(model, low_precision(quant))
    calibrate(qmodel, batches, quant.calibration)
    qmodel.eval()
    with quantizer_mode(qmodel, Mode.BYPASS):
        reference = [F.log_softmax(qmodel(x).flatten(1).double(), dim=1) for x in batches]
        scores = {}
        for name, layer in qmodel.named_modules():
            if isinstance(layer, QUANT_LAYERS):
                with _quantizing(layer):
                    scores[name] = _mean_kl(qmodel, batches, reference)
    return scores


@contextlib.contextmanager
def _quantizing(layer: nn.Module) -> Iterator[None]:
    """Switch one layer's quantizers on inside a model whose quantizers are bypassed."""
    layer.weight_quant.mode = layer.act_quant.mode = Mode.QUANTIZE
    try:
        yield
    finally:
        layer.weight_quant.mode = layer.act_quant.mode = Mode.BYPASS


def _mean_kl(model: nn.Module, batches: Sequence[torch.Tensor], reference: list[torch.Tensor]) -> float:
    total, count = 0.0, 0
    for x, log_p in zip(batches, reference, strict=True):
        log_q = F.log_softmax(model(x).flatten(1).double(), dim=1)  # float64: near-identical outputs
        total += float(F.kl_div(log_q, log_p, log_target=True, reduction="sum"))
        count += len(x)
    return max(total / count, 0.0)  # KL >= 0; rounding can leave -1e-9


def allocate(scores: Mapping[str, float], macs: Mapping[str, int], fraction: float) -> list[str]:
    """The layers that get the higher precision: most sensitive first while their MACs fit in `fraction`.

    Greedy in sensitivity order; a layer that does not fit is skipped and smaller, less sensitive ones may
    still use the rest (the budget is a cost the search trades, so leaving it unused wastes accuracy). Layers
    that do not hurt at all (score 0) stay low: the higher precision would cost time and buy nothing. Ties
    keep forward order, so the choice is deterministic.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is outside 0 .. 1")
    budget = fraction * sum(macs.get(name, 0) for name in scores)
    chosen, used = [], 0
    for name in sorted(scores, key=lambda n: -scores[n]):
        cost = macs.get(name, 0)
        if scores[name] > 0.0 and used + cost <= budget:
            chosen.append(name)
            used += cost
    return chosen


def resolve(quant: Quantization, high_layers: Sequence[str]) -> Quantization:
    """The explicit per-layer recipe the allocation stands for: low bits everywhere, high bits where chosen."""
    high = quant.high_bits
    return replace(low_precision(quant), layer_bits=tuple((name, high, high) for name in high_layers))

"""Fake quantization: integer arithmetic simulated in fp32, so one model serves PTQ, QAT, cost and export.

Conventions (the numbers a deployment toolchain would use, simulated with ordinary float ops):
- Weights: symmetric, signed, narrow range [-(2^(b-1)-1), 2^(b-1)-1], per output channel or per tensor.
  Narrow range keeps zero exact and the grid symmetric (TensorRT, the DPU); at 2 bits it is ternary.
- Input activations: per tensor, asymmetric affine (unsigned codes 0..2^b-1 with a zero point, like
  PyTorch's quint8). The range always contains 0; on non-negative inputs (after ReLU) the zero point is 0,
  so this *is* the unsigned scheme there and no code is wasted on negatives that never occur.
- Biases of integer layers are rounded to int32 at scale s_w * s_a, and a layer whose input and weights are both
  integer codes convolves the codes themselves (exact sums) and scales once, as onnxruntime's QLinearConv/QGemm
  do: the fake-quantized model then computes the integer kernels' outputs, not a float approximation of them.
- 16 bits means fp16 rounding (`.half().float()`), 32 bits means no quantization.
- Rounding uses the straight-through estimator `x + (round(x) - x).detach()`: gradients pass the rounding
  unchanged and stop where the clamp saturates, and the expression exports to ONNX as Round/Sub/Add.

Quantized layers are `nn.Conv2d` / `nn.Linear` *subclasses* swapped in place (same module names, same
weight/bias parameters): pruning, cost counting and the hardware models keep recognising them, and a
layer's name in the quantized model is its name in the original. Where a runtime requantizes between layers
(`spaces.quant.scheme`), a layer also gets an `out_quant` and a consumer's `act_quant` may be *tied* to its
producer's quantizer: the tensor is already on that grid, so the consumer reads the same codes.

`Mode.EXPORT` makes every quantizer emit a marker node (`ecs::Act`, `ecs::Weight`, `ecs::Bias`, named after
the quantizer) when the model is exported to ONNX; `search.bundle.qdq` replaces each by the runtime's
QuantizeLinear/DequantizeLinear nodes with that quantizer's own parameters.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from collections.abc import Iterator
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

from spaces.quant.marks import BIAS_BOUND
from spaces.quant.marks import export_mark
from spaces.recipe import INT_BITS
from spaces.recipe import VALID_BITS
from spaces.recipe import Calibration

PERCENTILE = 99.99  # clipping percentile of the `percentile` calibration
MSE_GRID = torch.linspace(0.02, 1.0, 50)  # clip ratios (of the min-max range) tried by `mse`
# Below this many bits `mse` leaves weights at min-max (activations keep their MSE clip). At 4 bits the weight-space
# clip shrinks each row's few largest weights, the ones that carry its feature, to cut the rounding error of the
# many small ones: it lost 2.5-15 points more than min-max on small CNNs (issue 27; benchmarks.dpu_arithmetic).
MSE_WEIGHT_MIN_BITS = 8
MAX_SAMPLES = 1 << 18  # activation values kept per layer for percentile / MSE calibration
SAMPLES_PER_BATCH = 1 << 15


class Mode(StrEnum):
    QUANTIZE = "quantize"  # normal operation
    OBSERVE = "observe"  # calibration: pass through in float, record statistics
    BYPASS = "bypass"  # pass through in float (shape tracing, cost counting)
    EXPORT = "export"  # quantize, and mark the quantizer in an ONNX export (search.bundle.qdq)




def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int,
               qmax: int) -> torch.Tensor:
    if not (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)):
        # Evaluation: the same arithmetic in place on one new tensor. round_ste's forward is exactly round()
        # (x + (round(x) - x) is exact: the difference is representable), so results are bit-identical, and a
        # fake-quantized network evaluates about twice as fast (its activations are read and written once per op
        # instead of allocated anew).
        q = x / scale
        return q.round_().add_(zero_point).clamp_(qmin, qmax).sub_(zero_point).mul_(scale)
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def fp16_round(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def check_bits(bits: int) -> int:
    if bits not in VALID_BITS:
        raise ValueError(f"{bits} bits is not supported; use one of {sorted(VALID_BITS)}")
    return bits


# --- range selection: weights (symmetric, per row) -------------------------------------------------------

def _sym_error(w2d: torch.Tensor, amax: torch.Tensor, qmax: int) -> torch.Tensor:
    scale = (amax / qmax).clamp_min(1e-12).unsqueeze(1)
    return (fake_quant(w2d, scale, 0.0, -qmax, qmax) - w2d).pow(2).sum(1)


def _amax_minmax(w2d: torch.Tensor, qmax: int) -> torch.Tensor:
    return w2d.abs().amax(1)


def _amax_percentile(w2d: torch.Tensor, qmax: int) -> torch.Tensor:
    k = max(1, math.ceil(PERCENTILE / 100 * w2d.shape[1]))
    return w2d.abs().kthvalue(k, dim=1).values


def _amax_mse(w2d: torch.Tensor, qmax: int) -> torch.Tensor:
    """The weight-space MSE clip at 8 bits and more; min-max below (see MSE_WEIGHT_MIN_BITS)."""
    if qmax < 2 ** (MSE_WEIGHT_MIN_BITS - 1) - 1:
        return _amax_minmax(w2d, qmax)
    return _amax_mse_clip(w2d, qmax)


def _amax_mse_clip(w2d: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per row, the clip ratio of the grid with the smallest squared rounding + clipping error."""
    full = w2d.abs().amax(1)
    errors = torch.stack([_sym_error(w2d, full * r, qmax) for r in MSE_GRID.tolist()])
    return full * MSE_GRID[errors.argmin(0)]


WEIGHT_RANGE: dict[Calibration, Callable[[torch.Tensor, int], torch.Tensor]] = {
    Calibration.MINMAX: _amax_minmax,
    Calibration.PERCENTILE: _amax_percentile,
    Calibration.MSE: _amax_mse,
}


# --- range selection: activations (asymmetric, per tensor) -----------------------------------------------

def affine_params(lo: float, hi: float, bits: int) -> tuple[float, float]:
    """Scale and zero point of the unsigned grid covering [min(lo, 0), max(hi, 0)] (zero is exact)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmax = 2**bits - 1
    scale = max((hi - lo) / qmax, 1e-12)
    return scale, float(min(max(round(-lo / scale), 0), qmax))


def _affine_error(x: torch.Tensor, lo: float, hi: float, bits: int) -> float:
    scale, zp = affine_params(lo, hi, bits)
    return float((fake_quant(x, torch.tensor(scale), zp, 0, 2**bits - 1) - x).pow(2).mean())


def _range_minmax(x: torch.Tensor, lo: float, hi: float, bits: int) -> tuple[float, float]:
    return lo, hi


def _range_percentile(x: torch.Tensor, lo: float, hi: float, bits: int) -> tuple[float, float]:
    n = x.numel()
    k_hi = max(1, math.ceil(PERCENTILE / 100 * n))
    k_lo = min(n, max(1, math.floor((1 - PERCENTILE / 100) * n) + 1))
    return float(x.kthvalue(k_lo).values), float(x.kthvalue(k_hi).values)


def _range_mse(x: torch.Tensor, lo: float, hi: float, bits: int) -> tuple[float, float]:
    errors = [_affine_error(x, lo * r, hi * r, bits) for r in MSE_GRID.tolist()]
    best = float(MSE_GRID[int(torch.tensor(errors).argmin())])
    return lo * best, hi * best


ACT_RANGE: dict[Calibration, Callable[[torch.Tensor, float, float, int], tuple[float, float]]] = {
    Calibration.MINMAX: _range_minmax,
    Calibration.PERCENTILE: _range_percentile,
    Calibration.MSE: _range_mse,
}


# --- quantizer modules -----------------------------------------------------------------------------------

class WeightQuantizer(nn.Module):
    """Symmetric signed fake quantization of a weight tensor; scales follow the weights.

    Weights are known, so scales need no data. In training mode (QAT) the scale is recomputed from the
    current weights every step, keeping the per-channel clip ratio chosen at calibration (minmax: 1), so a
    percentile/MSE choice survives fine-tuning without re-running the search each step.
    """

    def __init__(self, weight: torch.Tensor, bits: int, *, per_channel: bool, method: Calibration) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.per_channel = per_channel
        self.mode = Mode.QUANTIZE
        shape = (weight.shape[0], *[1] * (weight.dim() - 1)) if per_channel else (1,) * weight.dim()
        self.register_buffer("scale", torch.ones(shape, device=weight.device))
        self.register_buffer("ratio", torch.ones(shape, device=weight.device))
        self.calibrate(weight, method)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def _rows(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.detach()
        return w.reshape(w.shape[0], -1) if self.per_channel else w.reshape(1, -1)

    @torch.no_grad()
    def calibrate(self, weight: torch.Tensor, method: Calibration) -> None:
        if self.bits not in INT_BITS:
            return
        rows = self._rows(weight)
        full = rows.abs().amax(1).clamp_min(1e-12)
        amax = WEIGHT_RANGE[Calibration(method)](rows, self.qmax).clamp_min(1e-12)
        self.ratio.copy_((amax / full).view_as(self.ratio))
        self.scale.copy_((amax / self.qmax).view_as(self.scale))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.mode not in (Mode.QUANTIZE, Mode.EXPORT) or self.bits == 32:
            return weight
        if self.mode == Mode.EXPORT:
            return export_mark(weight, "Weight", getattr(self, "export_name", ""))
        return self._quantize(weight)

    def _quantize(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bits == 16:
            return fp16_round(weight)
        if self.training:
            with torch.no_grad():
                full = self._rows(weight).abs().amax(1).view_as(self.scale)
                self.scale.copy_((full * self.ratio / self.qmax).clamp_min(1e-12))
        return fake_quant(weight, self.scale, 0.0, -self.qmax, self.qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"


def _sync_after_load(module: ActQuantizer, incompatible_keys: object) -> None:
    module.sync_flag()


class ActQuantizer(nn.Module):
    """Per-tensor asymmetric fake quantization of a tensor, with ranges set by `calibrate`.

    The range stays fixed during QAT (the weights adapt to it). An integer quantizer that was never
    calibrated refuses to run: silently running with a made-up scale would produce plausible garbage.

    `activation` (a key of ACTIVATIONS) is an activation the quantizer absorbs: it observes and quantizes the
    activation's output, so the activation module that follows is a no-op on its codes (a zero point of 0
    clamps what ReLU would), as runtimes fold it. A quantizer `tie`d to another reads a tensor already on
    that quantizer's grid: it re-applies the owner's parameters (an identity on those codes) and is never
    calibrated itself.
    """

    ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": torch.relu, "relu6": lambda x: torch.clamp(x, 0.0, 6.0)}
    activation = ""  # class defaults: a quantizer pickled before these attributes existed reads them here
    owner: ActQuantizer | None = None

    def __init__(self, bits: int, activation: str = "") -> None:
        super().__init__()
        self.bits = check_bits(bits)
        if activation and activation not in self.ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {sorted(self.ACTIVATIONS)}")
        self.activation = activation
        self.owner: ActQuantizer | None = None  # set by tie(); a plain attribute, not a submodule
        self.mode = Mode.QUANTIZE
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        # The flag is a buffer so it survives state_dict round trips; `is_calibrated` mirrors it as a Python
        # bool so forward() never converts a tensor to bool (which would break ONNX/jit tracing).
        self.register_buffer("calibrated", torch.tensor(False))
        self.is_calibrated = False
        self.register_load_state_dict_post_hook(_sync_after_load)  # a function, not a lambda: picklable
        self.reset_stats()

    def sync_flag(self) -> None:
        self.is_calibrated = bool(self.calibrated)

    def tie(self, owner: ActQuantizer) -> None:
        """Read `owner`'s codes: same bits required (a narrower consumer requantizes with its own scale)."""
        if owner.bits != self.bits or owner is self:
            raise ValueError(f"cannot tie a {self.bits}-bit quantizer to a {owner.bits}-bit one (or to itself)")
        object.__setattr__(self, "owner", owner)  # not registered: the owner belongs to its own layer

    @property
    def source(self) -> ActQuantizer:
        """The quantizer whose parameters this one applies: its owner when tied, else itself."""
        return self.owner.source if self.owner is not None else self

    def reset_stats(self) -> None:
        self.lo, self.hi = math.inf, -math.inf
        self.samples: list[torch.Tensor] = []
        self.batches_seen = 0

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        flat = x.detach().flatten().float().cpu()
        self.lo, self.hi = min(self.lo, float(flat.min())), max(self.hi, float(flat.max()))
        generator = torch.Generator().manual_seed(self.batches_seen)  # seeded: calibration is reproducible
        self.batches_seen += 1
        if flat.numel() > SAMPLES_PER_BATCH:
            flat = flat[torch.randint(flat.numel(), (SAMPLES_PER_BATCH,), generator=generator)]
        self.samples.append(flat)
        pool = sum(s.numel() for s in self.samples)
        if pool > MAX_SAMPLES:  # keep a random half: memory stays bounded however many batches come
            merged = torch.cat(self.samples)
            self.samples = [merged[torch.randperm(pool, generator=generator)[: MAX_SAMPLES // 2]]]

    @torch.no_grad()
    def finish_calibration(self, method: Calibration) -> None:
        if self.owner is not None:  # tied: the owner's range, copied so the state dict says what runs
            self.reset_stats()
            return
        if self.bits in INT_BITS:
            if not self.samples:
                raise RuntimeError("activation quantizer saw no data during calibration")
            lo, hi = ACT_RANGE[Calibration(method)](torch.cat(self.samples), self.lo, self.hi, self.bits)
            scale, zp = affine_params(lo, hi, self.bits)
            self.scale.fill_(scale)
            self.zero_point.fill_(zp)
            self.calibrated.fill_(True)
            self.is_calibrated = True
        self.reset_stats()

    @torch.no_grad()
    def copy_owner(self) -> None:
        """Mirror the owner's parameters into this tied quantizer's buffers (after calibration or loading)."""
        if self.owner is not None:
            source = self.source
            self.scale.copy_(source.scale)
            self.zero_point.copy_(source.zero_point)
            self.calibrated.copy_(source.calibrated)
            self.sync_flag()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == Mode.BYPASS or self.bits == 32:
            return x
        if self.mode == Mode.OBSERVE:
            if self.owner is None:
                self.observe(self.ACTIVATIONS[self.activation](x) if self.activation else x)
            return x
        if self.mode == Mode.EXPORT:
            return export_mark(x, "Act", getattr(self, "export_name", ""))
        return self._quantize(x)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            x = self.ACTIVATIONS[self.activation](x)
        if self.bits == 16:
            return fp16_round(x)
        source = self.source
        if not source.is_calibrated:
            raise RuntimeError("activation quantizer is not calibrated: call "
                               "spaces.quant.quantization.calibrate(model, calibration batches) first")
        return fake_quant(x, source.scale, source.zero_point, 0, 2**self.bits - 1)

    def extra_repr(self) -> str:
        tied = ", tied" if self.owner is not None else ""
        return f"bits={self.bits}" + (f", activation={self.activation}" if self.activation else "") + tied


# --- quantized layers --------------------------------------------------------------------------------------

def _integer(layer: nn.Module) -> bool:
    aq, wq = layer.act_quant, layer.weight_quant
    return aq.bits in INT_BITS and wq.bits in INT_BITS


def integer_bias(layer: nn.Module) -> torch.Tensor | None:
    """The bias an integer kernel adds: int32 codes at scale s_act * s_weight (fp32 where the layer is not integer)."""
    bias, wq = layer.bias, layer.weight_quant
    if bias is None or not _integer(layer) or layer.act_quant.mode != Mode.EXPORT:
        return bias
    return export_mark(bias, "Bias", getattr(wq, "export_name", ""))


def _forward(layer: nn.Module, x: torch.Tensor, op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """The layer's arithmetic as an integer kernel computes it, where input and weights are integer codes.

    onnxruntime's QLinearConv/QGemm sum int32 products exactly, add the int32 bias, and scale once. Summing the
    dequantized floats instead rounds after each addition, in an order the float library picks, and moves about
    one output in a thousand across a rounding boundary of the next quantizer. So the codes themselves are
    convolved (exact in fp32 while partial sums stay below 2^24, which products of 8-bit codes do but for
    pathological layers) and the result is scaled by s_act * s_weight. Rounding is straight-through, so QAT
    trains through it as through the float form."""
    aq, wq = layer.act_quant, layer.weight_quant
    xq, w = aq(x), wq(layer.weight)
    if not (_integer(layer) and aq.mode == wq.mode == Mode.QUANTIZE):
        return op(xq, w, integer_bias(layer))
    step = aq.source.scale * wq.scale.flatten()
    bias = None if layer.bias is None else \
        torch.clamp(round_ste(layer.bias / step.clamp_min(1e-30)), -BIAS_BOUND, BIAS_BOUND)
    y = op(round_ste(xq / aq.source.scale), round_ste(w / wq.scale), bias)
    return y * step.view(1, -1, *[1] * (y.dim() - 2))


def _output(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    out_quant = layer._modules.get("out_quant")
    return y if out_quant is None else out_quant(y)


class QuantConv2d(nn.Conv2d):
    """A Conv2d whose input and weight pass through fake quantizers (created by `attach_quantizers`), and its
    output too where the scheme requantizes there (`out_quant`, placed by `spaces.quant.placement`)."""

    weight_quant: WeightQuantizer
    act_quant: ActQuantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _output(self, _forward(self, x, self._conv_forward))


class QuantLinear(nn.Linear):
    """A Linear whose input and weight pass through fake quantizers (created by `attach_quantizers`)."""

    weight_quant: WeightQuantizer
    act_quant: ActQuantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _output(self, _forward(self, x, F.linear))


QUANT_CLASSES: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
QUANT_LAYERS = tuple(QUANT_CLASSES.values())


def attach_quantizers(layer: nn.Module, wbits: int, abits: int, *, per_channel: bool, method: Calibration,
                      make_act: Callable[[int], ActQuantizer] = ActQuantizer) -> None:
    """Turn a plain Conv2d/Linear into its quantized subclass in place (weights and hooks are kept).

    Swapping the class rather than building a new module keeps the very same Parameter objects, so an
    optimizer, a pruning mask or a hook attached to the layer still refers to what the model uses.
    """
    cls = QUANT_CLASSES.get(type(layer))
    if cls is None:
        raise TypeError(f"cannot quantize {type(layer).__name__}; quantizable types: "
                        f"{', '.join(c.__name__ for c in QUANT_CLASSES)}")
    layer.__class__ = cls
    layer.weight_quant = WeightQuantizer(layer.weight, wbits, per_channel=per_channel, method=method)
    layer.act_quant = make_act(abits)


def quantizers(model: nn.Module) -> Iterator[WeightQuantizer | ActQuantizer]:
    yield from (m for m in model.modules() if isinstance(m, (WeightQuantizer, ActQuantizer)))


@contextlib.contextmanager
def quantizer_mode(model: nn.Module, mode: Mode) -> Iterator[nn.Module]:
    """Temporarily switch every quantizer of `model` to `mode` (restored on exit, even on error)."""
    saved = [(q, q.mode) for q in quantizers(model)]
    for q, _ in saved:
        q.mode = mode
    try:
        yield model
    finally:
        for q, old in saved:
            q.mode = old


def float_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Run a (possibly uncalibrated) quantized model as float: for shape tracing and cost counting."""
    return quantizer_mode(model, Mode.BYPASS)

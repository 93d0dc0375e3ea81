"""The arithmetic of the ZCU104's DPU (Vitis AI's DPUCZDX8G) on tensors: power-of-two ("fix point") int8.

What the DPU computes, and what `vai_q_pytorch` chooses for it by default (its "DPU restrictions": symmetric,
signed, per tensor, power-of-two scales, fix positions calibrated by "diffs", modal over batches):
- Every quantized tensor t is stored as int codes q with t ~ q * 2^-p, p the tensor's *fix position* (the
  number of fractional bits). Codes span [-2^(b-1), 2^(b-1)-1]; weights and biases use the narrow range
  [-(2^(b-1)-1), 2^(b-1)-1] (the DPU restriction `narrow_range: true` for parameters).
- Rounding: "std_round" (half away from zero) for weights, biases and the network input; "half_up"
  (floor(x + 0.5)) for activations, which is what the DPU's shifters do when requantizing.
- Fix positions: "maxmin" takes the largest p whose grid still covers the tensor's range; "diffs" (vai_q's
  default) tries p, p+1, ..., p+scope-1 (finer grids that clip the largest values) and keeps the one with the
  smallest squared error. Activations are calibrated per batch and the most frequent position wins ("modal").
- Operator arithmetic: average pooling multiplies the window's sum by a k/2^s approximation of 1/area; LeakyReLU
  uses the slope 26/256; hard-sigmoid is relu6(x + 3) * 2731/2^14 and hard-swish is x times that.

Everything here is a function on tensors (plus one small quantizer module), so that a quantization-scheme
registry can wrap it; `spaces.quant.dpu_emulation` applies it to whole networks. Rounding uses the straight-through
estimator when gradients are on, as `spaces.quant.fake_quant` does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

DIFFS_SCOPE = 5  # candidate fix positions tried by "diffs" (vai_q's default range)
LEAKY_SLOPE = 26 / 256  # the DPU's LeakyReLU slope: 0.1 rounded to 1/256ths
HSIGMOID_SCALE = 2731 / 2**14  # the DPU's 1/6 in hard-sigmoid
EMPTY_FIX_POS = 16  # fix position of an all-zero tensor (any position represents it exactly)


class RoundMode(StrEnum):
    STD = "std_round"  # half away from zero: weights, biases, the network input
    HALF_UP = "half_up"  # floor(x + 0.5): activations requantized by the DPU's shifters
    HALF_EVEN = "half_even"  # torch.round: what onnxruntime's QuantizeLinear does


class FixCalibration(StrEnum):
    DIFFS = "diffs"  # vai_q's default: least squared error over DIFFS_SCOPE candidate positions
    MAXMIN = "maxmin"  # the finest grid that covers the tensor's range


def _round_std(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _round_half_up(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5)


ROUNDERS: dict[RoundMode, Callable[[torch.Tensor], torch.Tensor]] = {
    RoundMode.STD: _round_std,
    RoundMode.HALF_UP: _round_half_up,
    RoundMode.HALF_EVEN: torch.round,
}


def code_range(bits: int, *, narrow: bool) -> tuple[int, int]:
    """The signed integer codes of a `bits`-bit tensor: [-2^(b-1), 2^(b-1)-1], or symmetric when narrow."""
    if not 2 <= bits <= 16:
        raise ValueError(f"{bits} bits is outside the DPU arithmetic's 2-16; use 8 (the DPU) or 4 (W4 studies)")
    top = 2 ** (bits - 1) - 1
    return (-top if narrow else -top - 1), top


def fix_scale(fix_pos: torch.Tensor | int) -> torch.Tensor:
    """The step 2^-p of fix position p, as a float tensor."""
    return torch.pow(2.0, -torch.as_tensor(fix_pos, dtype=torch.float32))


def fix_quantize(
    x: torch.Tensor,
    fix_pos: torch.Tensor | int,
    bits: int = 8,
    *,
    round_mode: RoundMode = RoundMode.STD,
    narrow: bool = False,
) -> torch.Tensor:
    """x rounded to the grid 2^-p, clamped to the codes of `bits`, back in float (fake quantization).

    With gradients on, rounding is straight-through and clamping stops the gradient (as `fake_quant`).
    """
    qmin, qmax = code_range(bits, narrow=narrow)
    scale = fix_scale(fix_pos).to(x.device)
    scaled = x / scale
    rounded = ROUNDERS[RoundMode(round_mode)](scaled)
    if torch.is_grad_enabled() and x.requires_grad:
        rounded = scaled + (rounded - scaled).detach()
    return rounded.clamp(qmin, qmax) * scale


def codes(
    x: torch.Tensor, fix_pos: int, bits: int = 8, *, round_mode: RoundMode = RoundMode.STD, narrow: bool = False
) -> torch.Tensor:
    """The integer codes the DPU stores for x (int32 tensor)."""
    return (
        (fix_quantize(x.detach(), fix_pos, bits, round_mode=round_mode, narrow=narrow) / fix_scale(fix_pos))
        .round()
        .int()
    )


def fix_pos_maxmin(x: torch.Tensor, bits: int = 8) -> int:
    """The largest fix position whose grid covers [min(x), max(x)] after rounding (no code clips)."""
    x = x.detach().float()
    qmin, qmax = code_range(bits, narrow=False)
    lo, hi = float(x.min()), float(x.max())
    step = max(lo / (qmin - 0.5), hi / (qmax + 0.5), 0.0)
    if step <= 0.0 or not math.isfinite(step):
        return EMPTY_FIX_POS
    return math.floor(math.log2(1.0 / step))


def fix_pos_diffs(
    x: torch.Tensor,
    bits: int = 8,
    *,
    scope: int = DIFFS_SCOPE,
    round_mode: RoundMode = RoundMode.STD,
    narrow: bool = False,
) -> int:
    """vai_q's "diffs": of the maxmin position and the next `scope - 1` finer ones, the one with least squared
    error. Finer grids round the bulk of the values better and clip the few largest; on heavy-tailed tensors the
    balance often tips one or two positions finer than maxmin."""
    x = x.detach().float()
    start = fix_pos_maxmin(x, bits)
    if start == EMPTY_FIX_POS or scope <= 1:
        return start
    errors = [
        float((fix_quantize(x, p, bits, round_mode=round_mode, narrow=narrow) - x).pow(2).sum())
        for p in range(start, start + scope)
    ]
    return start + min(range(scope), key=errors.__getitem__)


def fix_pos_for(
    x: torch.Tensor, bits: int, method: FixCalibration, *, round_mode: RoundMode = RoundMode.STD, narrow: bool = False
) -> int:
    if FixCalibration(method) == FixCalibration.MAXMIN:
        return fix_pos_maxmin(x, bits)
    return fix_pos_diffs(x, bits, round_mode=round_mode, narrow=narrow)


def modal(positions: list[int]) -> int:
    """The most frequent fix position over calibration batches; ties go to the coarser (smaller) position,
    which clips less."""
    if not positions:
        raise ValueError("no fix positions to choose from: the quantizer saw no calibration batch")
    counts = Counter(positions)
    best = max(counts.values())
    return min(p for p, n in counts.items() if n == best)


def bias_fix_pos(bias_pos: int, weight_pos: int, input_pos: int) -> int:
    """The DPU adds the bias into the accumulator at fix position weight + input by a left shift, so a bias can
    have no finer position than the accumulator: vai_q lowers it to that."""
    return min(bias_pos, weight_pos + input_pos)


# --- operator-specific arithmetic ------------------------------------------------------------------------------

# The DPU's pooling hardware has fixed multipliers for these windows (vai_q's table); others get the search.
AVGPOOL_TABLE: dict[int, float] = {9: 7 / 64, 25: 10 / 256, 36: 7 / 256, 49: 21 / 1024, 196: 21 / 4096}


def avgpool_factor(area: int) -> float:
    """The DPU's stand-in for 1/area: the hardware's table (7/64 for 3x3, 21/1024 for 7x7), else the k / 2^s
    closest to 1/area over shifts s < ceil(log2(128 area)) (exact for powers of two, e.g. a 4x4 global pool)."""
    if area < 1:
        raise ValueError(f"pooling area must be >= 1, got {area}")
    if area in AVGPOOL_TABLE:
        return AVGPOOL_TABLE[area]
    best, best_err = 1.0, math.inf
    for shift in range(math.ceil(math.log2(area * 128))):
        factor = round(2**shift / area)
        err = abs(factor / 2**shift - 1 / area)
        if err < best_err:
            best, best_err = factor / 2**shift, err
    return best


def dpu_avg_pool(
    x: torch.Tensor,
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """Average pooling as the DPU computes it: the window's sum times `avgpool_factor(area)`."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    mean = F.avg_pool2d(x, (kh, kw), stride, padding, count_include_pad=True)
    return mean * (kh * kw * avgpool_factor(kh * kw))


def dpu_global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling (AdaptiveAvgPool2d(1)) with the DPU's factor for the map's area."""
    return dpu_avg_pool(x, (int(x.shape[-2]), int(x.shape[-1])))  # ints: an ONNX trace sees a fixed map size


def dpu_leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


def dpu_hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) * HSIGMOID_SCALE


def dpu_hardswish(x: torch.Tensor) -> torch.Tensor:
    return x * dpu_hardsigmoid(x)


# --- one quantized tensor ----------------------------------------------------------------------------------------


def _loaded(module: FixQuantizer, incompatible_keys: object) -> None:
    module.calibrated = True


class FixQuantizer(nn.Module):
    """Fake quantization of one tensor at one fix position, with the calibration that chooses the position.

    `observe` records the position each calibration batch asks for; `finish` keeps the modal one. Until then
    the quantizer refuses to run (a made-up position would give plausible garbage). `enabled = False` passes
    float through (tracing, calibration of the layers after it).
    """

    def __init__(
        self,
        bits: int = 8,
        *,
        round_mode: RoundMode = RoundMode.HALF_UP,
        narrow: bool = False,
        method: FixCalibration = FixCalibration.DIFFS,
    ) -> None:
        super().__init__()
        code_range(bits, narrow=narrow)
        self.bits, self.round_mode, self.narrow, self.method = (
            bits,
            RoundMode(round_mode),
            narrow,
            FixCalibration(method),
        )
        self.register_buffer("fix_pos", torch.tensor(0, dtype=torch.int32))
        self.calibrated = False
        self.observing = False
        self.enabled = True
        self.seen: list[int] = []
        self.register_load_state_dict_post_hook(_loaded)  # a loaded fix position is a calibrated one

    def set_fix_pos(self, position: int) -> None:
        self.fix_pos.fill_(int(position))
        self.calibrated = True

    def position(self) -> int:
        return int(self.fix_pos)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        self.seen.append(fix_pos_for(x, self.bits, self.method, round_mode=self.round_mode, narrow=self.narrow))

    def finish(self) -> None:
        self.set_fix_pos(modal(self.seen))
        self.seen = []

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return fix_quantize(x, self.fix_pos, self.bits, round_mode=self.round_mode, narrow=self.narrow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not self.enabled:
            return x
        if not self.calibrated:
            raise RuntimeError("fix-point quantizer is not calibrated: run spaces.quant.dpu_emulation.calibrate first")
        return self.quantize(x)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, fix_pos={int(self.fix_pos)}, round={self.round_mode.value}, narrow={self.narrow}"

"""QAT against the DPU's arithmetic: power-of-two thresholds trained with the network (TQT: Jain et al. 2020,
"Trained Quantization Thresholds for Accurate and Efficient Fixed-Point Inference", what vai_q's QAT does).

Each fix-point quantizer of a calibrated DPU emulation (`spaces.quant.dpu_emulation`) gets a trainable log2 threshold
log2_t, initialised from its calibrated fix position p: t = 2^(b-1-p). The forward pass uses the scale
s = 2^ceil(log2_t) / 2^(b-1), a power of two, so the model always computes what the DPU computes; ceil and round
pass gradients straight through (TQT's estimator), so d(loss)/d(log2_t) is TQT's: the rounding error inside the
range and the clipping error outside it, times s ln 2. The fix position a trained quantizer exports is
b-1-ceil(log2_t), an integer: every exported scale is a power of two.

Train the result with `evaluators.training.loop.train` (log2_t are ordinary parameters of the model), then
`export_fix_positions` writes the trained positions into the quantizers' `fix_pos` buffers and returns them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spaces.quant.dpu_arithmetic import ROUNDERS
from spaces.quant.dpu_arithmetic import FixQuantizer
from spaces.quant.dpu_arithmetic import code_range
from spaces.quant.dpu_emulation import constrain_biases
from spaces.quant.dpu_emulation import fix_positions


def ceil_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.ceil(x) - x).detach()


def tqt_quantize(x: torch.Tensor, log2_t: torch.Tensor, bits: int, round_fn, *, narrow: bool) -> torch.Tensor:
    """Fake quantization at the power-of-two scale 2^ceil(log2_t) / 2^(b-1), differentiable in x and log2_t."""
    qmin, qmax = code_range(bits, narrow=narrow)
    scale = torch.pow(2.0, ceil_ste(log2_t) - (bits - 1))
    scaled = x / scale
    rounded = scaled + (round_fn(scaled) - scaled).detach()
    return rounded.clamp(qmin, qmax) * scale


class TqtQuantizer(FixQuantizer):
    """A FixQuantizer whose fix position follows a trained log2 threshold (class swapped in by `enable_tqt`)."""

    log2_t: nn.Parameter

    def position(self) -> int:
        return self.bits - 1 - math.ceil(float(self.log2_t))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return tqt_quantize(x, self.log2_t, self.bits, ROUNDERS[self.round_mode], narrow=self.narrow)

    def sync(self) -> None:
        self.fix_pos.fill_(self.position())


def enable_tqt(model: nn.Module) -> list[nn.Parameter]:
    """Make every calibrated fix-point quantizer of `model` trainable, in place; returns the threshold parameters
    (give them their own learning rate if you like: TQT trains them faster than the weights)."""
    params = []
    for module in model.modules():
        if type(module) is FixQuantizer:
            if not module.calibrated:
                raise RuntimeError("enable_tqt needs a calibrated emulation: run "
                                   "spaces.quant.dpu_emulation.calibrate first")
            # the threshold sits in the middle of its power-of-two bin, so ceil() starts at the calibrated position
            start = module.bits - 1 - module.position() - 0.5
            module.__class__ = TqtQuantizer
            module.log2_t = nn.Parameter(torch.tensor(float(start), device=module.fix_pos.device))
            params.append(module.log2_t)
    return params


@torch.no_grad()
def export_fix_positions(model: nn.Module) -> dict[str, int]:
    """The trained fix positions (integers: every scale a power of two), written into each quantizer's `fix_pos`
    buffer, with the bias positions lowered to their accumulators' as after calibration."""
    for module in model.modules():
        if isinstance(module, TqtQuantizer):
            module.sync()
    if getattr(model, "dpu_config", None) is not None and model.dpu_config.bias_constraint:
        positions = {m: m.position() for m in model.modules() if isinstance(m, TqtQuantizer)}
        constrain_biases(model)
        for module, before in positions.items():  # keep a lowered bias position in the trained threshold too
            if module.fix_pos.item() != before:
                module.log2_t.fill_(module.bits - 1 - int(module.fix_pos) - 0.5)
    return fix_positions(model)

"""Post-training quantization as a sequence of calibration steps, under either target arithmetic.

The steps are the ones issue 27 asks to be searchable: cross-layer equalization (`spaces.quant.equalization`), then
quantization and range calibration, then AdaRound (`spaces.quant.adaround`), then empirical bias correction
(`spaces.quant.bias_correction`). Each is a switch in `PtqSteps`. The arithmetic is a registry entry:
- `per_channel`: the project's fake quantization (`spaces.quant.quantization`: per-channel symmetric weights,
  asymmetric per-tensor activations), what onnxruntime runs on the Pi;
- `dpu`: the ZCU104 DPU's power-of-two per-tensor int8 (`spaces.quant.dpu_emulation`).
Every step reads the calibration split and nothing else (`tests/test_ptq_steps.py` poisons validation and test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum

import torch
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.splits import Splits
from spaces.quant.adaround import AdaRoundConfig
from spaces.quant.adaround import adaround
from spaces.quant.bias_correction import BiasHook
from spaces.quant.bias_correction import correct_biases
from spaces.quant.dpu_arithmetic import FixCalibration
from spaces.quant.dpu_arithmetic import fix_pos_for
from spaces.quant.dpu_emulation import DpuConfig
from spaces.quant.dpu_emulation import calibrate as calibrate_dpu
from spaces.quant.dpu_emulation import constrain_biases
from spaces.quant.dpu_emulation import emulate
from spaces.quant.equalization import equalize
from spaces.quant.quantization import calibrate
from spaces.quant.quantization import quantize_model
from spaces.recipe import Calibration
from spaces.recipe import Quantization
from spaces.recipe import QuantKind

CALIB_BATCH = 128


class Arithmetic(StrEnum):
    PER_CHANNEL = "per_channel"  # the project's fake quantization (onnxruntime on the Pi)
    DPU = "dpu"  # power-of-two per-tensor int8 (the ZCU104's DPU)


@dataclass(frozen=True, kw_only=True)
class PtqSteps:
    equalize: bool = False
    bias_correction: bool = False
    adaround: bool = False
    adaround_config: AdaRoundConfig = field(default_factory=AdaRoundConfig)
    calib_images: int = 512  # from the calibration split
    correction_images: int = 256  # bias correction / AdaRound: these, as one tensor (a subset of the above)
    calibration: Calibration = Calibration.MINMAX  # per_channel arithmetic's range method
    dpu_method: FixCalibration = FixCalibration.DIFFS  # dpu arithmetic's fix-position method

    def __post_init__(self) -> None:
        if self.calib_images < 1 or not 1 <= self.correction_images <= self.calib_images:
            raise ValueError("PtqSteps: calib_images must be >= 1 and correction_images in [1, calib_images]")

    def label(self) -> str:
        names = [
            n for n, on in (("CLE", self.equalize), ("AdaRound", self.adaround), ("BC", self.bias_correction)) if on
        ]
        return " + ".join(names) or "plain"


@dataclass(frozen=True)
class Quantizer:
    """How one arithmetic quantizes and calibrates a float model, and what to do after a bias changes."""

    build: Callable[[nn.Module, int, int, PtqSteps, list[torch.Tensor]], nn.Module]
    bias_hook: Callable[[nn.Module], BiasHook | None]


def _per_channel(model: nn.Module, wbits: int, abits: int, steps: PtqSteps, batches: list[torch.Tensor]) -> nn.Module:
    quant = Quantization(
        kind=QuantKind.PTQ, weight_bits=wbits, act_bits=abits, per_channel=True, calibration=steps.calibration
    )
    qmodel = quantize_model(model, quant)
    calibrate(qmodel, batches, steps.calibration)
    return qmodel


def _dpu(model: nn.Module, wbits: int, abits: int, steps: PtqSteps, batches: list[torch.Tensor]) -> nn.Module:
    emulated = emulate(model, DpuConfig(weight_bits=wbits, act_bits=abits, method=steps.dpu_method))
    calibrate_dpu(emulated, batches)
    return emulated


def _dpu_bias_hook(model: nn.Module) -> BiasHook:
    def refresh(layer: nn.Module) -> None:
        q = layer.bias_quant
        q.set_fix_pos(fix_pos_for(layer.bias, q.bits, q.method, round_mode=q.round_mode, narrow=q.narrow))
        constrain_biases(model)

    return refresh


ARITHMETICS: dict[Arithmetic, Quantizer] = {
    Arithmetic.PER_CHANNEL: Quantizer(_per_channel, lambda model: None),
    Arithmetic.DPU: Quantizer(_dpu, _dpu_bias_hook),
}


def calibration_images(splits: Splits, batcher: Batcher, images: int) -> torch.Tensor:
    """The first `images` of the calibration split, normalized, as one tensor."""
    subset = splits.calib.subset(torch.arange(min(images, len(splits.calib))))
    return torch.cat([x for x, _ in batcher.eval_batches(subset, CALIB_BATCH)])


def ptq(
    model: nn.Module,
    splits: Splits,
    batcher: Batcher,
    *,
    arithmetic: Arithmetic | str,
    weight_bits: int = 8,
    act_bits: int = 8,
    steps: PtqSteps | None = None,
) -> nn.Module:
    """A calibrated fake-quantized copy of the float `model` under `arithmetic`, with the chosen steps applied.
    Reads `splits.calib` only; `model` is not modified."""
    steps = steps or PtqSteps()
    quantizer = ARITHMETICS[Arithmetic(arithmetic)]
    images = calibration_images(splits, batcher, steps.calib_images)
    batches = list(images.split(CALIB_BATCH))
    reference = equalize(model) if steps.equalize else model.eval()
    qmodel = quantizer.build(reference, weight_bits, act_bits, steps, batches)
    few = images[: steps.correction_images]
    if steps.adaround:
        adaround(qmodel, reference, few, steps.adaround_config)
    if steps.bias_correction:
        correct_biases(qmodel, reference, few, on_update=quantizer.bias_hook(qmodel))
    return qmodel.eval()

"""A recipe's network as one target computes it: the accuracy of `accuracy_<target>` is this model's.

The search builds one fake-quantized model per recipe (`spaces.compress.apply`): per-channel weights and
asymmetric activations, what onnxruntime runs on the Pi. The ZCU104 runs something else: Vitis AI's `vai_q`
takes the float network the bundle ships (`zcu104/model_float.pt`), folds BatchNorm and re-quantizes it to
power-of-two per-tensor int8, calibrating its fix positions on calibration images. `target_model` builds that:
the recipe's float weights (its pruning, distillation and fine-tune kept; its fake quantizers removed, as the
bundle removes them) emulated with `spaces.quant.dpu_emulation` and calibrated on the *calibration* split only
(`spaces.quant.ptq_steps.ptq`). Recipes asked for 4 or 6 bits run at 8 there, as the DPU runs them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.splits import Splits
from spaces.quant.fake_quant import QUANT_LAYERS
from spaces.quant.placement import quantize_block_output
from spaces.quant.ptq_steps import Arithmetic
from spaces.quant.ptq_steps import PtqSteps
from spaces.quant.ptq_steps import ptq

DPU_BITS = 8  # the DPUCZDX8G computes int8 only (hardware_models.capability)


def float_copy(model: nn.Module) -> nn.Module:
    """A copy with the fake quantizers removed: the (BN-folded where the recipe folds) float network they wrap,
    plain torch classes; what the bundle ships to Vitis AI. `model` is not modified."""
    plain = copy.deepcopy(model)
    for layer in plain.modules():
        if isinstance(layer, QUANT_LAYERS):
            del layer.weight_quant, layer.act_quant
            layer.__class__ = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
        if "out_quant" in layer._modules:
            del layer.out_quant
        for key, hook in list(layer._forward_hooks.items()):
            if hook is quantize_block_output:
                del layer._forward_hooks[key]
    return plain.eval()


def target_model(
    model: nn.Module, arithmetic: Arithmetic | str, splits: Splits, batcher: Batcher, *, calib_images: int
) -> nn.Module:
    """`model` (the search's per-channel build of a recipe) as a target of `arithmetic` computes it: itself under
    the per-channel arithmetic, its float network re-quantized by the DPU's under `dpu` (fix positions from the
    first `calib_images` of the calibration split; nothing else is read)."""
    arithmetic = Arithmetic(arithmetic)
    if arithmetic == Arithmetic.PER_CHANNEL:
        return model
    steps = PtqSteps(calib_images=calib_images, correction_images=min(calib_images, PtqSteps().correction_images))
    with torch.no_grad():
        return ptq(
            float_copy(model).cpu(),
            splits,
            batcher,
            arithmetic=arithmetic,
            weight_bits=DPU_BITS,
            act_bits=DPU_BITS,
            steps=steps,
        )

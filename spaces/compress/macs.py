"""MACs per Conv2d/Linear layer, counted in one place for both the cost model and pruning's MAC model.

It lives in `spaces` rather than `evaluators` because `spaces.compress.pruning` needs it (EagleEye's candidates are
matched on MACs) and `evaluators.cost` already depends on `spaces`: one counter, imported downwards, means
the MACs a pruning plan is sized by are exactly the MACs the candidate is then scored with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spaces.quant.fake_quant import float_mode
from spaces.quant.quantization import QUANTIZABLE


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per Conv2d/Linear at batch 1, from one forward pass with hooks (quantizers bypassed).

    Real output shapes make grouped and depthwise convolutions exact (out elements x in/groups x kernel area);
    a layer called twice counts twice, and a layer never called counts 0.
    """
    macs: dict[str, int] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            per_output = module.weight[0].numel()  # conv: in/groups x kh x kw; linear: in_features
            macs[name] = macs.get(name, 0) + output[0].numel() * per_output

        return hook

    layers = {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}
    handles = [m.register_forward_hook(hook_for(name)) for name, m in layers.items()]
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), float_mode(model):
            model(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: macs.get(name, 0) for name in layers}

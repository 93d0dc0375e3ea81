"""One network, one input size: what the front's latencies and the bundle's input are, and the proxy export.

A study either deploys at its training resolution (accuracy, every latency and the bundle all at one size)
or declares a proxy (`[hardware] deploy_resolution` differs from `[data] resolution`): the search scores
accuracy at the cheap training size while costs are predicted for the same architecture at the deploy size.
Then the export must not ship a network trained at one size with latencies for another: it fine-tunes the
chosen recipe at the deploy size (training split only), re-calibrates its activation ranges there when the
recipe is post-training quantized, and measures accuracy at that size. That is `adapt`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from dataclasses import replace

import torch
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.splits import Splits
from evaluators.training.loop import train
from spaces.compress.apply import Budget
from spaces.quant.quantization import calibrate
from spaces.quant.quantization import is_quantized
from spaces.recipe import QuantKind
from spaces.recipe import Recipe

CALIB_BATCH = 64


@dataclass(frozen=True)
class DeployResolution:
    searched: int  # accuracy is trained and scored at this size
    deployed: int  # the bundle's input, and the size every latency and energy is predicted for

    @classmethod
    def of(cls, data_resolution: int, deploy_resolution: int) -> DeployResolution:
        return cls(data_resolution, deploy_resolution or data_resolution)

    @property
    def proxy(self) -> bool:
        return self.searched != self.deployed

    def note(self) -> str:
        """The sentence report.md and the bundle carry, so nobody reads a latency for the wrong input."""
        size = f"{self.deployed}x{self.deployed}"
        if not self.proxy:
            return (f"one input size: accuracy is trained and scored, every latency and energy predicted, and the "
                    f"bundle exported at {size}")
        return (f"declared proxy: accuracy is trained and scored at {self.searched}x{self.searched}, while every "
                f"latency and energy is predicted for the same architecture at {size}, the deploy resolution; the "
                f"export fine-tunes the chosen recipe at {size} and measures its accuracy there")


@dataclass(frozen=True)
class Adapted:
    model: nn.Module
    batcher: Batcher
    record: dict[str, object]


def adapt(model: nn.Module, recipe: Recipe, splits: Splits, resolution: DeployResolution, steps: int, *,
          device: torch.device | str = "cpu", calib_images: int = 512, progress: bool = True) -> Adapted:
    """The recipe's model fine-tuned for `steps` at the deploy resolution (a copy; the input is not modified).

    Training uses the training split and the recipe's own QAT/recovery settings (BatchNorm is folded in a
    quantized model, so only training moves it to the new statistics). A PTQ recipe's activation ranges are
    calibrated again at the deploy size on the calibration split, before and after training, so its scales
    are still post-training calibrated ones; a QAT recipe keeps the ranges that training adapts to.
    """
    batcher = Batcher(splits.info, resolution.deployed)
    net = copy.deepcopy(model).to(device)
    budget = Budget()
    kind = QuantKind(recipe.quant.kind)
    method = recipe.quant.calibration
    calib = splits.calib.first(calib_images)

    def recalibrate() -> None:
        if is_quantized(net) and kind in (QuantKind.PTQ, QuantKind.QAT):
            calibrate(net, batcher.eval_batches(calib, CALIB_BATCH), method)

    recalibrate()
    if steps:
        config = budget.qat_train if is_quantized(net) else budget.finetune_train
        train(net, splits.train, batcher, replace(config, augment=False), device=device, max_steps=steps,
              desc=f"fine-tune at {resolution.deployed}px", progress=progress)
        if kind == QuantKind.PTQ:
            recalibrate()
    record = {"searched_resolution": resolution.searched, "deploy_resolution": resolution.deployed,
              "proxy": resolution.proxy, "finetune_steps": steps, "finetune_split": "train",
              "recalibrated_on": "calib" if is_quantized(net) else None, "note": resolution.note()}
    return Adapted(net.cpu().eval(), batcher, record)

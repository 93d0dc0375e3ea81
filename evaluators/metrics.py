"""Accuracy on a split, and the plain size figures every report starts from."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from evaluators.cost import model_cost
from evaluators.data.batches import Batcher
from evaluators.data.datasets import ImageSet


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageSet, batcher: Batcher, *, device: torch.device | str = "cpu",
             batch_size: int = 500) -> float:
    """Top-1 accuracy in percent; the caller names the split it passes, and reports it with the number."""
    model.eval().to(device)
    correct = 0
    for x, y in batcher.eval_batches(data, batch_size, device=device):  # resized on the device
        correct += int((model(x).argmax(1).cpu() == y).sum())
    return 100.0 * correct / len(data)


def model_summary(model: nn.Module, input_shape: Sequence[int]) -> dict[str, float]:
    """Parameters, multiply-accumulates at batch 1 and the fp32 size in bytes, counted by the one cost model
    every candidate is scored with, so the baseline and the compressed models are comparable."""
    cost = model_cost(model, tuple(input_shape), storage="fp32")
    return {"params": cost.params, "macs": cost.macs, "size_bytes_fp32": cost.size_bytes}


COLLAPSE_MARGIN = 2.0  # points above or below chance within which a trained model has learnt nothing


def chance_accuracy(classes: int) -> float:
    """Top-1 accuracy (%) of guessing one class: what a network that collapsed to a constant output scores."""
    return 100.0 / classes


def collapse_reason(percent: float, classes: int, margin: float = COLLAPSE_MARGIN) -> str | None:
    """Why an accuracy is no result: a run that ends within `margin` points of chance diverged or collapsed,
    and counting it as a point would put noise on the front (it is cheap, so it often looks "optimal")."""
    chance = chance_accuracy(classes)
    if abs(percent - chance) > margin:
        return None
    return (f"collapsed: accuracy {percent:.2f}% is within {margin:g} points of chance "
            f"({chance:.2f}% for {classes} classes)")

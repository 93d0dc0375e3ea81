"""Does the deployed file compute what was searched? Compared image by image, not accuracy against accuracy.

Two classifiers that compute the same function up to float rounding agree on almost every top-1 prediction,
whatever the test set; their accuracies can still differ by a few images when those images sit on a rounding tie
(onnxruntime's int8 kernels round a requantization that PyTorch's float arithmetic lands on the other side of).
An accuracy tolerance in points is therefore finer than one image on a small test set (0.5 points of 300 images
is 1.5 images) and coarser than a real change on a large one. The bundle's claim is instead:

- the deployed file agrees with the searched PyTorch model on at least MIN_AGREEMENT of the scored images, and
- its accuracy lies within what the disagreements can explain: each image on which the two predict differently
  moves the correct count by at most one, so |correct_onnx - correct_pytorch| <= disagreements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.datasets import ImageSet

MIN_AGREEMENT = 0.99
ROUNDING = 1e-3  # points: metrics.json keeps accuracies to 4 decimals
EVAL_BATCH = 250


@dataclass(frozen=True, kw_only=True)
class Agreement:
    """Top-1 predictions of a file against the searched model's, on `images` labelled images."""

    images: int
    agree: int
    correct: int  # the file's correct predictions
    reference_correct: int  # the searched model's

    def __post_init__(self) -> None:
        if not 0 <= self.agree <= self.images or min(self.correct, self.reference_correct) < 0:
            raise ValueError(f"inconsistent agreement counts {self}")

    @property
    def share(self) -> float:
        return self.agree / self.images if self.images else 1.0

    @property
    def disagreements(self) -> int:
        return self.images - self.agree

    def interval(self, reference_percent: float) -> tuple[float, float]:
        """Accuracies (percent) the file can have, given the reference's and the number of disagreements."""
        width = 100.0 * self.disagreements / max(self.images, 1)
        return reference_percent - width, reference_percent + width

    def summary(self) -> dict[str, float | int]:
        return {
            "images": self.images,
            "agree": self.agree,
            "share": round(self.share, 6),
            "disagreements": self.disagreements,
            "minimum": MIN_AGREEMENT,
        }


def compare(predicted: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> Agreement:
    if not predicted.shape == reference.shape == labels.shape:
        raise ValueError(f"predictions {predicted.shape}, reference {reference.shape}, labels {labels.shape} differ")
    return Agreement(
        images=int(labels.size),
        agree=int((predicted == reference).sum()),
        correct=int((predicted == labels).sum()),
        reference_correct=int((reference == labels).sum()),
    )


def top1_percent(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of predicted classes against labels."""
    return 100.0 * float((predicted == labels).sum()) / max(labels.size, 1)


@torch.no_grad()
def torch_predictions(model: nn.Module, data: ImageSet, batcher: Batcher) -> np.ndarray:
    """Top-1 classes of a PyTorch model on `data` (eval mode, CPU), in order."""
    model.eval()
    return np.concatenate(
        [model(x).argmax(1).numpy() for x, _ in batcher.eval_batches(data, EVAL_BATCH)] or [np.zeros(0, np.int64)]
    )


def problems(name: str, agreement: Agreement, reference_percent: float, where: str) -> list[str]:
    """One line per broken claim of the module docstring (empty: the file is the searched model)."""
    found = []
    percent = 100.0 * agreement.correct / max(agreement.images, 1)
    if agreement.share < MIN_AGREEMENT:
        found.append(
            f"{name}: its top-1 agrees with the searched model's on {agreement.agree} of {agreement.images} "
            f"{where} ({100 * agreement.share:.2f}%, at least {100 * MIN_AGREEMENT:.0f}% required; it scored "
            f"{percent:.2f}%, the searched model scored {reference_percent:.2f}%)"
        )
    low, high = agreement.interval(reference_percent)
    if not low - ROUNDING <= percent <= high + ROUNDING:
        found.append(
            f"{name}: {percent:.2f}% on {where}, the searched model scored {reference_percent:.2f}%: further "
            f"apart than its {agreement.disagreements} differing predictions can explain ([{low:.2f}, "
            f"{high:.2f}]%)"
        )
    return found

"""Datasets handed over in Python (`search.compress(train=..., val=..., test=...)`) as the tool's own splits.

Any map-style torch Dataset of (image, label) works: PIL images (what torchvision's ImageFolder gives without
a transform) or un-normalised tensors (uint8, or float in [0, 1]). They are decoded once into uint8 tensors,
so the rest of the tool treats them exactly as it treats CIFAR-10; normalisation is `mean`/`std`, applied by
the tool. A missing val or test set is carved from train with the seeded split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluators.data.batches import Batcher
from evaluators.data.datasets import DataError
from evaluators.data.datasets import Dataset
from evaluators.data.datasets import DatasetInfo
from evaluators.data.datasets import ImageSet
from evaluators.data.datasets import RawData
from evaluators.data.datasets import default_statistics
from evaluators.data.splits import SplitConfig
from evaluators.data.splits import Splits
from evaluators.data.splits import make_splits


def _as_uint8(image: Any, where: str) -> torch.Tensor:
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        array = np.asarray(image.convert("L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"))
        return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise DataError(f"{where}: images must be PIL images or tensors, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[None]
    if image.dtype == torch.uint8:
        return image
    if image.min() < 0 or image.max() > 1:
        raise DataError(f"{where}: float images must be in [0, 1], un-normalised (values {float(image.min()):.2f} .. "
                        f"{float(image.max()):.2f}); drop Normalize from the transform and pass mean=/std= instead")
    return (image * 255).round().to(torch.uint8)


def to_image_set(dataset: Any, where: str) -> ImageSet:
    """Every (image, label) of a map-style dataset as one uint8 tensor; images must share one size."""
    if isinstance(dataset, ImageSet):
        return dataset
    images, labels = [], []
    for i in range(len(dataset)):
        image, label = dataset[i]
        images.append(_as_uint8(image, f"{where}[{i}]"))
        labels.append(int(label))
    if not images:
        raise DataError(f"{where} is empty")
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise DataError(f"{where}: images have different sizes {sorted(shapes)[:3]}; resize them to one size in the "
                        "dataset's transform (e.g. transforms.Resize((224, 224)))")
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.int64))


def in_memory_data(train: Any, val: Any = None, test: Any = None, *, resolution: int | None = None,
                   mean: tuple[float, ...] = (), std: tuple[float, ...] = (),
                   split: SplitConfig | None = None) -> tuple[Splits, Batcher]:
    sets = {k: to_image_set(v, k) for k, v in (("train", train), ("val", val), ("test", test)) if v is not None}
    channels = int(sets["train"].images.shape[1])
    if any(int(s.images.shape[1]) != channels for s in sets.values()):
        raise DataError("train, val and test images have different channel counts; give them all RGB or all grey")
    classes = int(max(int(s.labels.max()) for s in sets.values())) + 1
    h = hashlib.sha256()
    for name, s in sorted(sets.items()):
        h.update(name.encode())
        h.update(s.digest())
        h.update(s.labels.numpy().tobytes())
    size = int(sets["train"].images.shape[-1])
    default_mean, default_std = default_statistics(channels)
    info = DatasetInfo(Dataset.MEMORY, classes, channels, size, tuple(mean) or default_mean, tuple(std) or default_std,
                       len(sets["train"]), len(sets["test"]) if "test" in sets else 0, pad=max(1, size // 8))
    raw = RawData(info, sets["train"], sets.get("test"), h.hexdigest()[:16], Path("<memory>"), val=sets.get("val"))
    try:
        return make_splits(raw, split or SplitConfig()), Batcher(info, resolution or size)
    except ValueError as err:
        raise DataError(str(err)) from None

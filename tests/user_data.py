"""A user's own data and model, made for the tests: real CIFAR-10 images written as PNG (or JPEG) files in an
ImageFolder tree, generated images for the fast tier, and a small trained network saved as a user would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

CIFAR_CLASSES = {0: "airplane", 1: "automobile", 8: "ship"}


def write_cifar_imagefolder(root: Path, cifar_root: Path, *, per_class: int = 150, test_per_class: int = 40,
                            val_per_class: int = 0, suffix: str = ".png") -> Path:
    """train/ (and test/, val/ when asked) with a few CIFAR-10 classes; val/ images come from the training file
    after the train ones, test/ from the official test file."""
    from evaluators.data.datasets import load_dataset

    raw = load_dataset("cifar10", cifar_root, allow_download=False)
    plan = [("train", raw.train, 0, per_class), ("val", raw.train, per_class, val_per_class),
            ("test", raw.test, 0, test_per_class)]
    for split, source, start, count in plan:
        if count <= 0:
            continue
        for label, name in CIFAR_CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in (source.labels == label).nonzero().flatten()[start: start + count].tolist():
                Image.fromarray(source.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}{suffix}")
    return root


def write_generated_imagefolder(root: Path, *, classes: int = 3, per_class: int = 40, size: int = 24,
                                grey: bool = False, seed: int = 0, splits: tuple[str, ...] = ("train",)) -> Path:
    """Generated images a small CNN separates easily: class k is a bright bar at angle k, over noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    for split in splits:
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            angle = np.pi * k / classes
            bar = np.abs(np.cos(angle) * yy - np.sin(angle) * xx) < 2.5
            for i in range(per_class):
                img = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
                img[bar] = [230, 200 - 50 * (k % 3), 60 + 60 * (k % 3)]
                Image.fromarray(img[..., 0] if grey else img).save(folder / f"{i}.png")
    return root


class TinyNet(nn.Module):
    """A user's own network: a class the tool has never seen."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def build_tiny(num_classes: int = 3, in_channels: int = 3) -> nn.Module:
    """`package.module:factory` form of TinyNet."""
    return TinyNet(num_classes, in_channels)


def train_quickly(model: nn.Module, root: Path, resolution: int, *, steps: int = 60,
                  mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225),
                  ) -> nn.Module:
    """The user's own training loop, with the normalisation the study will declare."""
    from evaluators.data.imagefolder import image_set
    from evaluators.data.imagefolder import list_classes
    from evaluators.data.imagefolder import list_split

    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    data = image_set(list_split(root / "train", list_classes(root / "train")), resolution, channels)
    x = data.take(slice(None)).float() / 255
    x = (x - torch.tensor(mean[:channels]).view(1, -1, 1, 1)) / torch.tensor(std[:channels]).view(1, -1, 1, 1)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(step))[:64]
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), data.labels[idx]).backward()
        opt.step()
    return model.eval()

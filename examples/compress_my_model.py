"""Compress your own trained model on your own images, from Python: the whole path a user takes.

1. Write an ImageFolder tree (train/<class>/*.png, test/<class>/*.png) from a few CIFAR-10 classes, as a stand-in
   for your own photos.
2. Train a small network of your own on it and save its state_dict, as you would.
3. Load it back and hand it to `search.compress`, which searches pruning and quantization for the boards
   and returns the Pareto front; export the knee as a deployment bundle.

    python examples/compress_my_model.py [--workdir DIR] [--trials N]

About 5 minutes on 2 cores (AMD EPYC). Needs CIFAR-10 where the tool finds it (--data-root, $EDGE_SEARCH_DATA,
./data or ../shared/data).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import search  # noqa: E402
from evaluators.data.datasets import load_dataset  # noqa: E402
from evaluators.data.imagefolder import image_set  # noqa: E402
from evaluators.data.imagefolder import list_classes  # noqa: E402
from evaluators.data.imagefolder import list_split  # noqa: E402

CLASSES = {0: "airplane", 1: "automobile", 8: "ship"}


class MyNet(nn.Module):
    """A user's own small CNN."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def write_imagefolder(root: Path, data_root: str | None, per_class: int, test_per_class: int) -> None:
    raw = load_dataset("cifar10", data_root, allow_download=False)
    for split, source, count in (("train", raw.train, per_class), ("test", raw.test, test_per_class)):
        for label, name in CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in (source.labels == label).nonzero().flatten()[:count].tolist():
                Image.fromarray(source.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")


def train_my_model(root: Path, epochs: int) -> MyNet:
    """The user's own training loop (ImageNet normalisation, which search.compress assumes by default)."""
    classes = list_classes(root / "train")
    data = image_set(list_split(root / "train", classes), 32, 3)
    images = data.take(slice(None)).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x, y = (images - mean) / std, data.labels
    torch.manual_seed(0)
    model = MyNet(len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=None, help="where images, checkpoint and run go (default: a temp folder)")
    p.add_argument("--data-root", default=None, help="where CIFAR-10 is (default: as the tool finds it)")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--images-per-class", type=int, default=400)
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="compress-my-model-"))
    root = work / "images"
    if not (root / "train").is_dir():
        write_imagefolder(root, args.data_root, per_class=args.images_per_class,
                          test_per_class=max(10, args.images_per_class // 4))
    checkpoint = work / "my_net.pt"
    if not checkpoint.is_file():
        torch.save(train_my_model(root, args.epochs).state_dict(), checkpoint)

    # --- what a user with a trained model writes ---------------------------------------------------------------
    model = MyNet(num_classes=3)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    result = search.compress(teacher=model, data=root, resolution=32, targets=["zcu104", "rpi4"],
                             trials=args.trials, budget="quick", out=str(work / "run"), cache_dir=str(work / "cache"),
                             progress=False)
    print(result)
    print(result.front[["source", "f3_test_accuracy", "f3_latency_zcu104", "f3_latency_rpi4", "f3_size_mb"]])
    bundle = result.export(work / "bundle")
    print(f"front plot: {result.plot()}\nbundle: {bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

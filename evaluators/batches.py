"""Batches of normalized, optionally augmented images at the study's resolution.

Everything is done on whole uint8 tensors: a random crop with padding and a horizontal flip for
CIFAR-10 (the standard recipe), crop only for MNIST (digits are not mirror-symmetric). Randomness comes
from a generator seeded per (seed, epoch, step), so an interrupted epoch resumes on exactly the batches
it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evaluators.datasets import Dataset
from evaluators.datasets import DatasetInfo
from evaluators.datasets import ImageSet

PAD = {Dataset.CIFAR10: 4, Dataset.MNIST: 2}
FLIP = {Dataset.CIFAR10: True, Dataset.MNIST: False}


@dataclass(frozen=True)
class Batcher:
    """Turns an ImageSet into model-ready batches for one dataset at one resolution."""

    info: DatasetInfo
    resolution: int

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.info.mean).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.info.std).view(1, -1, 1, 1) * 255.0
        x = (images.float() - mean) / std
        if self.resolution != x.shape[-1]:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return x

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pad = PAD[self.info.name]
        n, _, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
        batch_idx = torch.arange(n).view(n, 1, 1, 1)
        chan_idx = torch.arange(images.shape[1]).view(1, -1, 1, 1)
        out = padded[batch_idx, chan_idx, rows, cols]
        if FLIP[self.info.name]:
            flip = torch.rand(n, generator=generator) < 0.5
            out[flip] = out[flip].flip(-1)
        return out

    def train_batches(self, data: ImageSet, batch_size: int, *, seed: int, epoch: int,
                      start_step: int = 0, augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled full batches of one epoch (the last partial batch is dropped), from `start_step` on."""
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        for step in range(start_step, len(data) // batch_size):
            idx = perm[step * batch_size: (step + 1) * batch_size]
            images = data.images[idx]
            if augment:
                gen = torch.Generator().manual_seed((seed * 100003 + epoch) * 1000003 + step)
                images = self.augment(images, gen)
            yield self.normalize(images), data.labels[idx]

    def eval_batches(self, data: ImageSet, batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(data), batch_size):
            yield self.normalize(data.images[start: start + batch_size]), data.labels[start: start + batch_size]

    def steps_per_epoch(self, data: ImageSet, batch_size: int) -> int:
        return len(data) // batch_size

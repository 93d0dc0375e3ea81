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

from evaluators.data.datasets import DatasetInfo
from evaluators.data.datasets import ImageSet


@dataclass(frozen=True)
class Batcher:
    """Turns an ImageSet into model-ready batches for one dataset at one resolution."""

    info: DatasetInfo
    resolution: int

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> normalized float at the study's resolution, on the device `images` are on: a CUDA caller
        moves the small uint8 batch first, so the (224 px) resize runs on the GPU, not in the CPU hot loop."""
        mean = torch.tensor(self.info.mean, device=images.device).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.info.std, device=images.device).view(1, -1, 1, 1) * 255.0
        x = (images.float() - mean) / std
        if self.resolution != x.shape[-1]:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return x

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pad = self.info.pad
        n, _, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
        batch_idx = torch.arange(n).view(n, 1, 1, 1)
        chan_idx = torch.arange(images.shape[1]).view(1, -1, 1, 1)
        out = padded[batch_idx, chan_idx, rows, cols]
        if self.info.flip:
            flip = torch.rand(n, generator=generator) < 0.5
            out[flip] = out[flip].flip(-1)
        return out

    def train_batches(self, data: ImageSet, batch_size: int, *, seed: int, epoch: int, start_step: int = 0,
                      augment: bool = True, device: torch.device | str = "cpu",
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled full batches of one epoch (the last partial batch is dropped), from `start_step` on.

        Augmentation runs on the CPU on uint8 images at their stored size (seeded, so a resumed epoch sees the
        same batches); normalization and the resize to the study's resolution run on `device`."""
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        steps = range(start_step, len(data) // batch_size)
        indices = [perm[step * batch_size: (step + 1) * batch_size] for step in steps]
        for step, idx, images in zip(steps, indices, data.batches(indices), strict=True):
            if augment:
                gen = torch.Generator().manual_seed((seed * 100003 + epoch) * 1000003 + step)
                images = self.augment(images, gen)
            yield self.normalize(images.to(device)), data.labels[idx]

    def eval_batches(self, data: ImageSet, batch_size: int = 500, *, device: torch.device | str = "cpu",
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = [torch.arange(start, min(start + batch_size, len(data))) for start in range(0, len(data), batch_size)]
        for idx, images in zip(indices, data.batches(indices), strict=True):
            yield self.normalize(images.to(device)), data.labels[idx]

    def steps_per_epoch(self, data: ImageSet, batch_size: int) -> int:
        return len(data) // batch_size

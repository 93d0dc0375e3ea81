"""Fixed, seeded splits carved from the official training images.

Validation (model selection) and calibration (PTQ scales, BN recalibration) never touch the test split,
which only final reports read: the thesis calibrated PTQ on its test set, which inflated its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

import torch

from evaluators.datasets import DatasetInfo
from evaluators.datasets import ImageSet
from evaluators.datasets import RawData


@dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """How the training images are divided; part of every cache key that depends on data."""

    val_size: int = field(default=5000, metadata={"min": 100, "max": 20000})
    calib_size: int = field(default=1000, metadata={"min": 32, "max": 10000})
    # 0 keeps every remaining training image; a smaller number trains on a fixed seeded subset of them.
    train_size: int = field(default=0, metadata={"min": 0, "max": 60000})
    seed: int = field(default=0, metadata={"min": 0})


@dataclass(frozen=True)
class Splits:
    info: DatasetInfo
    train: ImageSet
    val: ImageSet
    calib: ImageSet
    test: ImageSet
    fingerprint: str

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in ("train", "val", "calib", "test")}


def split_indices(n: int, config: SplitConfig) -> dict[str, torch.Tensor]:
    """Disjoint index sets over `n` training images; the same config always gives the same indices."""
    reserved = config.val_size + config.calib_size
    if reserved >= n:
        raise ValueError(f"val_size + calib_size = {reserved} leaves no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    val = perm[: config.val_size]
    calib = perm[config.val_size: reserved]
    train = perm[reserved:]
    if config.train_size:
        if config.train_size > len(train):
            raise ValueError(f"train_size = {config.train_size} but only {len(train)} training images remain "
                             "after validation and calibration; lower train_size (0 means all)")
        train = train[: config.train_size]
    return {"train": train, "val": val, "calib": calib}


def make_splits(raw: RawData, config: SplitConfig) -> Splits:
    idx = split_indices(len(raw.train), config)
    return Splits(
        info=raw.info,
        train=raw.train.subset(idx["train"]),
        val=raw.train.subset(idx["val"]),
        calib=raw.train.subset(idx["calib"]),
        test=raw.test,
        fingerprint=raw.fingerprint,
    )

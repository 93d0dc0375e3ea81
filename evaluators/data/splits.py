"""Fixed, seeded splits carved from the official training images.

Validation (model selection) and calibration (PTQ scales, BN recalibration) never touch the test split,
which only final reports read: the thesis calibrated PTQ on its test set, which inflated its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

import torch

from evaluators.data.datasets import DatasetInfo
from evaluators.data.datasets import ImageSet
from evaluators.data.datasets import RawData
from spaces.validated import settings


@settings
class SplitConfig:
    """How the training images are divided; part of every cache key that depends on data.

    A size of 0 means a fraction of the training folder (validation 10%, calibration 5%, at most 1000), so
    that the defaults fit a dataset of a few hundred images as well as CIFAR-10. A test split the data
    does not provide (an ImageFolder without `test/`) is carved the same size as validation.
    """

    val_size: int = field(default=0, metadata={"min": 0, "max": 200_000})  # model selection
    calib_size: int = field(default=0, metadata={"min": 0, "max": 10_000})  # PTQ scales, BN recalibration
    # 0 keeps every remaining training image; a smaller number trains on a fixed seeded subset of them.
    train_size: int = field(default=0, metadata={"min": 0, "max": 10_000_000})
    seed: int = field(default=0, metadata={"min": 0})

    def sizes_for(self, n: int, *, carve_val: bool = True, carve_test: bool = False) -> dict[str, int]:
        """How many of `n` training images go to each carved split."""
        val = (self.val_size or max(1, round(0.1 * n))) if carve_val or carve_test else 0
        sizes = {"val": val if carve_val else 0, "calib": self.calib_size or min(1000, max(1, round(0.05 * n))),
                 "test": val if carve_test else 0}
        return sizes


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


def split_indices(n: int, config: SplitConfig, *, carve_val: bool = True,
                  carve_test: bool = False) -> dict[str, torch.Tensor]:
    """Disjoint index sets over `n` training images; the same config always gives the same indices."""
    sizes = config.sizes_for(n, carve_val=carve_val, carve_test=carve_test)
    reserved = sum(sizes.values())
    if reserved >= n:
        raise ValueError(f"validation, calibration and test ({sizes['val']} + {sizes['calib']} + {sizes['test']}) "
                         f"leave no training images out of {n}; lower [data.split] val_size / calib_size or add "
                         "images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    out, start = {}, 0
    for name in ("val", "calib", "test"):
        out[name] = perm[start: start + sizes[name]]
        start += sizes[name]
    train = perm[start:]
    if config.train_size:
        if config.train_size > len(train):
            raise ValueError(f"train_size = {config.train_size} but only {len(train)} training images remain "
                             "after validation and calibration; lower train_size (0 means all)")
        train = train[: config.train_size]
    out["train"] = train
    if not carve_test:
        del out["test"]
    return out


def make_splits(raw: RawData, config: SplitConfig) -> Splits:
    """Validation and calibration carved from train (validation from `val/` when the user gave one); the test
    split is the official or user-given one, carved from train only when there is none."""
    idx = split_indices(len(raw.train), config, carve_val=raw.val is None, carve_test=raw.test is None)
    check_every_class_trains(raw, idx["train"], config)
    return Splits(
        info=raw.info,
        train=raw.train.subset(idx["train"]),
        val=raw.val if raw.val is not None else raw.train.subset(idx["val"]),
        calib=raw.train.subset(idx["calib"]),
        test=raw.test if raw.test is not None else raw.train.subset(idx["test"]),  # carved only when missing
        fingerprint=raw.fingerprint,
    )


def check_every_class_trains(raw: RawData, train: torch.Tensor, config: SplitConfig) -> None:
    """Every class keeps at least one training image after the carving: a class without one cannot be learnt, and a
    study of 1000 classes of one image each once ran to 0% accuracy without a word."""
    labels = raw.train.labels[train]
    counts = torch.bincount(labels, minlength=raw.info.num_classes)
    empty = [int(c) for c in torch.nonzero(counts == 0).flatten()]
    if not empty:
        return
    names = [str(raw.info.classes[c]) if c < len(raw.info.classes) else str(c) for c in empty]
    carved = [name for name, given in (("validation", raw.val), ("test", raw.test)) if given is None]
    raise ValueError(f"{len(empty)} of {raw.info.num_classes} classes have no training image left after "
                     f"{', '.join([*carved, 'calibration'])} images were carved from the training images "
                     f"({', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); add training images to them, give a "
                     "val/ (and test/) folder so fewer are carved, or lower [data.split] val_size / calib_size"
                     + (" / train_size" if config.train_size else ""))

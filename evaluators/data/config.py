"""The study's data section: which dataset, at which resolution, split how, normalised how."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import field
from pathlib import Path

from evaluators.data.batches import Batcher
from evaluators.data.datasets import DataError
from evaluators.data.datasets import Dataset
from evaluators.data.datasets import RawData
from evaluators.data.datasets import load_dataset
from evaluators.data.imagefolder import Storage
from evaluators.data.imagefolder import load_imagefolder
from evaluators.data.splits import SplitConfig
from evaluators.data.splits import Splits
from evaluators.data.splits import make_splits
from spaces.validated import settings


# ImageNet's statistics: what most pretrained-then-fine-tuned user models were normalised with.
@settings
class DataConfig:
    dataset: Dataset
    # 32 for the CPU profiles; 224 reproduces the thesis, which resized CIFAR-10 to 224x224.
    resolution: int = field(default=32, metadata={"min": 8, "max": 1024})
    split: SplitConfig = field(default_factory=SplitConfig)
    # imagefolder only: the folder holding train/ (and optionally val/, test/); relative to the study file.
    root: str = ""
    # Normalisation: what the teacher was trained with. Empty: the dataset's own (ImageNet's for imagefolder).
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    channels: int = field(default=0, metadata={"choices": (0, 1, 3)})  # imagefolder: 0 detects grey or RGB
    flip: bool = True  # imagefolder: may training flip images horizontally without changing their class?
    storage: Storage = Storage.AUTO
    memory_limit_mb: int = field(default=2048, metadata={"min": 1})
    workers: int = field(default=2, metadata={"min": 0, "max": 64})  # streaming: decoding processes

    def __post_init__(self) -> None:
        folder = self.dataset == Dataset.IMAGEFOLDER
        if folder and not self.root:
            raise ValueError("data.root: dataset 'imagefolder' needs root, the folder that holds train/")
        if self.root and not folder:
            raise ValueError(f"data.root is for dataset 'imagefolder'; {self.dataset.value} is found through "
                             "--data-root")
        if len(self.mean) != len(self.std):
            raise ValueError(f"data.mean has {len(self.mean)} values but data.std has {len(self.std)}; give one per "
                             "channel for both")
        if any(s <= 0 for s in self.std):
            raise ValueError("data.std: every value must be > 0")


def resolve_root(config: DataConfig, base: Path) -> DataConfig:
    """The config with `root` made absolute against `base` (the study file's folder)."""
    if not config.root or Path(config.root).is_absolute():
        return config
    return dataclasses.replace(config, root=str((base / config.root).resolve()))


def load_raw(config: DataConfig, data_root: str | os.PathLike[str] | None = None, *, allow_download: bool = True,
             cache_dir: Path | None = None) -> RawData:
    if config.dataset == Dataset.MEMORY:
        raise DataError("dataset 'memory' is data given in Python (search.compress(train=...)); a study file names "
                        "imagefolder, cifar10 or mnist")
    if config.dataset == Dataset.IMAGEFOLDER:
        raw = load_imagefolder(config, cache_dir=cache_dir)
    else:
        raw = load_dataset(config.dataset, data_root, allow_download=allow_download)
    return with_normalisation(raw, config)


def with_normalisation(raw: RawData, config: DataConfig) -> RawData:
    if not config.mean:
        return raw
    if len(config.mean) not in (1, raw.info.channels):
        raise ValueError(f"data.mean has {len(config.mean)} values for {raw.info.channels}-channel images; give "
                         f"{raw.info.channels} (or 1)")
    n = raw.info.channels
    mean = config.mean * n if len(config.mean) == 1 else config.mean
    std = config.std * n if len(config.std) == 1 else config.std
    return dataclasses.replace(raw, info=dataclasses.replace(raw.info, mean=tuple(mean), std=tuple(std)))


def prepare_data(config: DataConfig, data_root: str | os.PathLike[str] | None = None, *,
                 allow_download: bool = True, cache_dir: Path | None = None) -> tuple[Splits, Batcher]:
    try:
        raw = load_raw(config, data_root, allow_download=allow_download, cache_dir=cache_dir)
        return make_splits(raw, config.split), Batcher(raw.info, config.resolution)
    except ValueError as err:  # split sizes or normalisation that do not fit this data
        raise DataError(str(err)) from None

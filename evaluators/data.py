"""The study's data section: which dataset, at which resolution, split how."""

from __future__ import annotations

import os
from dataclasses import dataclass
from dataclasses import field

from evaluators.batches import Batcher
from evaluators.datasets import Dataset
from evaluators.datasets import load_dataset
from evaluators.splits import SplitConfig
from evaluators.splits import Splits
from evaluators.splits import make_splits


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: Dataset
    # 32 for the CPU profiles; 224 reproduces the thesis, which resized CIFAR-10 to 224x224.
    resolution: int = field(default=32, metadata={"min": 8, "max": 512})
    split: SplitConfig = field(default_factory=SplitConfig)


def prepare_data(config: DataConfig, data_root: str | os.PathLike[str] | None = None, *,
                 allow_download: bool = True) -> tuple[Splits, Batcher]:
    raw = load_dataset(config.dataset, data_root, allow_download=allow_download)
    return make_splits(raw, config.split), Batcher(raw.info, config.resolution)

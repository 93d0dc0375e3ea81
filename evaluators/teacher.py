"""The teacher: trained by the tool when missing, cached under a hash of everything that determines it.

The cache folder holds `checkpoint.pt` while training (a rerun continues from it), then `teacher.pt`
and `teacher.json` (its sha256, its accuracy on validation and test, its cost). A teacher whose file no
longer matches its recorded checksum is retrained with a warning rather than silently trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import torch
from torch import nn

from evaluators.batches import Batcher
from evaluators.datasets import file_digest
from evaluators.metrics import accuracy
from evaluators.metrics import model_summary
from evaluators.splits import SplitConfig
from evaluators.splits import Splits
from evaluators.training import TrainConfig
from evaluators.training import atomic_save
from evaluators.training import train
from evaluators.training import warn
from spaces.architectures import create_model
from spaces.architectures import list_architectures

CACHE_ENV = "EDGE_SEARCH_CACHE"
# Bumped whenever a change to training code would make an old cached teacher a different network.
TEACHER_FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edge-compress-search")


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    arch: str = field(metadata={"choices": list_architectures})
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    metrics: dict
    folder: Path
    from_cache: bool


def teacher_key(config: TeacherConfig, split: SplitConfig, resolution: int, data_fingerprint: str) -> str:
    blob = json.dumps({"format": TEACHER_FORMAT, "teacher": asdict(config), "split": asdict(split),
                       "resolution": resolution, "data": data_fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_cached(folder: Path, model: nn.Module) -> dict | None:
    meta_path, weights = folder / "teacher.json", folder / "teacher.pt"
    if not (meta_path.exists() and weights.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if file_digest(weights, "sha256") != meta["sha256"]:
            raise ValueError("checksum mismatch")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as err:  # noqa: BLE001 - any damage means the cache cannot be trusted
        warn(f"cached teacher in {folder} is corrupt ({err}); retraining it")
        weights.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        return None
    return meta


def prepare_teacher(config: TeacherConfig, splits: Splits, batcher: Batcher, split: SplitConfig, *,
                    cache_dir: Path | None = None, device: torch.device | str = "cpu",
                    progress: bool = True) -> Teacher:
    """Return the trained teacher, from the cache when a verified copy exists, otherwise by training it."""
    info = splits.info
    key = teacher_key(config, split, batcher.resolution, splits.fingerprint)
    folder = (cache_dir or default_cache_dir()) / "teachers" / f"{config.arch}-{info.name.value}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.train.seed)  # the initial weights are part of what the key promises
    model = create_model(config.arch, num_classes=info.num_classes, in_channels=info.channels)
    meta = _load_cached(folder, model)
    if meta is not None:
        return Teacher(model, meta, folder, from_cache=True)
    t0 = time.monotonic()
    result = train(model, splits.train, batcher, config.train, device=device, checkpoint=folder / "checkpoint.pt",
                   desc=f"teacher {config.arch}", progress=progress)
    meta = {
        "arch": config.arch, "dataset": info.name.value, "key": key, "resolution": batcher.resolution,
        "val_accuracy": accuracy(model, splits.val, batcher, device=device),
        "test_accuracy": accuracy(model, splits.test, batcher, device=device),
        **model_summary(model, (info.channels, batcher.resolution, batcher.resolution)),
        "train_seconds_this_run": round(time.monotonic() - t0, 1), "resumed_from_step": result.resumed_from,
        "train_steps": result.steps, "config": json.loads(json.dumps(asdict(config), default=str)),
        "split": asdict(split), "data_fingerprint": splits.fingerprint,
    }
    model.cpu()
    atomic_save(model.state_dict(), folder / "teacher.pt")
    meta["sha256"] = file_digest(folder / "teacher.pt", "sha256")
    (folder / "teacher.json").write_text(json.dumps(meta, indent=2))
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return Teacher(model, meta, folder, from_cache=False)

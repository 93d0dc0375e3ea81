"""The teacher: trained by the tool when missing, cached under a hash of everything that determines it.

The cache folder holds `checkpoint.pt` while training (a rerun continues from it), then `teacher.pt`
and `teacher.json` (its sha256, its accuracy on validation and test, its cost). A teacher whose file no
longer matches its recorded checksum is retrained with a warning rather than silently trusted.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.datasets import file_digest
from evaluators.data.files import atomic_save
from evaluators.data.files import default_cache_dir
from evaluators.data.splits import SplitConfig
from evaluators.data.splits import Splits
from evaluators.metrics import accuracy
from evaluators.metrics import model_summary
from evaluators.teacher.checkpoint import check_outputs
from evaluators.teacher.checkpoint import load_into
from evaluators.teacher.checkpoint import read_checkpoint
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from evaluators.training.loop import warn
from evaluators.training.precision import Precision
from evaluators.training.precision import resolved
from spaces.compress.distillation import weights_digest
from spaces.models.architectures import create_model
from spaces.models.architectures import list_architectures
from spaces.models.architectures import stem_of
from spaces.models.network import Stem
from spaces.models.user_models import add_code_path
from spaces.models.user_models import canonical_name
from spaces.validated import ConfigError
from spaces.validated import settings

# Bumped whenever a change to training code would make an old cached teacher a different network.
TEACHER_FORMAT = 1


def _teacher_training() -> TrainConfig:
    """A teacher trains in bf16 wherever that is fast (a CUDA device, or a CPU with bf16 instructions)."""
    return TrainConfig(precision=Precision.AUTO)


@settings
class TeacherConfig:
    """The network to compress: trained here (`train`), or the user's own trained `checkpoint`.

    `arch` is a registered name (`resnet50`), `torchvision:<name>` or the user's `package.module:factory`,
    built with `kwargs`; `code` is a folder put on the import path for the user's package.
    """

    arch: str
    kwargs: tuple[tuple[str, Any], ...] = field(default=(), metadata={"table": True})
    checkpoint: str = ""  # relative to the study file
    code: str = ""  # relative to the study file
    # A checkpoint that is a whole pickled module can run arbitrary code when loaded: only with this set.
    allow_pickle: bool = False
    train: TrainConfig = field(default_factory=_teacher_training)
    # What changes in `train` when a run's plan cuts the teacher to one epoch (a slow machine, a small budget):
    # a schedule tuned for many epochs can be the wrong one for a single pass, which never sees an image twice
    # (augmentation only makes the task harder) and needs an optimizer that learns fast from the first step.
    single_pass: tuple[tuple[str, Any], ...] = field(default=(), metadata={"table": True})

    def __post_init__(self) -> None:
        if ":" not in self.arch and self.arch not in list_architectures():
            raise ValueError(f"teacher.arch: {self.arch!r} is not allowed; use one of "
                             f"{', '.join(map(repr, list_architectures()))}, 'torchvision:<model name>' or "
                             "'package.module:factory'")
        if self.kwargs and ":" not in self.arch:
            raise ValueError(f"teacher.kwargs: registered architecture {self.arch!r} takes no keyword arguments")
        if self.allow_pickle and not self.checkpoint:
            raise ValueError("teacher.allow_pickle only applies to a teacher.checkpoint")
        allowed = sorted(set(asdict(self.train)) - {"epochs", "precision"})  # the plan sets these two
        for key, _ in self.single_pass:
            if key not in allowed:
                raise ConfigError(f"teacher.single_pass: {key!r} is not a training setting it can change; use "
                                  f"{', '.join(allowed)}")
        try:
            replace(self.train, **dict(self.single_pass))
        except ConfigError as err:
            raise ConfigError(f"teacher.single_pass: {err}") from None

    def for_epochs(self, epochs: int) -> TeacherConfig:
        """The config trained for `epochs` (the run plan's count): with `single_pass`'s settings where that is one."""
        changes = dict(self.single_pass) if epochs == 1 else {}
        return replace(self, train=replace(self.train, epochs=epochs, **changes))

    @property
    def network(self) -> str:
        """The name every process rebuilds this network from (arguments included)."""
        return canonical_name(self.arch, self.kwargs)

    def key_fields(self) -> dict[str, Any]:
        """The fields a trained teacher's cache key depends on; fields left at their default are omitted, so
        caches made before they existed stay valid."""
        fields = asdict(self) | {"train": self.train.key_fields()}
        del fields["single_pass"]  # a rule for the plan, not the network: its effect is in `train`
        return {k: v for k, v in fields.items() if k not in ("kwargs", "checkpoint", "code", "allow_pickle") or v}

    def as_trained_on(self, device: torch.device | str) -> TeacherConfig:
        """The config with `train.precision` replaced by what it means on `device` (bf16 or fp32), for the cache
        key: `auto` trains a different network on a CPU with bf16 units than on one without. Where the result is
        what this tool did before the setting existed (bf16 on CUDA, fp32 on a CPU), the key keeps its old form,
        so teachers cached then stay valid."""
        effective = resolved(self.train.precision, device)
        keyed = Precision.GPU_BF16 if effective == resolved(Precision.GPU_BF16, device) else effective
        return replace(self, train=replace(self.train, precision=keyed))


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    metrics: dict
    folder: Path
    from_cache: bool


def teacher_key(config: TeacherConfig, split: SplitConfig, resolution: int, data_fingerprint: str) -> str:
    fields = {"format": TEACHER_FORMAT, "teacher": config.key_fields(), "split": asdict(split),
              "resolution": resolution, "data": data_fingerprint}
    stem = stem_of(config.network, resolution)
    if stem != Stem.IMAGENET:  # a student used as teacher; teachers cached with torchvision's stem keep their keys
        fields["stem"] = stem
    blob = json.dumps(fields, sort_keys=True, default=str)
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
    """Return the trained teacher: the user's checkpoint (never trained), else from the cache when a verified
    copy exists, otherwise by training it."""
    if config.checkpoint:
        return user_teacher(config, splits, batcher, split, cache_dir=cache_dir, device=device)
    info = splits.info
    key, folder = _trained_location(config, splits, batcher, split, cache_dir, device)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.train.seed)  # the initial weights are part of what the key promises
    model = build_teacher(config, info.num_classes, info.channels, batcher.resolution)
    meta = _load_cached(folder, model)
    if meta is not None:
        return Teacher(model, meta, folder, from_cache=True)
    t0 = time.monotonic()
    result = train(model, splits.train, batcher, config.train, device=device, checkpoint=folder / "checkpoint.pt",
                   desc=f"teacher {config.arch}", progress=progress)
    meta = _measure(model, config, splits, batcher, device) | {
        "key": key, "train_seconds_this_run": round(time.monotonic() - t0, 1), "resumed_from_step": result.resumed_from,
        "train_precision": resolved(config.train.precision, device).value,
        "train_steps": result.steps, "split": asdict(split)}
    model.cpu()
    atomic_save(model.state_dict(), folder / "teacher.pt")
    meta["sha256"] = file_digest(folder / "teacher.pt", "sha256")
    (folder / "teacher.json").write_text(json.dumps(meta, indent=2))
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return Teacher(model, meta, folder, from_cache=False)


def _folder(cache_dir: Path | None, config: TeacherConfig, dataset: str, key: str) -> Path:
    folder = _folder_path(cache_dir, config, dataset, key)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _folder_path(cache_dir: Path | None, config: TeacherConfig, dataset: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.arch.partition("@")[0])  # no process-local instance id
    return Path(cache_dir or default_cache_dir()) / "teachers" / f"{safe}-{dataset}-{key}"


def _trained_location(config: TeacherConfig, splits: Splits, batcher: Batcher, split: SplitConfig,
                      cache_dir: Path | None, device: torch.device | str) -> tuple[str, Path]:
    """The cache key and folder of the teacher this config trains on `device` (the folder is not created)."""
    key = teacher_key(config.as_trained_on(device), split, batcher.resolution, splits.fingerprint)
    return key, _folder_path(cache_dir, config, splits.info.name.value, key)


def is_cached(config: TeacherConfig, splits: Splits, batcher: Batcher, split: SplitConfig, *,
              cache_dir: Path | None = None, device: torch.device | str = "cpu") -> bool:
    """Whether `prepare_teacher` would find this teacher trained in the cache (its files present; the checksum
    is verified when it is loaded). Nothing is created."""
    _, folder = _trained_location(config, splits, batcher, split, cache_dir, device)
    return (folder / "teacher.json").is_file() and (folder / "teacher.pt").is_file()


def build_teacher(config: TeacherConfig, num_classes: int, in_channels: int, resolution: int) -> nn.Module:
    """The teacher's network, untrained, with the stem the registry picks for `resolution`; an architecture that
    cannot be built is a one-line ConfigError."""
    add_code_path(config.code)
    try:
        return create_model(config.network, num_classes=num_classes, in_channels=in_channels, resolution=resolution)
    except (KeyError, TypeError) as err:
        raise ConfigError(f"teacher.arch: {err.args[0] if err.args else err}") from None


def _measure(model: nn.Module, config: TeacherConfig, splits: Splits, batcher: Batcher,
             device: torch.device | str) -> dict[str, Any]:
    """Accuracy on validation and test (each named), cost, and what the teacher is."""
    info = splits.info
    return {
        "arch": config.network, "dataset": info.name.value, "resolution": batcher.resolution,
        "val_accuracy": accuracy(model, splits.val, batcher, device=device),
        "test_accuracy": accuracy(model, splits.test, batcher, device=device),
        **model_summary(model, (info.channels, batcher.resolution, batcher.resolution)),
        "config": json.loads(json.dumps(asdict(config), default=str)), "data_fingerprint": splits.fingerprint,
    }


def user_teacher(config: TeacherConfig, splits: Splits, batcher: Batcher, split: SplitConfig, *,
                 cache_dir: Path | None = None, device: torch.device | str = "cpu") -> Teacher:
    """The user's trained network from `config.checkpoint`. Its accuracy is measured once per (file content,
    data, split) and kept in the cache; the weights are always read from the user's file."""
    info, path = splits.info, Path(config.checkpoint)
    state = read_checkpoint(path, allow_pickle=config.allow_pickle)
    model = build_teacher(config, info.num_classes, info.channels, batcher.resolution)
    load_into(model, state, path=path, arch=config.network, num_classes=info.num_classes, in_channels=info.channels)
    check_outputs(model, path=path, num_classes=info.num_classes, in_channels=info.channels,
                  resolution=batcher.resolution)
    digest = file_digest(path, "sha256")
    keyed = replace(config, checkpoint=digest, code="", train=TrainConfig())
    key = teacher_key(keyed, split, batcher.resolution, splits.fingerprint)
    folder = _folder(cache_dir, config, info.name.value, key)
    return _measured_once(model, config, splits, batcher, device, folder, identity={"checkpoint_sha256": digest},
                          extra={"key": key, "checkpoint": str(path), "split": asdict(split)})


def given_teacher(model: nn.Module, config: TeacherConfig, splits: Splits, batcher: Batcher, cache_dir: Path | None,
                  device: torch.device | str) -> Teacher:
    """A teacher handed over in memory (the Python API): measured like a checkpoint, keyed by its weights."""
    info = splits.info
    check_outputs(model, path=Path("<the teacher model>"), num_classes=info.num_classes, in_channels=info.channels,
                  resolution=batcher.resolution)
    key = hashlib.sha256(f"{splits.fingerprint}:{weights_digest(model)}".encode()).hexdigest()[:16]
    folder = _folder(cache_dir, config, info.name.value, key)
    return _measured_once(model, config, splits, batcher, device, folder, identity={"key": key},
                          extra={"given_in_memory": True})


def _measured_once(model: nn.Module, config: TeacherConfig, splits: Splits, batcher: Batcher,
                   device: torch.device | str, folder: Path, *, identity: dict[str, Any],
                   extra: dict[str, Any]) -> Teacher:
    """A trained teacher that came from outside (a checkpoint, or memory) is never trained, only measured: its
    `teacher.json` in `folder` is reused while it records the same `identity`, else measured and written."""
    meta_path = folder / "teacher.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in identity.items()):
            return Teacher(model, meta | extra, folder, from_cache=True)
    meta = _measure(model, config, splits, batcher, device) | identity | extra
    model.cpu()
    meta_path.write_text(json.dumps(meta, indent=2))
    return Teacher(model, meta, folder, from_cache=False)

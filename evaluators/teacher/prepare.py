"""The teacher: the user's checkpoint, else the strongest cached teacher for the study, trained further or from
scratch only when the run's plan asks for more epochs than the cache has (`evaluators.teacher.cache` says how
teachers are found, `evaluators.teacher.training` how they are trained; `python -m search.teacher` trains one
on purpose, for hours if wanted).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.cache_format import CACHE_FORMAT
from evaluators.data.cache_format import FORMAT_KEY
from evaluators.data.datasets import file_digest
from evaluators.data.splits import SplitConfig
from evaluators.data.splits import Splits
from evaluators.metrics import accuracy
from evaluators.metrics import model_summary
from evaluators.teacher.cache import CACHE_ENV
from evaluators.teacher.cache import META
from evaluators.teacher.cache import PINNED
from evaluators.teacher.cache import WEIGHTS
from evaluators.teacher.cache import CorruptEntry
from evaluators.teacher.cache import Entry
from evaluators.teacher.cache import Match
from evaluators.teacher.cache import default_cache_dir
from evaluators.teacher.cache import digest
from evaluators.teacher.cache import discard
from evaluators.teacher.cache import entries
from evaluators.teacher.cache import read_entry
from evaluators.teacher.cache import strongest
from evaluators.teacher.checkpoint import check_outputs
from evaluators.teacher.checkpoint import load_into
from evaluators.teacher.checkpoint import read_checkpoint
from evaluators.teacher.imagenet_init import SCRATCH
from evaluators.teacher.imagenet_init import resolve_init
from evaluators.teacher.training import Job
from evaluators.teacher.training import continue_training
from evaluators.training.loop import TrainConfig
from evaluators.training.precision import Precision
from spaces.compress.distillation import weights_digest
from spaces.models.architectures import create_model
from spaces.models.architectures import list_architectures
from spaces.models.user_models import add_code_path
from spaces.models.user_models import canonical_name
from spaces.validated import ConfigError
from spaces.validated import settings

__all__ = ["CACHE_ENV", "default_cache_dir"]
Log = Callable[[str], None]
BUSY_RETRIES = 5


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
    # What a new teacher starts from (`evaluators.teacher.imagenet_init`): "scratch", "imagenet" (torchvision's
    # weights from the torch hub cache; an error when missing), "imagenet_if_present", or the path of a weights file.
    init: str = "scratch"

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


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    metrics: dict
    folder: Path
    from_cache: bool


def teacher_match(config: TeacherConfig, splits: Splits, batcher: Batcher, split: SplitConfig) -> Match:
    return Match(network=config.network, dataset=splits.info.name.value, resolution=batcher.resolution,
                 data=splits.fingerprint, split=split)


@dataclass(frozen=True)
class CacheStatus:
    """What the cache holds for a study's teacher, for a run's plan: the strongest entry's epochs and accuracy, and
    the epochs of the entry that training would continue (the one that starts from the study's `init`)."""

    epochs: int = 0  # of the strongest entry (0: none)
    val_accuracy: float = 0.0
    continued_from: int = 0  # epochs the entry of the study's init has (0: a new entry would start from scratch)
    busy: bool = False  # the strongest entry is being trained by another process: used as it is, not trained
    folder: str = ""
    sha256: str = ""  # of the strongest entry's best weights

    def ready_for(self, epochs: int) -> bool:
        """No training is needed for a plan that gives the teacher `epochs`."""
        return self.epochs > 0 and (self.epochs >= epochs or self.busy)


def cache_status(config: TeacherConfig, splits: Splits, batcher: Batcher, split: SplitConfig, *,
                 cache_dir: Path | None = None) -> CacheStatus:
    """The cache's state for `config`'s teacher (nothing is created or trained)."""
    match = teacher_match(config, splits, batcher, split)
    best = usable(config, match, cache_dir)
    own = _own_entry(config, match, cache_dir)
    return CacheStatus(epochs=best.epochs if best else 0, val_accuracy=best.val_accuracy if best else 0.0,
                       continued_from=own.epochs if own else 0, busy=bool(best and best.busy),
                       folder=str(best.folder) if best else "", sha256=best.meta.get("sha256", "") if best else "")


def usable(config: TeacherConfig, match: Match, cache_dir: Path | None) -> Entry | None:
    """The strongest entry `config` may use: any of the study's when it starts from scratch (a teacher trained from
    pretrained weights is still the study's teacher), else one that started from the weights it names."""
    init = resolve_init(config.init, config.network)
    if init.key == SCRATCH:
        return strongest(match, cache_dir)
    return max((e for e in entries(match, cache_dir) if e.meta.get("init") == init.key),
               key=lambda e: (e.val_accuracy, e.epochs), default=None)


def _own_entry(config: TeacherConfig, match: Match, cache_dir: Path | None) -> Entry | None:
    """The entry a training of `config` continues: the one that started from its `init`."""
    init = resolve_init(config.init, config.network)
    folder = match.folder(cache_dir, init.key)
    return next((e for e in entries(match, cache_dir) if e.folder == folder), None)


def prepare_teacher(config: TeacherConfig, splits: Splits, batcher: Batcher, split: SplitConfig, *,
                    cache_dir: Path | None = None, device: torch.device | str = "cpu", progress: bool = True,
                    log: Log = print) -> Teacher:
    """The trained teacher: the user's checkpoint (never trained); else the strongest cached one when it has at
    least `config.train.epochs` epochs (or is being trained elsewhere); else the entry of `config.init` trained
    further, or from its initial weights, up to that many epochs (said before, with a progress bar)."""
    if config.checkpoint:
        return user_teacher(config, splits, batcher, split, cache_dir=cache_dir, device=device)
    match = teacher_match(config, splits, batcher, split)
    info, wanted = splits.info, config.train.epochs
    best = usable(config, match, cache_dir)
    if best is not None and (best.epochs >= wanted or best.busy):
        ready = _loaded(best, config, info.num_classes, info.channels, batcher.resolution)
        if ready is not None:
            return ready
    init = resolve_init(config.init, config.network)
    job = Job(build=lambda: build_teacher(config, info.num_classes, info.channels, batcher.resolution), match=match,
              init=init, splits=splits, batcher=batcher, cache_dir=cache_dir, device=device, progress=progress)
    own = _own_entry(config, match, cache_dir)
    have = own.epochs if own is not None else 0
    log(f"teacher {config.network}: training epochs {have + 1}-{wanted} into {job.folder} "
        f"({'continuing its ' + str(have) + ' epochs' if have else 'from ' + init.source + ' weights'})")
    continue_training(job, config.train, wanted, log)
    trained = usable(config, match, cache_dir)
    return _loaded(trained, config, info.num_classes, info.channels, batcher.resolution, fresh=True)


def pin(teacher: Teacher) -> dict[str, Any]:
    """Keep the weights a run uses, so that every later command on the run (resume, export, benchmarks) loads this
    very teacher even after its entry has been trained further: a hard link `pinned/<sha>.pt` beside `teacher.pt`
    (a copy where links are not possible). Returns what the run records (`baseline.json`'s `teacher_pin`)."""
    sha = teacher.metrics.get("sha256", "")
    weights = teacher.folder / WEIGHTS
    if not sha or not weights.is_file():
        return {}
    pinned = teacher.folder / PINNED / f"{sha[:16]}.pt"
    if not pinned.is_file():
        pinned.parent.mkdir(exist_ok=True)
        tmp = pinned.with_suffix(f".tmp{os.getpid()}")
        try:
            os.link(weights, tmp)
        except OSError:
            shutil.copyfile(weights, tmp)
        if file_digest(tmp, "sha256") != sha:  # teacher.pt was replaced meanwhile: keep the loaded network's
            torch.save({k: v.detach().cpu().contiguous() for k, v in teacher.model.state_dict().items()}, tmp)
        tmp.replace(pinned)
    kept = ("val_accuracy", "test_accuracy", "val_images", "test_images", "best_epoch", "epochs", "init")
    return {"folder": str(teacher.folder), "sha256": sha, "weights": str(pinned),
            "metrics": {k: teacher.metrics[k] for k in kept if k in teacher.metrics}}


def pinned_teacher(config: TeacherConfig, splits: Splits, batcher: Batcher, pinned: dict[str, Any]) -> Teacher:
    """The teacher a run used (`pin`), whatever its cache entry holds now; a missing file is a one-line error."""
    info, path = splits.info, Path(pinned["weights"])
    if not path.is_file():
        raise ConfigError(f"this run's teacher {path} is no longer in the teacher cache; rerun the study with "
                          "--fresh to use the cached teacher there is now")
    model = build_teacher(config, info.num_classes, info.channels, batcher.resolution)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    entry = Path(pinned["folder"]) / META
    meta = json.loads(entry.read_text()) if entry.is_file() else {}
    if meta.get("sha256") != pinned["sha256"]:  # the entry has moved on: this run's numbers are in its pin
        kept = pinned.get("metrics", {})
        epochs = int(kept.get("epochs", 0))
        meta = {**meta, **kept, "curve": [p for p in meta.get("curve", []) if p["epoch"] <= epochs],
                "segments": [s for s in meta.get("segments", []) if s["first"] < epochs]}
    return Teacher(model.eval(), meta | {"sha256": pinned["sha256"]}, Path(pinned["folder"]), from_cache=True)


def _loaded(entry: Entry, config: TeacherConfig, num_classes: int, in_channels: int, resolution: int,
            fresh: bool = False) -> Teacher | None:
    """The entry's best network; a damaged entry is discarded (None: it will be trained again). An entry being
    trained by another process is read again instead: it replaces `teacher.pt`, then its record, a moment apart."""
    model = build_teacher(config, num_classes, in_channels, resolution)
    for _ in range(BUSY_RETRIES):
        try:
            entry.load(model)
            return Teacher(model.eval(), entry.meta, entry.folder, from_cache=not fresh)
        except CorruptEntry as err:
            if not entry.busy:
                discard(entry, str(err))
                return None
            time.sleep(1.0)
            entry = read_entry(entry.folder) or entry
    raise ConfigError(f"the teacher in {entry.folder} is being trained by another process and could not be read; "
                      "rerun in a moment")


def _measured_folder(cache_dir: Path | None, config: TeacherConfig, dataset: str, key: str) -> Path:
    """Where a teacher from outside keeps its measurements (apart from trained teachers: nothing there is trained)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.arch.partition("@")[0])  # no process-local instance id
    return Path(cache_dir or default_cache_dir()) / "measured" / f"{safe}-{dataset}-{key}"


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
    weights = file_digest(path, "sha256")
    key = digest({FORMAT_KEY: CACHE_FORMAT, "checkpoint": weights, "split": asdict(split),
                  "resolution": batcher.resolution, "data": splits.fingerprint})
    folder = _measured_folder(cache_dir, config, info.name.value, key)
    return _measured_once(model, config, splits, batcher, device, folder, identity={"checkpoint_sha256": weights},
                          extra={"key": key, "checkpoint": str(path), "split": asdict(split)})


def given_teacher(model: nn.Module, config: TeacherConfig, splits: Splits, batcher: Batcher, cache_dir: Path | None,
                  device: torch.device | str) -> Teacher:
    """A teacher handed over in memory (the Python API): measured like a checkpoint, keyed by its weights."""
    info = splits.info
    check_outputs(model, path=Path("<the teacher model>"), num_classes=info.num_classes, in_channels=info.channels,
                  resolution=batcher.resolution)
    key = digest({FORMAT_KEY: CACHE_FORMAT, "weights": weights_digest(model), "data": splits.fingerprint})
    folder = _measured_folder(cache_dir, config, info.name.value, key)
    return _measured_once(model, config, splits, batcher, device, folder, identity={"key": key},
                          extra={"given_in_memory": True})


def _measured_once(model: nn.Module, config: TeacherConfig, splits: Splits, batcher: Batcher,
                   device: torch.device | str, folder: Path, *, identity: dict[str, Any],
                   extra: dict[str, Any]) -> Teacher:
    """A trained teacher that came from outside (a checkpoint, or memory) is never trained, only measured: its
    `teacher.json` in `folder` is reused while it records the same `identity`, else measured and written."""
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "teacher.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in identity.items()):
            return Teacher(model, meta | extra, folder, from_cache=True)
    meta = _measure(model, config, splits, batcher, device) | identity | extra
    model.cpu()
    meta_path.write_text(json.dumps(meta, indent=2))
    return Teacher(model, meta, folder, from_cache=False)

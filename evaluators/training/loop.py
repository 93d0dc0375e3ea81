"""One training loop for teachers, fine-tuning, QAT and distillation, resumable to the exact step.

Every step draws its batch and its dropout noise from generators seeded by (seed, step), so a run that
is killed and resumed from its checkpoint ends with the same weights as one that never stopped.
Checkpoints are written atomically every `checkpoint_every_s` seconds and at each epoch's end, and on
Ctrl-C / SIGTERM before the process exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from enum import StrEnum
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from evaluators.data.batches import Batcher
from evaluators.data.cache_format import CACHE_FORMAT
from evaluators.data.cache_format import FORMAT_KEY
from evaluators.data.datasets import ImageSet
from evaluators.data.files import atomic_save
from evaluators.training import precision as numerics
from evaluators.training.precision import Precision
from evaluators.training.precision import autocast
from spaces.validated import settings

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class Optimizer(StrEnum):
    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


class Schedule(StrEnum):
    ONECYCLE = "onecycle"
    COSINE = "cosine"
    CONSTANT = "constant"


@settings
class TrainConfig:
    epochs: int = field(default=1, metadata={"min": 1, "max": 1000})
    batch_size: int = field(default=128, metadata={"min": 1, "max": 4096})
    optimizer: Optimizer = Optimizer.SGD
    lr: float = field(default=0.05, metadata={"min": 1e-7, "max": 10.0})
    momentum: float = field(default=0.9, metadata={"min": 0.0, "max": 0.999})
    weight_decay: float = field(default=5e-4, metadata={"min": 0.0, "max": 0.1})
    schedule: Schedule = Schedule.ONECYCLE
    label_smoothing: float = field(default=0.0, metadata={"min": 0.0, "max": 0.5})
    augment: bool = True
    seed: int = field(default=0, metadata={"min": 0})
    # bf16 autocast + channels_last where it is fast (evaluators.training.precision); the teacher's default is `auto`.
    precision: Precision = Precision.GPU_BF16

    def key_fields(self) -> dict:
        """The fields as a cache key sees them, with the cache format (`evaluators.data.cache_format`): a new format
        retrains what an old one cached."""
        return asdict(self) | {FORMAT_KEY: CACHE_FORMAT}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.key_fields(), sort_keys=True, default=str).encode()).hexdigest()[:16]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the caller records the failure instead of a meaningless model."""


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    factories = {
        Optimizer.SGD: lambda: torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                               nesterov=config.momentum > 0, weight_decay=config.weight_decay),
        Optimizer.ADAM: lambda: torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay),
        Optimizer.ADAMW: lambda: torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay),
    }
    return factories[config.optimizer]()


def make_schedule(opt: torch.optim.Optimizer, config: TrainConfig, total_steps: int):  # noqa: ANN201
    factories = {
        Schedule.ONECYCLE: lambda: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.25),
        Schedule.COSINE: lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps),
        Schedule.CONSTANT: lambda: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0),
    }
    return factories[config.schedule]()


def warn(message: str) -> None:
    """A warning on stderr that does not tear an active progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    step: int = 0

    def state_dict(self, tag: str) -> dict:
        return {"tag": tag, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])


@dataclass(frozen=True)
class TrainResult:
    steps: int
    resumed_from: int
    seconds: float
    final_loss: float


def cross_entropy_loss(label_smoothing: float) -> LossFn:
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=label_smoothing)

    return loss


def _restore(state: TrainState, checkpoint: Path | None, tag: str) -> int:
    """The step `checkpoint` resumes at (its states loaded into `state`), or 0. The file holds tensors and plain
    values only (`TrainState.state_dict`), so it is read with `weights_only=True`: nothing in it can run code."""
    if checkpoint is None or not checkpoint.exists():
        return 0
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged checkpoint only costs the progress it held
        warn(f"checkpoint {checkpoint} is unreadable ({type(err).__name__}); starting over")
        return 0
    if ckpt.get("tag") != tag:
        warn(f"checkpoint {checkpoint} belongs to another configuration; starting over")
        return 0
    state.load(ckpt)
    return state.step


def memory_format(device: torch.device | str, precision: Precision = Precision.GPU_BF16) -> torch.memory_format:
    """channels_last where training runs in bf16 (its convolutions are NHWC kernels); the default elsewhere."""
    return numerics.memory_format(precision, device)


def accelerated(device: torch.device | str, precision: Precision = Precision.GPU_BF16
                ) -> contextlib.AbstractContextManager:
    """bf16 autocast where `precision` asks for it on `device` (evaluators.training.precision); plain fp32 otherwise."""
    return autocast(precision, device)


def train(model: nn.Module, data: ImageSet, batcher: Batcher, config: TrainConfig, *,
          device: torch.device | str = "cpu", checkpoint: Path | None = None, desc: str = "train",
          loss_fn: LossFn | None = None, checkpoint_every_s: float = 60.0, max_steps: int | None = None,
          extra_params: list[nn.Parameter] | None = None, progress: bool = True,
          on_epoch: Callable[[int], None] | None = None) -> TrainResult:
    """Train `model` in place for `config.epochs` epochs (or `max_steps`), resuming from `checkpoint`.

    `extra_params` are trained alongside the model (distillation adapters live outside the student). A
    training split smaller than one batch (a user's small dataset) trains on batches of the whole split.
    `on_epoch(n)` runs after the n-th epoch's last step, before that epoch's checkpoint: a run killed while it
    runs resumes from the checkpoint before, so the epoch's last steps and `on_epoch(n)` run again.
    """
    if 0 < len(data) < config.batch_size:
        config = replace(config, batch_size=len(data))
    steps_per_epoch = batcher.steps_per_epoch(data, config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"no training images to train on (batch_size {config.batch_size}, {len(data)} images)")
    total = config.epochs * steps_per_epoch if max_steps is None else max_steps
    layout = memory_format(device, config.precision)
    model.to(device, memory_format=layout)
    holder = nn.ParameterList(extra_params or [])
    opt = make_optimizer(nn.ModuleList([model, holder]), config)
    state = TrainState(model, opt, make_schedule(opt, config, total))
    tag = f"{config.fingerprint()}:{total}"
    start = _restore(state, checkpoint, tag)
    loss_fn = loss_fn or cross_entropy_loss(config.label_smoothing)
    t0 = last_save = time.monotonic()
    loss_value = math.nan
    bar = tqdm(total=total, initial=start, desc=desc, unit="step", disable=not progress,
               dynamic_ncols=True, mininterval=1.0)
    in_hook = False
    try:
        while state.step < total:
            model.train()
            epoch, offset = divmod(state.step, steps_per_epoch)
            for x, y in batcher.train_batches(data, config.batch_size, seed=config.seed, epoch=epoch,
                                              start_step=offset, augment=config.augment, device=device):
                torch.manual_seed(config.seed * 1_000_003 + state.step)
                with accelerated(device, config.precision):
                    loss = loss_fn(model, x.to(device, memory_format=layout), y.to(device))
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"{desc}: loss is {loss.item()} at step {state.step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                state.scheduler.step()
                state.step += 1
                loss_value = loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", epoch=f"{epoch + 1}/{math.ceil(total / steps_per_epoch)}")
                epoch_done = state.step % steps_per_epoch == 0  # saved after `on_epoch`, below
                if checkpoint is not None and not epoch_done and time.monotonic() - last_save > checkpoint_every_s:
                    atomic_save(state.state_dict(tag), checkpoint)
                    last_save = time.monotonic()
                if state.step >= total:
                    break
            if on_epoch is not None and state.step % steps_per_epoch == 0:
                in_hook = True
                on_epoch(state.step // steps_per_epoch)
                in_hook = False
            if checkpoint is not None:
                atomic_save(state.state_dict(tag), checkpoint)
                last_save = time.monotonic()
    except KeyboardInterrupt:
        if checkpoint is not None and not in_hook:  # mid-hook: the checkpoint before makes the hook run again
            atomic_save(state.state_dict(tag), checkpoint)
            tqdm.write(f"interrupted at step {state.step}/{total}; checkpoint saved", file=sys.stderr)
        raise
    finally:
        bar.close()
    if layout != torch.contiguous_format:  # a network trained now and one loaded from a cache look the same
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return TrainResult(steps=total, resumed_from=start, seconds=time.monotonic() - t0, final_loss=loss_value)

"""Training a cached teacher further, one segment at a time, never from scratch when an entry exists.

A segment is one schedule (its one-cycle or cosine over the epochs it adds) that starts from the entry's best
weights, or from its initial weights for a new entry. `segment.json` fixes the segment when it starts, so an
interrupted run (Ctrl-C, SIGTERM, kill -9) resumes that very segment from `state.pt` (written at every epoch's end
and every minute: at most an epoch's tail is repeated, bit for bit), whatever the command asked this time.

After every epoch the network is scored on the validation split; the entry keeps the best weights by validation
accuracy (`teacher.pt`), their test accuracy (measured only for a new best, reported, never used to choose), the
curve of validation accuracy per epoch with its wall and CPU time, and `curve.png`. A teacher never gets worse by
being trained further: a segment that ends below the best leaves the best in place.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib
import torch
from torch import nn

from evaluators.data.batches import Batcher
from evaluators.data.cache_format import CACHE_FORMAT
from evaluators.data.cache_format import FORMAT_KEY
from evaluators.data.datasets import file_digest
from evaluators.data.files import atomic_save
from evaluators.data.files import atomic_write_bytes
from evaluators.data.splits import Splits
from evaluators.metrics import accuracy
from evaluators.metrics import model_summary
from evaluators.teacher.cache import CURVE
from evaluators.teacher.cache import META
from evaluators.teacher.cache import SEGMENT
from evaluators.teacher.cache import START
from evaluators.teacher.cache import STATE
from evaluators.teacher.cache import WEIGHTS
from evaluators.teacher.cache import Entry
from evaluators.teacher.cache import Match
from evaluators.teacher.cache import locked
from evaluators.teacher.cache import read_entry
from evaluators.teacher.cache import write_meta
from evaluators.teacher.imagenet_init import Init
from evaluators.teacher.imagenet_init import load_init
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from evaluators.training.precision import resolved

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402 - after choosing the file-only backend
from matplotlib.ticker import MaxNLocator  # noqa: E402

Log = Callable[[str], None]


@dataclass(frozen=True)
class Segment:
    """Epochs `first + 1` .. `first + epochs` of an entry, trained with `train` (its `epochs` is this segment's)."""

    first: int
    epochs: int
    train: dict[str, Any]
    precision: str  # what the training arithmetic was on this device (bf16 or fp32)

    def config(self) -> TrainConfig:
        return TrainConfig(**self.train)


@dataclass(frozen=True)
class Job:
    """What to train: the network builder, the entry's match and initialisation, the data and where to run."""

    build: Callable[[], nn.Module]
    match: Match
    init: Init
    splits: Splits
    batcher: Batcher
    cache_dir: Path | None
    device: torch.device | str = "cpu"
    progress: bool = True

    @property
    def folder(self) -> Path:
        return self.match.folder(self.cache_dir, self.init.key)


def continue_training(job: Job, config: TrainConfig, total_epochs: int, log: Log) -> Entry:
    """Train `job`'s entry until it has `total_epochs` epochs with `config` (its `epochs` ignored); a segment left
    unfinished by an interrupted run is finished first, as it was planned. Returns the entry as it then is."""
    folder = job.folder
    with locked(folder):
        segment = pending_segment(folder)
        entry = read_entry(folder) if (folder / META).is_file() else None
        have = entry.epochs if entry is not None else 0
        if segment is not None and segment.first > have:  # its starting weights are gone (a damaged entry)
            segment = None
            (folder / STATE).unlink(missing_ok=True)
        if segment is None:
            if have >= total_epochs:
                return entry
            precision = resolved(config.precision, job.device).value
            segment = Segment(have, total_epochs - have, asdict(replace(config, epochs=total_epochs - have)), precision)
            if have:  # the weights it starts from, kept: the best will move on while it trains
                shutil.copyfile(folder / WEIGHTS, folder / f"{START}.tmp")
                (folder / f"{START}.tmp").replace(folder / START)
            atomic_write_bytes(folder / SEGMENT, json.dumps(asdict(segment), default=str).encode())
        else:
            log(
                f"resuming the unfinished segment of {folder.name} at epoch {have + 1} (epochs {segment.first + 1}-"
                f"{segment.first + segment.epochs})"
            )
        _run(job, segment, entry, log)
        for name in (STATE, SEGMENT, START):
            (folder / name).unlink(missing_ok=True)
        return read_entry(folder)


def pending_segment(folder: Path) -> Segment | None:
    """The segment an interrupted run left unfinished in the entry `folder`, or None."""
    try:
        return Segment(**json.loads((folder / SEGMENT).read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
        return None


def _run(job: Job, segment: Segment, entry: Entry | None, log: Log) -> None:
    torch.manual_seed(segment.config().seed)
    model = job.build()
    if segment.first == 0:
        copied = load_init(model, job.init)
        if copied:
            log(f"initial weights: {copied} tensors from {job.init.path}")
    elif (job.folder / START).is_file():  # resumed without a checkpoint: from where the segment began
        model.load_state_dict(torch.load(job.folder / START, map_location="cpu", weights_only=True))
    else:
        entry.load(model)
    meta = entry.meta if entry is not None else _new_meta(job, model)
    meta = meta | {"segments": [*[s for s in meta["segments"] if s["first"] != segment.first], asdict(segment)]}
    clock = {"wall": time.monotonic(), "cpu": time.process_time()}
    last = segment.first + segment.epochs

    def on_epoch(n: int) -> None:
        nonlocal meta
        meta = _after_epoch(job, model, meta, segment.first + n, clock, segment.precision)
        best = f"best {meta['val_accuracy']:.2f}% (epoch {meta['best_epoch']}, test {meta['test_accuracy']:.2f}%)"
        log(
            f"epoch {segment.first + n}/{last}: validation {meta['curve'][-1]['val_accuracy']:.2f}%; {best}; "
            f"{meta['cpu_seconds'] / 3600:.2f} CPU-h so far"
        )

    train(
        model,
        job.splits.train,
        job.batcher,
        segment.config(),
        device=job.device,
        checkpoint=job.folder / STATE,
        desc=f"teacher {job.match.network} epochs {segment.first + 1}-{last}",
        progress=job.progress,
        on_epoch=on_epoch,
    )


def _new_meta(job: Job, model: nn.Module) -> dict[str, Any]:
    info = job.splits.info
    return {
        FORMAT_KEY: CACHE_FORMAT,
        "match": job.match.key,
        "key": job.match.entry_key(job.init.key),
        "arch": job.match.network,
        "dataset": info.name.value,
        "resolution": job.batcher.resolution,
        "split": asdict(job.match.split),
        "data_fingerprint": job.splits.fingerprint,
        "init": job.init.key,
        **model_summary(model, (info.channels, job.batcher.resolution, job.batcher.resolution)),
        "epochs": 0,
        "segments": [],
        "curve": [],
        "val_accuracy": -1.0,
        "test_accuracy": -1.0,
        "best_epoch": 0,
        "train_seconds": 0.0,
        "cpu_seconds": 0.0,
    }


def _after_epoch(
    job: Job, model: nn.Module, meta: dict[str, Any], epoch: int, clock: dict[str, float], precision: str
) -> dict[str, Any]:
    """Score the epoch on validation, keep the weights when they are the best so far, record and plot the curve."""
    wall, cpu = time.monotonic() - clock["wall"], time.process_time() - clock["cpu"]
    clock.update(wall=time.monotonic(), cpu=time.process_time())
    val = accuracy(model, job.splits.val, job.batcher, device=job.device)
    point = {"epoch": epoch, "val_accuracy": val, "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}
    curve = [p for p in meta["curve"] if p["epoch"] < epoch] + [point]  # a repeated epoch replaces its point
    meta = meta | {
        "curve": curve,
        "epochs": epoch,
        "train_precision": precision,
        "train_seconds": round(sum(p["wall_seconds"] for p in curve), 1),
        "cpu_seconds": round(sum(p["cpu_seconds"] for p in curve), 1),
    }
    if val > meta["val_accuracy"]:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_save(state, job.folder / WEIGHTS)
        meta |= {
            "val_accuracy": val,
            "best_epoch": epoch,
            "sha256": file_digest(job.folder / WEIGHTS, "sha256"),
            "test_accuracy": accuracy(model, job.splits.test, job.batcher, device=job.device),
            "val_images": len(job.splits.val),
            "test_images": len(job.splits.test),
        }
    write_meta(job.folder, meta)
    plot_curve(meta, job.folder / CURVE)
    return meta


def schedule_of(meta: dict[str, Any]) -> str:
    """The segments that trained a cached teacher, in words: `epochs 1-8: sgd lr 0.1 onecycle, label smoothing 0.1,
    augment, bf16; ...` (empty for a teacher from outside)."""
    parts = []
    for seg in meta.get("segments", []):
        t = seg["train"]
        parts.append(f"epochs {seg['first'] + 1}-{seg['first'] + seg['epochs']}: {t['optimizer']} lr {t['lr']} "
                     f"{t['schedule']}, batch {t['batch_size']}, label smoothing {t['label_smoothing']}, "
                     f"{'augmented' if t['augment'] else 'no augmentation'}, {seg['precision']}")
    init = meta.get("init", "scratch")
    return "; ".join(parts) + (f" (from {init})" if parts and init != "scratch" else "")


def plot_curve(meta: dict[str, Any], path: Path) -> None:
    """Validation accuracy per epoch, with the CPU-hours spent on the top axis' labels and segment starts marked."""
    curve = meta["curve"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p["epoch"] for p in curve], [p["val_accuracy"] for p in curve], marker="o", ms=3)
    for s in meta["segments"][1:]:
        ax.axvline(s["first"] + 0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"validation accuracy % ({meta.get('val_images', '?')} images)")
    ax.set_title(
        f"{meta['arch']} on {meta['dataset']} at {meta['resolution']} px: best {meta['val_accuracy']:.2f}% "
        f"(epoch {meta['best_epoch']}), {meta['cpu_seconds'] / 3600:.2f} CPU-h",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)

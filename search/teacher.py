"""`python -m search.teacher --study NAME [--profile P] --budget 3h | --epochs N`: train the study's teacher, or
train its cached one further, once, for as long as wanted; every later `search.run` of the study uses it.

Why a command of its own: a run's plan can give the teacher only a share of a short budget, and a teacher is worth
compressing only after hours on a CPU. This trains the study's teacher (its data, split, seed and the profile's
`[teacher.train]` schedule) into the teacher cache (`evaluators.teacher.cache`): `--epochs N` until the entry has N
epochs in all, `--budget T` for as many more epochs as T holds at the step time measured now. Ctrl-C, SIGTERM or
kill -9 lose at most an epoch's tail: the same command resumes the unfinished segment. After every epoch the
validation accuracy is plotted to `curve.png` in the entry and the best weights by validation are kept.
`--status` lists what the cache holds for the study.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from evaluators.data.config import prepare_data
from evaluators.data.datasets import DataError
from evaluators.teacher.cache import CURVE
from evaluators.teacher.cache import TeacherBusy
from evaluators.teacher.cache import entries
from evaluators.teacher.imagenet_init import resolve_init
from evaluators.teacher.prepare import build_teacher
from evaluators.teacher.prepare import teacher_match
from evaluators.teacher.training import Job
from evaluators.teacher.training import continue_training
from evaluators.teacher.training import pending_segment
from evaluators.training.loop import TrainConfig
from evaluators.training.precision import Precision
from search.api import resolve_device
from search.config import ConfigError
from search.config import StudyConfig
from search.config import available_studies
from search.config import load_study
from search.engine.budget import describe_duration
from search.engine.budget import parse_duration
from search.sizing.plan import fastest_teacher_step

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
EVAL_SHARE = 0.05  # an epoch's validation (and a new best's test) costs about this share of its training on a CPU


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True, help=f"study name or .toml path ({', '.join(available_studies())})")
    p.add_argument("--profile", default=None, help="its profile (default: as search.run chooses)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--budget",
        default=None,
        metavar="TIME",
        help="train as many more epochs as fit in TIME (e.g. 3h, 90m) at the step time measured now",
    )
    how.add_argument("--epochs", type=int, default=None, help="train until the teacher has this many epochs in all")
    how.add_argument("--status", action="store_true", help="list the cached teachers of the study and stop")
    p.add_argument("--data-root", default=None, help="dataset folder (default: as search.run finds it)")
    p.add_argument("--cache-dir", default=None, help="teacher cache (default: as search.run)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for training (default: torch's choice); 1 is fastest on a machine shared "
        "with other jobs (docs/results/teacher-schedule)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the per-epoch lines stay)")
    return p.parse_args(argv)


def say(message: str) -> None:
    print(message, flush=True)


def status(config: StudyConfig, job: Job) -> None:
    found = entries(job.match, job.cache_dir)
    if not found:
        say(
            f"no cached teacher for {config.name} (profile {config.profile}) yet; it would be trained into {job.folder}"
        )
    for e in sorted(found, key=lambda e: -e.val_accuracy):
        m = e.meta
        say(
            f"{e.folder}: {e.epochs} epochs from {m['init']}, best validation {e.val_accuracy:.2f}% at epoch "
            f"{m['best_epoch']} (test {m['test_accuracy']:.2f}%), {m['cpu_seconds'] / 3600:.2f} CPU-h"
            + (", being trained now" if e.busy else "")
        )


def target_epochs(args: argparse.Namespace, train: TrainConfig, job: Job, have: int) -> tuple[int, TrainConfig]:
    """The epochs the entry should have when this command ends, and the schedule: with `--budget`, in the faster
    arithmetic where `auto` may choose (both timed, as a run's plan does)."""
    if args.epochs is not None:
        return args.epochs, train
    seconds = parse_duration(args.budget)
    precision, step = fastest_teacher_step(train, job.build, job.splits, job.batcher, torch.device(job.device))
    epoch_s = (len(job.splits.train) // train.batch_size) * step * (1 + EVAL_SHARE)
    more = max(1, math.floor(seconds / epoch_s))
    say(
        f"measured {step:.2f} s per step{' in ' + precision if precision else ''}: an epoch takes about "
        f"{describe_duration(epoch_s)}, so {args.budget} holds {more} more epoch(s)"
    )
    return have + more, replace(train, precision=Precision(precision)) if precision else train


def train_teacher(args: argparse.Namespace) -> int:
    config = load_study(args.study, args.profile)
    if config.teacher.checkpoint:
        raise ConfigError(
            f"{config.source}: the teacher is the user's checkpoint {config.teacher.checkpoint}; "
            "search.teacher trains only teachers the tool builds"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cache = Path(args.cache_dir) if args.cache_dir else None
    splits, batcher = prepare_data(config.data, args.data_root, allow_download=False, cache_dir=cache)
    info = splits.info
    job = Job(
        build=lambda: build_teacher(config.teacher, info.num_classes, info.channels, batcher.resolution),
        match=teacher_match(config.teacher, splits, batcher, config.data.split),
        init=resolve_init(config.teacher.init, config.teacher.network),
        splits=splits,
        batcher=batcher,
        cache_dir=cache,
        device=device,
        progress=not args.no_progress,
    )
    if args.status:
        status(config, job)
        return 0
    own = next((e for e in entries(job.match, cache) if e.folder == job.folder), None)
    have = own.epochs if own is not None else 0
    segment = pending_segment(job.folder)
    train = config.teacher.train
    if segment is None:
        if args.budget is not None:
            parse_duration(args.budget)  # a bad time fails before anything is measured
        total, train = target_epochs(args, train, job, have)
        if total <= have:
            say(f"the teacher in {job.folder} has {have} epochs already (asked for {total}); nothing to train")
            return 0
        say(
            f"training {config.teacher.network} epochs {have + 1}-{total} ({train.optimizer} lr {train.lr}, "
            f"{train.schedule}, label smoothing {train.label_smoothing}, augment {train.augment}) into {job.folder}; "
            "Ctrl-C saves, the same command continues"
        )
    else:
        total = segment.first + segment.epochs
    t0 = time.monotonic()
    entry = continue_training(job, train, total, say)
    say(
        f"done in {describe_duration(time.monotonic() - t0)}: {entry.epochs} epochs, best validation "
        f"{entry.val_accuracy:.2f}% at epoch {entry.meta['best_epoch']} (test {entry.meta['test_accuracy']:.2f}%), "
        f"{entry.meta['cpu_seconds'] / 3600:.2f} CPU-h in all; curve {entry.folder / CURVE}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM saves the checkpoint as Ctrl-C does
    try:
        return train_teacher(args)
    except KeyboardInterrupt:
        print("interrupted: the teacher's progress is saved; rerun the same command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, DataError, TeacherBusy, ValueError) as err:  # a one-line error the user can act on
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

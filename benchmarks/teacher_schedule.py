"""`python -m benchmarks.teacher_schedule`: which teacher recipe buys the most accuracy per CPU-hour?

Each arm trains the study's teacher (ResNet-50 with torchvision's ImageNet stem) from the same initial weights for the
same CPU budget (process CPU seconds, all threads counted: a fair measure on a machine shared with other jobs, where
wall time depends on the neighbours), with a one-cycle or cosine schedule that ends exactly at that budget (the step
count is set from the arm's own step cost, timed on a throwaway copy first). The choice reads the validation split
(5,000 images carved from the training set); the test split is never read here.

    OMP_NUM_THREADS=1 nice -n 19 python -m benchmarks.teacher_schedule --arm sgd32 --cpu-minutes 30 \\
        --out docs/results/teacher-schedule/arms
    python -m benchmarks.teacher_schedule --table --out docs/results/teacher-schedule/arms

An arm is resumable (its checkpoint lives beside its JSON); two arms started at once with one thread each share the
machine's load evenly. `--throughput` prints CPU seconds per step of every resolution, arithmetic and batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from evaluators.data.config import prepare_data
from evaluators.metrics import accuracy
from evaluators.teacher.prepare import build_teacher
from evaluators.training.loop import Optimizer
from evaluators.training.loop import Schedule
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from evaluators.training.precision import Precision
from search.analysis.intervals import Accuracy
from search.config import load_study

SGD = {
    "optimizer": Optimizer.SGD,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": Schedule.ONECYCLE,
    "label_smoothing": 0.1,
    "augment": True,
    "batch_size": 128,
    "precision": Precision.BF16,
}


@dataclass(frozen=True)
class Arm:
    resolution: int
    settings: dict[str, Any]


ARMS: dict[str, Arm] = {
    "sgd32": Arm(32, SGD),
    "sgd64": Arm(64, SGD),
    "adamw32": Arm(32, SGD | {"optimizer": Optimizer.ADAMW, "lr": 2e-3, "weight_decay": 0.05}),
    "sgd32_ls0": Arm(32, SGD | {"label_smoothing": 0.0}),
    "sgd32_noaug": Arm(32, SGD | {"augment": False}),
    "sgd32_cosine": Arm(32, SGD | {"schedule": Schedule.COSINE}),
    "sgd32_fp32": Arm(32, SGD | {"precision": Precision.FP32}),
    "sgd32_b256": Arm(32, SGD | {"batch_size": 256, "lr": 0.2}),
}


def step_cpu_seconds(model: torch.nn.Module, data: Any, batcher: Any, config: TrainConfig, steps: int = 4) -> float:
    """CPU seconds per training step (after two warm-up steps), on `model` (a throwaway copy)."""
    timed = replace(config, schedule=Schedule.CONSTANT)
    train(model, data, batcher, timed, max_steps=2, progress=False)
    c0 = time.process_time()
    train(model, data, batcher, timed, max_steps=steps, progress=False)
    return (time.process_time() - c0) / steps


def run_arm(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    arm, config = ARMS[name], load_study(args.study, args.profile)
    splits, batcher = prepare_data(
        replace(config.data, resolution=arm.resolution), args.data_root, allow_download=False
    )
    train_config = replace(config.teacher.train, epochs=1, **arm.settings)
    info = splits.info

    def network() -> torch.nn.Module:
        torch.manual_seed(config.teacher.train.seed)
        return build_teacher(config.teacher, info.num_classes, info.channels, arm.resolution)

    result_path, state = out / f"{name}.json", out / f"{name}.plan.json"
    if state.is_file():  # a resumed arm keeps the step count it chose
        plan = json.loads(state.read_text())
    else:
        per_step = step_cpu_seconds(network(), splits.train, batcher, train_config)
        steps = args.steps or max(1, round(args.cpu_minutes * 60 / per_step))
        plan = {"step_cpu_s": round(per_step, 3), "steps": steps}
        state.write_text(json.dumps(plan))
    model = network()
    c0, t0 = time.process_time(), time.monotonic()
    train(
        model,
        splits.train,
        batcher,
        train_config,
        max_steps=plan["steps"],
        checkpoint=out / f"{name}.ckpt",
        desc=name,
        progress=not args.no_progress,
    )
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    val = accuracy(model, splits.val, batcher)
    result = {
        "arm": name,
        "resolution": arm.resolution,
        "settings": json.loads(json.dumps(arm.settings, default=str)),
        "budget_cpu_minutes": args.cpu_minutes,
        **plan,
        "epochs": round(plan["steps"] * train_config.batch_size / len(splits.train), 2),
        "train_cpu_s_this_process": round(cpu, 1),
        "train_wall_s_this_process": round(wall, 1),
        "val_accuracy": val,
        "val_images": len(splits.val),
        "threads": torch.get_num_threads(),
    }
    result_path.write_text(json.dumps(result, indent=2))
    (out / f"{name}.ckpt").unlink(missing_ok=True)
    return result


def table(out: Path) -> str:
    rows = [
        "| arm | px | settings (vs sgd32) | CPU s/step (timed) | steps | epochs | CPU min used | val % [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        if "val_accuracy" not in r:
            continue
        diff = {k: v for k, v in r["settings"].items() if str(v) != str(SGD.get(k))}
        acc = Accuracy(r["val_accuracy"], r["val_images"])
        rows.append(
            f"| {r['arm']} | {r['resolution']} | {diff or '-'} | {r['step_cpu_s']:.2f} | {r['steps']} | "
            f"{r['epochs']} | {r['train_cpu_s_this_process'] / 60:.1f} | {acc} |"
        )
    return "\n".join(rows)


def throughput(args: argparse.Namespace) -> None:
    config = load_study(args.study, args.profile)
    for resolution in (32, 64):
        splits, batcher = prepare_data(
            replace(config.data, resolution=resolution), args.data_root, allow_download=False
        )
        for precision in (Precision.FP32, Precision.BF16):
            for batch in (128, 256):
                train_config = replace(config.teacher.train, precision=precision, batch_size=batch)
                torch.manual_seed(0)
                model = build_teacher(config.teacher, splits.info.num_classes, splits.info.channels, resolution)
                per_step = step_cpu_seconds(model, splits.train, batcher, train_config)
                print(
                    f"| {resolution} | {precision} | {batch} | {per_step:.2f} | {1000 * per_step / batch:.1f} |",
                    flush=True,
                )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.teacher_schedule", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="resnet50_cifar10")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--data-root", default=None)
    p.add_argument("--arm", action="append", default=[], choices=sorted(ARMS), help="train this arm (repeatable)")
    p.add_argument("--cpu-minutes", type=float, default=30.0, help="CPU budget of every arm (process CPU time)")
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="train this many steps instead (arms whose steps cost the same CPU time: one optimizer or loss against "
        "another, compared step for step)",
    )
    p.add_argument("--out", default="teacher-schedule", help="folder of the arms' JSON results")
    p.add_argument("--table", action="store_true", help="print the arms found in --out as a markdown table")
    p.add_argument("--throughput", action="store_true", help="print CPU seconds per step of each setting")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.throughput:
        throughput(args)
    for name in args.arm:
        print(json.dumps(run_arm(name, args, out)), flush=True)
    if args.table:
        print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

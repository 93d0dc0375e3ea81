"""`python -m benchmarks.thesis_table --profile smoke`: the thesis's Table I and the survey's quantization table,
rerun through the tool's own pipeline on a study's data and teacher.

Every row is a Recipe (`spaces.thesis_recipes`) built by `spaces.compress.apply.apply` at the profile's budget, so the
numbers compare the *recipes* under equal effort, not the thesis's training runs: at `smoke` the budgets are
tiny and the accuracies are far below the thesis's (its column is shown for reference: measured on the
board at 224x224 after full training). Accuracy is on the validation split (the first N images at smoke);
PTQ calibrates on the calibration split. Sizes: weights as the ZCU104 DPU stores them (INT8) and packed at
their bit-width; biases and other parameters fp32 in both. MACs at batch 1 at the study's resolution.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluators.cost import model_cost
from evaluators.data.batches import Batcher
from evaluators.data.config import prepare_data
from evaluators.data.datasets import DataError
from evaluators.data.datasets import ImageSet
from evaluators.data.files import default_cache_dir
from evaluators.data.splits import Splits
from evaluators.metrics import accuracy
from evaluators.teacher.prepare import prepare_teacher
from search.config import ConfigError
from search.config import load_study
from spaces.compress.apply import Budget
from spaces.compress.apply import apply
from spaces.recipe import Recipe
from spaces.thesis_recipes import survey_quantization_recipes
from spaces.thesis_recipes import thesis_table_recipes

THESIS_CSV = Path(__file__).resolve().parent.parent / "hardware_models" / "data" / "zcu104_dpu.csv"

# (budget, validation images scored; 0 = the whole split) per study profile.
BUDGETS: dict[str, tuple[Budget, int]] = {
    "smoke": (Budget(student_steps=40, finetune_steps=15, recovery_steps=8, bn_images=256, score_images=256,
                     calib_images=256, max_candidates=3, taylor_images=64, cache_students=True), 1000),
    "cpu": (Budget(student_steps=3000, finetune_steps=500, recovery_steps=200, max_candidates=8,
                   cache_students=True), 0),
    "paper": (Budget(student_steps=8000, finetune_steps=2000, recovery_steps=500, max_candidates=16,
                     cache_students=True), 0),
}


@dataclass(frozen=True)
class Row:
    label: str
    accuracy: float
    dpu_int8_mb: float
    packed_mb: float
    mmacs: float
    seconds: float
    thesis_accuracy: str


def thesis_accuracies(path: Path = THESIS_CSV) -> dict[str, str]:
    """Table I's on-board accuracy per row label, from the packaged calibration csv's notes."""
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if "Table I" in r["source"]]
    return {r["model"]: r["note"].split("accuracy on board ")[1].split(";")[0] for r in rows}


def run_recipe(recipe: Recipe, teacher: torch.nn.Module, splits: Splits, batcher: Batcher, budget: Budget,
               val_images: int, cache_dir: Path | None) -> tuple[float, float, float, float]:
    compressed = apply(recipe, teacher, splits, batcher, budget, cache_dir=cache_dir)
    acc = accuracy(compressed.model, _val(splits, val_images), batcher)
    dpu = model_cost(compressed.model, compressed.input_shape, storage="dpu_int8")
    packed = model_cost(compressed.model, compressed.input_shape, storage="packed")
    return acc, dpu.size_bytes / 1e6, packed.size_bytes / 1e6, dpu.macs / 1e6


def format_table(rows: list[Row], split: str) -> str:
    header = (f"{'recipe':<28} {'val acc %':>9} {'DPU int8 MB':>11} {'packed MB':>9} {'MMACs':>8} {'s':>6}  "
              f"thesis (board)")
    lines = [f"accuracy on {split}", header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.label:<28} {r.accuracy:>9.2f} {r.dpu_int8_mb:>11.2f} {r.packed_mb:>9.2f} {r.mmacs:>8.1f} "
                     f"{r.seconds:>6.1f}  {r.thesis_accuracy}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.thesis_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="smoke", choices=sorted(BUDGETS))
    p.add_argument("--study", default="resnet50_cifar10", help="study whose data and teacher are used")
    p.add_argument("--data-root", default=None, help="dataset folder (default: as search.run finds it)")
    p.add_argument("--cache-dir", default=None, help="teacher / logit / student cache (default: as search.run)")
    p.add_argument("--only", default="", help="comma-separated row labels to run (default: all)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (default: torch's choice; use 1 on a machine shared with other jobs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ConfigError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_study(args.study, args.profile)
    splits, batcher = prepare_data(config.data, args.data_root, allow_download=False)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    teacher = prepare_teacher(config.teacher, splits, batcher, config.data.split, cache_dir=cache_dir).model
    budget, val_images = BUDGETS[args.profile]
    recipes = thesis_table_recipes(config.teacher.arch) + survey_quantization_recipes()
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    reference, done, rows = thesis_accuracies(), {}, []
    for recipe in (r for r in recipes if not wanted or r.label in wanted):
        if recipe.hash() not in done:  # "PTQ 8-bit" is "PTQ ResNet-50" under another name: measured once
            t0 = time.monotonic()
            measured = run_recipe(recipe, teacher, splits, batcher, budget, val_images, cache_dir)
            done[recipe.hash()] = (*measured, time.monotonic() - t0)
            print(f"done: {recipe.label} ({done[recipe.hash()][-1]:.0f} s)", file=sys.stderr, flush=True)
        rows.append(Row(recipe.label, *done[recipe.hash()], reference.get(recipe.label, "")))
    split = f"the validation split (first {val_images} images)" if val_images else "the validation split"
    print(f"study {config.name}, profile {args.profile}, teacher {config.teacher.arch}: "
          f"{teacher_line(teacher, splits, batcher, val_images)}")
    print(format_table(rows, split))
    return 0


def teacher_line(teacher: torch.nn.Module, splits: Splits, batcher: Batcher, val_images: int) -> str:
    return f"{accuracy(teacher, _val(splits, val_images), batcher):.2f}% on the same images"


def _val(splits: Splits, images: int) -> ImageSet:
    return splits.val if not images else splits.val.subset(torch.arange(min(images, len(splits.val))))


if __name__ == "__main__":
    sys.exit(main())

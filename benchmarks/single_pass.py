"""`python -m benchmarks.single_pass`: which recipe trains the better teacher in one epoch?

When the run plan (search.sizing.plan) cuts the teacher to one epoch, as it does within the `cpu` profile's 60 minutes
on a slow 2-core machine, the teacher trains with `teacher.single_pass`'s settings instead of the profile's
many-epoch schedule. This benchmark is the evidence for that rule: the profile's teacher trained for one epoch both
ways, from the same initial weights, on the study's training split. The choice reads the validation split; the
test split is reported beside it. Both with Wilson 95% intervals and Newcombe's interval of the difference.

    OMP_NUM_THREADS=2 python -m benchmarks.single_pass --study resnet50_cifar10 --profile cpu --out single_pass.json

About 2 x 352 ResNet-50 steps at batch 128: 8 min on a fast day of a 2-core Xeon, 18 on a slow one.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

import torch

from evaluators.data.config import prepare_data
from evaluators.metrics import accuracy
from evaluators.teacher.prepare import build_teacher
from evaluators.training.loop import train
from evaluators.training.precision import Precision
from search.analysis.intervals import Accuracy
from search.analysis.intervals import compare_accuracy
from search.analysis.intervals import difference_interval
from search.config import load_study


@dataclass(frozen=True)
class OnePass:
    recipe: str  # "profile" (train as the profile says, epochs 1) or "single_pass"
    settings: dict
    train_seconds: float
    val_accuracy: float
    val_images: int
    test_accuracy: float
    test_images: int


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.single_pass", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="resnet50_cifar10")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--data-root", default=None)
    p.add_argument("--precision", default="fp32", choices=[x.value for x in Precision],
                   help="both recipes train in this arithmetic (default fp32: what a CPU without bf16 units runs)")
    p.add_argument("--max-steps", type=int, default=0, help="stop each training after this many steps (0: one epoch)")
    p.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    config = load_study(args.study, args.profile)
    if not config.teacher.single_pass:
        print(f"error: study {args.study!r} at profile {args.profile!r} has no [teacher.single_pass] settings; pick "
              "a profile that sets them (resnet50_cifar10: cpu)", file=sys.stderr)
        return 2
    splits, batcher = prepare_data(config.data, args.data_root, allow_download=False)
    info = splits.info
    precision = Precision(args.precision)
    recipes = {"profile": replace(config.teacher.train, epochs=1),
               "single_pass": config.teacher.for_epochs(1).train}
    results = []
    for name, train_config in recipes.items():
        torch.manual_seed(0)  # the same initial weights for both
        model = build_teacher(config.teacher, info.num_classes, info.channels, batcher.resolution)
        done = train(model, splits.train, batcher, replace(train_config, precision=precision), desc=name,
                     max_steps=args.max_steps or None)
        results.append(OnePass(name, {k: str(v) for k, v in asdict(train_config).items() if k != "precision"},
                               round(done.seconds, 1), accuracy(model, splits.val, batcher), len(splits.val),
                               accuracy(model, splits.test, batcher), len(splits.test)))
        r = results[-1]
        print(f"  {name}: validation {Accuracy(r.val_accuracy, r.val_images)}, test "
              f"{Accuracy(r.test_accuracy, r.test_images)} ({r.train_seconds:.0f} s)", file=sys.stderr, flush=True)
    print(f"{config.teacher.network} at {batcher.resolution} px, one pass over {len(splits.train)} training images "
          f"(batch {config.teacher.train.batch_size}, {precision.value}, {torch.get_num_threads()} thread(s)):")
    print("| recipe | single_pass's settings | validation % [95% CI] | test % [95% CI] | train s |")
    print("|---|---|---|---|---|")
    for r in results:
        differ = ", ".join(f"{k} {r.settings[k]}" for k, _ in config.teacher.single_pass)
        print(f"| {r.recipe} | {differ} | {Accuracy(r.val_accuracy, r.val_images)} | "
              f"{Accuracy(r.test_accuracy, r.test_images)} | {r.train_seconds:.0f} |")
    comparisons = {}
    for split in ("val", "test"):
        a, b = (Accuracy(getattr(r, f"{split}_accuracy"), getattr(r, f"{split}_images")) for r in results[::-1])
        lo, hi = difference_interval(a, b)
        comparisons[split] = {"difference": round(a.percent - b.percent, 2), "interval": [round(lo, 2), round(hi, 2)],
                              "outcome": compare_accuracy(a, b).value}
        print(f"- single_pass - profile, {split}: {a.percent - b.percent:+.2f} points, 95% interval "
              f"[{lo:+.2f}, {hi:+.2f}]: {compare_accuracy(a, b).value}")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": [asdict(r) for r in results], "comparisons": comparisons,
                                              "threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

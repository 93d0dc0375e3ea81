"""`python -m benchmarks.cpu_precision`: is the teacher's bf16 + channels_last training worth it on this CPU?

Two measurements of the study's teacher (the registry's `resnet50` at the profile's resolution and batch size):
1. Seconds per training step, fp32 against bf16 autocast + channels_last, in alternating blocks (fp32, bf16,
   fp32, ...) so that load from other processes falls on both alike; the median block is reported.
2. Accuracy: the same short schedule trained both ways from the same initial weights and batches, scored in
   fp32 on the whole test split, with Wilson 95% intervals and the interval of the difference
   (search.analysis.intervals). A speed-up is only worth spending if this says "ties" (or better).

    OMP_NUM_THREADS=1 python -m benchmarks.cpu_precision --steps 187 --out cpu_precision.json

The accuracy schedule is the smoke teacher's (AdamW, no augmentation) cut to `--steps` steps: long enough to
leave chance level, short enough for minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

import torch

from evaluators.data.config import prepare_data
from evaluators.metrics import accuracy
from evaluators.teacher.prepare import build_teacher
from evaluators.training.loop import Schedule
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from evaluators.training.precision import Precision
from evaluators.training.precision import cpu_flags
from evaluators.training.precision import cpu_has_bf16
from search.analysis.intervals import Accuracy
from search.analysis.intervals import compare_accuracy
from search.analysis.intervals import difference_interval
from search.config import load_study

COMPARED = (Precision.FP32, Precision.BF16)


@dataclass(frozen=True)
class Speed:
    precision: str
    seconds_per_step: float  # median over blocks
    blocks: tuple[float, ...]


@dataclass(frozen=True)
class Trained:
    precision: str
    steps: int
    train_seconds: float
    test_accuracy: float
    test_images: int


def step_times(model_of, data, batcher, config: TrainConfig, *, steps: int, blocks: int) -> list[Speed]:
    """Median seconds per step of each precision, timed in alternating blocks after one warm-up block each."""
    models = {p: model_of() for p in COMPARED}
    config = replace(config, schedule=Schedule.CONSTANT)  # a step costs the same under any schedule; onecycle
    # cannot be built for a few steps
    times: dict[Precision, list[float]] = {p: [] for p in COMPARED}
    for block in range(blocks + 1):
        for p in COMPARED:
            result = train(models[p], data, batcher, replace(config, precision=p), max_steps=steps, progress=False)
            if block:  # block 0 warms up the allocator and oneDNN's kernel choice
                times[p].append(result.seconds / steps)
    return [Speed(p.value, statistics.median(times[p]), tuple(round(t, 3) for t in times[p])) for p in COMPARED]


def trained_both_ways(model_of, splits, batcher, config: TrainConfig, steps: int) -> list[Trained]:
    out = []
    for p in COMPARED:
        model = model_of()
        result = train(model, splits.train, batcher, replace(config, precision=p), max_steps=steps, progress=False)
        out.append(Trained(p.value, steps, round(result.seconds, 1),
                           accuracy(model, splits.test, batcher), len(splits.test)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="resnet50_cifar10")
    p.add_argument("--profile", default="cpu", help="whose teacher batch size and resolution are timed")
    p.add_argument("--timed-steps", type=int, default=4, help="steps per timed block (default 4)")
    p.add_argument("--blocks", type=int, default=3, help="timed blocks per precision (default 3)")
    p.add_argument("--steps", type=int, default=187,
                   help="steps of the accuracy schedule (default 187: one pass over the smoke profile's 24k images; "
                        "0: time the steps only)")
    p.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    if not cpu_has_bf16():
        print("this CPU has neither avx512_bf16 nor amx_bf16: bf16 would be emulated; nothing to compare")
        return 1
    config = load_study(args.study, args.profile)
    splits, batcher = prepare_data(config.data, allow_download=False)
    info = splits.info

    def model_of() -> torch.nn.Module:
        torch.manual_seed(0)  # the same initial weights for both precisions
        return build_teacher(config.teacher, info.num_classes, info.channels, batcher.resolution)

    speed = step_times(model_of, splits.train, batcher, config.teacher.train, steps=args.timed_steps,
                       blocks=args.blocks)
    flags = sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx"))
    print(f"{config.teacher.network} at {batcher.resolution} px, batch {config.teacher.train.batch_size} "
          f"({args.profile} profile), {torch.get_num_threads()} thread(s); CPU flags {', '.join(flags)}")
    for s in speed:
        print(f"  {s.precision}: {s.seconds_per_step:.3f} s/step (median of blocks {list(s.blocks)})")
    factor = speed[0].seconds_per_step / speed[1].seconds_per_step
    print(f"  speed-up bf16 + channels_last over fp32: {factor:.2f}x")
    if args.steps == 0:
        return 0
    smoke = load_study(args.study, "smoke").teacher.train
    trained = trained_both_ways(model_of, splits, batcher, smoke, args.steps)
    fp32, bf16 = (Accuracy(t.test_accuracy, t.test_images) for t in trained)
    lo, hi = difference_interval(bf16, fp32)
    print(f"accuracy after {args.steps} steps of the smoke schedule (batch {smoke.batch_size}), test split:")
    for t, acc in zip(trained, (fp32, bf16), strict=True):
        print(f"  {t.precision}: {acc} ({t.test_images} images; trained in {t.train_seconds:.0f} s)")
    print(f"  bf16 - fp32: {bf16.percent - fp32.percent:+.2f} points, 95% interval [{lo:+.2f}, {hi:+.2f}]: "
          f"{compare_accuracy(bf16, fp32).value}")
    if args.out:
        Path(args.out).write_text(json.dumps({"speed": [asdict(s) for s in speed], "speed_up": round(factor, 3),
                                              "trained": [asdict(t) for t in trained],
                                              "difference_interval": [round(lo, 2), round(hi, 2)],
                                              "threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

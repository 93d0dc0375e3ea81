"""`python -m benchmarks.stems`: torchvision's ImageNet stems against small-input (CIFAR) stems on the students.

Why: with their ImageNet stems (32x downsampling) MobileNetV2 and SqueezeNet end in 1x1 feature maps at CIFAR's
32 px, which costs them accuracy at every fidelity; CIFAR stems (the first downsampling removed) keep larger maps
but cost MACs and latency. `spaces.models.architectures.StemRule` picks a stem from the input resolution; this
measures, per student and per candidate stem (`spaces.models.architectures.SMALL_STEMS`), what the
choice costs and buys:

- MACs and parameters at batch 1 (`evaluators.cost.model_cost`, the candidates' own counter);
- the spatial size of the last convolution's output (the feature map the classifier pools);
- the latency the hardware models predict on each target (`evaluators.candidate.hardware_metrics`, the FP32
  recipe: INT8 on the ZCU104's DPU as Vitis AI would quantize it, onnxruntime FP32 on the Pi 4);
- validation accuracy, with its Wilson 95% interval, after training on CIFAR-10's labels alone (no teacher):
  the same seed, batch, steps and schedule for every stem; validation is carved from the training images
  (the test split is never read: this measurement chooses the stems).

The choice it prints (`choose`): a student gets a small stem when that stem is more accurate than torchvision's
(the 95% interval of the difference excludes 0, `search.analysis.intervals.compare_accuracy`) and its predicted latency
stays below the teacher's (ResNet-50 with torchvision's stem, the network every student must undercut) on every
target; among such stems the cheapest, unless a costlier one is more accurate than it beyond the same interval.
Otherwise it keeps torchvision's stem.

    python -m benchmarks.stems [--steps 200] [--batch 64] [--val 2000] [--archs resnet18 ...]
                               [--data-root /work/shared/data] [--out stems_table.md]

Set OMP_NUM_THREADS (the published table used 1 thread). The markdown table is printed and written to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from evaluators import metric_names as names
from evaluators.candidate import HardwareConfig
from evaluators.candidate import hardware_metrics
from evaluators.cost import model_cost
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from evaluators.metrics import accuracy
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from hardware_models.estimators.host import cpu_name
from search.analysis.intervals import Accuracy
from search.analysis.intervals import Comparison
from search.analysis.intervals import compare_accuracy
from search.analysis.intervals import difference_interval
from search.analysis.intervals import wilson
from spaces.models.architectures import create_model
from spaces.models.network import Stem
from spaces.recipe import Recipe

# The candidate small stems of each student: the ones the brief (issue 12) names.
CANDIDATES = {
    "resnet18": ("resnet_3x3",),
    "mobilenet_v2": ("mobilenet_v2_conv", "mobilenet_v2_conv_block"),
    "squeezenet1_1": ("squeezenet_conv_pool",),
    "squeezenet1_0": ("squeezenet_conv_pool",),
}
RESOLUTION = 32
TARGETS = ("zcu104", "rpi4")
TEACHER = "resnet50"


@dataclass(frozen=True)
class Row:
    arch: str
    stem: str
    macs: int
    params: int
    feature_map: int
    latency_ms: dict[str, float]
    accuracy: float
    images: int
    train_seconds: float

    @property
    def measured(self) -> Accuracy:
        return Accuracy(self.accuracy, self.images)

    def markdown(self) -> str:
        lo, hi = wilson(self.accuracy, self.images)
        latency = " | ".join(f"{self.latency_ms[t]:.2f}" for t in TARGETS)
        trained = f"{self.accuracy:.1f} [{lo:.1f}, {hi:.1f}] | {self.train_seconds:.0f}" if self.images else "- | -"
        return (f"| {self.arch} | {self.stem} | {self.macs / 1e6:.1f} | {self.params / 1e6:.2f} | "
                f"{self.feature_map}x{self.feature_map} | {latency} | {trained} |")


def choose(rows: list[Row], teacher: Row) -> tuple[str, str]:
    """The stem the measurement supports for one student's rows (torchvision's first), and why."""
    base, *small = rows
    fits = [r for r in small if compare_accuracy(r.measured, base.measured) == Comparison.BETTER
            and all(r.latency_ms[t] < teacher.latency_ms[t] for t in TARGETS)]
    notes = []
    for r in small:
        lo, hi = difference_interval(r.measured, base.measured)
        slower = [t for t in TARGETS if r.latency_ms[t] >= teacher.latency_ms[t]]
        notes.append(f"{r.stem}: {r.accuracy - base.accuracy:+.1f} points [{lo:+.1f}, {hi:+.1f}]"
                     + (f", slower than the teacher on {', '.join(slower)}" if slower else ""))
    best = base
    for r in sorted(fits, key=lambda r: r.macs):  # a costlier stem must beat the cheaper choice, not just tie it
        if best is base or compare_accuracy(r.measured, best.measured) == Comparison.BETTER:
            best = r
    return best.stem, "; ".join(notes)


def build(arch: str, stem: str) -> nn.Module:
    """The student with torchvision's stem ("imagenet") or one of the registered small stems."""
    return create_model(arch, num_classes=10, in_channels=3, stem=stem)


def last_feature_map(model: nn.Module, resolution: int) -> int:
    """Height of the last convolution's output: what the global pool sees."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, resolution, resolution))
    for hook in hooks:
        hook.remove()
    return sizes[-1]


def measure(arch: str, stem: str, args: argparse.Namespace, splits, batcher, *,  # noqa: ANN001
            trained: bool = True) -> Row:
    """One row; `trained=False` costs the network only (the teacher's reference row)."""
    torch.manual_seed(args.seed)
    model = build(arch, stem)
    shape = (3, RESOLUTION, RESOLUTION)
    cost = model_cost(model.eval(), shape)
    hw = hardware_metrics(model, Recipe(student=arch), shape, HardwareConfig(targets=TARGETS))
    latency = {t: float(hw[names.latency(t)]) for t in TARGETS}
    if not trained:
        return Row(arch, stem, cost.macs, cost.params, last_feature_map(model, RESOLUTION), latency, 0.0, 0, 0.0)
    config = TrainConfig(batch_size=args.batch, lr=args.lr, seed=args.seed)
    result = train(model, splits.train, batcher, config, max_steps=args.steps, progress=False, desc=f"{arch} {stem}")
    acc = accuracy(model, splits.val, batcher)
    return Row(arch, stem, cost.macs, cost.params, last_feature_map(model, RESOLUTION), latency, acc,
               len(splits.val), result.seconds)


def stems(arch: str) -> Iterator[str]:
    yield Stem.IMAGENET.value
    yield from CANDIDATES[arch]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stems", description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=int, default=2000, help="validation images carved from the training set")
    p.add_argument("--data-root", default="/work/shared/data")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = DataConfig(dataset=Dataset.CIFAR10, resolution=RESOLUTION, split=SplitConfig(val_size=args.val))
    splits, batcher = prepare_data(data, args.data_root, allow_download=False)
    header = ["| student | stem | MMACs | M params | last map | zcu104 ms | rpi4 ms | val acc % [95% CI] | train s |",
              "|---|---|---|---|---|---|---|---|---|"]
    teacher = measure(TEACHER, Stem.IMAGENET.value, args, splits, batcher, trained=False)
    lines = [*header, teacher.markdown().replace(f"| {TEACHER} |", f"| {TEACHER} (teacher, cost only) |")]
    print("\n".join(lines), flush=True)
    choices = ["", "| student | chosen stem | small stems against torchvision's (95% interval of the difference) |",
               "|---|---|---|"]
    for arch in args.archs:
        rows = []
        for stem in stems(arch):
            rows.append(measure(arch, stem, args, splits, batcher))
            lines.append(rows[-1].markdown())
            print(lines[-1], flush=True)
            print(json.dumps(asdict(rows[-1])), file=sys.stderr)
        chosen, why = choose(rows, teacher)
        choices.append(f"| {arch} | {chosen} | {why} |")
    lines += choices
    print("\n".join(choices))
    footer = (f"\n{args.steps} steps of batch {args.batch} (lr {args.lr}, one-cycle, seed {args.seed}) on "
              f"{len(splits.train)} training images; accuracy on {len(splits.val)} validation images carved from "
              f"CIFAR-10's training set; {torch.get_num_threads()} thread(s), {cpu_name()}; "
              f"{time.strftime('%Y-%m-%d')}.")
    print(footer)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n" + footer + "\n")


if __name__ == "__main__":
    main()

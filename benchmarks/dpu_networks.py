"""`python -m benchmarks.dpu_networks --arch resnet18`: train the float networks the DPU-arithmetic benchmark
(`benchmarks.dpu_arithmetic`) quantizes, with the repo's training loop, resumably.

Why its own module: the benchmark needs networks trained well enough that a quantization drop means something
(issue 27 asks for at least 80% CIFAR-10 test), and training them is hours of a shared 2-core CPU. Each network
is trained once into `runs/dpu-arithmetic/<arch>.pt` (a state dict, never a pickled module); a killed run
resumes from `<arch>.ckpt` at the exact step (`evaluators.training.loop.train`). The network is built as the space
builds it at 32 px (`spaces.models.architectures.create_model`: ResNet-18 with torchvision's stem, MobileNetV2 with
its small stem), trained on the training split of `evaluators.data.splits` (validation and calibration carved out).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

import torch

from evaluators.data.batches import Batcher
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.files import atomic_save
from evaluators.data.splits import Splits
from evaluators.metrics import accuracy
from evaluators.training.loop import Optimizer
from evaluators.training.loop import Schedule
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from evaluators.training.precision import Precision
from spaces.models.architectures import create_model

RUN_DIR = Path("runs/dpu-arithmetic")
RESOLUTION = 32


@dataclass(frozen=True)
class Plan:
    """How one network is trained: measured on this CPU so that each fits a 2-hour session."""

    config: TrainConfig
    note: str
    max_steps: int | None = None  # a one-cycle schedule over fewer steps than the epochs hold


# ResNet-18 (37 MMACs at 32 px) trains at ~270 img/s on one core, MobileNetV2 with its stride-8 stem (88 MMACs,
# depthwise convolutions) at ~40 img/s and only in channels_last (bf16 autocast is how the loop gets that layout).
def _one_cycle_sgd(batch_size: int, weight_decay: float, precision: Precision, steps: int, epochs: int) -> Plan:
    """`steps` of one-cycle SGD (`epochs` only sizes the data order; it is part of the checkpoint's tag)."""
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        optimizer=Optimizer.SGD,
        lr=0.1,
        weight_decay=weight_decay,
        schedule=Schedule.ONECYCLE,
        precision=precision,
    )
    return Plan(config, f"SGD nesterov, one-cycle lr 0.1, batch {batch_size}, {steps} steps, {precision.value}", steps)


PLANS: dict[str, Plan] = {
    "resnet18": _one_cycle_sgd(128, 5e-4, Precision.FP32, 200, epochs=3),
    "mobilenet_v2": _one_cycle_sgd(64, 4e-5, Precision.BF16, 200, epochs=1),
}


def cifar10(data_root: str | None = None) -> tuple[Splits, Batcher]:
    """CIFAR-10 at 32 px with the default splits (validation 5,000 and calibration 1,000 carved from training)."""
    return prepare_data(DataConfig(dataset=Dataset.CIFAR10, resolution=RESOLUTION), data_root, allow_download=False)


def weights_path(arch: str, run_dir: Path = RUN_DIR) -> Path:
    return run_dir / f"{arch}.pt"


def load_trained(arch: str, run_dir: Path = RUN_DIR) -> torch.nn.Module:
    """The trained float network (built as the space builds it, weights from its state dict)."""
    path = weights_path(arch, run_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; train it first: python -m benchmarks.dpu_networks --arch {arch}")
    model = create_model(arch, resolution=RESOLUTION)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(PLANS), required=True)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.add_argument("--data-root", default=None)
    parser.add_argument(
        "--more-steps",
        type=int,
        default=0,
        help="continue the trained network for this many steps of a second one-cycle (lr 0.05); the stages stack",
    )
    args = parser.parse_args(argv)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    splits, batcher = cifar10(args.data_root)
    plan, stage = PLANS[args.arch], ""
    torch.manual_seed(plan.config.seed)
    model = create_model(args.arch, resolution=RESOLUTION)
    if args.more_steps:
        model = load_trained(args.arch, args.run_dir)
        stage = f".more{args.more_steps}"
        plan = Plan(
            replace(plan.config, lr=0.05, seed=1),
            f"{plan.note}, then {args.more_steps} more at lr 0.05",
            args.more_steps,
        )
    t0 = time.monotonic()
    result = train(
        model,
        splits.train,
        batcher,
        plan.config,
        checkpoint=args.run_dir / f"{args.arch}{stage}.ckpt",
        desc=args.arch,
        progress=True,
        max_steps=plan.max_steps,
    )
    atomic_save(model.state_dict(), weights_path(args.arch, args.run_dir))
    val = accuracy(model, splits.val, batcher)
    print(
        f"{args.arch}: {plan.note}; {result.steps} steps ({result.resumed_from} resumed) in "
        f"{time.monotonic() - t0:.0f} s on {torch.get_num_threads()} thread(s); validation {val:.2f}% "
        f"({len(splits.val)} images)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m benchmarks.dpu_arithmetic --arch resnet18`: PTQ-8, W4A8 and QAT-8 accuracy of a trained network
under the project's per-channel arithmetic and under the ZCU104 DPU's power-of-two per-tensor arithmetic, each
plain and with cross-layer equalization, AdaRound and bias correction; the Brevitas cross-check; and the
weight-space MSE clip at 4 bits before and after its removal.

Splits: calibration (and every PTQ step) on the calibration split, QAT on the training split, every reported
accuracy on the first `--test-images` of the test split, with Wilson 95% intervals. The float network comes from
`benchmarks.dpu_networks` (a state dict; `--checkpoint` reads a training checkpoint's weights instead). Each row
is appended to `--out` (JSON lines) as soon as it is measured, and a rerun skips the rows already there: a
killed run resumes. The table (markdown) is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from benchmarks.dpu_brevitas import brevitas_twin
from benchmarks.dpu_brevitas import calibrate_twin
from benchmarks.dpu_brevitas import cross_check
from benchmarks.dpu_networks import RESOLUTION
from benchmarks.dpu_networks import RUN_DIR
from benchmarks.dpu_networks import cifar10
from benchmarks.dpu_networks import load_trained
from evaluators.data.batches import Batcher
from evaluators.data.splits import Splits
from evaluators.metrics import accuracy
from evaluators.training.loop import Optimizer
from evaluators.training.loop import Schedule
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from search.analysis.intervals import wilson
from spaces.models.architectures import create_model
from spaces.quant import fake_quant
from spaces.quant.adaround import AdaRoundConfig
from spaces.quant.dpu_arithmetic import FixCalibration
from spaces.quant.dpu_emulation import DpuConfig
from spaces.quant.dpu_emulation import calibrate as calibrate_dpu
from spaces.quant.dpu_emulation import emulate
from spaces.quant.dpu_qat import enable_tqt
from spaces.quant.dpu_qat import export_fix_positions
from spaces.quant.ptq_steps import Arithmetic
from spaces.quant.ptq_steps import PtqSteps
from spaces.quant.ptq_steps import calibration_images
from spaces.quant.ptq_steps import ptq
from spaces.recipe import Calibration

SURVEY_TABLE_I = {"PTQ-8": -1.5, "QAT-8": -0.8, "QAT-4": -3.0}  # the survey's drops against FP32, points


@dataclass(frozen=True, kw_only=True)
class Row:
    arch: str
    scheme: str  # "float", "PTQ W8A8", "PTQ W4A8", "QAT W8A8", "cross-check", "mse clip"
    arithmetic: str
    steps: str
    accuracy: float
    low: float
    high: float
    images: int
    seconds: float
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.arch}|{self.scheme}|{self.arithmetic}|{self.steps}"


@dataclass(frozen=True)
class Context:
    arch: str
    model: nn.Module
    splits: Splits
    batcher: Batcher
    test: object
    args: argparse.Namespace

    def measure(self, scheme: str, arithmetic: str, steps: str, build: Callable[[], nn.Module], note: str = "") -> Row:
        t0 = time.monotonic()
        model = build()
        acc = accuracy(model, self.test, self.batcher)
        low, high = wilson(acc, len(self.test))
        return Row(
            arch=self.arch,
            scheme=scheme,
            arithmetic=arithmetic,
            steps=steps,
            accuracy=round(acc, 2),
            low=round(low, 2),
            high=round(high, 2),
            images=len(self.test),
            seconds=round(time.monotonic() - t0, 1),
            note=note,
        )


def ptq_variants(args: argparse.Namespace) -> list[PtqSteps]:
    base = PtqSteps(
        calib_images=args.calib_images,
        correction_images=args.correction_images,
        adaround_config=AdaRoundConfig(iterations=args.adaround_iters),
    )
    return [
        base,
        replace(base, equalize=True, bias_correction=True),
        replace(base, adaround=True),
        replace(base, equalize=True, adaround=True, bias_correction=True),
    ]


def ptq_rows(ctx: Context) -> list[tuple[str, Callable[[], Row]]]:
    jobs = []
    for arithmetic in Arithmetic:
        for wbits in (8, 4):
            for steps in ptq_variants(ctx.args):

                def build(a=arithmetic, w=wbits, s=steps) -> nn.Module:
                    return ptq(ctx.model, ctx.splits, ctx.batcher, arithmetic=a, weight_bits=w, steps=s)

                scheme = f"PTQ W{wbits}A8"
                key = f"{ctx.arch}|{scheme}|{arithmetic.value}|{steps.label()}"
                jobs.append(
                    (key, lambda s=scheme, a=arithmetic, st=steps, b=build: ctx.measure(s, a.value, st.label(), b))
                )
    return jobs


def _qat_config(ctx: Context) -> TrainConfig:
    return TrainConfig(
        optimizer=Optimizer.ADAM,
        lr=ctx.args.qat_lr,
        weight_decay=0.0,
        schedule=Schedule.COSINE,
        batch_size=64,
        augment=False,
    )


def qat_per_channel(ctx: Context) -> nn.Module:
    qmodel = ptq(
        ctx.model,
        ctx.splits,
        ctx.batcher,
        arithmetic=Arithmetic.PER_CHANNEL,
        steps=PtqSteps(calib_images=ctx.args.calib_images, correction_images=ctx.args.correction_images),
    )
    train(qmodel, ctx.splits.train, ctx.batcher, _qat_config(ctx), max_steps=ctx.args.qat_steps, progress=False)
    return qmodel.eval()


def qat_dpu(ctx: Context) -> nn.Module:
    emulated = emulate(ctx.model, DpuConfig())
    images = calibration_images(ctx.splits, ctx.batcher, ctx.args.calib_images)
    calibrate_dpu(emulated, list(images.split(128)))
    enable_tqt(emulated)
    train(emulated, ctx.splits.train, ctx.batcher, _qat_config(ctx), max_steps=ctx.args.qat_steps, progress=False)
    export_fix_positions(emulated)
    return emulated.eval()


def qat_rows(ctx: Context) -> list[tuple[str, Callable[[], Row]]]:
    steps = f"{ctx.args.qat_steps} steps"
    return [
        (
            f"{ctx.arch}|QAT W8A8|per_channel|{steps}",
            lambda: ctx.measure("QAT W8A8", "per_channel", steps, lambda: qat_per_channel(ctx)),
        ),
        (
            f"{ctx.arch}|QAT W8A8|dpu|{steps}",
            lambda: ctx.measure("QAT W8A8", "dpu", f"{steps}, TQT", lambda: qat_dpu(ctx)),
        ),
    ]


def mse_rows(ctx: Context) -> list[tuple[str, Callable[[], Row]]]:
    """Per-channel W4A8 with `mse` calibration: the weight-space clip (before the fix) against min-max weights."""
    steps = replace(ptq_variants(ctx.args)[0], calibration=Calibration.MSE)

    def with_clip() -> nn.Module:
        saved = fake_quant.WEIGHT_RANGE[Calibration.MSE]
        fake_quant.WEIGHT_RANGE[Calibration.MSE] = fake_quant._amax_mse_clip
        try:
            return ptq(
                ctx.model, ctx.splits, ctx.batcher, arithmetic=Arithmetic.PER_CHANNEL, weight_bits=4, steps=steps
            )
        finally:
            fake_quant.WEIGHT_RANGE[Calibration.MSE] = saved

    def without_clip() -> nn.Module:
        return ptq(ctx.model, ctx.splits, ctx.batcher, arithmetic=Arithmetic.PER_CHANNEL, weight_bits=4, steps=steps)

    return [
        (
            f"{ctx.arch}|mse W4A8|per_channel|weight clip (before)",
            lambda: ctx.measure("mse W4A8", "per_channel", "weight clip (before)", with_clip),
        ),
        (
            f"{ctx.arch}|mse W4A8|per_channel|min-max weights (after)",
            lambda: ctx.measure("mse W4A8", "per_channel", "min-max weights (after)", without_clip),
        ),
    ]


def crosscheck_row(ctx: Context) -> Row:
    t0 = time.monotonic()
    images = calibration_images(ctx.splits, ctx.batcher, ctx.args.calib_images)
    ours = emulate(ctx.model, DpuConfig(method=FixCalibration.MAXMIN, bias_constraint=False))
    calibrate_dpu(ours, [images])
    twin = brevitas_twin(ours)
    calibrate_twin(twin, [images])
    test = torch.cat([x for x, _ in ctx.batcher.eval_batches(ctx.test)])
    result = cross_check(ours, twin, test.split(500))
    return Row(
        arch=ctx.arch,
        scheme="cross-check",
        arithmetic="dpu vs Brevitas",
        steps="maxmin",
        accuracy=round(result.top1_agreement, 2),
        low=0.0,
        high=0.0,
        images=result.images,
        seconds=round(time.monotonic() - t0, 1),
        note=f"fix positions equal on {result.same_position}/{result.tensors} tensors "
        f"({result.position_agreement:.1f}%); top-1 agreement in the accuracy column",
    )


def load_model(arch: str, checkpoint: Path | None) -> nn.Module:
    if checkpoint is None:
        return load_trained(arch)
    model = create_model(arch, resolution=RESOLUTION)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return model.eval()


def done_rows(path: Path) -> dict[str, Row]:
    if not path.exists():
        return {}
    rows = [Row(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return {r.key: r for r in rows}


def format_table(rows: list[Row]) -> str:
    floats = {r.arch: r.accuracy for r in rows if r.scheme == "float"}
    lines = [
        "| network | scheme | arithmetic | steps | test acc % [95% CI] | drop vs float | images | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        drop = "" if r.scheme in ("float", "cross-check") else f"{r.accuracy - floats.get(r.arch, r.accuracy):+.2f}"
        acc = f"{r.accuracy:.2f}" if r.scheme == "cross-check" else f"{r.accuracy:.2f} [{r.low:.1f}, {r.high:.1f}]"
        lines.append(
            f"| {r.arch} | {r.scheme} | {r.arithmetic} | {r.steps} | {acc} | {drop} | {r.images} | "
            f"{r.seconds:g} |" + (f" {r.note}" if r.note else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a training checkpoint (.ckpt) to read")
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--correction-images", type=int, default=256)
    parser.add_argument("--adaround-iters", type=int, default=500)
    parser.add_argument("--qat-steps", type=int, default=300)
    parser.add_argument("--qat-lr", type=float, default=1e-4)
    parser.add_argument(
        "--only", nargs="+", choices=("all", "float", "crosscheck", "ptq", "mse", "adaround", "qat"), default=["all"]
    )
    parser.add_argument("--rows", nargs="*", default=(), help="only the rows whose key contains one of these")
    parser.add_argument("--out", type=Path, default=RUN_DIR / "results.jsonl")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    try:
        model = load_model(args.arch, args.checkpoint)
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    splits, batcher = cifar10(args.data_root)
    test = splits.test.subset(torch.arange(min(args.test_images, len(splits.test))))
    ctx = Context(args.arch, model, splits, batcher, test, args)
    ptq_jobs = ptq_rows(ctx)
    cheap = [job for job in ptq_jobs if "AdaRound" not in job[0]]
    # cheapest first: a run cut short on a loaded machine still has the rows that matter most
    sections = [
        ("float", [(f"{args.arch}|float|float|-", lambda: ctx.measure("float", "float", "-", lambda: model))]),
        ("crosscheck", [(f"{args.arch}|cross-check|dpu vs Brevitas|maxmin", lambda: crosscheck_row(ctx))]),
        ("ptq", cheap),
        ("mse", mse_rows(ctx)),
        ("adaround", [job for job in ptq_jobs if job not in cheap]),
        ("qat", qat_rows(ctx)),
    ]
    jobs = [job for name, js in sections if {"all", name} & set(args.only) or name == "float" for job in js]
    jobs = [job for job in jobs if not args.rows or "|float|" in job[0] or any(r in job[0] for r in args.rows)]
    done = done_rows(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for key, run in jobs:
        if key in done:
            continue
        row = run()
        done[row.key] = row
        with args.out.open("a") as f:
            f.write(json.dumps(asdict(row)) + "\n")
        print(f"{row.key}: {row.accuracy:.2f}% ({row.seconds:g} s) {row.note}", flush=True)
    print(format_table([r for r in done.values() if r.arch == args.arch]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

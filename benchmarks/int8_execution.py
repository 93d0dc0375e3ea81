"""`python -m benchmarks.int8_execution`: does the bundle's int8 file run as int8, faster, and compute the same?

For each network of the ResNet-50 study (the teacher and its students) and of the MNIST study (the MLP), for two
recipes (8-bit everywhere; mixed 4/6/8-bit weights by group, 8-bit activations) and at the study's input size and
at 224 px (the MLP has a fixed 28 px input), it builds the model as the search does (`spaces.compress.apply`: BN folded,
PTQ calibrated on the calibration split), writes both files the bundle ships (`model.onnx`, the float network;
`model_int8.onnx`, the recipe's own quantizers, `search.bundle.qdq`) and measures:

- the share of the recipe's quantized Conv/Gemm layers onnxruntime runs as integer kernels, read from its own
  optimized graph (`hardware_models.graph.ort_executed`, ORT_ENABLE_EXTENDED, one thread);
- host latency of both files, one thread, batch 1, the two sessions timed alternately in one process (medians);
  with ORT_ENABLE_EXTENDED (the portable fusions the Pi runner also gets) and ORT_ENABLE_ALL (this x86 host's
  layout transforms on top); for the mixed recipe also the file with ONNX INT4 weights (`weight_container="int4"`),
  the measurement behind shipping sub-8-bit codes in int8 containers;
- top-1 agreement of the int8 file with the searched (fake-quantized PyTorch) model on validation images.

By default (`--steps 0`) the networks keep their random weights, with BatchNorm statistics measured on 512 training
images (adaptive BN, as pruning recalibrates them): their predictions spread over the classes and many sit near
ties, a stricter test of the arithmetic than a confident trained network. `--steps N` trains them first (CIFAR-10/
MNIST training split, AdamW); the tests and the smoke knee measure agreement on trained networks. Validation is
carved from the training split; the test split is never read. Resumable: each network's weights and each row are
kept under `--work`.

    python -m benchmarks.int8_execution [--nets resnet50 resnet18 mobilenet_v2 squeezenet1_1 mlp]
        [--steps 0] [--images 500] [--images-224 100] [--data-root ../shared/data]
        [--work runs/int8_execution] [--out docs/results/int8-execution/README.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from evaluators.data.batches import Batcher
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from evaluators.data.splits import Splits
from evaluators.training.loop import Optimizer
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from hardware_models.estimators.host import cpu_name
from hardware_models.graph.ort_executed import executed
from search.bundle.agreement import compare
from search.bundle.agreement import torch_predictions
from search.bundle.onnx_files import onnx_predictions
from search.bundle.qdq import export_float
from search.bundle.qdq import export_qdq
from search.bundle.qdq import float_network
from spaces.compress.apply import Budget
from spaces.compress.apply import apply
from spaces.compress.pruning import recalibrate_bn
from spaces.models.architectures import create_model
from spaces.quant.quantization import bit_widths
from spaces.quant.quantization import layer_groups
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe

STUDIES = {
    "resnet50": Dataset.CIFAR10,
    "resnet18": Dataset.CIFAR10,
    "mobilenet_v2": Dataset.CIFAR10,
    "squeezenet1_1": Dataset.CIFAR10,
    "mlp": Dataset.MNIST,
}
STUDY_SIZE = {Dataset.CIFAR10: 32, Dataset.MNIST: 28}
FIXED_SIZE = ("mlp",)
MIXED_BITS = (4, 6, 8)
BN_IMAGES, BN_IMAGES_224 = 512, 64  # adaptive-BN images of the untrained networks, at the study's size / 224
NOTES = "## Notes"  # a section below the generated table, written by hand, kept when the table is regenerated
LEVELS = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


@dataclass(frozen=True)
class Row:
    net: str
    recipe: str
    size: int
    layers: int  # quantized Conv/Gemm layers of the recipe
    integer_layers: int  # of those, run as QLinearConv/QGemm by onnxruntime
    kernels: dict[str, int]
    fp32_ms: dict[str, float]  # by optimization level
    int8_ms: dict[str, float]
    int4_ms: float | None  # INT4-weight file, extended level (mixed recipe only)
    images: int
    agree: int
    int8_accuracy: float
    pytorch_accuracy: float

    @property
    def share(self) -> float:
        return self.integer_layers / self.layers if self.layers else 1.0


def session(path: Path, level: str, *, profile_prefix: str | None = None) -> ort.InferenceSession:
    """One thread at `level`, as the Pi runner opens a file; with `profile_prefix`, onnxruntime's profiler on."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_alternately(paths: list[Path], level: str, shape: tuple[int, ...], budget_s: float) -> list[float]:
    """Median ms per file, the files run in turn (load on a shared machine hits them alike); >= 5 rounds."""
    sessions = [session(p, level) for p in paths]
    feed = {"input": np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)}
    for s in sessions:
        s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    start = time.perf_counter()
    while len(times[0]) < 5 or (time.perf_counter() - start < budget_s and len(times[0]) < 200):
        for s, t in zip(sessions, times, strict=True):
            t0 = time.perf_counter_ns()
            s.run(None, feed)
            t.append((time.perf_counter_ns() - t0) / 1e6)
    return [round(float(np.median(t)), 3) for t in times]


def trained(net: str, splits: Splits, batcher: Batcher, steps: int, work: Path) -> torch.nn.Module:
    info = splits.info
    torch.manual_seed(0)
    model = create_model(net, num_classes=info.num_classes, in_channels=info.channels, resolution=batcher.resolution)
    path = work / f"{net}-{steps}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    if steps:
        config = TrainConfig(optimizer=Optimizer.ADAMW, lr=1e-3, weight_decay=0.0, batch_size=64, augment=False)
        train(model, splits.train, batcher, config, max_steps=steps, progress=False)
    else:
        recalibrate_bn(model, batcher.eval_batches(splits.train.first(BN_IMAGES), 128))
    torch.save(model.state_dict(), path)
    return model.eval()


def recipe_of(name: str, model: torch.nn.Module) -> Recipe:
    if name == "int8":
        return Recipe(quant=Quantization(kind=QuantKind.PTQ), label="8-bit")
    groups = list(layer_groups(model))
    bits = tuple((g, MIXED_BITS[i % len(MIXED_BITS)], 8) for i, g in enumerate(groups))
    return Recipe(quant=Quantization(kind=QuantKind.PTQ, layer_bits=bits), label="mixed 4/6/8")


def measure(
    net: str, recipe_name: str, size: int, model: torch.nn.Module, splits: Splits, images: int, budget_s: float
) -> Row:
    batcher = Batcher(splits.info, size)
    recipe = recipe_of(recipe_name, model)
    qmodel = apply(recipe, model, splits, batcher, Budget(calib_images=64 if size > 64 else 256)).model.eval()
    shape = (splits.info.channels, size, size)
    with tempfile.TemporaryDirectory(prefix="int8_exec_") as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model_int8.onnx"
        export_float(float_network(qmodel), shape, fp32)
        qdq = export_qdq(qmodel, shape, int8)
        quantized = [e.name for e in qdq.layers if e.kind in ("int8", "int8_container")]
        graph = executed(int8)
        ran = graph.layers(set(bit_widths(qmodel)))
        timings = {level: time_alternately([fp32, int8], level, shape, budget_s) for level in LEVELS}
        int4 = None
        if recipe_name == "mixed":
            export_qdq(qmodel, shape, Path(tmp) / "model_int4.onnx", weight_container="int4")
            int4 = time_alternately([Path(tmp) / "model_int4.onnx"], "extended", shape, budget_s / 2)[0]
        data = splits.val.first(images)
        onnx_top1 = onnx_predictions(int8, data, batcher)
    agreement = compare(onnx_top1, torch_predictions(qmodel, data, batcher), data.labels.numpy())
    return Row(
        net=net,
        recipe=recipe.label,
        size=size,
        layers=len(quantized),
        integer_layers=sum(ran.get(n) == "int8" for n in quantized),
        kernels={
            k: v
            for k, v in graph.ops.items()
            if k in ("QLinearConv", "QGemm", "QLinearAdd", "QLinearConcat", "Conv", "Gemm")
        },
        fp32_ms={k: v[0] for k, v in timings.items()},
        int8_ms={k: v[1] for k, v in timings.items()},
        int4_ms=int4,
        images=agreement.images,
        agree=agreement.agree,
        int8_accuracy=round(100 * agreement.correct / agreement.images, 2),
        pytorch_accuracy=round(100 * agreement.reference_correct / agreement.images, 2),
    )


def table(rows: list[Row]) -> list[str]:
    head = [
        "| network | recipe | input | int8 kernels / quantized Conv+Gemm | fp32 ms | int8 ms | speed-up | "
        "fp32 / int8 ms (ALL) | INT4-weight ms | agreement | int8 / searched acc. (val) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = []
    for r in rows:
        ext_f, ext_q = r.fp32_ms["extended"], r.int8_ms["extended"]
        lines.append(
            f"| {r.net} | {r.recipe} | {r.size} | {r.integer_layers} / {r.layers} ({100 * r.share:.0f}%) | "
            f"{_ms(ext_f)} | {_ms(ext_q)} | {ext_f / ext_q:.2f}x | {_ms(r.fp32_ms['all'])} / "
            f"{_ms(r.int8_ms['all'])} | {'' if r.int4_ms is None else _ms(r.int4_ms)} | "
            f"{r.agree}/{r.images} ({100 * r.agree / r.images:.1f}%) | {r.int8_accuracy:.1f} / "
            f"{r.pytorch_accuracy:.1f} |"
        )
    return head + lines


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parents[1],
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def report(rows: list[Row], args: argparse.Namespace) -> str:
    command = "python -m benchmarks.int8_execution " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k not in ("out", "work", "data_root")
    )
    return "\n".join(
        [
            "# int8 execution of the bundle's files (onnxruntime, one thread)",
            "",
            f"Command: `{command}`  ",
            f"Commit: `{_commit()}`, onnxruntime {ort.__version__}  ",
            f"CPU: {cpu_name()} (2 cores, shared with other jobs while measuring: absolute times are pessimistic; "
            "the fp32 and int8 files were timed alternately in one process, so their ratio is the robust number)",
            "",
            "Latency: median ms per image, batch 1, 1 thread, ORT_ENABLE_EXTENDED unless marked ALL. int8 kernels: the "
            "recipe's quantized Conv/Gemm layers that onnxruntime's optimized graph runs as QLinearConv/QGemm. "
            "Agreement: top-1 of model_int8.onnx against the searched fake-quantized PyTorch model on the first "
            f"{args.images} (study size) / {args.images_224} (224 px) validation images (carved from the training "
            "split). "
            + (
                f"The networks were trained {args.steps} steps at the study's size only, so accuracies at 224 px are "
                "low and say nothing about the recipes."
                if args.steps
                else "The networks have random weights with BatchNorm statistics of 512 training images "
                "(accuracy at chance): the agreement tests the arithmetic on predictions full of near-ties."
            ),
            "",
            *table(rows),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: random weights, adaptive BN)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--images-224", type=int, default=100)
    parser.add_argument("--budget-s", type=float, default=6.0, help="timing seconds per optimization level")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--work", default="runs/int8_execution")
    parser.add_argument("--out", default="docs/results/int8-execution/README.md")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for net in args.nets:
        dataset = STUDIES[net]
        split = SplitConfig(val_size=2000, calib_size=512, train_size=20000, seed=0)
        splits, batcher = prepare_data(
            DataConfig(dataset=dataset, resolution=STUDY_SIZE[dataset], split=split),
            Path(args.data_root),
            allow_download=False,
        )
        weights = trained(net, splits, batcher, args.steps, work).state_dict()
        for size in (STUDY_SIZE[dataset],) if net in FIXED_SIZE else (STUDY_SIZE[dataset], 224):
            # The network as the registry builds it for this input size (torchvision's stem at 224: the small stems
            # only change strides, so the weights trained at the study's size load into it).
            model = create_model(
                net, num_classes=splits.info.num_classes, in_channels=splits.info.channels, resolution=size
            )
            model.load_state_dict(weights)
            if not args.steps and size != batcher.resolution:  # untrained: BN statistics of this input size
                recalibrate_bn(model, Batcher(splits.info, size).eval_batches(splits.train.first(BN_IMAGES_224), 32))
            model.eval()
            for recipe in ("int8", "mixed"):
                cached = work / f"{net}-{recipe}-{size}-{args.steps}.json"
                if cached.exists():
                    rows.append(Row(**json.loads(cached.read_text())))
                    continue
                t0 = time.monotonic()
                row = measure(
                    net, recipe, size, model, splits, args.images if size < 64 else args.images_224, args.budget_s
                )
                cached.write_text(json.dumps(asdict(row)))
                rows.append(row)
                print(
                    f"{net} {recipe} {size}px: {row.integer_layers}/{row.layers} int8, fp32 "
                    f"{row.fp32_ms['extended']} ms, int8 {row.int8_ms['extended']} ms, agreement {row.agree}/"
                    f"{row.images} ({time.monotonic() - t0:.0f} s)",
                    flush=True,
                )
    text = report(rows, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = out.read_text().partition(NOTES)[2] if out.exists() and NOTES in out.read_text() else ""
    out.write_text(text + (f"\n{NOTES}{kept}" if kept else ""))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

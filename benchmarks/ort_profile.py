"""`python -m benchmarks.ort_profile --net squeezenet1_1 --size 224`: where onnxruntime spends a run of the
bundle's two files, per operator.

Why: `benchmarks.int8_execution` says whether the int8 file is faster; when it is not, onnxruntime's own
profiler says which kernel eats the saving (SqueezeNet 1.1 at 224 px: uint8 MaxPool, docs/results/int8-execution).
The network is built as that benchmark builds it (`--steps 0`: random weights, adaptive BatchNorm, resumable
from its `--work` folder), quantized by the recipe, exported as the bundle exports it, and each file is profiled
with one thread at ORT_ENABLE_EXTENDED (the Pi runner's level) over `--runs` runs after three warm-up runs.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.int8_execution import STUDIES
from benchmarks.int8_execution import STUDY_SIZE
from benchmarks.int8_execution import recipe_of
from benchmarks.int8_execution import session
from benchmarks.int8_execution import trained
from evaluators.data.batches import Batcher
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from search.bundle.qdq import export_float
from search.bundle.qdq import export_qdq
from search.bundle.qdq import float_network
from spaces.compress.apply import Budget
from spaces.compress.apply import apply


def operator_ms(path: Path, shape: tuple[int, ...], runs: int) -> dict[str, float]:
    """Mean kernel milliseconds per run of each operator type of `path` (one thread, EXTENDED)."""
    profiled = session(path, "extended", profile_prefix=str(path.with_suffix("")))
    feed = {profiled.get_inputs()[0].name: np.random.default_rng(0).random((1, *shape), dtype=np.float32)}
    for _ in range(3 + runs):
        profiled.run(None, feed)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    total: collections.Counter[str] = collections.Counter()
    for event in kernels[-len(kernels) * runs // (3 + runs):]:  # the timed runs, not the warm-up ones
        total[event["args"]["op_name"]] += event["dur"]
    return {op: round(us / runs / 1000, 2) for op, us in total.most_common()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=list(STUDIES), default="squeezenet1_1")
    parser.add_argument("--recipe", choices=("int8", "mixed"), default="int8")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--work", default="runs/int8_execution")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = STUDIES[args.net]
    splits, batcher = prepare_data(DataConfig(dataset=dataset, resolution=STUDY_SIZE[dataset]), args.data_root,
                                   allow_download=False)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = trained(args.net, splits, batcher, 0, work)
    sized = Batcher(splits.info, args.size)
    qmodel = apply(recipe_of(args.recipe, model), model, splits, sized, Budget(calib_images=64)).model.eval()
    shape = (splits.info.channels, args.size, args.size)
    with tempfile.TemporaryDirectory(prefix="ort_profile_") as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model_int8.onnx"
        export_float(float_network(qmodel), shape, fp32)
        export_qdq(qmodel, shape, int8)
        for name, path in (("model.onnx", fp32), ("model_int8.onnx", int8)):
            ops = operator_ms(path, shape, args.runs)
            print(f"{name}: {sum(ops.values()):.2f} ms a run; " + ", ".join(f"{k} {v}" for k, v in ops.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

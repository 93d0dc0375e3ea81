#!/usr/bin/env python3
"""Run the compiled model on the ZCU104's DPU with VART: accuracy on labelled images and/or FPS at batch 1.

On the board (Vitis AI runtime installed), from this folder after compile.sh:

    python3 run_vart.py --images ../calibration/images.npy --labels ../calibration/labels.npy
    python3 run_vart.py --benchmark 1000                # appended to zcu104_benchmark.csv

Timing follows the thesis: batch 1, one thread, and only `execute_async` + `wait` of the DPU runner is
timed (pre- and post-processing excluded); FPS = images / total timed seconds and latency_ms = its inverse.
The CSV has exactly the columns of hardware_models/data/zcu104_dpu.csv, so the rows feed
`python -m hardware_models.calibrate --target zcu104 --measurements zcu104_benchmark.csv`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COLUMNS = ("board", "dpu", "runtime", "model", "spec", "input", "gops", "latency_ms", "fps_single_thread",
           "fps_multi_thread", "vitis_ai_version", "source", "note")
RUNTIME = "VART python, 1 thread, batch 1, execute_async+wait timed per image (pre-processing excluded)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--xmodel", type=Path, default=HERE / "compiled" / "model.xmodel")
    parser.add_argument("--config", type=Path, default=HERE / "bundle.json")
    parser.add_argument("--images", type=Path, help="uint8 NxCxHxW .npy (e.g. ../calibration/images.npy)")
    parser.add_argument("--labels", type=Path, help="int .npy of N labels, to report accuracy")
    parser.add_argument("--benchmark", type=int, default=0, metavar="N", help="time N DPU runs at batch 1")
    parser.add_argument("--csv", type=Path, default=Path("zcu104_benchmark.csv"))
    parser.add_argument("--vitis-ai-version", default="", help="e.g. 3.0 (written to the CSV)")
    parser.add_argument("--note", default="")
    return parser.parse_args(argv)


def load_config(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _resize(nchw: np.ndarray, height: int, width: int) -> np.ndarray:
    if nchw.shape[2:] == (height, width):
        return nchw
    import cv2  # part of the Vitis AI board image

    return np.stack([np.stack([cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR) for plane in image])
                     for image in nchw])


def preprocess(images: np.ndarray, config: dict) -> np.ndarray:
    """uint8 NxCxHxW -> normalized float32 NxHxWxC (the DPU's layout) at the model's input size."""
    mean = np.asarray(config["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(config["std"], np.float32).reshape(1, -1, 1, 1)
    x = (images.astype(np.float32) / 255.0 - mean) / std
    x = _resize(x, *config["input_shape"][1:])
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def to_fixed(x: np.ndarray, fix_point: int) -> np.ndarray:
    """Float -> the DPU's int8 input: round(x * 2^fix_point), saturated."""
    return np.clip(np.round(x * (2.0 ** fix_point)), -128, 127).astype(np.int8)


def dpu_runner(xmodel: Path):  # noqa: ANN201 - vart.Runner
    import vart
    import xir

    graph = xir.Graph.deserialize(str(xmodel))
    subgraphs = [s for s in graph.get_root_subgraph().toposort_child_subgraph()
                 if s.has_attr("device") and s.get_attr("device").upper() == "DPU"]
    if len(subgraphs) != 1:
        print(f"warning: {len(subgraphs)} DPU subgraphs; only the first runs here (CPU ops in between are skipped)",
              file=sys.stderr)
    return vart.Runner.create_runner(subgraphs[0], "run")


class Dpu:
    """One DPU runner with its int8 input/output buffers at batch 1."""

    def __init__(self, xmodel: Path) -> None:
        self.runner = dpu_runner(xmodel)
        self.input = self.runner.get_input_tensors()[0]
        self.output = self.runner.get_output_tensors()[0]
        self.in_fix = self.input.get_attr("fix_point")
        self.out_scale = 2.0 ** -self.output.get_attr("fix_point")
        self.in_buf = [np.empty(tuple(self.input.dims), dtype=np.int8, order="C")]
        self.out_buf = [np.empty(tuple(self.output.dims), dtype=np.int8, order="C")]

    def timed_run(self, nhwc: np.ndarray) -> tuple[np.ndarray, float]:
        """Logits of one image and the seconds spent in execute_async + wait only."""
        self.in_buf[0][0] = to_fixed(nhwc, self.in_fix)
        t0 = time.perf_counter()
        job = self.runner.execute_async(self.in_buf, self.out_buf)
        self.runner.wait(job)
        seconds = time.perf_counter() - t0
        return self.out_buf[0][0].reshape(-1).astype(np.float32) * self.out_scale, seconds


def evaluate(dpu: Dpu, images: np.ndarray, labels: np.ndarray | None, config: dict) -> None:
    x = preprocess(images, config)
    predictions = np.array([int(dpu.timed_run(image)[0].argmax()) for image in x])
    if labels is not None:
        accuracy = 100.0 * float((predictions == labels[: len(predictions)]).mean())
        print(f"DPU accuracy on the {len(predictions)} given images: {accuracy:.2f}%")
    else:
        print("predicted classes:", " ".join(map(str, predictions[:50])), "..." if len(predictions) > 50 else "")


def benchmark(dpu: Dpu, runs: int, config: dict) -> float:
    """Total timed seconds of `runs` DPU calls on one preprocessed random image."""
    c, h, w = config["input_shape"]
    image = np.random.default_rng(0).standard_normal((h, w, c)).astype(np.float32)
    return sum(dpu.timed_run(image)[1] for _ in range(runs))


def benchmark_row(args: argparse.Namespace, config: dict, seconds: float) -> dict[str, str]:
    fps = args.benchmark / seconds
    note = f"{args.benchmark} timed runs; {args.xmodel.name}" + (f"; {args.note}" if args.note else "")
    return {"board": "ZCU104", "dpu": config.get("dpu", "DPUCZDX8G_ISA1_B4096 x2 @300MHz"), "runtime": RUNTIME,
            "model": config.get("model_name", ""), "spec": config.get("spec", ""),
            "input": "x".join(str(s) for s in config["input_shape"]), "gops": f"{config.get('gops', '')}",
            "latency_ms": f"{1000.0 / fps:.4f}", "fps_single_thread": f"{fps:.2f}", "fps_multi_thread": "",
            "vitis_ai_version": args.vitis_ai_version,
            "source": f"measured: zcu104/run_vart.py on {socket.gethostname()}, {datetime.date.today().isoformat()}",
            "note": note}


def append_csv(path: Path, row: dict[str, str]) -> None:
    exists = path.exists() and path.stat().st_size > 0
    if exists:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != COLUMNS:
            raise SystemExit(f"{path} has columns {header}, not {list(COLUMNS)}: choose another --csv")
    with open(path, "a" if exists else "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if not exists:
            writer.writeheader()
        writer.writerow(row)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config)
    dpu = Dpu(args.xmodel)
    if args.images is not None:
        labels = np.load(args.labels) if args.labels is not None else None
        evaluate(dpu, np.load(args.images), labels, config)
    if args.benchmark > 0:
        seconds = benchmark(dpu, args.benchmark, config)
        row = benchmark_row(args, config, seconds)
        append_csv(args.csv, row)
        print(f"batch 1, 1 thread: {row['fps_single_thread']} FPS ({row['latency_ms']} ms per DPU call) -> {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

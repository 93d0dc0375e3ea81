#!/usr/bin/env python3
"""Classify images with a bundle's deployed ONNX model, or time it at batch 1, on a Raspberry Pi (or any CPU).

Standalone: needs numpy and onnxruntime only (Pillow for PNG/JPEG inputs; .npy inputs need nothing else).

    python3 run_onnx.py digit.png                      # class of one image
    python3 run_onnx.py images/                        # every image in a folder
    python3 run_onnx.py --benchmark 200                # latency at batch 1, appended to rpi_benchmark.csv

Preprocessing repeats the one the model was trained and evaluated with: resize (bilinear) to the model's
input size, scale pixels to [0, 1], subtract the mean and divide by the standard deviation stored in
preprocess.json next to this script.

The default thread count is the one the study's latency prediction used (`threads` in preprocess.json), so
the number you measure is the number that was promised. The benchmark CSV has exactly the columns of
hardware_models/data/rpi.csv, and its `spec` names the ONNX file that was timed (`onnx:PATH`, relative to the
CSV), so every row - pruned networks included - feeds
`python -m hardware_models.calibrate --target rpi4 --measurements rpi_benchmark.csv --out my_pi.json` unchanged.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COLUMNS = ("board", "runtime", "threads", "precision", "model", "spec", "input", "latency_ms", "source", "note")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp", ".npy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="image files (.png/.jpg/... or .npy) or folders of them")
    parser.add_argument("--model", type=Path, default=None,
                        help="ONNX file (default: the bundle's deployed file, named in preprocess.json)")
    parser.add_argument("--preprocess", type=Path, default=HERE / "preprocess.json")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads (default: the threads the study's prediction used, "
                             "from preprocess.json)")
    parser.add_argument("--benchmark", type=int, default=0, metavar="N", help="time N runs at batch 1")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs before the benchmark")
    parser.add_argument("--csv", type=Path, default=Path("rpi_benchmark.csv"), help="benchmark CSV (appended)")
    parser.add_argument("--board", default="", help="board description (default: read from /proc)")
    parser.add_argument("--precision", default="", help="fp32 or int8 (default: from the model's file name)")
    parser.add_argument("--spec", default=None, help="network spec for hardware_models (default: preprocess.json)")
    parser.add_argument("--note", default="", help="free text appended to the CSV row's note")
    return parser.parse_args(argv)


def load_config(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def make_session(model: Path, threads: int):  # noqa: ANN201 - onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


# --- images ------------------------------------------------------------------------------------------------

def _to_chw(array: np.ndarray, channels: int) -> np.ndarray:
    """HxW, HxWxC or CxHxW -> CxHxW."""
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[0] != channels and array.shape[-1] == channels:
        array = array.transpose(2, 0, 1)
    if array.ndim != 3 or array.shape[0] != channels:
        raise ValueError(f"image of shape {array.shape} does not have {channels} channel(s)")
    return array


def _resize(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    if chw.shape[1:] == (height, width):
        return chw
    try:
        from PIL import Image
    except ImportError:
        raise SystemExit(f"resizing {chw.shape[1:]} to {(height, width)} needs Pillow (pip install pillow)") from None
    planes = [np.asarray(Image.fromarray(plane.astype(np.float32)).resize((width, height), Image.BILINEAR))
              for plane in chw]
    return np.stack(planes)


def read_image(path: Path, shape: list[int]) -> np.ndarray:
    """Raw pixels (0..255) as float32 CxHxW at the model's input size."""
    channels, height, width = shape
    if path.suffix.lower() == ".npy":
        return _resize(_to_chw(np.load(path), channels).astype(np.float32), height, width)
    try:
        from PIL import Image
    except ImportError:
        raise SystemExit(f"reading {path.name} needs Pillow (pip install pillow); .npy images need nothing") from None
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
        return _to_chw(np.asarray(image, dtype=np.float32), channels)


def normalize(pixels: np.ndarray, config: dict) -> np.ndarray:
    mean = np.asarray(config["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(config["std"], np.float32).reshape(-1, 1, 1)
    return ((pixels / 255.0 - mean) / std).astype(np.float32)


def image_paths(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def classify(session, paths: list[Path], config: dict) -> list[tuple[Path, int, float]]:  # noqa: ANN001
    name = session.get_inputs()[0].name
    results = []
    for path in paths:
        x = normalize(read_image(path, config["input_shape"]), config)[None]
        logits = session.run(None, {name: x})[0][0]
        index = int(logits.argmax())
        results.append((path, index, float(softmax(logits)[index])))
    return results


# --- benchmark ---------------------------------------------------------------------------------------------

def time_runs(session, shape: list[int], runs: int, warmup: int) -> np.ndarray:  # noqa: ANN001
    """Milliseconds per run at batch 1; only session.run is timed (preprocessing excluded)."""
    name = session.get_inputs()[0].name
    feed = {name: np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return np.asarray(times)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return ""


def board_name() -> str:
    """`Raspberry Pi 4 Model B Rev 1.4 (1.8GHz x 4)`: the clock is what hardware_models.calibration.fit reads."""
    model = _read("/proc/device-tree/model") or f"{platform.machine()} {platform.processor()}".strip()
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    clock = f"{int(khz) / 1e6:.1f}GHz x {os.cpu_count()}" if khz.isdigit() else f"{os.cpu_count()} cores"
    return f"{model} ({clock})"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def onnx_spec(model: Path, csv_path: Path) -> str:
    """`onnx:PATH` of the timed file, relative to the CSV's folder (calibrate rebuilds its layers from it)."""
    return "onnx:" + Path(os.path.relpath(model.resolve(), csv_path.resolve().parent)).as_posix()


def benchmark_row(args: argparse.Namespace, config: dict, times: np.ndarray) -> dict[str, str]:
    import onnxruntime as ort

    precision = args.precision or ("int8" if "int8" in args.model.name else "fp32")
    today = datetime.date.today().isoformat()
    note = (f"median of {times.size} runs after {args.warmup} warm-up runs; p10 {np.percentile(times, 10):.3f} ms, "
            f"p90 {np.percentile(times, 90):.3f} ms; {args.model.name} sha256 {_sha256(args.model)[:12]}")
    return {"board": args.board or board_name(), "runtime": f"onnxruntime {ort.__version__} (python, batch 1)",
            "threads": str(args.threads), "precision": precision, "model": config.get("model_name", args.model.stem),
            "spec": onnx_spec(args.model, args.csv) if args.spec is None else args.spec,
            "input": "x".join(str(s) for s in config["input_shape"]), "latency_ms": f"{np.median(times):.4f}",
            "source": f"measured: rpi/run_onnx.py --benchmark {times.size} on {socket.gethostname()}, {today}",
            "note": f"{note}; {args.note}" if args.note else note}


def append_csv(path: Path, row: dict[str, str]) -> None:
    """Append to an existing benchmark file (same columns), or start one with the header."""
    if path.exists() and path.stat().st_size:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != COLUMNS:
            raise SystemExit(f"{path} has columns {header}, not {list(COLUMNS)}: choose another --csv")
        mode = "a"
    else:
        mode = "w"
    with open(path, mode, newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if mode == "w":
            writer.writeheader()
        writer.writerow(row)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.preprocess)
    if args.model is None:
        args.model = HERE.parent / config.get("model", "model_int8.onnx")
        args.precision = args.precision or config.get("precision", "")
    args.threads = args.threads or int(config.get("threads", 1))
    if config.get("runtime", "onnxruntime") != "onnxruntime":
        print(f"note: the study predicted {config['runtime']}, this runner is onnxruntime: the measured latency "
              "is not the one that was predicted", file=sys.stderr)
    session = make_session(args.model, args.threads)
    labels = config.get("labels") or []
    for path, index, probability in classify(session, image_paths(args.inputs), config):
        label = labels[index] if index < len(labels) else str(index)
        print(f"{path}\tclass {index}\t{label}\tp={probability:.4f}")
    if args.benchmark > 0:
        times = time_runs(session, config["input_shape"], args.benchmark, args.warmup)
        append_csv(args.csv, benchmark_row(args, config, times))
        print(f"latency at batch 1, {args.threads} thread(s): median {np.median(times):.3f} ms over {times.size} "
              f"runs -> {args.csv}")
    if not args.inputs and args.benchmark <= 0:
        print("nothing to do: give image files/folders and/or --benchmark N", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

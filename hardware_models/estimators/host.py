"""The one measured target: run the network with onnxruntime on this machine.

The network is exported to ONNX (fp32), optionally quantized to int8 QDQ with onnxruntime's static
quantizer (calibrated on random or caller-provided inputs), and timed at batch 1: a few warm-up runs,
then the median of repeated runs. Timings on a shared machine are noisy; the spread (10th-90th
percentile) is reported next to the median so a reader can judge.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class HostMeasurement:
    latency_ms: float            # median
    p10_ms: float
    p90_ms: float
    runs: int
    warmup: int
    threads: int
    precision: str
    cpu: str
    onnxruntime: str


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def require_real_weights(model: nn.Module) -> None:
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ValueError("the host target runs the network, so it needs real weights; build it on the cpu "
                         "(hardware_models.build_network(spec, device='cpu'))")


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: str | Path, *, dynamic_batch: bool = False,
                fold_constants: bool = True) -> Path:
    """fp32 ONNX (opset 17) of a copy of the network in eval mode (the caller's network is left untouched).

    The TorchScript exporter (dynamo=False) handles every registered architecture without graph breaks.
    Without constant folding every weight stays an initializer named like its parameter, which is what
    `search.bundle.qdq` relies on to put each layer's quantizers back in front of it.
    """
    require_real_weights(model)
    clone = copy.deepcopy(model).float().cpu().eval()
    example = torch.randn((1, *input_shape))
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(clone, (example,), str(path), input_names=["input"], output_names=["output"],
                          opset_version=17, dynamic_axes=axes, do_constant_folding=fold_constants, dynamo=False)
    return Path(path)


class CalibrationReader(Protocol):
    """What onnxruntime's static quantizer reads calibration inputs from (its CalibrationDataReader qualifies)."""

    def get_next(self) -> dict[str, np.ndarray] | None: ...


class ArrayReader:
    """Calibration inputs from arrays already in memory, one batch per array, fed to the input "input"."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._items = iter([{"input": b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def host_calibration(input_shape: Sequence[int], calibration: np.ndarray | None = None, samples: int = 8,
                       seed: int = 0) -> ArrayReader:
    """The host target's calibration: `calibration`'s images one at a time, else `samples` standard normal ones.

    Random inputs are the default because the host target measures latency, not accuracy.
    """
    if calibration is None:
        rng = np.random.default_rng(seed)
        calibration = rng.standard_normal((samples, *input_shape)).astype(np.float32)
    return ArrayReader([np.asarray(x, np.float32)[None] for x in calibration])


def quantize_int8(fp32_path: Path, out_path: Path, reader: CalibrationReader, *, per_channel: bool,
                  reduce_range: bool, pre_process: bool) -> Path:
    """int8 QDQ model of `fp32_path` from onnxruntime's static quantizer, min-max calibrated on `reader`.

    The one int8 quantizer of the project (the host target's timing and the deployment bundle both use it).
    Fixed: QDQ format, int8 weights with symmetric ranges, int8 activations with a zero point (asymmetric),
    min-max calibration. The settings in which the callers differ are parameters without defaults, so every
    caller states them:
    - `per_channel`: one weight scale per output channel instead of per tensor;
    - `reduce_range`: 7-bit weight codes, so x86 U8S8 kernels without VNNI cannot saturate
      (`search.bundle.onnx_files.quantize_int8` says why the bundle needs it);
    - `pre_process`: run onnxruntime's `quant_pre_process` (shape inference, graph optimisation) first, as
      onnxruntime advises, so the quantizer sees the graph that will execute.
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quant_pre_process
    from onnxruntime.quantization import quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice ("consider pre-processing") on every call
    try:
        with tempfile.TemporaryDirectory(prefix="quant_int8_") as tmp:
            source = Path(fp32_path)
            if pre_process:
                source = Path(tmp) / "prepared.onnx"
                quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=False)
            quantize_static(str(source), str(out_path), reader, quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    finally:
        root.setLevel(level)
    return Path(out_path)


def session(path: Path, threads: int = 1) -> object:
    """The project's one onnxruntime CPU session: `threads` intra-op threads, one inter-op thread, full graph
    optimisation (what the boards' runner uses too), warnings silenced."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_session(session: object, input_shape: Sequence[int], runs: int, warmup: int,
                 budget_s: float) -> np.ndarray:
    """Per-run milliseconds; stops early (after at least 5 runs) when the time budget is spent."""
    feed = {"input": np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feed)  # type: ignore[attr-defined]
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        session.run(None, feed)  # type: ignore[attr-defined]
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if len(times) >= 5 and time.perf_counter() - start > budget_s:
            break
    return np.array(times)


def measure(model: nn.Module, input_shape: Sequence[int], *, precision: str = "fp32", threads: int = 1,
            runs: int = 300, warmup: int = 30, budget_s: float = 10.0,
            calibration: np.ndarray | None = None) -> HostMeasurement:
    """Export, (quantize), and time the network on this machine's CPU."""
    import onnxruntime as ort

    if precision not in ("fp32", "int8"):
        raise ValueError(f"host precision must be fp32 or int8, not {precision!r}")
    with tempfile.TemporaryDirectory(prefix="hw_host_") as tmp:
        path = export_onnx(model, input_shape, Path(tmp) / "model.onnx")
        if precision == "int8":
            path = quantize_int8(path, Path(tmp) / "model.int8.onnx", host_calibration(input_shape, calibration),
                                 per_channel=False, reduce_range=False, pre_process=False)
        runner = session(path, threads)
        times = time_session(runner, input_shape, runs, warmup, budget_s)
    return HostMeasurement(float(np.median(times)), float(np.percentile(times, 10)),
                           float(np.percentile(times, 90)), int(times.size), warmup, threads, precision,
                           cpu_name(), ort.__version__)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

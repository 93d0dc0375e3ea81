"""ONNX for the deployment bundle: the fallback int8 re-quantization, sessions and onnxruntime accuracy.

All sessions use one intra-op thread: bundles are made on shared 2-core machines, and the boards'
reference measurements (the thesis's VART runs) are single-threaded too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader

from evaluators.data.batches import Batcher
from evaluators.data.datasets import ImageSet
from hardware_models.estimators import host

INPUT = "input"
EVAL_BATCH = 250
CALIB_BATCH = 32
INT8_SETTINGS = ("onnxruntime quantize_static, QDQ, per-channel symmetric int8 weights with reduce_range "
                 "(7-bit codes), asymmetric int8 activations, min-max calibration, after quant_pre_process")


class BundleError(RuntimeError):
    """A bundle file cannot be used; the message starts with the file's name."""


class ImageReader(CalibrationDataReader):
    """Normalized calibration batches, exactly as the PyTorch model saw its inputs."""

    def __init__(self, data: ImageSet, batcher: Batcher, batch_size: int = CALIB_BATCH) -> None:
        self._batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = batcher.eval_batches(data, batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: batch[0].numpy()}


def quantize_int8(fp32: Path, out: Path, calib: ImageSet, batcher: Batcher) -> Path:
    """int8 QDQ model of `fp32`, calibrated (min-max) on the calibration images only.

    Weights: per-channel, symmetric int8, with `reduce_range` (7-bit weight codes). Measured on a small MNIST CNN
    (2000 test images, fp32 88.0%): per-channel full-range weights scored 81.4% with onnxruntime's optimised
    x86 kernels but 88.2% with the same model's reference (unfused) QDQ arithmetic: on x86 CPUs without VNNI
    the U8S8 kernel (VPMADDUBSW) saturates its 16-bit pair sums, as onnxruntime's documentation warns. With
    7-bit weights a pair sum cannot saturate, and both paths scored 87.9%: the accuracy in metrics.json is
    then what every CPU computes (x86 with or without VNNI, ARM on the Raspberry Pi), so it can be verified
    anywhere, for about 0.3 points. Activations: int8 with a zero point (asymmetric; after ReLU the zero
    point moves to -128, so no code is wasted), onnxruntime's recommended S8S8 QDQ form; uint8 activations
    scored the same. quant_pre_process (shape inference, graph optimisation) runs first, as onnxruntime
    advises, so the quantizer sees the graph that will execute.

    The quantizer itself is `hardware_models.estimators.host.quantize_int8`, shared with the host target; this function
    only supplies the calibration images and the bundle's settings.
    """
    return host.quantize_int8(fp32, out, ImageReader(calib, batcher), per_channel=True, reduce_range=True,
                              pre_process=True)


def session(path: Path, threads: int = 1):  # noqa: ANN201 - onnxruntime.InferenceSession
    """`hardware_models.estimators.host.session`; a file onnxruntime cannot load raises BundleError naming it."""
    try:
        return host.session(path, threads)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises several unrelated types for a bad file
        raise BundleError(f"{path.name}: onnxruntime cannot load it ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:200] if str(error) else ''})") from error


def onnx_predictions(path: Path, data: ImageSet, batcher: Batcher) -> np.ndarray:
    """Top-1 classes of an ONNX classifier on `data`, normalized by `batcher`, in order."""
    runner = session(path)
    found = []
    try:
        for x, _ in batcher.eval_batches(data, EVAL_BATCH):
            found.append(runner.run(None, {INPUT: x.numpy()})[0].argmax(1))
    except Exception as error:  # noqa: BLE001 - a loadable but broken graph fails at run time
        raise BundleError(f"{path.name}: onnxruntime failed to run it ({type(error).__name__})") from error
    return np.concatenate(found) if found else np.zeros(0, np.int64)

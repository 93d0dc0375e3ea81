"""Which arithmetic a training run uses: bf16 autocast with channels_last where the hardware has bf16 units, fp32
elsewhere.

Why a CPU check at all: on a CPU with AVX512-BF16 or AMX-BF16 instructions, bf16 autocast with channels_last
measured 1.2-1.3x faster per ResNet-50 training step than fp32 (benchmarks.cpu_precision); on a CPU without
them PyTorch emulates bf16 and the same step is slower than fp32. So `auto` asks the CPU, and a run that wants
the numbers established in fp32 says `fp32`. bf16 needs no loss scaling (unlike fp16), on either device.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import torch

from spaces.validated import ConfigError

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of the bf16 instruction sets


class Precision(StrEnum):
    AUTO = "auto"  # bf16 on CUDA and on a CPU with bf16 instructions; fp32 on any other CPU
    GPU_BF16 = "gpu_bf16"  # bf16 on CUDA, fp32 on every CPU: students, fine-tuning and QAT (numbers set in fp32)
    BF16 = "bf16"  # bf16 everywhere; a CPU without bf16 instructions is an error, not a slow emulation
    FP32 = "fp32"  # fp32 everywhere, CUDA included


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The instruction-set flags of the first CPU in `cpuinfo` (empty where there is no such file: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_bf16(flags: frozenset[str]) -> bool:
    return bool(BF16_FLAGS & flags)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this machine's CPU executes bf16 natively (AVX512-BF16 or AMX-BF16); read once per process."""
    return has_bf16(cpu_flags())


def _on_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def _required(device: torch.device) -> bool:
    if device.type == "cpu" and not cpu_has_bf16():
        raise ConfigError("train.precision: 'bf16' needs a CUDA device or a CPU with AVX512-BF16 or AMX-BF16 "
                          "instructions, and this CPU has neither; use 'auto' or 'fp32'")
    return True


# Whether a precision trains in bf16 on a device.
USES_BF16: dict[Precision, Callable[[torch.device], bool]] = {
    Precision.AUTO: lambda d: _on_cuda(d) or (d.type == "cpu" and cpu_has_bf16()),
    Precision.GPU_BF16: _on_cuda,
    Precision.BF16: _required,
    Precision.FP32: lambda d: False,
}


def uses_bf16(precision: Precision, device: torch.device | str) -> bool:
    return USES_BF16[Precision(precision)](torch.device(device))


def resolved(precision: Precision, device: torch.device | str) -> Precision:
    """What `precision` means on `device`: BF16 or FP32 (what a trained network's cache key records)."""
    return Precision.BF16 if uses_bf16(precision, device) else Precision.FP32


def memory_format(precision: Precision, device: torch.device | str) -> torch.memory_format:
    """channels_last with bf16: the oneDNN (CPU) and tensor-core (CUDA) bf16 convolutions are NHWC kernels."""
    return torch.channels_last if uses_bf16(precision, device) else torch.contiguous_format


def autocast(precision: Precision, device: torch.device | str) -> contextlib.AbstractContextManager:
    device = torch.device(device)
    if uses_bf16(precision, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

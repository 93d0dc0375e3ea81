"""bf16 + channels_last training where the CPU has bf16 units, fp32 where it has not, and the teacher's cache key
following what was actually trained."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evaluators.data.cache_format import CACHE_FORMAT
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from evaluators.metrics import accuracy
from evaluators.teacher.prepare import TeacherConfig
from evaluators.teacher.prepare import prepare_teacher
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from evaluators.training.precision import Precision
from evaluators.training.precision import autocast
from evaluators.training.precision import cpu_flags
from evaluators.training.precision import cpu_has_bf16
from evaluators.training.precision import has_bf16
from evaluators.training.precision import memory_format
from evaluators.training.precision import resolved
from spaces.models.architectures import create_model
from spaces.validated import ConfigError

needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no avx512_bf16 / amx_bf16")
SPLIT = SplitConfig(val_size=500, calib_size=100, train_size=2000, seed=0)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    without = tmp_path / "cpuinfo"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(without) == {"fpu", "sse2", "avx2", "avx512f"} and not has_bf16(cpu_flags(without))
    assert has_bf16(frozenset({"avx512f", "avx512_bf16"})) and has_bf16(frozenset({"amx_bf16"}))
    assert cpu_flags(tmp_path / "missing") == frozenset()  # not Linux: no flags, so fp32
    if Path("/proc/cpuinfo").is_file():
        assert cpu_has_bf16() == has_bf16(cpu_flags())


def test_each_precision_resolves_per_device() -> None:
    assert resolved(Precision.FP32, "cpu") == Precision.FP32 == resolved(Precision.FP32, "cuda")
    assert resolved(Precision.GPU_BF16, "cpu") == Precision.FP32
    assert resolved(Precision.GPU_BF16, "cuda") == Precision.BF16 == resolved(Precision.AUTO, "cuda")
    assert resolved(Precision.AUTO, "cpu") == (Precision.BF16 if cpu_has_bf16() else Precision.FP32)
    assert memory_format(Precision.FP32, "cpu") == torch.contiguous_format
    with autocast(Precision.FP32, "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    if not cpu_has_bf16():
        with pytest.raises(ConfigError, match="'bf16' needs a CUDA device or a CPU with AVX512-BF16"):
            resolved(Precision.BF16, "cpu")


def test_training_fingerprints_name_the_precision_and_the_cache_format() -> None:
    """Every cached network trained with a TrainConfig (students, checkpoints) is keyed by its precision and by the
    cache format: a new format retrains them instead of trusting what an older version cached."""
    fields = TrainConfig().key_fields()
    assert fields["precision"] == Precision.GPU_BF16 and fields["format"] == CACHE_FORMAT
    assert TrainConfig(precision=Precision.FP32).fingerprint() != TrainConfig().fingerprint()


@needs_bf16
def test_bf16_training_on_the_cpu_learns_and_leaves_an_fp32_network(mnist_root: Path, tmp_path: Path) -> None:
    """A real bf16 run of a small CNN against the same run in fp32: finite loss, fp32 contiguous weights afterwards,
    BN statistics updated, an fp32 evaluation well above chance and within 3 points of fp32's (60 steps: 84.6%
    against 84.8% when written); the cached teacher says which precision trained it, and fp32 is cached apart."""
    splits, batcher = prepare_data(DataConfig(dataset=Dataset.MNIST, resolution=28, split=SPLIT), mnist_root,
                                   allow_download=False)
    config = TrainConfig(epochs=3, batch_size=100, optimizer="adam", lr=1e-2, weight_decay=0.0, augment=False,
                         precision=Precision.BF16)
    scores = {}
    for precision in (Precision.FP32, Precision.BF16):
        torch.manual_seed(0)
        model = create_model("small_cnn", in_channels=1)
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        result = train(model, splits.train, batcher, replace(config, precision=precision), progress=False)
        assert result.steps == 60 and torch.isfinite(torch.tensor(result.final_loss))
        assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
        assert bn.running_mean.dtype == torch.float32 and bn.running_mean.abs().sum() > 0
        scores[precision] = accuracy(model, splits.val, batcher)
    assert scores[Precision.BF16] > 70.0 and abs(scores[Precision.BF16] - scores[Precision.FP32]) < 3.0

    teacher_cfg = TeacherConfig(arch="small_cnn", train=replace(config, precision=Precision.AUTO))
    first = prepare_teacher(teacher_cfg, splits, batcher, SPLIT, cache_dir=tmp_path, progress=False)
    assert first.metrics["train_precision"] == "bf16" and not first.from_cache
    # the arithmetic is how a teacher was trained, not which teacher it is: an fp32 config finds the bf16 one
    fp32 = prepare_teacher(replace(teacher_cfg, train=replace(config, precision=Precision.FP32)), splits, batcher,
                           SPLIT, cache_dir=tmp_path, progress=False)
    assert fp32.from_cache and fp32.folder == first.folder
    assert fp32.metrics["val_accuracy"] == first.metrics["val_accuracy"]

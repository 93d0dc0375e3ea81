"""The user's path on generated images, for the fast tier (no dataset needed): a model of their own, an
ImageFolder of theirs, `search.compress`, a front."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from evaluators.candidate import FidelityConfig
from evaluators.candidate import LevelConfig
from spaces.compress.apply import Budget
from tests.user_data import TinyNet
from tests.user_data import train_quickly
from tests.user_data import write_generated_imagefolder

TINY = Budget(finetune_steps=2, calib_images=32, bn_images=32, score_images=16, max_candidates=1)


def test_compress_on_generated_images_gives_a_front(tmp_path: Path) -> None:
    import search

    root = write_generated_imagefolder(tmp_path / "images", per_class=30, size=16, splits=("train", "test"))
    model = train_quickly(TinyNet(width=8), root, 16, steps=30)
    fidelity = FidelityConfig(f1=LevelConfig(val_images=0, budget=TINY), f2=LevelConfig(val_images=0, budget=TINY),
                              f3=LevelConfig(val_images=0, budget=TINY))
    result = search.compress(teacher=model, data=root, resolution=16, targets=["rpi4"], trials=3, fidelity=fidelity,
                             out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False)
    assert isinstance(result.front, pd.DataFrame) and len(result.front) >= 1
    assert result.knee is not None
    assert result.baselines["f3_test_accuracy"].notna().all()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Hardware model notes" in report and "- rpi4: onnxruntime int8 speed: ASSUMED x1.00" in report


def test_registry_students_fit_any_class_count_channels_and_resolution(tmp_path: Path) -> None:
    """A 5-class, greyscale, 24-pixel problem: a registry student distilled from the user's teacher, pruned and
    quantized, costed on every board."""
    from evaluators.candidate import HardwareConfig
    from evaluators.candidate import cost_metrics
    from evaluators.data.config import DataConfig
    from evaluators.data.config import prepare_data
    from spaces.compress.apply import apply
    from spaces.recipe import Distillation
    from spaces.recipe import DistillKind
    from spaces.recipe import PruneKind
    from spaces.recipe import Pruning
    from spaces.recipe import Quantization
    from spaces.recipe import QuantKind
    from spaces.recipe import Recipe

    root = write_generated_imagefolder(tmp_path / "g", classes=5, per_class=16, size=24, grey=True)
    splits, batcher = prepare_data(DataConfig(dataset="imagefolder", root=str(root), resolution=24),
                                   cache_dir=tmp_path)
    assert splits.info.channels == 1 and splits.info.num_classes == 5
    teacher = train_quickly(TinyNet(num_classes=5, in_channels=1, width=8), root, 24, steps=5,
                            mean=splits.info.mean, std=splits.info.std)
    budget = Budget(student_steps=2, finetune_steps=1, calib_images=16, bn_images=16, score_images=8,
                    max_candidates=1)
    for student in ("resnet18", "mobilenet_v2"):  # residual and depthwise: the other students are covered elsewhere
        recipe = Recipe(student=student, distill=Distillation(kind=DistillKind.LOGIT),
                        prune=Pruning(kind=PruneKind.STRUCTURED, ratio=0.3, candidates=1),
                        quant=Quantization(kind=QuantKind.PTQ, weight_bits=8))
        built = apply(recipe, teacher, splits, batcher, budget)
        assert built.model(torch.zeros(2, 1, 24, 24)).shape == (2, 5), student
        costs = cost_metrics(built, HardwareConfig(targets=("zcu104", "rpi4", "rpi5")))
        assert all(costs[f"latency_{t}"] > 0 for t in ("zcu104", "rpi4", "rpi5")), student


@pytest.mark.slow
@pytest.mark.ray
def test_a_teacher_and_data_in_memory_run_on_ray_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver ships the in-memory teacher and the loaded images to the Ray workers
    (`search.pipeline.shipment`), so the Python API's network and data need no file for Ray; the F3 checkpoints come
    back into the run folder."""
    import json
    import os

    import search

    monkeypatch.setenv("HOME", str(tmp_path))  # Ray's session token goes under ~/.ray
    monkeypatch.setenv("RAY_TMPDIR", f"/tmp/ray-api-{os.getpid()}")  # short: socket paths stay under 107 characters
    root = write_generated_imagefolder(tmp_path / "images", per_class=30, size=16, splits=("train", "test"))
    model = train_quickly(TinyNet(width=8), root, 16, steps=30)
    fidelity = FidelityConfig(f1=LevelConfig(val_images=0, budget=TINY), f2=LevelConfig(val_images=0, budget=TINY),
                              f3=LevelConfig(val_images=0, budget=TINY))
    result = search.compress(teacher=model, data=root, resolution=16, targets=["rpi4"], trials=3, fidelity=fidelity,
                             out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False,
                             backend="ray", workers=2)
    assert len(result.front) >= 1 and result.baselines["f3_test_accuracy"].notna().all()
    cluster = json.loads((tmp_path / "run" / "cluster.json").read_text())
    assert cluster["tasks"] >= 3 + len(result.baselines)  # every trial and every final-stage job ran on a worker
    assert len(list((tmp_path / "run" / "checkpoints").glob("*.pt"))) >= len(result.baselines)

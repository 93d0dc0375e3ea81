"""The user's path on generated images, for the fast tier (no dataset needed): a model of their own, an
ImageFolder of theirs, `search.compress`, a front."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from evaluators.candidate import FidelityConfig
from evaluators.candidate import LevelConfig
from spaces.apply import Budget
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
    assert (tmp_path / "run" / "report.md").is_file()

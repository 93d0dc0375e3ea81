"""The default objectives of a study are distinct quantities: over a sample of recipes from a real search space,
no two of them are proportional (energy, modelled as fixed power x latency per target, is why energy is reported
but not a default objective)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import torch

from evaluators.candidate import HardwareConfig
from evaluators.candidate import cost_metrics
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.data.datasets import Dataset
from evaluators.data.splits import SplitConfig
from search.analysis.objectives import default_objectives
from search.engine.loop import SearchConfig
from search.engine.loop import open_study
from spaces.compress.apply import Budget
from spaces.compress.apply import apply
from spaces.models.architectures import create_model
from spaces.space import SearchSpace
from spaces.space import SpaceConfig

TARGETS = ("zcu104", "rpi4")


def coefficient_of_variation(x: np.ndarray) -> float:
    return float(np.std(x) / abs(np.mean(x)))


def test_no_two_default_objectives_are_proportional(cifar_root: Path) -> None:
    split = SplitConfig(val_size=100, calib_size=64, train_size=256, seed=0)
    splits, batcher = prepare_data(DataConfig(dataset=Dataset.CIFAR10, resolution=32, split=split), cifar_root,
                                   allow_download=False)
    torch.manual_seed(0)
    teacher = create_model("resnet18").eval()
    space = SearchSpace(SpaceConfig(prune_kinds=("none", "structured", "layer"), schedules=("oneshot",),
                                    importances=("l1",), candidates=1, quant_kinds=("none", "ptq"),
                                    calibrations=("minmax",)), "resnet18")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    budget = Budget(calib_images=32, bn_images=32, score_images=16, max_candidates=1)
    hardware = HardwareConfig(targets=TARGETS)
    rows = []
    for _ in range(8):
        recipe = space.suggest(study.ask())
        rows.append(cost_metrics(apply(recipe, teacher, splits, batcher, budget), hardware))
    objectives = [o for o in default_objectives(TARGETS) if o != "accuracy"]  # accuracy needs training to vary
    assert not any(o.startswith("energy_") for o in default_objectives(TARGETS))
    values = {o: np.array([r[o] for r in rows], float) for o in objectives}
    for i, a in enumerate(objectives):
        assert coefficient_of_variation(values[a]) > 0.01, f"{a} does not vary over the sample"
        for b in objectives[i + 1:]:
            assert coefficient_of_variation(values[a] / values[b]) > 1e-3, f"{a} is proportional to {b}"
    for target in TARGETS:  # the reason energy is left out: one fixed power per target
        ratio = np.array([r[f"energy_{target}"] for r in rows]) / values[f"latency_{target}"]
        assert coefficient_of_variation(ratio) < 1e-6


def test_the_study_names_its_objectives_for_the_dashboard(tmp_path: Path) -> None:
    """optuna-dashboard shows a study's objectives by the names `set_metric_names` stored, else as numbers;
    a resumed study keeps them."""
    objectives = ("accuracy", "latency_zcu104", "latency_rpi4", "size_mb")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    open_study("names", storage, SearchConfig(), objectives)
    reopened = open_study("names", storage, SearchConfig(), objectives)
    assert reopened.metric_names == list(objectives)
    assert optuna.load_study(study_name="names", storage=storage).metric_names == list(objectives)

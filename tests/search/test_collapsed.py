"""A run whose accuracy ends at chance level is a failure with the reason "collapsed", not a point."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from evaluators.candidate import Evaluator
from evaluators.candidate import Fidelity
from evaluators.candidate import FidelityConfig
from evaluators.candidate import HardwareConfig
from evaluators.candidate import LevelConfig
from evaluators.candidate import ResultStore
from evaluators.data.config import DataConfig
from evaluators.data.config import prepare_data
from evaluators.metrics import collapse_reason
from search.engine import loop as engine
from search.engine.final import Candidate
from search.engine.final import finish
from search.report.verdicts import Outcome
from search.report.verdicts import judge
from spaces.compress.apply import Budget
from spaces.recipe import Recipe
from tests.user_data import TinyNet
from tests.user_data import write_generated_imagefolder


def test_chance_level_is_within_two_points_of_one_over_classes() -> None:
    assert collapse_reason(11.9, 10) and collapse_reason(8.5, 10) and collapse_reason(33.3, 3)
    assert collapse_reason(12.5, 10) is None and collapse_reason(97.0, 10) is None


def test_a_run_that_ends_at_chance_is_a_failure_not_a_point(tmp_path: Path) -> None:
    """A network that predicts one class scores exactly chance on a balanced split: told to optuna as FAIL with the
    reason "collapsed" (and counted towards the budget); in the final stage, a baseline so built is a failure too."""
    root = write_generated_imagefolder(tmp_path / "g", classes=4, per_class=12, size=16,
                                       splits=("train", "val", "test"))
    splits, batcher = prepare_data(DataConfig(dataset="imagefolder", root=str(root), resolution=16),
                                   cache_dir=tmp_path)
    teacher = TinyNet(num_classes=4, width=4)
    with torch.no_grad():  # a constant output: the network has collapsed to one class
        teacher.fc.weight.zero_()
        teacher.fc.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    level = LevelConfig(val_images=0, budget=Budget(calib_images=8, bn_images=8, score_images=8, max_candidates=1))
    evaluator = Evaluator(teacher=teacher, splits=splits, batcher=batcher,
                          fidelity=FidelityConfig(f1=level, f2=level, f3=level),
                          hardware=HardwareConfig(targets=("rpi4",)), store=ResultStore(tmp_path / "results"))
    recipe = Recipe(label="the teacher as it is")
    outcome = engine.evaluate_trial(evaluator, recipe, ())
    assert outcome.state == optuna.trial.TrialState.FAIL and outcome.reason.startswith("collapsed")
    assert outcome.metrics["f2"]["accuracy"] == pytest.approx(25.0)

    objectives = ("accuracy", "latency_rpi4", "size_mb")
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    engine.tell(study, study.ask(), recipe, outcome, objectives, ())
    told = study.trials[0]
    assert told.state == optuna.trial.TrialState.FAIL and told.user_attrs["fail_reason"].startswith("collapsed")
    assert engine.finished(told)  # a collapsed trial uses up budget: the loop cannot spin on it

    finished = finish(Candidate(recipe, "baseline", {}), evaluator, (Fidelity.F1, Fidelity.F3))
    assert finished.failure.startswith("collapsed")
    assert judge(finished, [], objectives).outcome == Outcome.FAILED

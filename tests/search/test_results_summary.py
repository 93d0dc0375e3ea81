"""The report's judgements measured in the study's fixed reference box: baseline verdicts that count only
differences beyond their interval, a normalised hypervolume that does not depend on the run, and a knee that does
not trade 3 points of accuracy for 0.5% of latency."""

from __future__ import annotations

from datetime import datetime
from datetime import timedelta

import numpy as np
import optuna
import pytest

from search.analysis.intervals import Accuracy
from search.analysis.reference import ReferenceBox
from search.analysis.reference import knee
from search.engine.final import Candidate
from search.engine.history import hypervolume_history
from search.report.tables import summarise
from search.report.verdicts import Outcome
from search.report.verdicts import judge
from spaces.recipe import Recipe

OBJECTIVES = ("accuracy", "latency_zcu104", "latency_rpi4", "size_mb")
TEACHER_COSTS = {"latency_zcu104": 1.0, "latency_rpi4": 20.0, "size_mb": 1.0}


def box(teacher_accuracy: float = 98.0) -> ReferenceBox:
    return ReferenceBox.of_study(OBJECTIVES, 10, teacher_accuracy, TEACHER_COSTS)


def candidate(name: str, acc: float, costs: tuple[float, float, float], images: int = 10_000) -> Candidate:
    """A scored candidate at every level, with the same numbers at F2 (validation) and F3 (test)."""
    metrics = {"accuracy": acc, "accuracy_images": images, "test_accuracy": acc, "test_accuracy_images": images,
               **dict(zip(OBJECTIVES[1:], costs, strict=True))}
    return Candidate(Recipe(label=name), name, {"f1": metrics, "f2": metrics, "f3": metrics})


def test_baseline_verdicts_count_only_differences_beyond_the_interval() -> None:
    baseline = candidate("thesis recipe", 90.0, (1.0, 10.0, 0.5))
    assert judge(baseline, [candidate("a", 90.26, (1.0, 10.0, 0.5))], OBJECTIVES).outcome == Outcome.TIES
    assert judge(baseline, [candidate("b", 90.26, (0.5, 10.0, 0.5))], OBJECTIVES).outcome == Outcome.CHEAPER_AT_TIE
    verdict = judge(baseline, [candidate("a", 90.26, (1.0, 10.0, 0.5)), candidate("c", 92.0, (0.99, 10.0, 0.5))],
                    OBJECTIVES)
    assert (verdict.outcome, verdict.by) == (Outcome.DOMINATED, "c") and verdict.difference[0] > 0
    assert judge(baseline, [candidate("d", 95.0, (1.5, 10.0, 0.5))], OBJECTIVES).outcome == Outcome.NOT_DOMINATED


def test_reference_box_is_fixed_by_the_study_not_by_the_run() -> None:
    front = [candidate("f1", 96.0, (0.5, 10.0, 0.2)), candidate("f2", 90.0, (0.2, 4.0, 0.1))]
    few = summarise(front, [], box(), box(97.0), [])
    # Other candidates (here baselines far worse and costlier than the teacher) used to move the reference point.
    many = summarise(front, [candidate("huge", 50.0, (9.0, 300.0, 8.0)), candidate("tiny", 12.0, (0.01, 0.1, 0.01))],
                     box(), box(97.0), [])
    assert few.box == many.box == box() and few.as_json()["box"] == many.as_json()["box"]
    assert few.hypervolume_f2 == many.hypervolume_f2 and few.hypervolume_f3 == many.hypervolume_f3
    assert 0.0 < few.hypervolume_f2 < 1.0
    assert few.cost_fractions == pytest.approx({"latency_zcu104": 0.2, "latency_rpi4": 0.2, "size_mb": 0.1})
    # A model as accurate as the teacher at half its cost on every axis holds exactly 1/8 of the box; being more
    # accurate than the teacher or costlier than it cannot leave [0, 1].
    assert box().hypervolume(np.array([[98.0, 0.5, 10.0, 0.5]])) == pytest.approx(0.125)
    assert box().hypervolume(np.array([[99.9, 0.5, 10.0, 0.5]])) == pytest.approx(0.125)
    assert box().hypervolume(np.array([[99.9, 2.0, 10.0, 0.5]])) == 0.0


def test_hypervolume_history_is_in_the_box_for_any_set_of_trials() -> None:
    def study(seed: int, n: int) -> optuna.Study:
        rng = np.random.default_rng(seed)
        s = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
        t0 = datetime(2026, 1, 1)
        for i in range(n):
            values = [float(rng.uniform(5, 100)), *(float(v) for v in rng.uniform(0.01, 2.0, 3) * [1, 20, 1])]
            s.add_trial(optuna.trial.FrozenTrial(
                number=i, state=optuna.trial.TrialState.COMPLETE, value=None, values=values, params={},
                distributions={}, user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=i,
                datetime_start=t0 + timedelta(minutes=i), datetime_complete=t0 + timedelta(minutes=i + 1)))
        return s

    for seed, n in ((0, 5), (1, 30)):
        history = hypervolume_history(study(seed, n), box())
        assert len(history) == n and [h.minutes for h in history] == list(range(1, n + 1))
        values = [h.hypervolume for h in history]
        assert all(0.0 <= v <= 1.0 for v in values) and values == sorted(values)


def test_knee_does_not_trade_accuracy_for_noise_in_latency() -> None:
    """The mlp_mnist cpu study's case: the span-scaled knee picked 94.4% while 97.2-97.8% cost 0.5% more."""
    accuracies = [84.0, 94.4, 97.2, 97.8]
    costs = np.array([[0.560, 9.0, 0.30], [0.5650, 9.50, 0.10], [0.5678, 9.55, 0.1005], [0.5680, 9.56, 0.1006]])
    chosen = knee([Accuracy(a, 2000) for a in accuracies], costs, box())
    assert accuracies[chosen] >= 97.2

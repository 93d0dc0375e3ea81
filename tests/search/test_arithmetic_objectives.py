"""Two accuracies on one front: where the study's targets compute differently, `accuracy` (per-channel, the Pi's)
and `accuracy_zcu104` (the DPU's power-of-two int8) are both objectives; constraints, the knee and the baseline
verdicts read each under its own name (docs/design/two-accuracies.md)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from search.analysis.intervals import Accuracy
from search.analysis.objectives import cost_gate
from search.analysis.objectives import default_objectives
from search.analysis.objectives import direction
from search.analysis.objectives import known_metrics
from search.analysis.objectives import parse_constraint
from search.analysis.objectives import parse_pick
from search.analysis.reference import ReferenceBox
from search.analysis.reference import knee
from search.analysis.selection import SelectionError
from search.analysis.selection import by_rule
from search.cascade.study import is_target_accuracy
from search.cascade.study import non_dominated
from search.config import load_study
from search.engine.final import Candidate
from search.engine.final import front
from search.engine.final import front_knee
from search.pipeline.context import make_plan
from search.report.verdicts import Outcome
from search.report.verdicts import judge
from spaces.recipe import Recipe

TARGETS = ("zcu104", "rpi4")
ARITHMETICS = {"zcu104": "dpu", "rpi4": "per_channel"}
OBJECTIVES = ("accuracy", "accuracy_zcu104", "latency_zcu104", "latency_rpi4", "size_mb")
COSTS = {"latency_zcu104": 1.0, "latency_rpi4": 20.0, "size_mb": 1.0}


def candidate(name: str, pc: float, dpu: float, costs: tuple[float, float, float], images: int = 10_000) -> Candidate:
    """The same numbers at every level, validation and test alike."""
    metrics = {
        "accuracy": pc,
        "accuracy_images": images,
        "test_accuracy": pc,
        "test_accuracy_images": images,
        "accuracy_zcu104": dpu,
        "accuracy_zcu104_images": images,
        "test_accuracy_zcu104": dpu,
        "test_accuracy_zcu104_images": images,
        **dict(zip(OBJECTIVES[2:], costs, strict=True)),
    }
    return Candidate(Recipe(label=name), name, {"f1": metrics, "f2": metrics, "f3": metrics})


def test_the_objectives_hold_one_accuracy_per_arithmetic() -> None:
    assert default_objectives(TARGETS, ARITHMETICS) == OBJECTIVES
    assert default_objectives(TARGETS) == ("accuracy", "latency_zcu104", "latency_rpi4", "size_mb")
    assert default_objectives(("zcu104", "kv260", "rpi4"), {**ARITHMETICS, "kv260": "dpu"})[:2] == OBJECTIVES[:2]
    assert direction("accuracy_zcu104") == "max" and direction("latency_zcu104") == "min"
    config = load_study("mlp_mnist", "smoke")  # zcu104 and rpi4: two arithmetics
    assert make_plan(config).objectives == OBJECTIVES
    off = replace(config, hardware=replace(config.hardware, accuracy_per_arithmetic=False))
    assert "accuracy_zcu104" not in make_plan(off).objectives


def test_constraints_and_picks_may_name_a_target_s_accuracy() -> None:
    known = known_metrics(TARGETS, ARITHMETICS)
    assert {"accuracy_zcu104", "accuracy_rpi4", "test_accuracy_zcu104"} <= set(known)
    c = parse_constraint("accuracy_zcu104 >= 90", known)
    assert c.needs_accuracy and c.column == "accuracy_zcu104"
    assert c.satisfied({"accuracy_zcu104": 91.0}) and not c.satisfied({"accuracy_zcu104": 89.0})
    assert cost_gate([c])({"latency_zcu104": 1.0}) is None  # no accuracy at F0: the gate does not read it
    with pytest.raises(ValueError, match="unknown metric 'accuracy_zcu104'"):
        parse_constraint("accuracy_zcu104 >= 90", known_metrics(("rpi4",)))
    with pytest.raises(ValueError, match="@ p90 applies to predicted"):
        parse_constraint("accuracy_zcu104 >= 90 @ p90", known)
    assert parse_pick("max accuracy_zcu104 with latency_zcu104 <= 5", known).metric == "accuracy_zcu104"


def test_a_recipe_best_on_one_arithmetic_stays_on_the_front() -> None:
    """Same costs: one recipe is best per-channel, the other under the DPU's arithmetic; neither dominates."""
    pc_best = candidate("4-bit per-channel", 95.0, 80.0, (1.0, 10.0, 0.5))
    dpu_best = candidate("8-bit", 93.0, 92.5, (1.0, 10.0, 0.5))
    worse = candidate("worse on both", 92.0, 80.0, (1.0, 10.0, 0.5))
    kept = front([pc_best, dpu_best, worse], OBJECTIVES)
    assert {c.source for c in kept} == {"4-bit per-channel", "8-bit"}
    assert [c.source for c in front([pc_best, dpu_best, worse], OBJECTIVES[:1] + OBJECTIVES[2:])] == [
        "4-bit per-channel"
    ]  # one accuracy would drop the recipe the DPU runs best


def test_the_knee_weighs_both_accuracies() -> None:
    """A 2-point per-channel loss is worth a 12-point gain under the DPU: the knee takes the 8-bit recipe."""
    box = ReferenceBox.of_study(OBJECTIVES, 10, 96.0, COSTS)
    members = [candidate("4-bit", 95.0, 80.0, (0.5, 10.0, 0.2)), candidate("8-bit", 93.0, 92.0, (0.5, 10.0, 0.2))]
    assert members[front_knee(members, box)].source == "8-bit"
    accuracies = [(Accuracy(95.0, 10_000), Accuracy(80.0, 10_000)), (Accuracy(93.0, 10_000), Accuracy(92.0, 10_000))]
    assert knee(accuracies, np.array([[0.5, 10.0, 0.2]] * 2), box) == 1
    assert set(box.as_dict()) == set(OBJECTIVES)


def test_a_baseline_is_dominated_through_the_dpu_accuracy() -> None:
    """Tied per-channel accuracy and costs, better beyond the interval on the DPU: dominated. Worse on the DPU
    beyond it: not dominated, whatever the per-channel accuracy."""
    baseline = candidate("PTQ 8-bit", 90.0, 85.0, (1.0, 10.0, 0.5))
    better = candidate("searched", 90.1, 89.0, (1.0, 10.0, 0.5))
    assert judge(baseline, [better], OBJECTIVES).outcome == Outcome.DOMINATED
    worse_on_dpu = candidate("searched", 93.0, 80.0, (1.0, 10.0, 0.5))
    assert judge(baseline, [worse_on_dpu], OBJECTIVES).outcome == Outcome.NOT_DOMINATED


def test_export_picks_by_the_dpu_accuracy_where_the_front_has_it() -> None:
    front = pd.DataFrame(
        {
            "f3_accuracy": [95.0, 93.0],
            "f3_accuracy_zcu104": [80.0, 92.0],
            "f3_latency_zcu104": [1.0, 1.0],
            "source": ["a", "b"],
            "knee": [False, True],
            "recipe_json": [Recipe(label=n).to_json() for n in "ab"],
        }
    )
    assert by_rule(front, "max accuracy_zcu104 with latency_zcu104 <= 5", TARGETS).metrics["source"] == "b"
    assert by_rule(front, "max accuracy with latency_zcu104 <= 5", TARGETS).metrics["source"] == "a"
    with pytest.raises(SelectionError, match="unknown metric 'accuracy_zcu104'"):
        by_rule(front.drop(columns="f3_accuracy_zcu104"), "max accuracy_zcu104", TARGETS)


def test_a_cascade_keeps_no_accuracy_it_did_not_measure() -> None:
    """A cascade's metrics start from its stage-1 member's: the member's DPU accuracy is not the cascade's (nothing
    scores a cascade under the DPU's arithmetic), so it is dropped and the cascade cannot join a front that has it
    as an objective."""
    assert is_target_accuracy("accuracy_zcu104") and is_target_accuracy("test_accuracy_zcu104_images")
    assert not any(
        map(
            is_target_accuracy,
            ("accuracy", "test_accuracy", "accuracy_images", "accuracy_drop", "test_accuracy_images", "latency_zcu104"),
        )
    )
    member = candidate("member", 95.0, 90.0, (1.0, 10.0, 0.5))
    cascade = Candidate(
        member.recipe, "cascade", {"f3": {k: v for k, v in member.metrics["f3"].items() if not is_target_accuracy(k)}}
    )
    assert non_dominated([cascade], [member], OBJECTIVES) == [False]

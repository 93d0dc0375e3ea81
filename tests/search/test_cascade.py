"""Cascades without training: the policy rule, validation, the fit's choices, the modelled cost, the A53 profile."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hardware_models.estimators.a53 import PROFILE_PATH
from hardware_models.estimators.a53 import a53_profile
from hardware_models.profiles import dumps
from search.bundle.scripts import run_cascade as runner
from search.cascade.cost import PLACEMENTS
from search.cascade.cost import StageCost
from search.cascade.cost import check_budget
from search.cascade.cost import expected_cost
from search.cascade.fit import Goal
from search.cascade.fit import fit
from search.cascade.model import POLICIES
from search.cascade.model import Cascade
from search.cascade.model import CascadeError
from search.cascade.model import Policy
from search.cascade.model import Stage
from search.cascade.model import escalates
from search.cascade.model import run
from spaces.validated import ConfigError

SHAPE = (1, 28, 28)


def stages(*shapes: tuple[int, ...], classes: tuple[int, ...] = (10, 10)) -> tuple[Stage, ...]:
    shapes = shapes or (SHAPE, SHAPE)
    return tuple(Stage(f"s{i}", s, c, "int8" if i == 0 else "fp32")
                 for i, (s, c) in enumerate(zip(shapes, classes, strict=True)))


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Cascade(stages(SHAPE, (1, 32, 32)), Policy(thresholds=(0.5,))), "takes input [1, 32, 32]"),
    (lambda: Cascade(stages(classes=(10, 100)), Policy(thresholds=(0.5,))), "has 100 classes"),
    (lambda: Policy(thresholds=(1.5,)), "threshold 1.5 is outside [0, 1]"),
    (lambda: Policy(thresholds=(-0.1,)), "threshold -0.1 is outside [0, 1]"),
    (lambda: Policy(kind="priority"), "needs a non-empty class list"),
    (lambda: Policy(kind="budget"), "a budget policy needs budget > 0"),
    (lambda: Policy(kind="oracle"), "'oracle' is not allowed"),
    (lambda: Cascade(stages(), Policy(kind="priority", classes=(12,))), "classes [12] do not exist"),
    (lambda: Cascade(stages(), Policy(thresholds=(0.5, 0.5))), "2 thresholds for 1 stage boundaries"),
])
def test_bad_cascades_fail_in_one_line(make, message: str) -> None:  # noqa: ANN001 - a constructor
    with pytest.raises(ConfigError) as error:  # CascadeError is a ConfigError; field checks raise the latter
        make()
    assert message in one_line(error)


def test_a_budget_below_the_cheapest_stage_is_refused() -> None:
    costs = {"rpi4": [StageCost(1.0, 3.0, "rpi4"), StageCost(4.0, 12.0, "rpi4")]}
    check_budget(Policy(kind="budget", budget=3.5, budget_metric="energy_rpi4"), costs)  # fine: above stage 1
    with pytest.raises(CascadeError) as error:
        check_budget(Policy(kind="budget", budget=2.0, budget_metric="energy_rpi4"), costs)
    assert "below the cheapest stage's cost (3 mJ" in one_line(error)


def probs_for(confidence: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """Probability rows whose argmax is `predicted` with max softmax `confidence`."""
    rest = (1.0 - confidence) / (classes - 1)
    out = np.repeat(rest[:, None], classes, axis=1)
    out[np.arange(len(out)), predicted] = confidence
    return out


def test_every_policy_kind_applies_one_rule_and_the_runner_applies_the_same() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10) * 0.3, size=400)
    for policy in (Policy(thresholds=(0.6,)), Policy(score="margin", thresholds=(0.3,)),
                   Policy(kind="priority", classes=(3, 7)), Policy(kind="priority", classes=(1,), thresholds=(0.4,))):
        ours = escalates(policy, probs, 0)
        theirs = runner.escalates(probs, policy.to_json(), 0)
        assert np.array_equal(ours, theirs), policy
        assert 0 < ours.sum() < len(probs), policy  # the rule does something on these inputs
    assert set(POLICIES) == {"confidence", "budget", "priority"}


def test_run_counts_escalations_and_takes_the_later_stage_answer() -> None:
    labels = np.array([0, 1, 2, 3])
    first = probs_for(np.array([0.9, 0.3, 0.95, 0.2]), np.array([0, 5, 2, 3]))  # wrong on 1, unsure on 1 and 3
    second = probs_for(np.full(4, 0.99), np.array([0, 1, 2, 9]))                # right on 1, wrong on 3
    outcome = run(Cascade(stages(), Policy(thresholds=(0.5,))), [first, second], labels, "val")
    assert outcome.reach == (1.0, 0.5)
    assert outcome.accuracy == 75.0  # 0 and 2 from stage 1, 1 fixed by stage 2, 3 broken by stage 2
    assert outcome.stage_accuracy == (75.0, 75.0)


def test_fit_meets_the_accuracy_goal_at_the_least_cost_and_the_budget_goal_within_budget() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    labels = rng.integers(0, 10, n)
    confidence = rng.uniform(0.15, 1.0, n)
    right = rng.uniform(0, 1, n) < confidence  # a calibrated stage 1: confident answers are right
    first = probs_for(confidence, np.where(right, labels, (labels + 1) % 10))
    second = probs_for(np.full(n, 0.9), labels)  # the top stage is always right
    cascade = Cascade(stages(), Policy())
    costs = [StageCost(1.0, 1.0, "rpi4"), StageCost(10.0, 10.0, "rpi4")]

    def energy(reach: tuple[float, ...]) -> float:
        return expected_cost("rpi4", costs, reach).energy_mj

    within = fit(cascade, [first, second], labels, Goal("accuracy_within", 2.0), energy)
    assert within.val.accuracy >= 98.0
    assert 0.0 < within.val.escalation_rate < 1.0
    looser = fit(cascade, [first, second], labels, Goal("accuracy_within", 10.0), energy)
    assert looser.val_cost < within.val_cost and looser.val.escalation_rate < within.val.escalation_rate
    budget = fit(cascade, [first, second], labels, Goal("budget", 4.0), energy)
    assert budget.val_cost <= 4.0 and budget.val_cost > 3.0  # spends most of what it may
    with pytest.raises(CascadeError, match="no thresholds meet the budget"):
        fit(cascade, [first, second], labels, Goal("budget", 0.5), energy)


def test_expected_cost_mean_and_p95() -> None:
    costs = [StageCost(2.0, 4.0, "zcu104"), StageCost(10.0, 30.0, "a53")]
    rare = expected_cost("zcu104", costs, (1.0, 0.04))
    assert rare.latency_ms == pytest.approx(2.0 + 0.04 * (10.0 + PLACEMENTS["zcu104"].switch_ms))
    assert rare.latency_p95_ms == 2.0  # fewer than 5% escalate: the tail is stage 1
    often = expected_cost("zcu104", costs, (1.0, 0.3))
    assert often.latency_p95_ms == pytest.approx(12.0 + PLACEMENTS["zcu104"].switch_ms)
    assert often.energy_mj == pytest.approx(4.0 + 0.3 * (30.0 + PLACEMENTS["zcu104"].switch_ms * 3.0))


def test_policy_round_trips_through_json() -> None:
    policy = Policy(kind="priority", score="margin", thresholds=(0.25,), classes=(2, 4))
    assert Policy.from_json(json.loads(json.dumps(policy.to_json()))) == policy


def test_the_packaged_a53_profile_is_the_stated_derivation_of_the_rpi4_fit() -> None:
    assert PROFILE_PATH.read_text() == dumps(a53_profile()), "rerun python -m hardware_models.estimators.a53"


def test_the_a53_is_slower_than_the_pi4_on_the_same_network() -> None:
    from hardware_models.api import estimate
    from spaces.models.architectures import create_model

    model = create_model("small_cnn", num_classes=10, in_channels=1).eval()
    pi = estimate(model, SHAPE, "rpi4", precision="fp32")
    a53 = estimate(model, SHAPE, str(PROFILE_PATH), precision="fp32")
    assert 2.0 < a53["latency_ms"] / pi["latency_ms"] < 4.0  # clock 1.5x, work per cycle 2x


def _candidate(source: str, accuracy: float, latency: float, size: float) -> object:
    from search.engine.final import Candidate
    from spaces.recipe import Recipe

    return Candidate(Recipe(label=source), source, {"f3": {"accuracy": accuracy, "latency_rpi4": latency,
                                                           "size_mb": size}})


def test_only_cascades_no_front_member_dominates_join_the_front() -> None:
    import pandas as pd

    from search.cascade.study import add_to_front
    from search.cascade.study import non_dominated

    front = [_candidate("fast", 90.0, 1.0, 1.0), _candidate("accurate", 95.0, 5.0, 4.0)]
    between = _candidate("cascade: fast + teacher", 94.0, 2.0, 5.0)  # new trade-off: joins
    worse = _candidate("cascade: slow + teacher", 93.0, 6.0, 6.0)    # beaten by "accurate" everywhere
    joined = non_dominated([between, worse], front, ("accuracy", "latency_rpi4", "size_mb"))
    assert joined == [True, False]
    table = add_to_front(pd.DataFrame({"source": ["fast", "accurate"], "knee": [True, False]}),
                         pd.DataFrame({"source": [between.source, worse.source]}), joined)
    assert list(table["source"]) == ["fast", "accurate", between.source]
    assert list(table["cascade"]) == [False, False, True] and not table["knee"].iloc[2]


def test_a_cascade_row_of_the_front_exports_as_the_cascade_it_was_scored_as() -> None:
    from search.analysis.selection import best_cascade
    from search.cascade.export import CascadeSpec
    from search.cascade.export import cascade_of
    from search.cascade.export import spec_json
    from search.engine.final import Candidate
    from search.report.tables import candidates_table
    from spaces.recipe import Recipe

    spec = CascadeSpec(within=1.0, score="margin")
    row = Candidate(Recipe(label="knee"), "cascade: trial 3 + teacher",
                    {"f3": {"accuracy": 91.0, "accuracy_images": 100, "cascade_spec": spec_json(spec)}})
    table = candidates_table([row], (), ("accuracy",)).assign(cascade=True, knee=False)
    selected = best_cascade(table)
    assert cascade_of(selected) == spec
    assert cascade_of(dataclasses.replace(selected, metrics={"f3_accuracy": 91.0})) is None


def test_a_stage_a_target_cannot_run_gives_no_cascade_cost_there() -> None:
    from search.cascade.bundle import StageModel
    from search.cascade.bundle import stage_cost
    from spaces.models.architectures import create_model
    from spaces.recipe import Recipe

    stage = StageModel("fp16 student", create_model("mlp", num_classes=10, in_channels=1), Recipe(), "mlp",
                       {"zcu104": {"deployable": False, "reason": "fp16 does not run on the DPU", "latency_ms": None}})
    with pytest.raises(CascadeError) as error:
        stage_cost("zcu104", stage, "fp32", SHAPE)
    assert "has no cost on zcu104 (fp16 does not run on the DPU)" in one_line(error)

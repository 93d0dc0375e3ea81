"""The one schema of metric and column names: every name it builds parses back to what built it, targets with
underscores included (a user's `my_pi` profile), and the consumers that used to split names by hand agree."""

from __future__ import annotations

import pytest

from evaluators import metric_names as names
from evaluators.metric_names import Bound
from evaluators.metric_names import PerTarget
from evaluators.metric_names import TargetMetric
from search.analysis.objectives import known_metrics
from search.analysis.objectives import parse_constraint
from search.analysis.objectives import undeployable
from search.cascade.cost import CascadeCost
from search.cascade.cost import metric_of
from search.cascade.export import cost_target
from search.cascade.model import CascadeError

TARGETS = ("zcu104", "rpi4", "my_pi", "zcu104_a53")


@pytest.mark.parametrize("kind", list(PerTarget))
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("bound", list(Bound))
def test_every_per_target_name_parses_back_to_what_built_it(kind: PerTarget, target: str, bound: Bound) -> None:
    name = names.per_target(kind, target, bound)
    assert names.parse_target_metric(name) == TargetMetric(kind, target, bound)
    assert names.parse_target_metric(name, TARGETS) == TargetMetric(kind, target, bound)


def test_scalars_and_level_columns_are_not_per_target_metrics() -> None:
    for scalar in ("accuracy", "accuracy_drop", "test_accuracy", "size_mb", "macs"):
        assert names.parse_target_metric(scalar) is None
    assert names.parse_target_metric("f2_latency_rpi4") is None
    assert names.split_column("f2_latency_my_pi") == ("f2", "latency_my_pi")
    assert names.split_column("latency_rpi4") is None
    assert names.column("f3", "test_accuracy") == "f3_test_accuracy"
    with pytest.raises(ValueError, match="unknown fidelity level 'f4'"):
        names.column("f4", "accuracy")


def test_every_known_metric_is_a_scalar_or_a_per_target_name_of_the_study() -> None:
    for metric in known_metrics(TARGETS):
        parsed = names.parse_target_metric(metric, TARGETS)
        assert metric in names.SCALARS or (parsed is not None and parsed.target in TARGETS), metric


def test_consumers_read_targets_with_underscores() -> None:
    """The cascade's cost target and a p90 constraint's column were once read by splitting on '_'."""
    assert cost_target("energy_my_pi") == "my_pi"
    assert cost_target("latency_p95_zcu104_a53") == "zcu104_a53"
    with pytest.raises(CascadeError, match="not latency_<target>"):
        cost_target("size_mb")
    cost = CascadeCost("my_pi", latency_ms=2.0, latency_p95_ms=5.0, energy_mj=3.0, stages=(), switch_ms=0.0,
                       note="")
    assert (metric_of(cost, "latency_my_pi"), metric_of(cost, "latency_p95_my_pi"),
            metric_of(cost, "energy_my_pi")) == (2.0, 5.0, 3.0)
    assert parse_constraint("latency_my_pi <= 5 @ p90", known_metrics(TARGETS)).column == "latency_my_pi_high"
    refused = {"deployable_my_pi": False, "not_deployable_my_pi": "fp16 on the DPU", "deployable_rpi4": True}
    assert undeployable(refused) == "fp16 on the DPU"

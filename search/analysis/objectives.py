"""What a study optimises and what it forbids, as names of result metrics.

Metric names are those `evaluators.candidate` writes: `accuracy` (%, validation; the per-channel arithmetic's,
what onnxruntime on the Pi computes), `accuracy_<target>` (% under that target's own arithmetic, where the study's
targets compute differently: `accuracy_zcu104`, the DPU's power-of-two int8), `accuracy_drop` (points
below the teacher on the same images), `latency_<target>` (ms), `energy_<target>` (mJ), `size_mb`,
`macs`, `params`, `bops`. A constraint is a string such as `"latency_zcu104 <= 5"` or
`"accuracy_drop <= 1"`; the same grammar serves `search.export --pick "max accuracy with ..."`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evaluators import metric_names as names
from evaluators.metric_names import Bound
from evaluators.metric_names import PerTarget
from hardware_models.capability import PER_CHANNEL

MAXIMISED = frozenset({"accuracy", "test_accuracy"})
ACCURACY_METRICS = frozenset({"accuracy", "accuracy_drop", "test_accuracy"})  # known only after F1
OPERATORS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge, "<": operator.lt,
                                                          ">": operator.gt}
_CONSTRAINT = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(<=|>=|<|>)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*(?:@\s*(p\d+))?\s*$")
# `@ p90` reads a prediction's upper bound instead of its point value: the hardware models give each
# latency and energy a 90% interval (hardware_models.fitting.intervals), so only that level exists.
BOUNDS = {"p90": Bound.HIGH}


def direction(metric: str) -> str:
    return "max" if metric in MAXIMISED or names.is_accuracy(metric) else "min"


def arithmetic_accuracies(arithmetics: Mapping[str, str] | None) -> tuple[str, ...]:
    """The accuracy objectives beside `accuracy` (the per-channel one): `accuracy_<t>` for the first target of each
    other arithmetic in `arithmetics` (target -> arithmetic, `HardwareConfig.arithmetics`; empty: none). Targets
    that share an arithmetic share its accuracy, so one of them names it (docs/design/two-accuracies.md)."""
    firsts: dict[str, str] = {}
    for target, arithmetic in (arithmetics or {}).items():
        if arithmetic != PER_CHANNEL:
            firsts.setdefault(arithmetic, target)
    return tuple(names.per_target(PerTarget.ACCURACY, t) for t in firsts.values())


def default_objectives(targets: Sequence[str], arithmetics: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Accuracy (one per arithmetic the targets compute with), latency on every target, size.

    Energy is reported but not optimised by default: each target's energy model is its board power times
    latency, with the power fixed for the target, so `energy_<t>` is proportional to `latency_<t>`. Two
    proportional objectives are one objective counted twice: they skew NSGA-II's crowding distance and the
    hypervolume towards that target. A study may still name `energy_<t>` in `[search] objectives`."""
    return ("accuracy", *arithmetic_accuracies(arithmetics), *(names.latency(t) for t in targets), "size_mb")


def known_metrics(targets: Sequence[str], arithmetics: Mapping[str, str] | None = None) -> tuple[str, ...]:
    per_target = tuple(names.per_target(PerTarget.ACCURACY, t) for t in (arithmetics or {}))
    return (*dict.fromkeys((*default_objectives(targets, arithmetics), *per_target)),
            *(names.energy(t) for t in targets), "accuracy_drop", "test_accuracy",
            *(names.on_test(a) for a in per_target), "macs", "params", "bops", "sparsity")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float
    quantile: str = ""  # "p90": the upper end of the metric's 90% prediction interval, not its point value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}" + (f" @ {self.quantile}" if self.quantile else "")

    @property
    def column(self) -> str:
        """The metric column the constraint reads (`latency_zcu104_high` for `latency_zcu104 <= 5 @ p90`)."""
        parsed = names.parse_target_metric(self.metric)
        if not self.quantile or parsed is None:
            return self.metric
        return parsed.with_bound(BOUNDS[self.quantile]).name

    def value(self, metrics: Mapping[str, Any]) -> float:
        return float(metrics[self.column])

    def violation(self, metrics: Mapping[str, Any]) -> float:
        """How far `metrics` is past the bound (<= 0: satisfied), as optuna's constraints expect."""
        value = self.value(metrics)
        return value - self.bound if self.op in ("<=", "<") else self.bound - value

    def satisfied(self, metrics: Mapping[str, Any]) -> bool:
        return OPERATORS[self.op](self.value(metrics), self.bound)

    @property
    def needs_accuracy(self) -> bool:
        parsed = names.parse_target_metric(self.metric)
        return self.metric in ACCURACY_METRICS or (
            parsed is not None and parsed.kind in (PerTarget.ACCURACY, PerTarget.TEST_ACCURACY))


def parse_constraint(text: str, known: Sequence[str]) -> Constraint:
    match = _CONSTRAINT.match(text)
    if not match:
        raise ValueError(f"constraint {text!r} is not 'METRIC OP NUMBER [@ p90]' (OP one of <=, >=, <, >), "
                         "e.g. 'latency_zcu104 <= 5' or 'latency_zcu104 <= 5 @ p90'")
    metric, op, bound, quantile = match.groups()
    if metric not in known:
        raise ValueError(f"constraint {text!r} names unknown metric {metric!r}; known: {', '.join(known)}")
    if quantile and quantile not in BOUNDS:
        raise ValueError(f"constraint {text!r}: {quantile} is not available; use @ p90 (the hardware models' 90% "
                         "prediction intervals)")
    parsed = names.parse_target_metric(metric)
    if quantile and (parsed is None or parsed.kind not in (PerTarget.LATENCY, PerTarget.ENERGY)):
        raise ValueError(f"constraint {text!r}: @ {quantile} applies to predicted latency_/energy_ metrics only; "
                         f"{metric} has no prediction interval")
    return Constraint(metric, op, float(bound), quantile or "")


def undeployable(metrics: Mapping[str, Any]) -> str | None:
    """The reason a recipe cannot run on one of the study's targets (`deployable_<target>` is False), or None.

    Such a recipe is rejected at F0 rather than kept as an infeasible point: its latency and energy on that
    target are not numbers (the board cannot run it, see `hardware_models.capability`), so it has no place on
    a front whose objectives include them, and rejecting it before any training costs nothing. The trial stays
    PRUNED with this reason, unlike a cost-constraint violation (told as infeasible, `search.engine.loop.tell`): there
    is no latency to tell, an invented one would be a made-up point in NSGA-II's crowding, and the cause is
    categorical (a precision or operator the board lacks), not a boundary in cost that the sampler could learn;
    `[space] bits = "target"` removes such precisions from the space up front."""
    for key, value in metrics.items():
        parsed = names.parse_target_metric(key)
        if parsed is not None and parsed.kind == PerTarget.DEPLOYABLE and value is False:
            reason = metrics.get(names.per_target(PerTarget.NOT_DEPLOYABLE, parsed.target))
            return str(reason or f"not deployable on {parsed.target}")
    return None


def cost_gate(constraints: Sequence[Constraint]) -> Callable[[Mapping[str, Any]], str | None]:
    """F0: a target that cannot run the recipe, else the first violated constraint that needs no accuracy, as a
    reason; None when all hold."""
    def gate(metrics: Mapping[str, Any]) -> str | None:
        refused = undeployable(metrics)
        if refused:
            return refused
        for c in constraints:
            if not c.needs_accuracy and not c.satisfied(metrics):
                return f"infeasible at F0: {c.column} = {c.value(metrics):.4g} violates {c}"
        return None
    return gate


@dataclass(frozen=True)
class Pick:
    """`max accuracy with latency_zcu104 <= 5 and size_mb < 2`: the best row under constraints."""

    goal: str  # "max" or "min"
    metric: str
    constraints: tuple[Constraint, ...]


def parse_pick(text: str, known: Sequence[str]) -> Pick:
    head, _, tail = text.strip().partition(" with ")
    words = head.split()
    if len(words) != 2 or words[0] not in ("max", "min"):
        raise ValueError(f"--pick {text!r}: expected 'knee', or 'max|min METRIC [with CONSTRAINT [and ...]]', "
                         "e.g. 'max accuracy with latency_zcu104 <= 5'")
    if words[1] not in known:
        raise ValueError(f"--pick {text!r} names unknown metric {words[1]!r}; known: {', '.join(known)}")
    parts = [p for p in re.split(r"\s+and\s+", tail) if p.strip()] if tail else []
    return Pick(words[0], words[1], tuple(parse_constraint(p, known) for p in parts))

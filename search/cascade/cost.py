"""What a cascade costs on each target: where each stage runs, what switching costs, and the expected and p95
latency and energy per inference for the escalation rates a policy produces.

Expected latency = sum over stages k of reach(k) x (latency(k) + switch for k > 0), with reach(k) the share of
inputs that run stage k (measured on a split, never assumed); energy is built the same way. p95 is the
latency of the path that the 95th-percentile input takes: the inputs fall into at most three paths (stop after
stage 1, 2 or 3), so the tail is one of those path latencies - a cascade whose escalation rate is above 5% has
the p95 of running every stage. Stage latencies are the targets' point predictions; their own intervals are in
each stage's metrics.

Placements are a registry, one per target: on the ZCU104 the INT8 stage runs on the DPU and a float stage on
the processing system's Cortex-A53 cores (`hardware_models/estimators/a53.py`); on a Raspberry Pi and on the host every
stage runs in the same onnxruntime process.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evaluators import metric_names as names
from evaluators.metric_names import PerTarget
from hardware_models.estimators.a53 import PROFILE_PATH as A53_PROFILE
from search.cascade.model import CascadeError
from search.cascade.model import Policy
from search.cascade.model import lookup


@dataclass(frozen=True)
class Placement:
    """Where a target runs a stage of each precision, and the cost of handing an input to the next stage."""

    target: str
    switch_ms: float
    switch_note: str
    runs_on: Callable[[str], str]  # stage precision -> a hardware_models target name or profile path

    def where(self, precision: str) -> str:
        return self.runs_on(precision)


# The DPU hands its output back through VART into the A53's memory; the float stage then starts from the
# preprocessed input already in DDR: no copy of the image, one softmax and one comparison on the CPU, and
# waking the onnxruntime session's threads. We assume 0.2 ms for that (an assumption, not a measurement: one
# VART output sync is of that order on the ZCU104 in Vitis AI's own profiles).
ZCU104_SWITCH_MS = 0.2
# One process, two sessions already loaded: the switch is a softmax over the logits and a comparison (well
# under 0.01 ms in numpy for 10-1000 classes); counted as 0.01 ms so that it is never free.
# The per-target metrics a cascade's cost is read in.
COST_KINDS = frozenset({PerTarget.LATENCY, PerTarget.LATENCY_P95, PerTarget.ENERGY})
SAME_RUNTIME_SWITCH_MS = 0.01


def _zcu104_runs_on(precision: str) -> str:
    return "zcu104" if precision == "int8" else str(A53_PROFILE)


PLACEMENTS: dict[str, Placement] = {
    "zcu104": Placement("zcu104", ZCU104_SWITCH_MS,
                        f"DPU (INT8) -> Cortex-A53 (fp32) hand-off assumed {ZCU104_SWITCH_MS} ms (VART output sync, "
                        "softmax, waking the CPU session); not measured", _zcu104_runs_on),
    **{t: Placement(t, SAME_RUNTIME_SWITCH_MS, f"every stage in one onnxruntime process on {t}: the switch is a "
                    f"softmax and a comparison, counted as {SAME_RUNTIME_SWITCH_MS} ms", lambda p, t=t: t)
       for t in ("rpi4", "rpi5", "host")},
}


def placement(target: str) -> Placement:
    return lookup(PLACEMENTS, target, "cascade placement for target", "register one in search.cascade.cost.PLACEMENTS")


@dataclass(frozen=True)
class StageCost:
    latency_ms: float
    energy_mj: float
    where: str  # the target or profile that predicted it


@dataclass(frozen=True)
class CascadeCost:
    target: str
    latency_ms: float        # expected per inference
    latency_p95_ms: float
    energy_mj: float         # expected per inference
    stages: tuple[StageCost, ...]
    switch_ms: float
    note: str

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target, "latency_ms": round(self.latency_ms, 6),
                "latency_p95_ms": round(self.latency_p95_ms, 6), "energy_mj": round(self.energy_mj, 6),
                "switch_ms": self.switch_ms, "switch_note": self.note,
                "stages": [{"latency_ms": round(s.latency_ms, 6), "energy_mj": round(s.energy_mj, 6),
                            "where": s.where} for s in self.stages]}


def _switch_mj(place: Placement, stage: StageCost) -> float:
    """Switching energy: the hand-off time at the power of the stage it hands to."""
    watts = stage.energy_mj / stage.latency_ms if stage.latency_ms > 0 else 0.0
    return place.switch_ms * watts


def expected_cost(target: str, stages: Sequence[StageCost], reach: Sequence[float]) -> CascadeCost:
    """Expected and p95 cost per inference of a cascade whose stage k runs on a share `reach[k]` of inputs."""
    if len(stages) != len(reach):
        raise CascadeError(f"{len(stages)} stage costs for {len(reach)} reach shares")
    place = placement(target)
    latency = energy = 0.0
    paths: list[float] = []
    for k, (stage, share) in enumerate(zip(stages, reach, strict=True)):
        switch = place.switch_ms if k else 0.0
        latency += share * (stage.latency_ms + switch)
        energy += share * (stage.energy_mj + (_switch_mj(place, stage) if k else 0.0))
        paths.append((paths[-1] if paths else 0.0) + stage.latency_ms + switch)
    # P(path >= k) = reach[k]; the p95 input takes the deepest path that at least 5% of inputs reach.
    deepest = max(k for k, share in enumerate(reach) if k == 0 or share > 0.05)
    return CascadeCost(target, latency, paths[deepest], energy, tuple(stages), place.switch_ms, place.switch_note)


def metric_of(cost: CascadeCost, metric: str) -> float:
    """`latency_<t>`, `latency_p95_<t>` or `energy_<t>` of a cost on target t."""
    parsed = names.parse_target_metric(metric)
    if parsed is None or parsed.kind not in COST_KINDS:
        raise ValueError(f"{metric!r} is not a cascade cost metric (latency_, latency_p95_ or energy_<target>)")
    return {PerTarget.LATENCY: cost.latency_ms, PerTarget.LATENCY_P95: cost.latency_p95_ms,
            PerTarget.ENERGY: cost.energy_mj}[parsed.kind]


def check_budget(policy: Policy, stages: dict[str, Sequence[StageCost]]) -> None:
    """A budget below what stage 1 costs (it runs on every input) can never be met: say so in one line."""
    if policy.kind != "budget":
        return
    parsed = names.parse_target_metric(policy.budget_metric)
    target = parsed.target if parsed is not None else ""
    if target not in stages:
        raise CascadeError(f"budget_metric {policy.budget_metric!r} names a target without stage costs; "
                           f"known: {', '.join(sorted(stages))}")
    energy = parsed.kind == PerTarget.ENERGY
    costs = [s.energy_mj if energy else s.latency_ms for s in stages[target]]
    unit = "mJ" if energy else "ms"
    if policy.budget < min(costs) or policy.budget < costs[0]:
        raise CascadeError(f"budget {policy.budget:g} {unit} for {policy.budget_metric} is below the cheapest "
                           f"stage's cost ({costs[0]:.4g} {unit}, run on every input): raise the budget or use a "
                           "cheaper stage 1")


def stage_costs(predicted: dict[str, dict[str, Any]], target: str) -> StageCost:
    """A stage's cost on `target` from its `hardware_models.estimate` result."""
    result = predicted[target]
    return StageCost(float(result["latency_ms"]), float(result["energy_mj"]), str(result.get("profile", target)))

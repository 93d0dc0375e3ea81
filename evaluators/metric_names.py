"""One schema for the names of metrics and table columns: built here, parsed here, nowhere else.

A candidate's metrics are a flat mapping that travels through optuna user attributes, JSON and CSV, so its keys
are strings. Three families share that namespace:
- scalars: `accuracy`, `size_mb`, `macs`, ... (`SCALARS`);
- per target: `<kind>_<target>[_low|_high]`, e.g. `latency_rpi4`, `energy_zcu104_high`, `runs_as_my_pi`,
  `int8_share_rpi4` (`TargetMetric`); a target may itself contain underscores (a user's `my_pi` profile), so a
  name is parsed by its kind, never by splitting on the last underscore;
- per fidelity level: `<level>_<metric>`, e.g. `f2_latency_rpi4`, `f3_test_accuracy_low` (`column`, `split_column`).

Every producer (the evaluator) and consumer (objectives, constraints, tables, plots, selection, cascades) goes
through these functions, so a name changes in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

LEVELS = ("f1", "f2", "f3")  # `evaluators.candidate.Fidelity`'s values, the prefixes of a table's columns

# Names that are never `<kind>_<target>`: without this list `accuracy_drop` would read as accuracy on "drop".
SCALARS = frozenset({"accuracy", "accuracy_drop", "test_accuracy", "size_mb", "size_bytes", "params", "macs",
                     "bops", "sparsity", "accuracy_images", "accuracy_split", "test_accuracy_images"})


class PerTarget(StrEnum):
    """What a per-target metric measures. Longer kinds first where one is a prefix of another (parsing order)."""

    LATENCY_P95 = "latency_p95"  # ms, a cascade's 95th-percentile input
    LATENCY = "latency"  # ms, modelled (or measured on `host`)
    ENERGY = "energy"  # mJ
    NOT_DEPLOYABLE = "not_deployable"  # the reason the target refuses the recipe
    DEPLOYABLE = "deployable"  # bool
    RUNS_AS = "runs_as"  # the precision the board executes
    INT8_SHARE = "int8_share"  # share of the quantized Conv/Gemm layers the runtime executes as integer kernels
    TEST_ACCURACY = "test_accuracy"  # F3: ACCURACY on the test split (final reports only)
    ACCURACY = "accuracy"  # accuracy under the target's own arithmetic, where targets compute differently


class Bound(StrEnum):
    POINT = ""
    LOW = "_low"
    HIGH = "_high"


@dataclass(frozen=True)
class TargetMetric:
    kind: PerTarget
    target: str
    bound: Bound = Bound.POINT

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError(f"a {self.kind.value} metric needs a target name")

    @property
    def name(self) -> str:
        return f"{self.kind.value}_{self.target}{self.bound.value}"

    def __str__(self) -> str:
        return self.name

    def with_bound(self, bound: Bound) -> TargetMetric:
        return TargetMetric(self.kind, self.target, bound)


def per_target(kind: PerTarget, target: str, bound: Bound = Bound.POINT) -> str:
    """`per_target(PerTarget.LATENCY, "rpi4")` -> "latency_rpi4"."""
    return TargetMetric(kind, target, bound).name


def latency(target: str, bound: Bound = Bound.POINT) -> str:
    return per_target(PerTarget.LATENCY, target, bound)


def energy(target: str, bound: Bound = Bound.POINT) -> str:
    return per_target(PerTarget.ENERGY, target, bound)


def parse_target_metric(name: str, targets: tuple[str, ...] | None = None) -> TargetMetric | None:
    """The per-target metric `name` spells, or None (a scalar, a level column or anything else).

    With `targets`, only those targets are accepted (the bound suffix is then read exactly); without, whatever
    follows the kind is the target, less a trailing `_low`/`_high`."""
    if name in SCALARS:
        return None
    for kind in PerTarget:
        prefix = f"{kind.value}_"
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        readings = [(rest[: -len(b.value)], b) for b in (Bound.LOW, Bound.HIGH) if rest.endswith(b.value)]
        for target, bound in [*readings, (rest, Bound.POINT)]:
            if target and (targets is None or target in targets):
                return TargetMetric(kind, target, bound)
        return None
    return None


def is_accuracy(metric: str) -> bool:
    """`accuracy` (the per-channel arithmetic's, validation) or `accuracy_<target>` (a target's own arithmetic):
    maximised, bounded by chance and the teacher, compared with intervals."""
    parsed = parse_target_metric(metric)
    return metric == "accuracy" or (parsed is not None and parsed.kind == PerTarget.ACCURACY
                                    and parsed.bound == Bound.POINT)


def on_test(metric: str) -> str:
    """The test-split name of a validation accuracy, what F3 reports: `accuracy` -> `test_accuracy`,
    `accuracy_zcu104` -> `test_accuracy_zcu104`."""
    if not is_accuracy(metric):
        raise ValueError(f"{metric!r} is not an accuracy metric")
    return f"test_{metric}"


def column(level: str, metric: str) -> str:
    """`column("f2", "latency_rpi4")` -> "f2_latency_rpi4": a metric as scored at one fidelity level."""
    if level not in LEVELS:
        raise ValueError(f"unknown fidelity level {level!r}; known: {', '.join(LEVELS)}")
    return f"{level}_{metric}"


def split_column(name: str) -> tuple[str, str] | None:
    """("f2", "latency_rpi4") for "f2_latency_rpi4"; None for a column of no level."""
    level, sep, metric = name.partition("_")
    return (level, metric) if sep and level in LEVELS and metric else None


def interval(metric: str) -> tuple[str, str]:
    """The columns of `metric`'s 95% interval: `<metric>_low`, `<metric>_high`."""
    return f"{metric}{Bound.LOW.value}", f"{metric}{Bound.HIGH.value}"

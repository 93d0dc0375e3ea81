"""Everything a run needs, built from a few paths: the same recipe serves the driver and each Ray worker.

A `RunSpec` is small and picklable (paths and names); `load_context` turns it into the study config, the
data splits, the cached teacher and an `Evaluator`. Workers call it once per process (`cached_context`),
so a Ray task ships only a recipe.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

import torch

from evaluators.candidate import Evaluator
from evaluators.candidate import ResultStore
from evaluators.data import prepare_data
from evaluators.splits import Splits
from evaluators.teacher import Teacher
from evaluators.teacher import prepare_teacher
from search.config import ConfigError
from search.config import StudyConfig
from search.config import load_study
from search.objectives import Constraint
from search.objectives import default_objectives
from search.objectives import known_metrics
from search.objectives import parse_constraint


@dataclass(frozen=True)
class RunSpec:
    study: str
    profile: str
    out: str
    data_root: str | None = None
    cache_dir: str | None = None
    device: str = "cpu"
    allow_download: bool = False
    progress: bool = False
    trials: int = 0  # overrides the profile's search.trials when > 0


@dataclass(frozen=True)
class Plan:
    """The objectives and constraints of a study, validated against the metrics the evaluator writes."""

    objectives: tuple[str, ...]
    constraints: tuple[Constraint, ...]


def make_plan(config: StudyConfig) -> Plan:
    targets = config.hardware.targets
    known = known_metrics(targets)
    objectives = config.search.objectives or default_objectives(targets)
    bad = [o for o in objectives if o not in known or o in ("accuracy_drop", "test_accuracy")]
    if bad:
        raise ConfigError(f"{config.source}: search.objectives: {bad[0]!r} cannot be optimised; use any of "
                          f"{', '.join(default_objectives(targets))}, macs, params, bops")
    if "accuracy" not in objectives:
        raise ConfigError(f"{config.source}: search.objectives must include 'accuracy'")
    try:
        constraints = tuple(parse_constraint(c, known) for c in config.search.constraints)
    except ValueError as err:
        raise ConfigError(f"{config.source}: search.constraints: {err}") from None
    return Plan(tuple(objectives), constraints)


@dataclass
class Context:
    spec: RunSpec
    config: StudyConfig
    plan: Plan
    splits: Splits
    teacher: Teacher
    evaluator: Evaluator

    @property
    def out(self) -> Path:
        return Path(self.spec.out)


def load_context(spec: RunSpec) -> Context:
    config = load_study(spec.study, spec.profile)
    if spec.trials:
        config = replace(config, search=replace(config.search, trials=spec.trials))
    plan = make_plan(config)
    splits, batcher = prepare_data(config.data, spec.data_root, allow_download=spec.allow_download)
    cache = Path(spec.cache_dir) if spec.cache_dir else None
    device = torch.device(spec.device)
    teacher = prepare_teacher(config.teacher, splits, batcher, config.data.split, cache_dir=cache, device=device,
                              progress=spec.progress)
    out = Path(spec.out)
    evaluator = Evaluator(teacher=teacher.model.to(device).eval(), splits=splits, batcher=batcher,
                          fidelity=config.fidelity, hardware=config.hardware, store=ResultStore(out / "results"),
                          cache_dir=cache or teacher.folder.parent.parent, checkpoints=out / "checkpoints",
                          device=device)
    return Context(spec, config, plan, splits, teacher, evaluator)


@functools.cache
def cached_context(spec: RunSpec) -> Context:
    """One context per worker process: data, teacher and logits are loaded once, not per trial."""
    return load_context(spec)

"""Everything a run needs, built from the resolved study config: the same recipe serves the driver and each
Ray worker.

A `RunSpec` is small and picklable (the validated `StudyConfig` itself, and where things live); `load_context`
turns it into the data splits, the teacher and an `Evaluator`. Nothing re-reads a TOML file by name: a study
built in Python (`search.api`) runs exactly like one loaded from a file. Ray workers never call it: the driver
ships them what it loaded (`search.pipeline.shipment`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evaluators.candidate import Evaluator
from evaluators.candidate import ResultStore
from evaluators.data.batches import Batcher
from evaluators.data.config import prepare_data
from evaluators.data.splits import Splits
from evaluators.teacher.prepare import Teacher
from evaluators.teacher.prepare import given_teacher
from evaluators.teacher.prepare import pinned_teacher
from evaluators.teacher.prepare import prepare_teacher
from search.analysis.objectives import Constraint
from search.analysis.objectives import default_objectives
from search.analysis.objectives import known_metrics
from search.analysis.objectives import parse_constraint
from search.config import ConfigError
from search.config import StudyConfig
from search.config import check_profiles
from search.config import load_study
from search.config import trust_study
from search.engine import final
from search.pipeline.baseline_cache import SharedResults
from search.pipeline.baseline_cache import shared_folder

BASELINE_FILE = "baseline.json"


@dataclass(frozen=True)
class RunSpec:
    config: StudyConfig
    out: str
    data_root: str | None = None
    cache_dir: str | None = None
    device: str = "cpu"
    allow_download: bool = False
    progress: bool = False

    @classmethod
    def from_study(cls, study: str, profile: str | None, out: str, *, trials: int = 0, **options: Any) -> RunSpec:
        """A spec for a study file (name or path) at a profile; `trials` > 0 overrides the profile's count. The file
        is the caller's own: the code its teacher names is trusted (`search.config.trust_study`)."""
        config = load_study(study, profile)
        trust_study(config)
        if trials:
            config = replace(config, search=replace(config.search, trials=trials))
        return cls(config=config, out=out, **options)


@dataclass(frozen=True)
class Plan:
    """The objectives and constraints of a study, validated against the metrics the evaluator writes."""

    objectives: tuple[str, ...]
    constraints: tuple[Constraint, ...]


def make_plan(config: StudyConfig) -> Plan:
    check_profiles(config.hardware.targets, config.source or "study")  # every door: file, config.json, Python
    targets, arithmetics = config.hardware.names, config.hardware.arithmetics()
    known = known_metrics(targets, arithmetics)
    objectives = config.search.objectives or default_objectives(targets, arithmetics)
    bad = [o for o in objectives if o not in known or o == "accuracy_drop" or o.startswith("test_accuracy")]
    if bad:
        raise ConfigError(f"{config.source}: search.objectives: {bad[0]!r} cannot be optimised; use any of "
                          f"{', '.join(default_objectives(targets, arithmetics))}, energy_<target>, macs, params, "
                          "bops")
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
    teacher_trained: bool = True  # from the teacher cache (not the user's checkpoint, nor given in memory)

    @property
    def out(self) -> Path:
        return Path(self.spec.out)


def load_context(spec: RunSpec, *, teacher: nn.Module | None = None, data: tuple[Splits, Batcher] | None = None
                 ) -> Context:
    """The run's context; `teacher` and `data` given in memory (the Python API) replace what the config names."""
    config = spec.config
    plan = make_plan(config)
    cache = Path(spec.cache_dir) if spec.cache_dir else None
    splits, batcher = data or prepare_data(config.data, spec.data_root, allow_download=spec.allow_download,
                                           cache_dir=cache)
    device = torch.device(spec.device)
    out = Path(spec.out)
    pin = pinned(out)
    if teacher is not None:
        trained = given_teacher(teacher, config.teacher, splits, batcher, cache, device)
    elif pin and not config.teacher.checkpoint:  # the run's own teacher, however far its cache entry has moved on
        trained = pinned_teacher(config.teacher, splits, batcher, pin)
    else:
        trained = prepare_teacher(config.teacher, splits, batcher, config.data.split, cache_dir=cache, device=device,
                                  progress=spec.progress)
    from_cache = teacher is None and not config.teacher.checkpoint
    recipes = {c.recipe.hash() for c in final.baselines(config.search.baselines, config.teacher.arch)}
    store = SharedResults(ResultStore(out / "results"),
                          shared_folder(trained.folder, trained.metrics.get("sha256", "")) if from_cache else None,
                          recipes)
    evaluator = Evaluator(teacher=trained.model.to(device).eval(), splits=splits, batcher=batcher,
                          fidelity=config.fidelity, hardware=config.hardware, store=store,
                          cache_dir=cache or trained.folder.parent.parent, checkpoints=out / "checkpoints",
                          device=device)
    return Context(spec, config, plan, splits, trained, evaluator, teacher_trained=from_cache)


def pinned(out: Path) -> dict[str, Any] | None:
    """The teacher a run folder's earlier run used (`evaluators.teacher.prepare.pin`, kept in its baseline.json), if
    any."""
    try:
        pin = json.loads((out / BASELINE_FILE).read_text()).get("teacher_pin")
    except (OSError, json.JSONDecodeError):
        return None
    return pin or None


def size_notes(ctx: Context) -> list[str]:
    """Evaluation and calibration sizes larger than their split: the whole split is used, and the report says so."""
    sizes = ctx.splits.sizes()
    notes = []
    for level in ("f1", "f2", "f3"):
        cfg = getattr(ctx.config.fidelity, level)
        wanted = {"val": cfg.val_images, "test": cfg.test_images if level == "f3" else 0,
                  "calib": cfg.budget.calib_images}
        notes += [f"{level}: {n} {split} images asked for, the {split} split has {sizes[split]}: all of them are used"
                  for split, n in wanted.items() if n > sizes[split]]
    return notes

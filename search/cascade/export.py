"""A cascade of a study's recipe (the knee, by default) and the study's teacher: built, fitted on validation,
costed per target, and exported (`python -m search.export --cascade`) or scored for the front (`search.pipeline.study`).

The teacher is the top stage because it is the model every front member was distilled and judged against: a
cascade that stays within X points of it at a fraction of its cost is the survey's claim made checkable.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any

import torch

from evaluators import metric_names as names
from evaluators.candidate import estimate_targets
from search.analysis.selection import Selected
from search.bundle.deploy_resolution import DeployResolution
from search.bundle.qdq import float_network
from search.bundle.writer import has_integer_layers
from search.cascade.bundle import StageModel
from search.cascade.bundle import stage_cost
from search.cascade.bundle import write_cascade_bundle
from search.cascade.cost import COST_KINDS
from search.cascade.cost import check_budget
from search.cascade.cost import expected_cost
from search.cascade.cost import metric_of
from search.cascade.fit import Fitted
from search.cascade.fit import Goal
from search.cascade.fit import fit_on_validation
from search.cascade.model import Cascade
from search.cascade.model import CascadeError
from search.cascade.model import Policy
from search.cascade.model import Stage
from search.pipeline.context import Context
from spaces.recipe import TEACHER
from spaces.recipe import Quantization
from spaces.recipe import Recipe
from spaces.validated import settings

TEACHER_RECIPE = Recipe(label="uncompressed teacher")


@settings
class CascadeSpec:
    """How to build the cascade: its policy, the fit's goal and the cost the fit minimises or bounds."""

    policy: str = "confidence"
    score: str = "max_softmax"
    within: float = field(default=0.5, metadata={"min": 0.0, "max": 100.0})  # points below the top stage
    budget: float = field(default=0.0, metadata={"min": 0.0})
    metric: str = ""  # latency_<target> or energy_<target>; default: energy on the study's first target
    classes: tuple[int, ...] = ()
    # The stages after the chosen recipe, in order: "float" (its own float counterpart: the same network with its
    # quantizers removed) and/or "teacher". One or two of them: a pair or a triple.
    later: tuple[str, ...] = ("teacher",)

    def __post_init__(self) -> None:
        unknown = [s for s in self.later if s not in LATER_STAGES]
        if unknown or not 1 <= len(self.later) <= 2 or len(set(self.later)) != len(self.later):
            raise CascadeError(f"cascade stages after the chosen recipe {list(self.later)}: give one or two of "
                               f"{', '.join(sorted(LATER_STAGES))}, each once, e.g. 'float,teacher'")


def stage_model(ctx: Context, name: str, model: torch.nn.Module, recipe: Recipe) -> StageModel:
    config = ctx.config
    shape = (ctx.splits.info.channels, ctx.evaluator.batcher.resolution, ctx.evaluator.batcher.resolution)
    network = config.teacher.network if recipe.student == TEACHER else recipe.student
    return StageModel(name, model.eval().cpu(), recipe, network,
                      estimate_targets(model, recipe, shape, config.hardware))


def teacher_stage(ctx: Context) -> StageModel:
    return stage_model(ctx, "teacher", ctx.evaluator.teacher, TEACHER_RECIPE)


def float_stage(ctx: Context, first: StageModel) -> StageModel:
    """The first stage's float counterpart: the same (pruned, fine-tuned) network without its quantizers, costed and
    exported as an unquantized recipe."""
    recipe = dataclasses.replace(first.recipe, quant=Quantization(), label=f"{first.recipe.label or first.name} fp32")
    return stage_model(ctx, f"{first.name} (fp32)", float_network(first.model), recipe)


LATER_STAGES: dict[str, Callable[[Context, StageModel], StageModel]] = {
    "float": float_stage,
    "teacher": lambda ctx, first: teacher_stage(ctx),
}


def stages_of(ctx: Context, first: StageModel, spec: CascadeSpec) -> list[StageModel]:
    return [first] + [LATER_STAGES[name](ctx, first) for name in spec.later]


def precision_of(stage: StageModel) -> str:
    return "int8" if has_integer_layers(stage.model) else "fp32"


def cost_target(metric: str) -> str:
    """The target a cascade's cost metric (`latency_<t>`, `latency_p95_<t>`, `energy_<t>`) is costed on; targets
    may contain underscores (a user's `my_pi`), so the name is parsed by its kind."""
    parsed = names.parse_target_metric(metric)
    if parsed is None or parsed.kind not in COST_KINDS:
        raise CascadeError(f"cascade metric {metric!r} is not latency_<target>, latency_p95_<target> or "
                           "energy_<target>")
    return parsed.target


def build(ctx: Context, stages: list[StageModel], spec: CascadeSpec) -> tuple[Cascade, Goal, str]:
    """The cascade (thresholds not yet fitted), the fit's goal and the cost metric, validated."""
    shape = (ctx.splits.info.channels, ctx.evaluator.batcher.resolution, ctx.evaluator.batcher.resolution)
    metric = spec.metric or names.energy(ctx.config.hardware.names[0])
    policy = Policy(kind=spec.policy, score=spec.score, classes=spec.classes, budget=spec.budget,
                    budget_metric=metric if spec.policy == "budget" else "")
    classes = ctx.splits.info.num_classes
    cascade = Cascade(tuple(Stage(s.name, shape, classes, precision_of(s)) for s in stages), policy)
    target = cost_target(metric)
    check_budget(policy, {target: [stage_cost(target, s, precision_of(s), shape) for s in stages]})
    goal = Goal("budget", spec.budget) if spec.policy == "budget" else Goal("accuracy_within", spec.within)
    return cascade, goal, metric


def fit_cascade(ctx: Context, stages: list[StageModel], spec: CascadeSpec) -> Fitted:
    """Thresholds fitted on the validation split for the spec's goal; the cost is modelled on the metric's target."""
    cascade, goal, metric = build(ctx, stages, spec)
    target = cost_target(metric)
    shape = cascade.stages[0].input_shape
    costs = [stage_cost(target, s, precision_of(s), shape) for s in stages]

    def cost(reach: Any) -> float:
        return metric_of(expected_cost(target, costs, reach), metric)

    return fit_on_validation(cascade, [s.model for s in stages], ctx.splits, ctx.evaluator.batcher, goal, cost,
                             val_images=ctx.config.fidelity.f3.val_images)


def export_cascade(ctx: Context, selected: Selected, model: torch.nn.Module, out: Path, spec: CascadeSpec,
                   test_images: int, extra: dict[str, Any]) -> Path:
    resolution = DeployResolution.of(ctx.evaluator.batcher.resolution, ctx.config.hardware.deploy_resolution)
    if resolution.proxy:
        raise CascadeError(f"{resolution.note()}: a cascade bundle is written at the training size only; export it "
                           "from a profile that searches at its deploy size (smoke, paper)")
    first = stage_model(ctx, "knee" if "knee" in selected.how else selected.how, model, selected.recipe)
    stages = stages_of(ctx, first, spec)
    fitted = fit_cascade(ctx, stages, spec)
    print(f"cascade fitted on validation: thresholds {list(fitted.cascade.policy.thresholds)}, val accuracy "
          f"{fitted.val.accuracy:.2f}% (top stage {fitted.val.stage_accuracy[-1]:.2f}%), escalation rate "
          f"{100 * fitted.val.escalation_rate:.1f}%", flush=True)
    metrics = write_cascade_bundle(stages, fitted, ctx.splits, ctx.evaluator.batcher, out,
                                   targets=ctx.config.hardware.names, test_images=test_images,
                                   extra_metrics={**extra, "spec": json.loads(spec_json(spec))})
    m = metrics["measured"]
    print(f"cascade bundle written to {out}: test accuracy {m['accuracy']:.2f}%, escalation rate "
          f"{100 * m['escalation_rate']:.1f}% (runner); searched {metrics['searched']['accuracy']:.2f}%", flush=True)
    return out


def spec_json(spec: CascadeSpec) -> str:
    return json.dumps({"policy": spec.policy, "score": spec.score, "within": spec.within, "budget": spec.budget,
                       "metric": spec.metric, "classes": list(spec.classes), "later": list(spec.later)},
                      sort_keys=True)


def cascade_of(selected: Selected) -> CascadeSpec | None:
    """The spec of a front row that is a cascade (its `f3_cascade_spec` column, written by the study), else None."""
    text = selected.metrics.get("f3_cascade_spec")
    if not isinstance(text, str) or not text:
        return None
    data = json.loads(text)
    return CascadeSpec(**{**data, "classes": tuple(data.get("classes", ())),
                          "later": tuple(data.get("later", ("teacher",)))})

"""Cascades as candidates of a study (`[search] cascades = true`): after the front's F3 stage, every quantized front
member is paired with the teacher, fitted on validation (accuracy within `cascade_within` points of the teacher at
the least expected energy on the study's first target) and scored like a recipe; those that no front member
dominates on the study's objectives (F3 validation accuracy, modelled costs) join the front, marked `cascade`.

A cascade row's recipe columns are its first stage's; its costs are expected values at the escalation rate
measured on validation (`cascade_escalation_rate`), and its test accuracy is reported on the test split after the
fit. `size_mb` is the sum of its stages (both ship). `--pick cascade` (search.analysis.selection) exports one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from evaluators import metric_names as names
from evaluators.candidate import Fidelity
from evaluators.metric_names import PerTarget
from search.analysis.objectives import direction
from search.analysis.pareto import pareto_mask
from search.bundle.run_checkpoint import load_f3
from search.bundle.writer import has_integer_layers
from search.cascade.bundle import cascade_costs
from search.cascade.export import TEACHER_RECIPE
from search.cascade.export import CascadeSpec
from search.cascade.export import fit_cascade
from search.cascade.export import precision_of
from search.cascade.export import spec_json
from search.cascade.export import stage_model
from search.cascade.export import teacher_stage
from search.cascade.fit import report_on_test
from search.cascade.model import CascadeError
from search.engine.final import Candidate
from search.pipeline.context import Context

Log = Callable[[str], None]


def f3_model(ctx: Context, candidate: Candidate) -> torch.nn.Module:
    """The F3 model the final stage saved (tensors + recipe), else rebuilt at F3 (deterministic)."""
    saved = load_f3(ctx.out, candidate.recipe, ctx.config.teacher.network)
    return saved if saved is not None else ctx.evaluator.build(candidate.recipe, Fidelity.F3).model


def is_target_accuracy(key: str) -> bool:
    """`accuracy_zcu104`, `test_accuracy_zcu104` and their `_images`: an accuracy under one target's arithmetic."""
    base = key.removeprefix("test_").removesuffix("_images")
    return base != "accuracy" and names.is_accuracy(base)


def score(ctx: Context, candidate: Candidate, teacher: Any, spec: CascadeSpec) -> Candidate | None:
    model = f3_model(ctx, candidate).eval()
    if not has_integer_layers(model):
        return None  # a float stage 1 saves nothing the teacher's INT8 form would not: not a cascade worth making
    stages = [stage_model(ctx, candidate.source, model, candidate.recipe), teacher]
    fitted = fit_cascade(ctx, stages, spec)
    test = ctx.splits.test.first(ctx.config.fidelity.f3.test_images)
    reported = report_on_test(fitted.cascade, [s.model for s in stages], test, ctx.evaluator.batcher)
    shape = fitted.cascade.stages[0].input_shape
    costs = cascade_costs(stages, [precision_of(s) for s in stages], fitted.val.reach, ctx.config.hardware.names,
                          shape)
    # the member's accuracies under other target arithmetics (accuracy_zcu104) are its own, not the cascade's, which
    # nothing measures: left out, so such a cascade cannot join a front that has them as objectives
    f3 = {k: v for k, v in candidate.metrics.get("f3", {}).items() if not is_target_accuracy(k)}
    teacher_size = float(ctx.evaluator.evaluate(TEACHER_RECIPE, Fidelity.F1)["size_mb"])  # cached F1 result
    f3.update({"accuracy": fitted.val.accuracy, "accuracy_images": fitted.val.images,
               "test_accuracy": reported.accuracy, "test_accuracy_images": reported.images,
               "size_mb": float(f3.get("size_mb", math.nan)) + teacher_size,
               "escalation_rate": fitted.val.escalation_rate,
               "test_escalation_rate": reported.escalation_rate})
    for target, cost in costs.items():
        f3.update({names.latency(target): cost.latency_ms, names.energy(target): cost.energy_mj,
                   names.per_target(PerTarget.LATENCY_P95, target): cost.latency_p95_ms})
    f3["cascade_spec"] = spec_json(spec)
    return Candidate(candidate.recipe, f"cascade: {candidate.source} + teacher", {"f3": f3}, candidate.trial)


def score_cascades(ctx: Context, front_: list[Candidate], log: Log) -> list[Candidate]:
    """Every quantized, scored front member + the teacher, fitted and scored; none when the study did not ask."""
    search = ctx.config.search
    if not search.cascades or not front_:
        return []
    spec = CascadeSpec(within=search.cascade_within)
    teacher = teacher_stage(ctx)
    out = []
    for candidate in front_:
        if candidate.failure:
            continue
        try:
            scored = score(ctx, candidate, teacher, spec)
        except CascadeError as error:  # e.g. a target one stage cannot run: that cascade has no cost there
            log(f"[cascade] {candidate.source} + teacher not scored: {error}")
            continue
        if scored is not None:
            f3 = scored.metrics["f3"]
            log(f"[cascade] {scored.source}: val {f3['accuracy']:.2f}%, test {f3['test_accuracy']:.2f}%, "
                f"escalation {100 * f3['escalation_rate']:.1f}% (val)")
            out.append(scored)
    return out


def non_dominated(cascades: list[Candidate], front_: list[Candidate], objectives: tuple[str, ...]) -> list[bool]:
    """Which cascades no front member (nor another cascade) dominates on the objectives' F3 validation numbers."""
    pool = [c for c in front_ if not c.failure] + cascades
    points = np.array([[float(c.metrics["f3"].get(o, math.nan)) for o in objectives] for c in pool])
    if not len(cascades) or np.isnan(points).any():
        return [False] * len(cascades)
    mask = pareto_mask(points, [direction(o) for o in objectives])
    return [bool(m) for m in mask[-len(cascades):]]


def add_to_front(table: pd.DataFrame, cascades: pd.DataFrame, joined: list[bool]) -> pd.DataFrame:
    """The front table with the non-dominated cascades appended, every row marked `cascade` True/False."""
    table = table.assign(cascade=False)
    kept = cascades[joined].assign(cascade=True, knee=False) if len(cascades) else cascades
    return pd.concat([table, kept], ignore_index=True) if len(kept) else table


def report_lines(cascades: list[Candidate], joined: list[bool], targets: tuple[str, ...]) -> list[str]:
    if not cascades:
        return []
    lines = ["", "## Cascades (stage 1 a front member, stage 2 the teacher; search.cascade.model)", "",
             "Thresholds fitted on validation (accuracy within the study's `cascade_within` points of the teacher "
             "at the least expected energy on the first target); accuracy on validation (fit) and test (report); "
             "costs are expected values at the validation escalation rate, p95 the tail path.", "",
             "| cascade | joins the front | val % | test % | escalation | " +
             " | ".join(f"latency {t} (p95) ms | energy {t} mJ" for t in targets) + " |",
             "|" + "---|" * (5 + 2 * len(targets))]
    for c, ok in zip(cascades, joined, strict=True):
        f3 = c.metrics["f3"]
        costs = " | ".join(f"{f3[f'latency_{t}']:.4g} ({f3[f'latency_p95_{t}']:.4g}) | {f3[f'energy_{t}']:.4g}"
                           for t in targets)
        lines.append(f"| {c.source} | {'yes' if ok else 'no (dominated)'} | {f3['accuracy']:.2f} | "
                     f"{f3['test_accuracy']:.2f} | {100 * f3['escalation_rate']:.1f}% | {costs} |")
    return lines + [""]


def append_report(path: Path, cascades: list[Candidate], joined: list[bool], targets: tuple[str, ...]) -> None:
    lines = report_lines(cascades, joined, targets)
    if lines:
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

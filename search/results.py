"""The run folder's tables and report: trials.csv, pareto.csv, baselines.csv and report.md.

Every accuracy column names its level and split: `f1_accuracy`/`f2_accuracy` are validation accuracy on
the first N images, `f3_accuracy` the whole validation split and `f3_test_accuracy` the test split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from search.final import Candidate
from search.final import points
from search.objectives import Constraint
from search.objectives import direction
from search.pareto import dominated_by_any
from search.pareto import hypervolume
from search.pareto import knee_index
from search.pareto import knee_weights
from search.pareto import to_minimisation
from search.stats import kendall_tau
from spaces.recipe import Allocation
from spaces.recipe import Recipe
from spaces.recipe import describe
from spaces.recipe import weight_bits_label

LEVELS = ("f1", "f2", "f3")
SKIP = frozenset({"fidelity", "recipe_hash", "apply_seconds", "storage", "accuracy_split", "test_split", "checkpoint"})


def recipe_columns(recipe: Recipe) -> dict[str, Any]:
    q = recipe.quant
    return {"label": recipe.label, "student": recipe.student, "distill": recipe.distill.kind.value,
            "temperature": recipe.distill.temperature, "alpha": recipe.distill.alpha,
            "prune": recipe.prune.kind.value, "prune_ratio": recipe.prune.ratio,
            "importance": recipe.prune.importance.value, "schedule": recipe.prune.schedule.value,
            "global_ranking": recipe.prune.global_ranking, "blocks_removed": recipe.prune.blocks_removed,
            "quant": q.kind.value, "weight_bits": weight_bits_label(q) if q.kind.value in ("ptq", "qat") else "",
            "act_bits": q.act_bits if q.kind.value in ("ptq", "qat") else "", "calibration": q.calibration.value,
            "high_fraction": q.high_fraction if q.allocation == Allocation.SENSITIVITY else "",
            "recipe_hash": recipe.hash()}


def metric_columns(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for level in LEVELS:
        for key, value in metrics.get(level, {}).items():
            if key not in SKIP and key != "rejected":
                row[f"{level}_{key}"] = value
    reached = [level for level in LEVELS if level in metrics]
    row["fidelity"] = reached[-1] if reached else ""
    return row


def ensure_columns(frame: pd.DataFrame, objectives: tuple[str, ...]) -> pd.DataFrame:
    """Every level's accuracy and objective columns exist, empty when no trial reached them, so scripts
    reading trials.csv never meet a missing column."""
    wanted = [f"{level}_{m}" for level in LEVELS for m in dict.fromkeys(("accuracy", "accuracy_drop", *objectives))]
    for column in [*wanted, "f3_test_accuracy"]:
        if column not in frame:
            frame[column] = np.nan
    return frame


def trials_table(study: optuna.Study, final: dict[str, Candidate], objectives: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "recipe" not in t.user_attrs:
            continue  # interrupted before it was told; its retry has its own row
        recipe = Recipe.from_json(t.user_attrs["recipe"])
        metrics = {k: t.user_attrs[k] for k in LEVELS if k in t.user_attrs}
        if recipe.hash() in final and t.state == optuna.trial.TrialState.COMPLETE:
            metrics = final[recipe.hash()].metrics
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"trial": t.number, "state": t.state.name, **recipe_columns(recipe), **metric_columns(metrics),
                     "feasible": t.user_attrs.get("feasible", t.state == optuna.trial.TrialState.COMPLETE),
                     "reason": t.user_attrs.get("fail_reason") or t.user_attrs.get("reason", ""),
                     "duration_s": duration, "recipe_json": t.user_attrs["recipe"]})
    return ensure_columns(pd.DataFrame(rows), objectives)


def candidates_table(candidates: list[Candidate], constraints: tuple[Constraint, ...],
                     objectives: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for c in candidates:
        f3 = c.metrics.get("f3", {})
        ok = all(con.satisfied(f3) for con in constraints) if f3 else None
        rows.append({"source": c.source, **recipe_columns(c.recipe), **metric_columns(c.metrics),
                     "feasible_f3": ok, "recipe_json": c.recipe.to_json()})
    return ensure_columns(pd.DataFrame(rows), objectives)


@dataclass(frozen=True)
class Summary:
    """The numbers report.md is made of, also written as summary.json for scripts."""

    hypervolume_f2: float
    hypervolume_f3: float
    reference: dict[str, float]
    tau_f1_f3: float
    tau_f2_f3: float
    tau_pairs: int
    knee: int  # index into the front list
    dominated_baselines: list[str]
    undominated_baselines: list[str]


def reference_point(worst: list[dict[str, Any]], objectives: tuple[str, ...]) -> list[float]:
    """Accuracy 0; every cost 10% above the worst of `worst` (the uncompressed teacher and every candidate)."""
    return [0.0 if o == "accuracy" else 1.1 * max(float(m[o]) for m in worst) for o in objectives]


def _knee(front_: list[Candidate], objectives: tuple[str, ...]) -> int:
    if not front_:
        return -1
    return knee_index(points(front_, objectives, "f2", "accuracy"), [direction(o) for o in objectives],
                      knee_weights(objectives))


def summarise(front_: list[Candidate], baselines: list[Candidate], objectives: tuple[str, ...],
              reference: list[dict[str, Any]]) -> Summary:
    dirs = [direction(o) for o in objectives]
    ref = reference_point(reference, objectives)
    scored = [c for c in [*front_, *baselines] if {"f1", "f2", "f3"} <= set(c.metrics)]
    f3_front = points(front_, objectives, "f3", "test_accuracy")
    dominated, free = [], []
    mine = to_minimisation(f3_front, dirs)
    for b in (b for b in baselines if "f3" in b.metrics):
        point = to_minimisation(points([b], objectives, "f3", "test_accuracy"), dirs)[0]
        (dominated if dominated_by_any(point, mine) else free).append(b.recipe.label)
    acc = {level: [c.metrics[level]["accuracy"] for c in scored] for level in LEVELS}
    return Summary(
        hypervolume_f2=hypervolume(points(front_, objectives, "f2", "accuracy"), ref, dirs) if front_ else 0.0,
        hypervolume_f3=hypervolume(f3_front, ref, dirs) if front_ else 0.0,
        reference=dict(zip(objectives, ref, strict=True)),
        tau_f1_f3=kendall_tau(acc["f1"], acc["f3"]) if len(scored) > 1 else float("nan"),
        tau_f2_f3=kendall_tau(acc["f2"], acc["f3"]) if len(scored) > 1 else float("nan"),
        tau_pairs=len(scored),
        knee=_knee(front_, objectives),
        dominated_baselines=dominated, undominated_baselines=free)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _line(c: Candidate, objectives: tuple[str, ...]) -> str:
    f3 = c.metrics.get("f3", {})
    cells = [f"{c.source}", c.recipe.label or describe(c.recipe), _fmt(f3.get("test_accuracy", "")),
             _fmt(f3.get("accuracy", "")), *(_fmt(f3.get(o, "")) for o in objectives if o != "accuracy")]
    return "| " + " | ".join(cells) + " |"


def write_report(path: Path, header: dict[str, Any], front_: list[Candidate], baselines: list[Candidate],
                 objectives: tuple[str, ...], summary: Summary) -> None:
    costs = [o for o in objectives if o != "accuracy"]
    n_base = len(summary.dominated_baselines) + len(summary.undominated_baselines)
    table_head = ["| from | recipe | test acc % (F3) | val acc % (F3) | " + " | ".join(costs) + " |",
                  "|" + "---|" * (4 + len(costs))]
    lines = [f"# Study {header['study']} (profile {header['profile']})", "",
             *(f"- {k}: {_fmt(v)}" for k, v in header.items() if k not in ("study", "profile")), "",
             "Accuracy: F1/F2 on the first N validation images (model selection), F3 on the whole validation",
             "split and on the test split (reported only). Latency (ms) and energy (mJ) are modelled per target.", ""]
    if front_:
        best = {o: max if direction(o) == "max" else min for o in objectives}
        lines += ["## Best recipe for each objective (front, F3)", ""]
        for o, pick in best.items():
            key = "test_accuracy" if o == "accuracy" else o
            c = pick(front_, key=lambda c, k=key: float(c.metrics["f3"][k]))
            lines.append(f"- {o}: {c.source}, {describe(c.recipe)}: {key} = {_fmt(c.metrics['f3'][key])}")
        knee = front_[summary.knee]
        lines += ["", f"## Knee of the front: {knee.source}, {describe(knee.recipe)}", "",
                  "```json", json.dumps(json.loads(knee.recipe.to_json()), indent=1), "```", ""]
    lines += ["## Front (selected on F2 validation metrics; F3 numbers)", "", *table_head,
              *(_line(c, objectives) for c in front_), "",
              "## Baselines through the same pipeline and budgets (F3)", "", *table_head,
              *(_line(c, objectives) for c in baselines), "",
              f"Baselines dominated by the front (F3 test accuracy and modelled costs): "
              f"{len(summary.dominated_baselines)} of {n_base}"
              f" ({', '.join(summary.dominated_baselines) or 'none'}); not dominated: "
              f"{', '.join(summary.undominated_baselines) or 'none'}.", "",
              "## Hypervolume", "",
              f"- front at F2 (validation): {summary.hypervolume_f2:.6g}; at F3 (test): {summary.hypervolume_f3:.6g}",
              f"- reference point (accuracy 0; costs 1.1 x the worst of the teacher and all candidates): "
              f"{ {k: round(v, 6) for k, v in summary.reference.items()} }", "",
              "## How well the proxies ranked the F3 results", "",
              f"Kendall tau over {summary.tau_pairs} recipes (front and baselines), validation accuracy: "
              f"F1 vs F3 = {summary.tau_f1_f3:.3f}, F2 vs F3 = {summary.tau_f2_f3:.3f}.", ""]
    path.write_text("\n".join(lines))

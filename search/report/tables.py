"""The run folder's tables and report: trials.csv, pareto.csv, baselines.csv and report.md.

Every accuracy column names its level and split: `f1_accuracy`/`f2_accuracy` are validation accuracy on
the first N images, `f3_accuracy` the whole validation split and `f3_test_accuracy` the test split.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import fields
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from evaluators import metric_names as names
from evaluators.metric_names import LEVELS
from search.analysis.intervals import measured
from search.analysis.objectives import Constraint
from search.analysis.objectives import direction
from search.analysis.reference import ReferenceBox
from search.analysis.stats import kendall_tau
from search.engine.final import Candidate
from search.engine.final import front_knee
from search.engine.final import points
from search.engine.final import scored
from search.engine.history import HypervolumePoint
from search.engine.loop import told_at_f2
from search.report.deployment import deployment_columns
from search.report.deployment import is_deployment_key
from search.report.verdicts import Outcome
from search.report.verdicts import Verdict
from search.report.verdicts import judge_all
from search.report.verdicts import verdict_lines
from spaces.recipe import Allocation
from spaces.recipe import Recipe
from spaces.recipe import describe
from spaces.recipe import weight_bits_label

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


ACCURACIES = ("accuracy", "test_accuracy")


def interval_columns(level: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """`<level>_<accuracy>_low/_high`: the 95% Wilson interval of every accuracy whose image count is known."""
    row: dict[str, Any] = {}
    per_target = [k for k in metrics if names.is_accuracy(k.removeprefix("test_")) and k not in ACCURACIES]
    for key in (*ACCURACIES, *per_target):
        if key in metrics and f"{key}_images" in metrics:
            low, high = names.interval(names.column(level, key))
            row[low], row[high] = measured(metrics, key).interval
    return row


def metric_columns(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for level in LEVELS:
        for key, value in metrics.get(level, {}).items():
            if key not in SKIP and key != "rejected" and not is_deployment_key(key):
                row[names.column(level, key)] = value
        row.update(interval_columns(level, metrics.get(level, {})))
    reached = [level for level in LEVELS if level in metrics]
    row["fidelity"] = reached[-1] if reached else ""
    row.update(deployment_columns(metrics))  # once per target, not per level
    return row


def ensure_columns(frame: pd.DataFrame, objectives: tuple[str, ...]) -> pd.DataFrame:
    """Every level's accuracy and objective columns exist, empty when no trial reached them, so scripts
    reading trials.csv never meet a missing column."""
    metrics = dict.fromkeys(("accuracy", "accuracy_drop", *objectives))
    wanted = [names.column(level, m) for level in LEVELS for m in metrics]
    tests = [names.column("f3", names.on_test(m)) for m in metrics if names.is_accuracy(m)]
    for column in [*wanted, *tests]:
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
        failure = ""
        if recipe.hash() in final and told_at_f2(t):
            metrics, failure = final[recipe.hash()].metrics, final[recipe.hash()].failure
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"trial": t.number, "state": t.state.name, **recipe_columns(recipe), **metric_columns(metrics),
                     "feasible": t.user_attrs.get("feasible", t.state == optuna.trial.TrialState.COMPLETE),
                     "reason": t.user_attrs.get("fail_reason") or t.user_attrs.get("reason", "") or failure,
                     "told": told_level(t), "promotion": t.user_attrs.get("promotion", ""),
                     "duration_s": duration, "recipe_json": t.user_attrs["recipe"]})
    return ensure_columns(pd.DataFrame(rows), objectives)


def told_level(trial: optuna.trial.FrozenTrial) -> str:
    """The level whose values the sampler was told (`search.engine.loop.tell`): f2, f1 (F1 only) or f0 (rejected at F0
    by a cost constraint); empty for a PRUNED or FAILED trial, which was told no values."""
    if trial.state != optuna.trial.TrialState.COMPLETE:
        return ""
    return str(trial.user_attrs.get("told", "f2"))


def candidates_table(candidates: list[Candidate], constraints: tuple[Constraint, ...],
                     objectives: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for c in candidates:
        f3 = c.metrics.get("f3", {})
        ok = all(con.satisfied(f3) for con in constraints) if f3 else None
        rows.append({"source": c.source, **recipe_columns(c.recipe), **metric_columns(c.metrics),
                     "feasible_f3": ok, "state": "FAIL" if c.failure else "COMPLETE", "reason": c.failure,
                     "recipe_json": c.recipe.to_json()})
    return ensure_columns(pd.DataFrame(rows), objectives)


@dataclass(frozen=True)
class Summary:
    """The numbers report.md is made of, also written as summary.json for scripts.

    Hypervolumes are normalised in the study's reference box (`search.analysis.reference`): comparable across runs."""

    hypervolume_f2: float  # every feasible trial at F2 (validation): the last value of `history`
    hypervolume_f3: float  # the front recipes fine-tuned at F3 (test accuracy, box up to the teacher's test accuracy)
    box: ReferenceBox  # validation accuracy (F2)
    test_box: ReferenceBox  # the same costs, accuracy up to the teacher's test accuracy (F3)
    tau_f1_f3: float
    tau_f2_f3: float
    tau_pairs: int
    knee: int  # index into the front list; -1 when no front member was scored
    verdicts: list[Verdict]
    history: list[HypervolumePoint]
    # per cost objective, the cheapest F3 front member's cost as a fraction of the box's edge (the teacher's cost):
    # a fraction near 1 on any axis flattens the hypervolume, whatever the other axes gain
    cost_fractions: dict[str, float]

    @property
    def dominated_baselines(self) -> list[str]:
        return [v.baseline for v in self.verdicts if v.outcome == Outcome.DOMINATED]

    def as_json(self) -> dict[str, Any]:
        """summary.json's content: each box as objective -> [low end, high end]."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("box", "test_box")}
        return {**json.loads(json.dumps(plain, default=_plain)), "dominated_baselines": self.dominated_baselines,
                "box": {"validation": self.box.as_dict(), "test": self.test_box.as_dict()}}


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) else str(value)


def summarise(front_: list[Candidate], baselines: list[Candidate], box: ReferenceBox, test_box: ReferenceBox,
              history: list[HypervolumePoint]) -> Summary:
    """`box` measures validation accuracy (F2), `test_box` the same costs against the teacher's test accuracy."""
    objectives = box.objectives
    scored_ = [c for c in scored([*front_, *baselines]) if {"f1", "f2", "f3"} <= set(c.metrics)]
    f2_front = [c for c in scored(front_) if "f2" in c.metrics]
    f3_front = [c for c in scored(front_) if "f3" in c.metrics]
    acc = {level: [c.metrics[level]["accuracy"] for c in scored_] for level in LEVELS}
    return Summary(
        hypervolume_f2=history[-1].hypervolume if history else box.hypervolume(points(f2_front, objectives, "f2")),
        hypervolume_f3=test_box.hypervolume(points(f3_front, objectives, "f3", "test_accuracy")),
        box=box,
        test_box=test_box,
        tau_f1_f3=kendall_tau(acc["f1"], acc["f3"]) if len(scored_) > 1 else float("nan"),
        tau_f2_f3=kendall_tau(acc["f2"], acc["f3"]) if len(scored_) > 1 else float("nan"),
        tau_pairs=len(scored_),
        knee=front_knee(front_, box),
        verdicts=judge_all(baselines, front_, objectives),
        history=history,
        cost_fractions=_cost_fractions(f3_front, test_box))


def _cost_fractions(front_: list[Candidate], box: ReferenceBox) -> dict[str, float]:
    if not front_:
        return {}
    unit = box.unit(points(front_, box.objectives, "f3", "test_accuracy"))
    return {o: float(unit[:, j].min()) for j, o in enumerate(box.objectives) if not names.is_accuracy(o)}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _accuracy_cell(metrics: dict[str, Any], key: str) -> str:
    """`97.20 [96.85, 97.52]`: the accuracy with its 95% Wilson interval (the number alone when no count is known)."""
    if key not in metrics:
        return ""
    return str(measured(metrics, key)) if f"{key}_images" in metrics else _fmt(metrics[key])


def _line(c: Candidate, objectives: tuple[str, ...]) -> str:
    f3 = c.metrics.get("f3", {})
    name = c.recipe.label or describe(c.recipe)
    cells = [f"{c.source}", f"{name} (FAIL, {c.failure})" if c.failure else name,
             _accuracy_cell(f3, "test_accuracy"), _accuracy_cell(f3, "accuracy"),
             *(_accuracy_cell(f3, names.on_test(o)) if names.is_accuracy(o) else _fmt(f3.get(o, ""))
               for o in objectives if o != "accuracy")]
    return "| " + " | ".join(cells) + " |"


def _best_lines(front_: list[Candidate], objectives: tuple[str, ...]) -> list[str]:
    alive = [c for c in scored(front_) if "f3" in c.metrics]
    if not alive:
        return []
    lines = ["## Best recipe for each objective (front, F3)", ""]
    for o in objectives:
        key = names.on_test(o) if names.is_accuracy(o) else o
        pick = max if direction(o) == "max" else min
        c = pick(alive, key=lambda c, k=key: float(c.metrics["f3"][k]))
        lines.append(f"- {o}: {c.source}, {describe(c.recipe)}: {key} = {_accuracy_cell(c.metrics['f3'], key)}")
    return [*lines, ""]


def _knee_lines(front_: list[Candidate], summary: Summary) -> list[str]:
    if summary.knee < 0:
        return []
    knee_ = front_[summary.knee]
    return [f"## Knee of the front: {knee_.source}, {describe(knee_.recipe)}", "",
            "Closest to the ideal corner of the study's box (F2 validation metrics; accuracy as heavy as all costs "
            "together), among the members no other beats by more than an accuracy interval or 2% of a cost.", "",
            "```json", json.dumps(json.loads(knee_.recipe.to_json()), indent=1), "```", ""]


def _table_lines(title: str, candidates: list[Candidate], objectives: tuple[str, ...]) -> list[str]:
    costs = [f"test {o} %" if names.is_accuracy(o) else o for o in objectives if o != "accuracy"]
    return [title, "", "| from | recipe | test acc % [95% CI] (F3) | val acc % [95% CI] (F3) | " + " | ".join(costs)
            + " |", "|" + "---|" * (4 + len(costs)), *(_line(c, objectives) for c in candidates), ""]


def hypervolume_lines(summary: Summary, plot: str | None) -> list[str]:
    """The normalised hypervolume, its box, and the curve over wall time."""
    test, val = summary.test_box.as_dict(), summary.box.as_dict()
    lines = ["## Hypervolume (normalised to the study's reference box)", "",
             f"- every feasible trial at F2 (validation): {summary.hypervolume_f2:.4g}; the front recipes at F3 "
             f"(test): {summary.hypervolume_f3:.4g}",
             f"- box: every accuracy from chance ({test['accuracy'][0]:.2f}%) to the teacher's accuracy "
             f"({test['accuracy'][1]:.2f}% test, {val['accuracy'][1]:.2f}% validation); "
             "each cost from 0 to the unmodified teacher's modelled cost (the costlier of fp32 and 8-bit PTQ): "
             + ", ".join(f"{o} {v[1]:.4g}" for o, v in test.items() if not names.is_accuracy(o)),
             "- 1 would be a free model as accurate as the teacher; fixed by the study, so runs compare.", ""]
    if summary.cost_fractions:
        lines[-1:-1] = ["- the cheapest front member's cost as a fraction of the teacher's (a volume is a product: an "
                        "axis near 1 keeps it small): " + ", ".join(f"{o} {v:.3g}" for o, v in
                                                                   summary.cost_fractions.items())]
    if plot:
        lines += [f"![normalised hypervolume of the F2 front against wall time]({plot})", ""]
    return lines


def write_report(path: Path, header: dict[str, Any], front_: list[Candidate], baselines: list[Candidate],
                 objectives: tuple[str, ...], summary: Summary, *, hypervolume_plot: str | None = None) -> None:
    lines = [f"# Study {header['study']} (profile {header['profile']})", "",
             *(f"- {k}: {_fmt(v)}" for k, v in header.items() if k not in ("study", "profile")), "",
             "Accuracy: F1/F2 on the first N validation images (model selection), F3 on the whole validation",
             "split and on the test split (reported only), each with its 95% Wilson interval over the images",
             "scored (one seed). Latency (ms) and energy (mJ) are modelled per target. A run that ended within 2",
             "points of chance accuracy is a failure (\"collapsed\"), not a point.", "",
             *_best_lines(front_, objectives), *_knee_lines(front_, summary),
             *_table_lines("## Front (selected on F2 validation metrics; F3 numbers)", front_, objectives),
             *_table_lines("## Baselines through the same pipeline and budgets (F3)", baselines, objectives),
             *verdict_lines(summary.verdicts),
             *hypervolume_lines(summary, hypervolume_plot),
             "## How well the proxies ranked the F3 results", "",
             f"Kendall tau over {summary.tau_pairs} recipes (front and baselines), validation accuracy: "
             f"F1 vs F3 = {summary.tau_f1_f3:.3f}, F2 vs F3 = {summary.tau_f2_f3:.3f}.", ""]
    path.write_text("\n".join(lines))

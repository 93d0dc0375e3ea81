"""The run folder's outputs, written once a study's final stage is done: trials.csv, pareto.csv, baselines.csv,
cascades.csv, the plots, report.md and summary.json (a `search.pipeline.study.Reporter`)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import optuna

from evaluators.teacher.training import schedule_of
from search.bundle.deploy_resolution import DeployResolution
from search.cascade import study as cascade_study
from search.engine import final
from search.engine.history import hypervolume_history
from search.pipeline.context import Context
from search.pipeline.context import size_notes
from search.pipeline.study import Finished
from search.pipeline.study import Log
from search.pipeline.study import reference_box
from search.report import tables as results
from search.report.deployment import append_deployment_section
from search.report.hardware_notes import append_hardware_notes
from search.report.plots import hypervolume_plot
from search.report.plots import pareto_plot
from search.sizing import plan as sizing


def header(ctx: Context, finished: Finished) -> dict[str, Any]:
    """report.md's and summary.json's opening facts: what ran, how the sampler was told, the teacher."""
    study = finished.study
    states = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    told = Counter(results.told_level(t) for t in study.trials)
    notes = size_notes(ctx)
    header = {"study": ctx.config.name, "profile": ctx.config.profile, "sampler": ctx.config.search.sampler.value,
              "trials": {k: v for k, v in states.items() if v},
              "told to the sampler": {"F2": told["f2"], "F1 only (not promoted)": told["f1"],
                                      "infeasible at F0": told["f0"]},
              "search plan": study.user_attrs.get("plan", ""), "objectives": list(ctx.plan.objectives),
              "constraints": [str(c) for c in ctx.plan.constraints], "backend": finished.backend,
              "input size": DeployResolution.of(ctx.evaluator.batcher.resolution,
                                                ctx.config.hardware.deploy_resolution).note(),
              "teacher val accuracy %": ctx.teacher.metrics["val_accuracy"],
              "teacher test accuracy %": ctx.teacher.metrics["test_accuracy"],
              **({"teacher epochs": ctx.teacher.metrics["epochs"],
                  "teacher best epoch (by validation)": ctx.teacher.metrics.get("best_epoch"),
                  "teacher schedule": schedule_of(ctx.teacher.metrics)} if "epochs" in ctx.teacher.metrics else {}),
              "search and final stage seconds (this run)": finished.seconds,
              **({"split size notes": notes} if notes else {})}
    return header


def write_outputs(ctx: Context, finished: Finished, log: Log) -> results.Summary:
    """Every output file of the run folder, and the one-line summary in the log."""
    front_, base = finished.front, finished.baselines
    summary = _write(ctx, finished.study, front_, base, header(ctx, finished), log)
    log(f"front: {len(front_)} recipes; normalised hypervolume (F2) {summary.hypervolume_f2:.3g}; Kendall tau "
        f"F1/F3 {summary.tau_f1_f3:.2f}, F2/F3 {summary.tau_f2_f3:.2f}; baselines dominated beyond the interval "
        f"{len(summary.dominated_baselines)}/{len(summary.verdicts)}")
    return summary


def _write(ctx: Context, study: optuna.Study, front_: list[final.Candidate], base: list[final.Candidate],
           header: dict[str, Any], log: Log) -> results.Summary:
    out, objectives = ctx.out, ctx.plan.objectives
    by_hash = {c.recipe.hash(): c for c in front_}
    trials = results.trials_table(study, by_hash, objectives)
    trials.to_csv(out / "trials.csv", index=False)
    front_table = results.candidates_table(front_, ctx.plan.constraints, objectives)
    base_table = results.candidates_table(base, ctx.plan.constraints, objectives)
    box = reference_box(ctx)
    history = hypervolume_history(study, box)
    summary = results.summarise(front_, base, box, reference_box(ctx, "test"), history)
    if not front_table.empty:
        front_table["knee"] = [i == summary.knee for i in range(len(front_table))]
    cascades = cascade_study.score_cascades(ctx, front_, log)
    joined = cascade_study.non_dominated(cascades, front_, objectives)
    if cascades:
        scored = results.candidates_table(cascades, ctx.plan.constraints, objectives)
        scored.assign(joins_front=joined).to_csv(out / "cascades.csv", index=False)
        front_table = cascade_study.add_to_front(front_table, scored, joined)
    front_table.to_csv(out / "pareto.csv", index=False)
    base_table.to_csv(out / "baselines.csv", index=False)
    pareto_plot(out / "pareto.png", trials, front_table, base_table, ctx.config.hardware.names,
                title=f"{ctx.config.name} ({ctx.config.profile}): {len(trials)} trials, front of {len(front_)}")
    hypervolume_plot(out / "hypervolume.png", history, title=f"{ctx.config.name} ({ctx.config.profile})")
    results.write_report(out / "report.md", header, front_, base, objectives, summary,
                         hypervolume_plot="hypervolume.png")
    append_deployment_section(out / "report.md", front_, ctx.config.hardware.targets, ctx.config.hardware.storage)
    append_hardware_notes(out / "report.md", ctx.config.hardware)
    cascade_study.append_report(out / "report.md", cascades, joined, ctx.config.hardware.names)
    plan = sizing.sized_by(out, ctx.config)
    if plan is not None:
        sizing.append_report(out / "report.md", plan)
    (out / "summary.json").write_text(json.dumps({**header, **summary.as_json()}, indent=2, default=str))
    log(f"wrote trials.csv ({len(trials)} rows), pareto.csv ({len(front_table)}), baselines.csv, pareto.png, "
        f"report.md under {out}")
    return summary



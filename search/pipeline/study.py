"""One whole study: search (local or Ray), F3 for the front and the baselines, then every output file.

Order of work, each step resumable: the optuna storage holds the search; the result cache holds every
F1/F2/F3 evaluation, so a rerun after an interruption in the final stage re-does nothing it finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import AbstractContextManager
from contextlib import nullcontext
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import optuna

from evaluators import metric_names as names
from evaluators.candidate import Fidelity
from search.analysis.reference import ReferenceBox
from search.engine import final
from search.engine import loop as engine
from search.engine.budget import Clock
from search.engine.budget import describe_duration
from search.engine.promotion import PromotionKind
from search.pipeline.baseline_cache import record_counts
from search.pipeline.context import Context
from search.sizing import plan as sizing
from search.sizing.trial_prices import trial_prices
from spaces.recipe import Recipe
from spaces.recipe import describe
from spaces.space import SearchSpace
from spaces.thesis_recipes import PTQ8

Log = Callable[[str], None]
ALL_LEVELS = (Fidelity.F1, Fidelity.F2, Fidelity.F3)


@dataclass(frozen=True)
class Backend:
    kind: str = "local"  # "local" or "ray"
    address: str | None = None
    workers: int = 1


def study_name(name: str, profile: str) -> str:
    return f"{name}-{profile}"


def storage_url(out: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(out / 'study.db').resolve()}"


class Executor(Protocol):
    """Where the expensive work runs: the trials of the search, then the final stage's F3 jobs."""

    def search(self, study: optuna.Study, space: SearchSpace, loop: engine.Loop, progress: engine.Progress) -> None:
        ...

    def finish(self, jobs: list[final.Job]) -> Iterator[final.Finished]: ...


@dataclass(frozen=True)
class LocalExecutor:
    ctx: Context

    def search(self, study: optuna.Study, space: SearchSpace, loop: engine.Loop, progress: engine.Progress) -> None:
        engine.run_local(study, space, self.ctx.evaluator, loop, progress)

    def finish(self, jobs: list[final.Job]) -> Iterator[final.Finished]:
        return final.finish_serially(jobs, self.ctx.evaluator)


def local_executor(ctx: Context, backend: Backend) -> AbstractContextManager[Executor]:
    return nullcontext(LocalExecutor(ctx))


def ray_executor(ctx: Context, backend: Backend) -> AbstractContextManager[Executor]:
    from search.pipeline.ray_backend import ray_session  # Ray is imported only when asked for

    return ray_session(ctx, backend.address, backend.workers)


EXECUTORS: dict[str, Callable[[Context, Backend], AbstractContextManager[Executor]]] = {
    "local": local_executor, "ray": ray_executor}


LIMIT_ATTR = "search_limit"  # study user attribute: the search's wall-clock limit, set once by a sized run


def search_limit(study: optuna.Study, configured: float | None, deadline: float | None, log: Log) -> float | None:
    """The search's wall-clock limit: the one a first run of this study fixed (a resumed run keeps it), else
    `deadline` (a sized run's, from the time really spent before the search: `RunPlan.search_seconds`), which is
    then stored and logged; without either, the configured budget."""
    if LIMIT_ATTR in study.user_attrs:
        return float(study.user_attrs[LIMIT_ATTR])
    if deadline is None:
        return configured
    study.set_user_attr(LIMIT_ATTR, deadline)
    log(f"search limit {describe_duration(deadline)} (the sized plan's {describe_duration(configured or 0)}, moved "
        "by what sizing, data, teacher and baselines really took: the budget less that and the estimate of the "
        "front's final stage)")
    return deadline


def search(ctx: Context, storage: str, executor: Executor, log: Log, deadline: float | None = None
           ) -> optuna.Study:
    cfg = ctx.config
    study = engine.open_study(study_name(cfg.name, cfg.profile), storage, cfg.search, ctx.plan.objectives)
    retried = engine.requeue_interrupted(study, log)
    engine.seed_students(study, cfg.search, cfg.space.students)
    engine.reseed(study, cfg.search)  # a resumed run's sampler must not replay the first run's recipes
    done = engine.count_finished(study)
    if done or retried:
        log(f"resuming: {done} trials finished earlier" + (f", {retried} interrupted ones retried" if retried else ""))
    limit = search_limit(study, cfg.search.budget_seconds, deadline, log)
    sized_plan = sizing.sized_by(ctx.out, cfg)
    loop = engine.Loop(ctx.plan.objectives, ctx.plan.constraints, cfg.search.trials,
                       engine.make_promoter(study, cfg.search, ctx.plan.objectives), Clock.of_study(study, limit),
                       price=trial_prices(sized_plan, cfg, ctx.splits, study) if sized_plan else None)
    plan = search_plan(ctx, loop, baselines_done=deadline is not None)
    study.set_user_attr("plan", plan)  # report.md records it
    log(f"plan: {plan}")
    progress = engine.Progress(cfg.search.trials, done, log, clock=loop.clock)
    executor.search(study, SearchSpace(cfg.space, cfg.teacher.arch, cfg.data.resolution), loop, progress)
    return study


def search_plan(ctx: Context, loop: engine.Loop, baselines_done: bool = False) -> str:
    """The plan printed before the search: how many trials or how long, who gets F2, what the final stage does."""
    cfg = ctx.config.search
    limit = f"up to {cfg.trials} trials"
    if loop.clock.limit is not None:
        spent = f", {describe_duration(loop.clock.spent_before)} spent earlier" if loop.clock.spent_before else ""
        limit += f" or {describe_duration(loop.clock.limit)} of search wall time{spent}, whichever ends first"
    rungs = {PromotionKind.MOASHA: f"F0 and F1 for every recipe, F2 for the top 1/{cfg.eta} of the F1 results by "
                                   "non-dominated rank (MO-ASHA)",
             PromotionKind.LADDER: "F0, F1 and F2 for every recipe (fixed ladder)"}[cfg.promotion]
    then = f"F3 for up to {cfg.final_max} front recipes" + (
        f" (the {cfg.baselines.value} baselines are scored)" if baselines_done else
        f" and the {cfg.baselines.value} baselines")
    return f"{limit}; {rungs}; then {then}"


def run_jobs(jobs: list[final.Job], executor: Executor, log: Log, stage: str) -> list[final.Candidate]:
    """The jobs' finished candidates in the jobs' order, however they finished (Ray); a failed job is logged and
    left out: one broken recipe must not lose the report."""
    finished: dict[int, final.Candidate] = {}
    for n, (i, result, seconds) in enumerate(executor.finish(jobs), 1):
        candidate = jobs[i][0]
        name = f"{candidate.source} {candidate.recipe.label or describe(candidate.recipe)}"
        if isinstance(result, Exception):
            log(f"[{stage} {n}/{len(jobs)}] {name} failed: {result}")
            continue
        finished[i] = result
        f3 = result.metrics["f3"]
        log(f"[{stage} {n}/{len(jobs)}] {name}: test {f3['test_accuracy']:.2f}%, val {f3['accuracy']:.2f}% "
            f"({seconds:.0f} s)" + (f" FAIL: {result.failure}" if result.failure else ""))
    return [finished[i] for i in sorted(finished)]


def score_baselines(ctx: Context, executor: Executor, log: Log) -> list[final.Candidate]:
    """Every level for the baselines. A sized run does this before the search: the baselines need no front, and
    once they are done, the time they really took is known, so the search's clock is set against only the part of
    the final stage still to come (`sizing.RunPlan.search_seconds`)."""
    base = final.baselines(ctx.config.search.baselines, ctx.config.teacher.arch)
    shared = getattr(ctx.evaluator.store, "shared", None)
    cached = sum(ctx.evaluator.cached(b.recipe, level) is not None for b in base for level in ALL_LEVELS)
    log(f"baselines: F1, F2 and F3 for {len(base)} {ctx.config.search.baselines.value} recipes"
        + (f" ({cached} of {3 * len(base)} results cached beside the teacher)" if cached else ""))
    scored = run_jobs([(b, ALL_LEVELS) for b in base], executor, log, "baseline")
    plan = sizing.sized_by(ctx.out, ctx.config)
    if plan is not None and shared is not None and len(scored) == len(base):
        # a later run's plan can keep these step counts, and reuse these results
        record_counts(shared.folder, replace(plan.counts, teacher_epochs=0, trials=0, final=0))
    return scored


def finalise(ctx: Context, study: optuna.Study, executor: Executor, log: Log,
             scored: list[final.Candidate] | None = None) -> tuple[list[final.Candidate], list[final.Candidate]]:
    """F3 for the chosen front and every level for the baselines (unless `scored` holds them already)."""
    objectives = ctx.plan.objectives
    pool = final.completed(study)
    chosen = final.spread(final.front(pool, objectives), ctx.config.search.final_max, reference_box(ctx))
    base = [] if scored is not None else final.baselines(ctx.config.search.baselines, ctx.config.teacher.arch)
    jobs: list[final.Job] = [(c, (Fidelity.F3,)) for c in chosen] + [(b, ALL_LEVELS) for b in base]
    log(f"final stage: F3 for {len(chosen)} front recipes (of {len(pool)} scored)" +
        (f" and {len(base)} baselines" if base else " (the baselines were scored before the search)"))
    ordered = run_jobs(jobs, executor, log, "final")
    return [c for c in ordered if c.source != "baseline"], [c for c in ordered if c.source == "baseline"] + \
        (scored or [])


# The unmodified teacher as a user would deploy it without this tool: as it is, and quantized to 8 bits.
TEACHER_FORMS = (Recipe(label="uncompressed teacher"), Recipe(label="teacher, PTQ 8-bit", quant=PTQ8))


def teacher_costs(ctx: Context) -> dict[str, float]:
    """Each cost objective's box edge: the costlier of the teacher's two plain deployments (F1 results, cached).

    Why not the fp32 teacher alone: on a CPU target a tiny network can run slower in int8 than in fp32 (per-layer
    quantize/dequantize overheads; 14x on the Pi 4 for the MNIST MLP), so every compressed recipe would fall
    outside the box and the hypervolume of every run would be 0. Both forms depend only on the study's teacher
    and targets, so the box stays fixed by the study."""
    forms = [ctx.evaluator.evaluate(r, Fidelity.F1) for r in TEACHER_FORMS]
    return {o: max(float(f[o]) for f in forms) for o in ctx.plan.objectives
            if not names.is_accuracy(o)}


def reference_box(ctx: Context, split: str = "val") -> ReferenceBox:
    """The study's box for validation (`val`) or test accuracy: chance to the teacher's accuracy on that split,
    each cost from 0 to `teacher_costs`. Nothing in it depends on the trials run."""
    return ReferenceBox.of_study(ctx.plan.objectives, ctx.splits.info.num_classes,
                                 ctx.teacher.metrics[f"{split}_accuracy"], teacher_costs(ctx))


@dataclass(frozen=True)
class Finished:
    """What a finished study hands its reporters: the optuna study, the front's and the baselines' final-stage
    candidates, and how long the search and final stage took in this run."""

    study: optuna.Study
    front: list[final.Candidate]
    baselines: list[final.Candidate]
    seconds: float
    backend: str


# Called in order once the final stage is done (`search.report.outputs.write_outputs` writes the run folder's
# tables, plots and report). The loop only calls them, so it never imports what they write.
Reporter = Callable[[Context, Finished, Log], None]


def run_study(ctx: Context, storage: str, backend: Backend, log: Log,
              deadline: Callable[[], float] | None = None, reporters: Sequence[Reporter] = ()) -> Finished:
    """Search, final stage, then every reporter. A sized run gives `deadline`: it scores the baselines first,
    then asks it for the search's limit in seconds (`search_limit`)."""
    t0 = time.monotonic()
    with EXECUTORS[backend.kind](ctx, backend) as executor:
        scored = score_baselines(ctx, executor, log) if deadline is not None else None
        study = search(ctx, storage, executor, log, deadline() if deadline is not None else None)
        front_, base = finalise(ctx, study, executor, log, scored)
    finished = Finished(study, front_, base, round(time.monotonic() - t0, 1), backend.kind)
    for report in reporters:
        report(ctx, finished, log)
    return finished

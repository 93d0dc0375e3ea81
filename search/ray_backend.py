"""`--backend ray`: trials evaluated as Ray tasks, the optuna study kept by the driver.

Why optuna with one shared storage rather than Ray Tune's `OptunaSearch`: the study (and its resume
semantics, its RDB that optuna-dashboard opens, its constraints) stays exactly the one the local backend
uses; only the expensive part, building and scoring a recipe, moves to the workers. OptunaSearch keeps its
own in-memory study inside Tune's driver, so a resumed sweep would not see the trials in our storage, and
its multi-metric mode has no place for optuna's constraints. Workers are plain Ray tasks: a task whose
worker process dies is retried by Ray (`max_retries`), so a dying worker loses at most its own trial.
"""

from __future__ import annotations

import os
from typing import Any

import optuna

from search import engine
from search.context import Context
from search.context import RunSpec
from search.context import cached_context
from spaces.recipe import Recipe
from spaces.space import SearchSpace

WORKER_RETRIES = 2


def _evaluate(spec: RunSpec, recipe_json: str, threads: int) -> engine.Outcome:
    import torch

    torch.set_num_threads(threads)
    ctx = cached_context(spec)
    return engine.evaluate_trial(ctx.evaluator, Recipe.from_json(recipe_json), ctx.plan.constraints)


def start_ray(address: str | None, workers: int) -> bool:
    """Connect to `address`, or start a local instance sized to `workers`; True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, runtime_env=env, log_to_driver=False,
                 _temp_dir=os.environ.get("RAY_TMPDIR"))
    return True


def run_ray(study: optuna.Study, space: SearchSpace, ctx: Context, backend: Any, progress: engine.Progress) -> None:
    import ray

    started = start_ray(backend.address, backend.workers)
    remote = ray.remote(num_cpus=1, max_retries=WORKER_RETRIES)(_evaluate)
    threads = max(1, (os.cpu_count() or 1) // max(backend.workers, 1)) if not backend.address else 1
    try:
        _loop(study, space, ctx, backend.workers, remote, threads, progress)
    finally:
        if started:
            ray.shutdown()


def _loop(study: optuna.Study, space: SearchSpace, ctx: Context, workers: int, remote: Any, threads: int,
          progress: engine.Progress) -> None:
    import ray

    objectives, constraints, total = ctx.plan.objectives, ctx.plan.constraints, ctx.config.search.trials
    pending: dict[Any, tuple[optuna.Trial, Recipe]] = {}
    while True:
        while len(pending) < workers and engine.count_finished(study) + len(pending) < total:
            trial = study.ask()
            recipe = space.suggest(trial)
            pending[remote.remote(ctx.spec, recipe.to_json(), threads)] = (trial, recipe)
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=1)
        trial, recipe = pending.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except ray.exceptions.RayError as err:  # the worker died more often than Ray retries
            outcome = engine.Outcome(optuna.trial.TrialState.FAIL, {}, f"worker lost: {type(err).__name__}")
        engine.tell(study, trial, recipe, outcome, objectives, constraints)
        progress.update(outcome, recipe, trial.number)

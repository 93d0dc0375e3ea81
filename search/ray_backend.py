"""`--backend ray`: trials evaluated as Ray tasks, the optuna study kept by the driver.

The final stage (F3 for the front and the baselines, the costliest part of a study) runs on the same
workers: each job is a task, and results come back as they finish.

Why optuna with one shared storage rather than Ray Tune's `OptunaSearch`: the study (and its resume
semantics, its RDB that optuna-dashboard opens, its constraints) stays exactly the one the local backend
uses; only the expensive part, building and scoring a recipe, moves to the workers. OptunaSearch keeps its
own in-memory study inside Tune's driver, so a resumed sweep would not see the trials in our storage, and
its multi-metric mode has no place for optuna's constraints. Workers are plain Ray tasks: a task whose
worker process dies is retried by Ray (`max_retries`), so a dying worker loses at most its own trial.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna

from evaluators.candidate import Fidelity
from search import engine
from search import final
from search.context import Context
from search.context import RunSpec
from search.context import cached_context
from spaces.recipe import Recipe
from spaces.space import SearchSpace

WORKER_RETRIES = 2


def _evaluate(spec: RunSpec, recipe_json: str, threads: int, first: engine.Outcome | None) -> engine.Outcome:
    """One rung of one trial on a worker: F0 and F1 (`first` None), or F2 for a promoted F1 result."""
    import torch

    torch.set_num_threads(threads)
    ctx = cached_context(spec)
    recipe = Recipe.from_json(recipe_json)
    if first is None:
        return engine.first_rung(ctx.evaluator, recipe, ctx.plan.constraints)
    return engine.second_rung(ctx.evaluator, recipe, first)


def _finish(spec: RunSpec, candidate: final.Candidate, levels: tuple[Fidelity, ...],
            threads: int) -> tuple[final.Candidate | Exception, float]:
    """One final-stage job; its failure comes back as a value, so the driver logs it and goes on."""
    import torch

    torch.set_num_threads(threads)
    result, seconds = final.attempt(candidate, cached_context(spec).evaluator, levels)
    if isinstance(result, Exception):  # any exception type may not unpickle in the driver: send its text
        result = RuntimeError(f"{type(result).__name__}: {result}")
    return result, seconds


def task_resources(device: str, gpus_per_trial: float) -> dict[str, float]:
    """What one trial's Ray task asks for: one CPU, plus `gpus_per_trial` of a GPU when the study runs on CUDA.

    Ray hides every GPU from a task that asks for none (it sets CUDA_VISIBLE_DEVICES to empty), so a CUDA
    study must ask, or its workers silently fall back to nothing; a CPU study must not, or its tasks would
    wait forever on a cluster without GPUs.
    """
    resources: dict[str, float] = {"num_cpus": 1}
    if device == "cuda" and gpus_per_trial > 0:
        resources["num_gpus"] = gpus_per_trial
    return resources


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


@dataclass
class RayExecutor:
    """Trials, then the final stage's F3 jobs, as Ray tasks of one CPU each (`threads` torch threads), and a
    share of a GPU each when the study runs on CUDA (`task_resources`)."""

    ctx: Context
    workers: int
    threads: int

    @property
    def resources(self) -> dict[str, float]:
        return task_resources(self.ctx.spec.device, self.ctx.config.search.gpus_per_trial)

    def search(self, study: optuna.Study, space: SearchSpace, loop: engine.Loop, progress: engine.Progress) -> None:
        import ray

        remote = ray.remote(max_retries=WORKER_RETRIES, **self.resources)(_evaluate)
        _loop(study, space, self.ctx.spec, loop, _Workers(self.workers, remote, self.threads), progress)

    def finish(self, jobs: list[final.Job]) -> Iterator[final.Finished]:
        """Every job is submitted at once; Ray runs as many as there are CPUs (the workers, or a cluster's)."""
        import ray

        remote = ray.remote(max_retries=WORKER_RETRIES, **self.resources)(_finish)
        pending = {remote.remote(self.ctx.spec, c, levels, self.threads): i for i, (c, levels) in enumerate(jobs)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                result, seconds = ray.get(ready[0])
            except ray.exceptions.RayError as err:
                result, seconds = RuntimeError(f"worker lost: {type(err).__name__}"), float("nan")
            yield i, result, seconds


@contextmanager
def ray_session(ctx: Context, address: str | None, workers: int) -> Iterator[RayExecutor]:
    import ray

    started = start_ray(address, workers)
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1)) if not address else 1
    try:
        yield RayExecutor(ctx, workers, threads)
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class _Workers:
    count: int
    remote: Any  # the Ray remote function `_evaluate`
    threads: int


def _loop(study: optuna.Study, space: SearchSpace, spec: RunSpec, loop: engine.Loop, workers: _Workers,
          progress: engine.Progress) -> None:
    """Asynchronous rungs: a trial's F1 task returns to the driver, which decides its promotion at once against
    every F1 result so far (MO-ASHA) and either tells it or submits its F2 task; no worker waits for a rung."""
    import ray

    pending: dict[Any, tuple[optuna.Trial, Recipe]] = {}
    while True:
        while len(pending) < workers.count and loop.may_ask(study, len(pending)):
            trial = study.ask()
            recipe = space.suggest(trial)
            pending[workers.remote.remote(spec, recipe.to_json(), workers.threads, None)] = (trial, recipe)
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=1)
        trial, recipe = pending.pop(ready[0])
        try:
            outcome = engine.judge(ray.get(ready[0]), loop.promoter, loop.objectives)
        except ray.exceptions.RayError as err:  # the worker died more often than Ray retries
            outcome = engine.Outcome(optuna.trial.TrialState.FAIL, {}, f"worker lost: {type(err).__name__}")
        if outcome.awaits_f2:
            pending[workers.remote.remote(spec, recipe.to_json(), workers.threads, outcome)] = (trial, recipe)
            continue
        loop.told(study, trial, recipe, outcome, progress)

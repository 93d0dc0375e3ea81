"""`--backend ray`: trials evaluated as Ray tasks, the optuna study kept by the driver.

The final stage (F3 for the front and the baselines, the costliest part of a study) runs on the same
workers: each job is a task, and results come back as they finish.

Why optuna with one shared storage rather than Ray Tune's `OptunaSearch`: the study (and its resume
semantics, its RDB that optuna-dashboard opens, its constraints) stays exactly the one the local backend
uses; only the expensive part, building and scoring a recipe, moves to the workers. OptunaSearch keeps its
own in-memory study inside Tune's driver, so a resumed sweep would not see the trials in our storage, and
its multi-metric mode has no place for optuna's constraints. Workers are plain Ray tasks: a task whose
worker process dies is retried by Ray (`max_retries`), so a dying worker loses at most its own trial.

The cluster shares nothing but Ray (`search.pipeline.shipment`): the driver ships the config, data, teacher and code
through Ray once, and each task returns its results and F3 checkpoints for the driver to write. `cluster.json`
in the run folder counts the tasks each node ran.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import optuna

from evaluators.candidate import Evaluator
from evaluators.candidate import Fidelity
from search.engine import final
from search.engine import loop as engine
from search.pipeline.context import Context
from search.pipeline.shipment import TaskReturn
from search.pipeline.shipment import code_modules
from search.pipeline.shipment import deliver
from search.pipeline.shipment import run_task
from search.pipeline.shipment import ship
from search.pipeline.shipment import worker_evaluator
from spaces.recipe import Recipe
from spaces.space import SearchSpace

WORKER_RETRIES = 2
F1_LEVELS = (Fidelity.F1,)
F2_LEVELS = (Fidelity.F2,)


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _evaluate(key: str, box: list[Any], recipe_json: str, known: dict[str, dict[str, Any]], threads: int,
              first: engine.Outcome | None) -> TaskReturn:
    """One rung of one trial on a worker: F0 and F1 (`first` None), or F2 for a promoted F1 result."""
    import torch

    torch.set_num_threads(threads)
    evaluator, constraints = worker_evaluator(key, box)
    recipe = Recipe.from_json(recipe_json)

    def work(ev: Evaluator) -> engine.Outcome:
        if first is None:
            return engine.first_rung(ev, recipe, constraints)
        return engine.second_rung(ev, recipe, first)

    return run_task(evaluator, known, work, _node())


def _finish(key: str, box: list[Any], candidate: final.Candidate, levels: tuple[Fidelity, ...],
            known: dict[str, dict[str, Any]], threads: int) -> TaskReturn:
    """One final-stage job; its failure comes back as a value (`(result, seconds)`), so the driver logs it and
    goes on."""
    import torch

    torch.set_num_threads(threads)
    evaluator, _ = worker_evaluator(key, box)

    def work(ev: Evaluator) -> tuple[final.Candidate | Exception, float]:
        result, seconds = final.attempt(candidate, ev, levels)
        if isinstance(result, Exception):  # any exception type may not unpickle in the driver: send its text
            result = RuntimeError(f"{type(result).__name__}: {result}")
        return result, seconds

    return run_task(evaluator, known, work, _node())


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


def runtime_env(modules: list[Any]) -> dict[str, Any]:
    """The code every worker imports, uploaded by Ray: no node needs this checkout or a matching path."""
    return {"py_modules": modules, "excludes": ["__pycache__", "*.pyc"]}


def start_ray(address: str | None, workers: int, modules: list[Any]) -> bool:
    """Connect to `address`, or start a local instance sized to `workers`; True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    env = runtime_env(modules)
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        # "local": a new instance of our own; with no address Ray would join the latest cluster anyone started on
        # this machine (`ray start`, recorded in /tmp/ray/ray_current_cluster), sized and torn down by them
        ray.init(address="local", num_cpus=workers, include_dashboard=False, runtime_env=env, log_to_driver=False,
                 _temp_dir=os.environ.get("RAY_TMPDIR"))
    return True


@dataclass
class _Driver:
    """The driver's side of the shipment: the ObjectRef every task gets, and the tasks each node ran."""

    ctx: Context
    threads: int
    key: str = ""
    box: list[Any] = field(default_factory=list)  # [ObjectRef of the Shipment]: a list, so Ray passes the ref
    nodes: Counter = field(default_factory=Counter)
    code: dict[str, str] = field(default_factory=dict)  # node -> where it imported this tool's code from

    def open(self) -> None:
        import ray

        shipment = ship(self.ctx)
        self.key, self.box = shipment.key, [ray.put(shipment)]

    def take(self, recipe: Recipe, returned: TaskReturn) -> Any:
        self.nodes[returned.node] += 1
        self.code[returned.node] = returned.code
        return deliver(self.ctx, recipe, returned)

    def write(self) -> None:
        if self.nodes:
            (self.ctx.out / "cluster.json").write_text(json.dumps(
                {"tasks_per_node": dict(self.nodes), "nodes": len(self.nodes), "tasks": sum(self.nodes.values()),
                 "code_per_node": self.code}, indent=1))


@dataclass
class RayExecutor:
    """Trials, then the final stage's F3 jobs, as Ray tasks of one CPU each (`threads` torch threads), and a
    share of a GPU each when the study runs on CUDA (`task_resources`)."""

    ctx: Context
    workers: int
    driver: _Driver

    @property
    def resources(self) -> dict[str, float]:
        return task_resources(self.ctx.spec.device, self.ctx.config.search.gpus_per_trial)

    def search(self, study: optuna.Study, space: SearchSpace, loop: engine.Loop, progress: engine.Progress) -> None:
        import ray

        remote = ray.remote(max_retries=WORKER_RETRIES, **self.resources)(_evaluate)
        _loop(study, space, loop, _Workers(self.workers, remote, self.driver), progress)

    def finish(self, jobs: list[final.Job]) -> Iterator[final.Finished]:
        """Every job is submitted at once; Ray runs as many as there are CPUs (the workers, or a cluster's)."""
        import ray

        d = self.driver
        remote = ray.remote(max_retries=WORKER_RETRIES, **self.resources)(_finish)
        pending = {remote.remote(d.key, d.box, c, levels, d.ctx.evaluator.known(c.recipe, levels), d.threads): i
                   for i, (c, levels) in enumerate(jobs)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                result, seconds = d.take(jobs[i][0].recipe, ray.get(ready[0]))
            except ray.exceptions.RayError as err:
                result, seconds = RuntimeError(f"worker lost: {type(err).__name__}"), float("nan")
            yield i, result, seconds


@contextmanager
def ray_session(ctx: Context, address: str | None, workers: int) -> Iterator[RayExecutor]:
    import ray

    started = start_ray(address, workers, code_modules(ctx.config))
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1)) if not address else 1
    driver = _Driver(ctx, threads)
    try:
        driver.open()
        yield RayExecutor(ctx, workers, driver)
    finally:
        driver.write()
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class _Workers:
    count: int
    remote: Any  # the Ray remote function `_evaluate`
    driver: _Driver

    def submit(self, recipe: Recipe, first: engine.Outcome | None) -> Any:
        d = self.driver
        levels = F1_LEVELS if first is None else F2_LEVELS
        return self.remote.remote(d.key, d.box, recipe.to_json(), d.ctx.evaluator.known(recipe, levels), d.threads,
                                  first)


def _loop(study: optuna.Study, space: SearchSpace, loop: engine.Loop, workers: _Workers,
          progress: engine.Progress) -> None:
    """Asynchronous rungs: a trial's F1 task returns to the driver, which decides its promotion at once against
    every F1 result so far (MO-ASHA) and either tells it or submits its F2 task; no worker waits for a rung."""
    import ray

    pending: dict[Any, tuple[optuna.Trial, Recipe]] = {}
    while True:
        stopped = False
        while not stopped and len(pending) < workers.count and loop.may_ask(study, len(pending)):
            trial = engine.ask(study)
            recipe = space.suggest(trial)
            late = loop.too_late(recipe)
            if late:  # no more trials: one that cannot finish would overrun the budget
                loop.skip(study, trial, recipe, late)
                loop.clock.limit = loop.clock.spent()
                stopped = True
                continue
            pending[workers.submit(recipe, None)] = (trial, recipe)
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=1)
        trial, recipe = pending.pop(ready[0])
        try:
            outcome = engine.judge(workers.driver.take(recipe, ray.get(ready[0])), loop.promoter, loop.objectives)
        except ray.exceptions.RayError as err:  # the worker died more often than Ray retries
            outcome = engine.Outcome(optuna.trial.TrialState.FAIL, {}, f"worker lost: {type(err).__name__}")
        if outcome.awaits_f2:
            pending[workers.submit(recipe, outcome)] = (trial, recipe)
            continue
        loop.told(study, trial, recipe, outcome, progress)

"""What a Ray worker needs, shipped through Ray rather than found on a disk every node happens to share.

On a cluster that shares nothing but Ray, a worker node has no data root, no teacher cache and no run folder.
The driver builds the run's context once (it loads the data and trains or loads the teacher), then puts one
`Shipment` into Ray's object store: the resolved config, the data splits, the teacher network and the
calibrated profile files the study names. Each worker process takes it once (`worker_evaluator`) and scores
recipes from memory. Per task the driver sends the results it already holds for the recipe, and the task
returns what it computed together with the F3 checkpoints' bytes (`TaskReturn`), so the driver alone writes
the run folder and a resumed run repeats nothing (`deliver`). The code travels as a Ray `runtime_env`
(`code_modules`): this tool's packages and the user's own model module; a node needs only the dependencies.

Caches a worker fills while it works (teacher logits, distilled students, layer sensitivities) live in a
node-local scratch folder (`node_cache`): nothing there is needed by the driver, and results do not depend on it.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from evaluators.candidate import Evaluator
from evaluators.candidate import TaskStore
from evaluators.data.batches import Batcher
from evaluators.data.files import atomic_write_bytes
from evaluators.data.splits import Splits
from search.analysis.objectives import Constraint
from search.config import StudyConfig
from search.pipeline.context import Context
from spaces.models.code_trust import Grants
from spaces.models.code_trust import check_factory
from spaces.models.code_trust import grant
from spaces.models.code_trust import grants
from spaces.models.user_models import factory_target
from spaces.recipe import Recipe

NODE_CACHE_ENV = "EDGE_SEARCH_NODE_CACHE"


@dataclass(frozen=True)
class Shipment:
    key: str  # this run's identity: a worker process builds one evaluator per key
    config: StudyConfig
    constraints: tuple[Constraint, ...]
    device: str
    splits: Splits
    batcher: Batcher
    teacher: nn.Module  # on the CPU; each worker moves it to `device`
    profiles: dict[str, bytes]  # a target that is a profile JSON on the driver -> that file's bytes
    grants: Grants = Grants()  # the user's own code the driver was told to trust (spaces.models.code_trust)


def ship(ctx: Context) -> Shipment:
    hardware = ctx.config.hardware
    profiles = {t: Path(t).read_bytes() for t in hardware.targets if t.endswith(".json")}
    key = hashlib.sha256(f"{ctx.out.resolve()}|{os.getpid()}|{time.time_ns()}".encode()).hexdigest()[:16]
    return Shipment(key, ctx.config, ctx.plan.constraints, ctx.spec.device, ctx.splits, ctx.evaluator.batcher,
                    copy.deepcopy(ctx.evaluator.teacher).cpu(), profiles, worker_grants(ctx.config))


def worker_grants(config: StudyConfig) -> Grants:
    """What the driver trusts, for the workers: a factory trusted through a `--code` folder is named outright, since
    on a worker the user's package comes through Ray (`code_modules`), not from that folder."""
    target = factory_target(config.teacher.arch)
    if target is None:
        return grants()
    check_factory(target)  # trusted here already (the driver built the teacher), or this refuses
    return replace(grants(), factories=grants().factories | {target})


def _installed(module: ModuleType) -> bool:
    """Installed into the environment (site-packages): every node that has the environment has it too."""
    origin = Path(getattr(module, "__file__", None) or "")
    return any(part in ("site-packages", "dist-packages") for part in origin.parts)


def user_module(arch: str) -> str | None:
    """The top-level module of a user-named architecture (`mypkg.models:build` -> mypkg); None for the
    registry's names and the schemes this tool resolves itself (`torchvision:`)."""
    target = factory_target(arch)
    return None if target is None else target.split(".")[0].split(":")[0]


def code_modules(config: StudyConfig) -> list[ModuleType | str]:
    """The code a worker imports, as Ray `py_modules`: this tool's packages, and the user's model module unless it
    is installed. A package travels as its folder, a single-file module as its file."""
    names = ["search", "spaces", "evaluators", "hardware_models"]
    user = user_module(config.teacher.arch)
    modules: list[ModuleType | str] = [importlib.import_module(n) for n in names]
    if user and user not in names:
        module = sys.modules.get(user) or importlib.import_module(user)
        if not _installed(module):
            modules.append(module if hasattr(module, "__path__") else str(module.__file__))
    return modules


def node_cache() -> Path:
    """This node's scratch folder for worker caches (`EDGE_SEARCH_NODE_CACHE`, else under the temp folder)."""
    return Path(os.environ.get(NODE_CACHE_ENV) or Path(tempfile.gettempdir()) / "edge-search-node-cache")


def build_evaluator(shipment: Shipment, scratch: Path) -> Evaluator:
    """The worker's evaluator, from memory only: no data root, no teacher cache, no run folder."""
    grant(also=shipment.grants)
    hardware = shipment.config.hardware
    if shipment.profiles:  # the user's calibrated boards: written here under the same file names (same metrics)
        targets = []
        for target in hardware.targets:
            if target in shipment.profiles:
                blob = shipment.profiles[target]
                path = scratch / "profiles" / hashlib.sha256(blob).hexdigest()[:12] / Path(target).name
                if not path.exists():
                    atomic_write_bytes(path, blob)
                target = str(path)
            targets.append(target)
        hardware = replace(hardware, targets=tuple(targets))
    device = torch.device(shipment.device)
    return Evaluator(teacher=shipment.teacher.to(device).eval(), splits=shipment.splits, batcher=shipment.batcher,
                     fidelity=shipment.config.fidelity, hardware=hardware, store=TaskStore(), cache_dir=scratch,
                     checkpoints=scratch / "checkpoints" / shipment.key, device=device)


_EVALUATORS: dict[str, tuple[Evaluator, tuple[Constraint, ...]]] = {}


def worker_evaluator(key: str, box: list[Any]) -> tuple[Evaluator, tuple[Constraint, ...]]:
    """This process's evaluator for run `key` and the study's constraints. `box` holds the shipment's ObjectRef
    inside a list, so Ray does not fetch and unpickle the data and teacher again for every task."""
    if key not in _EVALUATORS:
        import ray

        shipment: Shipment = ray.get(box[0])
        _EVALUATORS.clear()  # one run at a time per worker process: free the last run's data and teacher
        _EVALUATORS[key] = build_evaluator(shipment, node_cache()), shipment.constraints
    return _EVALUATORS[key]


@dataclass(frozen=True)
class TaskReturn:
    """What a remote task hands back: its value (an engine Outcome, or a finished final-stage candidate), the
    results it computed by level, the bytes of the F3 checkpoints it wrote, the node that ran it, and where that
    node imported this tool's code from (under Ray's runtime_resources when it came through the runtime_env)."""

    value: Any
    results: dict[str, dict[str, Any]]
    checkpoints: dict[str, bytes]
    node: str
    seconds: float
    code: str = ""


def run_task(evaluator: Evaluator, known: dict[str, dict[str, Any]], work: Callable[[Evaluator], Any],
             node: str) -> TaskReturn:
    """`work` on `evaluator` with the driver's `known` results, collecting everything the driver must keep."""
    t0 = time.monotonic()
    store = TaskStore(known)
    evaluator.store = store
    value = work(evaluator)
    checkpoints = {}
    for metrics in store.written.values():
        name = metrics.get("checkpoint")
        path = evaluator.checkpoints / name if name and evaluator.checkpoints is not None else None
        if path is not None and path.exists():
            checkpoints[name] = path.read_bytes()
            path.unlink()
    return TaskReturn(value, store.written, checkpoints, node, time.monotonic() - t0, code_origin())


def code_origin() -> str:
    """The folder this process imported `search` from."""
    return str(Path(sys.modules["search"].__file__ or "").parent)


def deliver(ctx: Context, recipe: Recipe, returned: TaskReturn) -> Any:
    """The driver keeps a task's results and checkpoints in the run folder; returns the task's value."""
    ctx.evaluator.record(recipe, returned.results)
    folder = ctx.evaluator.checkpoints or ctx.out / "checkpoints"
    for name, blob in returned.checkpoints.items():
        atomic_write_bytes(folder / name, blob)
    return returned.value

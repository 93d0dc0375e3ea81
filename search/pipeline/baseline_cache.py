"""Baseline results cached beside the teacher, so a second run (or another profile at the same budgets) does not
score the 11 thesis baselines again.

Why beside the teacher: a baseline's result depends on the teacher (its weights: the folder is named by their
digest), the recipe, the data and split (the teacher's entry is per data and split) and the level's budgets and
targets (`evaluators.candidate.level_fingerprint`, the file name). On a 2-core Xeon the 11 baselines take 20-25
minutes of a 60-minute run; cached, a run's plan gives that time to the search (`search.sizing.plan.plan_run` keeps the
step counts they were scored at: `plans.json` lists them).

`SharedResults` is the evaluator's store: a baseline's result is looked up in the run folder, then here (and copied
into the run folder); one computed by the run is written to both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evaluators.candidate import Fidelity
from evaluators.candidate import ResultStore
from evaluators.candidate import level_fingerprint
from evaluators.data.files import atomic_write_bytes
from evaluators.teacher.prepare import CacheStatus
from search.config import StudyConfig
from search.engine import final
from search.sizing.plan import Counts
from search.sizing.plan import profile_counts
from search.sizing.plan import sized_fidelity
from spaces.recipe import Recipe

FOLDER, MANIFEST = "baselines", "plans.json"
LEVELS = (Fidelity.F1, Fidelity.F2, Fidelity.F3)


def shared_folder(teacher_folder: Path, teacher_sha256: str) -> Path | None:
    """Where the baselines of the teacher with these weights are kept (None: a teacher without a digest)."""
    return teacher_folder / FOLDER / teacher_sha256[:16] if teacher_sha256 else None


class SharedResults:
    """The run's `ResultStore`, backed for `recipes` (the baselines, by hash) by the shared folder."""

    def __init__(self, run: ResultStore, shared: Path | None, recipes: Iterable[str]) -> None:
        self.run, self.recipes = run, set(recipes)
        self.shared = ResultStore(shared) if shared is not None else None

    def _shares(self, recipe: Recipe) -> bool:
        return self.shared is not None and recipe.hash() in self.recipes

    def get(self, recipe: Recipe, fidelity: Fidelity, fingerprint: str) -> dict[str, Any] | None:
        found = self.run.get(recipe, fidelity, fingerprint)
        if found is None and self._shares(recipe):
            found = self.shared.get(recipe, fidelity, fingerprint)
            if found is not None:
                self.run.put(recipe, fidelity, fingerprint, found)
        return found

    def put(self, recipe: Recipe, fidelity: Fidelity, fingerprint: str, result: dict[str, Any]) -> None:
        self.run.put(recipe, fidelity, fingerprint, result)
        if self._shares(recipe):
            self.shared.put(recipe, fidelity, fingerprint, result)


def complete(shared: Path, recipes: Iterable[Recipe], fingerprints: dict[Fidelity, str]) -> bool:
    """Every recipe has a result at every level for these level fingerprints."""
    store = ResultStore(shared)
    return all(store.path(r, level, fingerprints[level]).is_file() for r in recipes for level in LEVELS)


def recorded_counts(shared: Path | None) -> list[dict[str, Any]]:
    """The step counts (a `search.sizing.plan.Counts` as a dict) runs scored these baselines at, newest first."""
    try:
        return list(reversed(json.loads((shared / MANIFEST).read_text()))) if shared is not None else []
    except (OSError, json.JSONDecodeError):
        return []


def record_counts(shared: Path | None, counts: Any) -> None:
    """Add a run's step counts (a dataclass) to the shared folder's list, once."""
    if shared is None:
        return
    entry = asdict(counts)
    known = list(reversed(recorded_counts(shared)))
    if entry not in known:
        atomic_write_bytes(shared / MANIFEST, json.dumps([*known, entry], indent=1).encode())


def pinned_counts(config: StudyConfig, status: CacheStatus, resolution: int) -> Counts | None:
    """The step counts at which the baselines are cached, complete, for the strongest cached teacher, applied to
    this (unsized) config (None: no such counts: the baselines would be scored again)."""
    shared = shared_folder(Path(status.folder), status.sha256) if status.folder else None
    recipes = [c.recipe for c in final.baselines(config.search.baselines, config.teacher.arch)]
    if shared is None or not recipes:
        return None
    profile = profile_counts(config)
    for raw in recorded_counts(shared):
        counts = Counts(**raw)
        levels = sized_fidelity(config.fidelity, counts, profile)
        fingerprints = {f: level_fingerprint(levels.level(f), config.hardware, resolution) for f in LEVELS}
        if complete(shared, recipes, fingerprints):
            return counts
    return None

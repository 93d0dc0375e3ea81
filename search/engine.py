"""The search loop: optuna asks for a recipe, the evaluator climbs the fidelity ladder, optuna is told.

One optuna study per run, persisted in an RDB storage (SQLite under the run folder by default), is the
single source of truth: rerunning the same command resumes it. A trial killed mid-way is left RUNNING
in the storage; the next run marks it failed ("interrupted") and enqueues its parameters again, so it is
retried and nothing finished is repeated (the result cache makes even a half-finished retry cheap).

Trial states: COMPLETE (scored at F2, constraints recorded, so infeasible trials are kept and marked),
PRUNED (rejected at F0 by a cost constraint, reason stored), FAIL (an exception such as a diverging loss
or a recipe a target cannot run, or an F2 accuracy at chance level: "collapsed"; reason stored, metrics kept).
The study goes on after every one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from evaluators.candidate import Evaluator
from evaluators.candidate import Fidelity
from search.objectives import Constraint
from search.objectives import cost_gate
from search.objectives import direction
from spaces.recipe import Recipe
from spaces.recipe import describe
from spaces.space import SearchSpace
from spaces.validated import settings


class SamplerKind(StrEnum):
    NSGA2 = "nsga2"
    NSGA3 = "nsga3"
    TPE = "tpe"
    RANDOM = "random"
    QMC = "qmc"


class BaselineSet(StrEnum):
    THESIS = "thesis_table"  # the thesis's 11 ZCU104 recipes (needs a ResNet-50 teacher)
    SURVEY = "survey_quantization"  # FP32, PTQ 8, QAT 8, QAT 4-bit of the teacher itself
    NONE = "none"


@settings
class SearchConfig:
    sampler: SamplerKind = SamplerKind.NSGA2
    trials: int = field(default=40, metadata={"min": 1, "max": 100_000})
    seed: int = field(default=0, metadata={"min": 0})
    population: int = field(default=10, metadata={"min": 2, "max": 10_000})  # NSGA-II/III generation size
    objectives: tuple[str, ...] = ()  # default: accuracy, latency per target, size_mb (energy is reported)
    constraints: tuple[str, ...] = ()  # e.g. "latency_zcu104 <= 5", "accuracy_drop <= 1"
    final_max: int = field(default=8, metadata={"min": 1, "max": 1000})  # front recipes that get F3
    baselines: BaselineSet = BaselineSet.SURVEY  # thesis_table needs the thesis's ResNet-50 teacher
    # After the front: quantized front members + the teacher as cascades (search.cascade_study), fitted on
    # validation to stay within `cascade_within` points of the teacher; non-dominated ones join the front.
    cascades: bool = False
    cascade_within: float = field(default=0.5, metadata={"min": 0.0, "max": 100.0})


class StudyMismatch(ValueError):
    """The stored study was made for other objectives; resuming it would mix incomparable trials."""


def _constraints_func(trial: FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraints", [0.0]))


SAMPLERS: dict[SamplerKind, Callable[[SearchConfig, Any], optuna.samplers.BaseSampler]] = {
    SamplerKind.NSGA2: lambda c, cf: optuna.samplers.NSGAIISampler(population_size=c.population, seed=c.seed,
                                                                   constraints_func=cf),
    SamplerKind.NSGA3: lambda c, cf: optuna.samplers.NSGAIIISampler(population_size=c.population, seed=c.seed,
                                                                    constraints_func=cf),
    SamplerKind.TPE: lambda c, cf: optuna.samplers.TPESampler(seed=c.seed, constraints_func=cf,
                                                              n_startup_trials=min(10, c.population)),
    SamplerKind.RANDOM: lambda c, cf: optuna.samplers.RandomSampler(seed=c.seed),
    SamplerKind.QMC: lambda c, cf: optuna.samplers.QMCSampler(seed=c.seed, warn_independent_sampling=False),
}


def make_sampler(config: SearchConfig, has_constraints: bool) -> optuna.samplers.BaseSampler:
    return SAMPLERS[config.sampler](config, _constraints_func if has_constraints else None)


def open_study(name: str, storage: str, config: SearchConfig, objectives: tuple[str, ...],
               has_constraints: bool) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                directions=[("maximize" if direction(o) == "max" else "minimize") for o in objectives],
                                sampler=make_sampler(config, has_constraints))
    stored = study.user_attrs.get("objectives")
    if stored is not None and tuple(stored) != objectives:
        raise StudyMismatch(f"the study in {storage} optimises {stored}, not {list(objectives)}; "
                            "rerun with --fresh to start over")
    study.set_user_attr("objectives", list(objectives))
    return study


def requeue_interrupted(study: optuna.Study) -> int:
    """Trials a killed run left RUNNING: marked failed and enqueued again with the same parameters."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return len(stale)


def finished(trial: FrozenTrial) -> bool:
    """A trial that counts towards the budget: scored, rejected, or failed with a recorded reason."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs)


def count_finished(study: optuna.Study) -> int:
    return sum(finished(t) for t in study.get_trials(deepcopy=False))


@dataclass(frozen=True)
class Outcome:
    """What one trial produced; `tell` turns it into optuna state."""

    state: TrialState
    metrics: dict[str, dict[str, Any]]  # fidelity -> metrics
    reason: str = ""
    seconds: float = 0.0


def evaluate_trial(evaluator: Evaluator, recipe: Recipe, constraints: tuple[Constraint, ...]) -> Outcome:
    """F0 gate and F1 on one build, then F2; any exception, or an F2 accuracy at chance level, becomes a FAIL with
    its reason: a collapsed network is cheap, so told as a point it would sit on the front and steer the sampler."""
    t0 = time.monotonic()
    try:
        f1 = evaluator.evaluate(recipe, Fidelity.F1, cost_gate(constraints))
        if "rejected" in f1:
            return Outcome(TrialState.PRUNED, {"f1": f1}, f1["rejected"], time.monotonic() - t0)
        f2 = evaluator.evaluate(recipe, Fidelity.F2)
    except Exception as err:  # noqa: BLE001 - a failing trial is recorded, and the study goes on
        return Outcome(TrialState.FAIL, {}, f"{type(err).__name__}: {err}"[:500], time.monotonic() - t0)
    collapsed = evaluator.collapsed(f2)
    state = TrialState.FAIL if collapsed else TrialState.COMPLETE
    return Outcome(state, {"f1": f1, "f2": f2}, collapsed or "", time.monotonic() - t0)


def tell(study: optuna.Study, trial: optuna.Trial, recipe: Recipe, outcome: Outcome, objectives: tuple[str, ...],
         constraints: tuple[Constraint, ...]) -> None:
    trial.set_user_attr("recipe", recipe.to_json())
    trial.set_user_attr("recipe_hash", recipe.hash())
    trial.set_user_attr("seconds", round(outcome.seconds, 2))
    for level, metrics in outcome.metrics.items():
        trial.set_user_attr(level, {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
    if outcome.state != TrialState.COMPLETE:
        trial.set_user_attr("fail_reason" if outcome.state == TrialState.FAIL else "reason", outcome.reason)
        study.tell(trial, state=outcome.state)
        return
    f2 = outcome.metrics["f2"]
    if constraints:
        violations = [c.violation(f2) for c in constraints]
        trial.set_user_attr("constraints", violations)
        trial.set_user_attr("feasible", all(v <= 0 for v in violations))
    study.tell(trial, [float(f2[o]) for o in objectives])


@dataclass
class Progress:
    """Trial count, best accuracy so far and an ETA, on one line per trial (and a tqdm bar when wanted)."""

    total: int
    done: int
    log: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    new: int = 0
    best: float = float("nan")

    def update(self, outcome: Outcome, recipe: Recipe, number: int) -> None:
        self.done += 1
        self.new += 1
        acc = outcome.metrics.get("f2", {}).get("accuracy")
        if acc is not None and outcome.state == TrialState.COMPLETE and not acc <= self.best:
            self.best = acc
        rate = (time.monotonic() - self.started) / self.new
        eta = rate * max(self.total - self.done, 0)
        what = f"F2 acc {acc:.2f}%" if acc is not None else outcome.state.name.lower()
        why = f" | {outcome.reason[:120]}" if outcome.reason else ""
        self.log(f"[{self.done}/{self.total}] trial {number}: {what} ({outcome.seconds:.0f} s) best {self.best:.2f}% "
                 f"ETA {eta / 60:.1f} min | {describe(recipe)}{why}")


def asked(study: optuna.Study, space: SearchSpace, total: int) -> Iterator[tuple[optuna.Trial, Recipe]]:
    """Trials to run until `total` count as finished (interrupted ones are retried first)."""
    while count_finished(study) < total:
        trial = study.ask()
        yield trial, space.suggest(trial)


def run_local(study: optuna.Study, space: SearchSpace, evaluator: Evaluator, config: SearchConfig,
              objectives: tuple[str, ...], constraints: tuple[Constraint, ...], progress: Progress) -> None:
    for trial, recipe in asked(study, space, config.trials):
        outcome = evaluate_trial(evaluator, recipe, constraints)
        tell(study, trial, recipe, outcome, objectives, constraints)
        progress.update(outcome, recipe, trial.number)

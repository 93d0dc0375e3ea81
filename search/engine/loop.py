"""The search loop: optuna asks for a recipe, the evaluator climbs the fidelity ladder, optuna is told.

One optuna study per run, persisted in an RDB storage (SQLite under the run folder by default), is the
single source of truth: rerunning the same command resumes it. A trial killed mid-way is left RUNNING
in the storage; the next run marks it failed ("interrupted") and enqueues its parameters again, so it is
retried and nothing finished is repeated (the result cache makes even a half-finished retry cheap). Only a
trial whose owner process is dead is retried (`OWNER_ATTR`), and a resumed sampler is reseeded by the
trials already told, so it proposes no recipe of the earlier run again (`reseed`).

Every recipe gets F0 and F1; `search.engine.promotion` decides, as its F1 result arrives, whether it earns F2.
What optuna is told (user attribute `told` says which level its values come from):
- `f2`: promoted and scored at F2; COMPLETE with its F2 values and its constraint values.
- `f1`: not promoted; COMPLETE with its F1 values, marked `f1_only`, and ranked behind every F2 trial (`tell`).
- `f0`: rejected at F0 by a cost constraint; COMPLETE but infeasible, told with its F0 costs, a worst-case
  accuracy and its constraint values, so that the sampler learns where the boundary lies (`tell`).
PRUNED: a target cannot run the recipe at all (`search.analysis.objectives.undeployable`, reason stored), or the trial
was not started because its own price was more than the search's clock had left (`Loop.too_late`: the
search ends there).
FAIL: an exception such as a diverging loss, or an F2 accuracy at chance level ("collapsed"; reason stored, metrics
kept). Only `f2` trials reach the front and the final stage. The study goes on after every one of them.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from enum import StrEnum
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from evaluators import metric_names as names
from evaluators.candidate import Evaluator
from evaluators.candidate import Fidelity
from search.analysis.objectives import Constraint
from search.analysis.objectives import cost_gate
from search.analysis.objectives import direction
from search.analysis.objectives import undeployable
from search.engine.budget import Clock
from search.engine.budget import Sizing
from search.engine.budget import parse_duration
from search.engine.owner import Owner
from search.engine.promotion import Decision
from search.engine.promotion import Promoter
from search.engine.promotion import PromotionKind
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
    promotion: PromotionKind = PromotionKind.MOASHA  # which F1 results earn F2 (search.engine.promotion)
    eta: int = field(default=3, metadata={"min": 2, "max": 1000})  # moasha: the top 1/eta of F1 results get F2
    budget: str = ""  # wall time, e.g. "60m" or "1h30m"; "" = the trial count alone
    # fit: the budget is the whole run, sized to it (search.sizing.plan); off: the search alone
    sizing: Sizing = Sizing.FIT
    max_trials: int = field(default=0, metadata={"min": 0, "max": 100_000})  # a sized plan's cap (--trials); 0: none
    # The first trials try each student of the space once (the rest of each recipe sampled as usual): a short
    # search's random first generation can miss a student altogether (the `cpu` run's 18 trials had no recipe
    # built on the teacher, so nothing on its front could face the thesis's ResNet-50 rows).
    seed_students: bool = True

    # After the front: quantized front members + the teacher as cascades (search.cascade.study), fitted on
    # validation to stay within `cascade_within` points of the teacher; non-dominated ones join the front.
    cascades: bool = False
    cascade_within: float = field(default=0.5, metadata={"min": 0.0, "max": 100.0})
    # Ray backend on a CUDA device: the share of one GPU each trial's task asks for (0.5 packs two per GPU).
    gpus_per_trial: float = field(default=1.0, metadata={"min": 0.0, "max": 64.0})

    def __post_init__(self) -> None:
        if self.budget:
            try:
                parse_duration(self.budget)
            except ValueError as err:
                raise ValueError(f"search.budget: {err}") from None

    @property
    def budget_seconds(self) -> float | None:
        return parse_duration(self.budget) if self.budget else None


class StudyMismatch(ValueError):
    """The stored study was made for other objectives; resuming it would mix incomparable trials."""


# NSGA-II, NSGA-III and TPE read each trial's constraint values (`tell` sets them with `Trial.set_constraint`,
# optuna 5's replacement of `constraints_func`): feasible trials rank first, infeasible ones by summed violation.
SAMPLERS: dict[SamplerKind, Callable[[SearchConfig], optuna.samplers.BaseSampler]] = {
    SamplerKind.NSGA2: lambda c: optuna.samplers.NSGAIISampler(population_size=c.population, seed=c.seed),
    SamplerKind.NSGA3: lambda c: optuna.samplers.NSGAIIISampler(population_size=c.population, seed=c.seed),
    SamplerKind.TPE: lambda c: optuna.samplers.TPESampler(seed=c.seed, n_startup_trials=min(10, c.population)),
    SamplerKind.RANDOM: lambda c: optuna.samplers.RandomSampler(seed=c.seed),
    SamplerKind.QMC: lambda c: optuna.samplers.QMCSampler(seed=c.seed, warn_independent_sampling=False),
}


def make_sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    return SAMPLERS[config.sampler](config)


def open_study(name: str, storage: str, config: SearchConfig, objectives: tuple[str, ...]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                directions=[("maximize" if direction(o) == "max" else "minimize") for o in objectives],
                                sampler=make_sampler(config))
    stored = study.user_attrs.get("objectives")
    if stored is not None and tuple(stored) != objectives:
        raise StudyMismatch(f"the study in {storage} optimises {stored}, not {list(objectives)}; "
                            "rerun with --fresh to start over")
    study.set_user_attr("objectives", list(objectives))
    with warnings.catch_warnings():  # experimental since optuna 3.2, and the only way to name objectives
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(objectives))  # optuna-dashboard shows "accuracy", not "objective 0"
    return study


def seed_students(study: optuna.Study, config: SearchConfig, students: tuple[str, ...]) -> int:
    """A new study's first trials: one per student (at most a generation's worth), each with only its student
    fixed, so NSGA-II's first generation covers every network. A study with trials already is left as it is (a
    resumed run does not seed twice)."""
    if not config.seed_students or study.get_trials(deepcopy=False):
        return 0
    chosen = list(students)[: config.population]
    for student in chosen:
        study.enqueue_trial({"student": student}, user_attrs={"seeded": True})
    return len(chosen)


OWNER_ATTR = "owner"  # the process that asked a trial (search.engine.owner): only a dead owner's trial is retried


def ask(study: optuna.Study) -> optuna.Trial:
    """A new trial, marked with this process as its owner."""
    trial = study.ask()
    trial.set_user_attr(OWNER_ATTR, Owner.me().label())
    return trial


def requeue_interrupted(study: optuna.Study, log: Callable[[str], None] | None = None) -> int:
    """Trials a killed run left RUNNING: marked failed and enqueued again with the same parameters. Only trials whose
    owner is dead (or unrecorded: older runs) are touched; a live run's trial in a shared storage, or one whose
    owner is on another host, is left alone."""
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = Owner.parse(str(t.user_attrs.get(OWNER_ATTR, "")))
        if owner is None or owner.alive() is False:
            stale.append(t)
        elif log is not None:
            log(f"trial {t.number} is running in {owner.label()} (alive or on another host): left alone")
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return len(stale)


def reseed(study: optuna.Study, config: SearchConfig) -> None:
    """A resumed study's sampler gets a seed that depends on the trials already told: restarted from the study's own
    seed, its random generator would propose the first run's recipes again (a kill -9 after 2 of 8 trials made the
    resumed run repeat both). A new study keeps `seed` itself, so a fresh run stays reproducible."""
    told = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    if told:
        seed = int(np.random.SeedSequence([config.seed, told]).generate_state(1)[0])
        study.sampler = make_sampler(replace(config, seed=seed))


def finished(trial: FrozenTrial) -> bool:
    """A trial that counts towards the budget: scored, rejected, or failed with a recorded reason."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs)


def count_finished(study: optuna.Study) -> int:
    return sum(finished(t) for t in study.get_trials(deepcopy=False))


@dataclass(frozen=True)
class Outcome:
    """What one trial produced; `tell` turns it into optuna state.

    `level` names the metrics optuna is told: "f2" (promoted), "f1" (not promoted) or "f0" (rejected at F0 by a
    cost constraint: costs only). `standing` is an F1-only trial's share of F1 results ranked ahead of it."""

    state: TrialState
    metrics: dict[str, dict[str, Any]]  # fidelity -> metrics (F0 costs are stored under "f1", without accuracy)
    reason: str = ""
    seconds: float = 0.0
    level: str = "f2"
    standing: float = 0.0
    promotion: str = ""  # the promotion decision, in words

    @property
    def awaits_f2(self) -> bool:
        """Promoted by `judge`, its F2 not run yet."""
        return self.state == TrialState.COMPLETE and self.level == "f2" and "f2" not in self.metrics


def first_rung(evaluator: Evaluator, recipe: Recipe, constraints: tuple[Constraint, ...]) -> Outcome:
    """F0 gate and F1 on one build. A recipe no target can run is PRUNED; one that breaks a cost constraint is an
    infeasible `f0` outcome (no accuracy is measured: it costs the F0 build only); an exception is a FAIL."""
    t0 = time.monotonic()
    try:
        f1 = evaluator.evaluate(recipe, Fidelity.F1, cost_gate(constraints))
    except Exception as err:  # noqa: BLE001 - a failing trial is recorded, and the study goes on
        return Outcome(TrialState.FAIL, {}, f"{type(err).__name__}: {err}"[:500], time.monotonic() - t0)
    seconds = time.monotonic() - t0
    if "rejected" not in f1:
        return Outcome(TrialState.COMPLETE, {"f1": f1}, seconds=seconds, level="f1")
    if undeployable(f1):
        return Outcome(TrialState.PRUNED, {"f1": f1}, f1["rejected"], seconds)
    return Outcome(TrialState.COMPLETE, {"f1": f1}, f1["rejected"], seconds, level="f0")


def second_rung(evaluator: Evaluator, recipe: Recipe, first: Outcome) -> Outcome:
    """F2 for a promoted recipe; an exception, or an F2 accuracy at chance level, becomes a FAIL with its reason:
    a collapsed network is cheap, so told as a point it would sit on the front and steer the sampler."""
    t0 = time.monotonic()
    try:
        f2 = evaluator.evaluate(recipe, Fidelity.F2)
    except Exception as err:  # noqa: BLE001 - a failing trial is recorded, and the study goes on
        return replace(first, state=TrialState.FAIL, reason=f"{type(err).__name__}: {err}"[:500],
                       seconds=first.seconds + time.monotonic() - t0)
    collapsed = evaluator.collapsed(f2)
    return replace(first, state=TrialState.FAIL if collapsed else TrialState.COMPLETE,
                   metrics={**first.metrics, "f2": f2}, reason=collapsed or "", level="f2",
                   seconds=first.seconds + time.monotonic() - t0)


def judge(first: Outcome, promoter: Promoter, objectives: tuple[str, ...]) -> Outcome:
    """The promotion decision for an F1 result (`level` stays "f1" when it is not promoted, becomes "f2" when it
    is: the caller then runs `second_rung`); any other outcome passes unchanged and adds nothing to the pool."""
    if first.level != "f1":
        return first
    f1 = first.metrics["f1"]
    decision: Decision = promoter.decide([float(f1[o]) for o in objectives], str(f1.get("recipe_hash", "")))
    if decision.promoted:
        return replace(first, level="f2", promotion=decision.note())
    return replace(first, standing=decision.standing, promotion=decision.note(), reason=decision.note())


def evaluate_trial(evaluator: Evaluator, recipe: Recipe, constraints: tuple[Constraint, ...]) -> Outcome:
    """The fixed ladder for one recipe: F0, F1, then F2 whatever F1 said (promotion `ladder`)."""
    first = first_rung(evaluator, recipe, constraints)
    return second_rung(evaluator, recipe, first) if first.level == "f1" else first


WORST_ACCURACY = 0.0  # what an F0-rejected recipe is told in place of the accuracy nobody measured
F1_STANDING = "f1_standing"  # the constraint an F1-only trial is told as infeasible by (`tell`)


def told_values(metrics: dict[str, Any], objectives: tuple[str, ...]) -> list[float]:
    return [float(metrics.get(o, WORST_ACCURACY if names.is_accuracy(o) else math.nan)) for o in objectives]


def tell(study: optuna.Study, trial: optuna.Trial, recipe: Recipe, outcome: Outcome, objectives: tuple[str, ...],
         constraints: tuple[Constraint, ...]) -> None:
    """Record `outcome` as the trial's attributes and tell optuna.

    What each kind of trial is told, and why (NSGA-II ranks all COMPLETE trials against each other, by optuna's
    constrained domination: feasible before infeasible, two infeasible ones by their summed violation):
    - F2 trials: their F2 values and constraint values. Only they are ever compared value against value.
    - F1-only trials: their F1 values, with one more constraint value, their F1 `standing` (> 0). F1 accuracy
      is systematically lower than F2's (no recovery training), so as plain points they would look dominated
      by F2 points of the same cost, and their costs would distort the crowding among real F2 points. Told as
      infeasible by standing, the fidelities stay apart: every F2 trial ranks ahead of every F1-only one, and
      F1-only trials rank among themselves by the order the promotion rule gave them at F1.
    - F0-rejected trials: their F0 costs (the F1 build's, exact), a worst-case accuracy of 0 (nothing was
      measured) and the cost constraints' violations (accuracy constraints count 0: unknown). NSGA-II and TPE
      then learn that the region is infeasible and how far past the bound it lies, at the cost of one build.
    Only F2 trials that satisfy every constraint are `feasible` and reach the front (`search.engine.final`)."""
    trial.set_user_attr("recipe", recipe.to_json())
    trial.set_user_attr("recipe_hash", recipe.hash())
    trial.set_user_attr("seconds", round(outcome.seconds, 2))
    for level, metrics in outcome.metrics.items():
        trial.set_user_attr(level, {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
    if outcome.promotion:
        trial.set_user_attr("promotion", outcome.promotion)
    if outcome.state != TrialState.COMPLETE:
        trial.set_user_attr("fail_reason" if outcome.state == TrialState.FAIL else "reason", outcome.reason)
        study.tell(trial, state=outcome.state)
        return
    metrics = outcome.metrics["f1" if outcome.level == "f0" else outcome.level]
    violations = [c.violation(metrics) if c.column in metrics else 0.0 for c in constraints]
    for i, (c, v) in enumerate(zip(constraints, violations, strict=True)):
        trial.set_constraint(f"{i}:{c}", v)
    if outcome.level == "f1":
        trial.set_constraint(F1_STANDING, outcome.standing)
    trial.set_user_attr("feasible", outcome.level != "f0" and all(v <= 0 for v in violations))
    trial.set_user_attr("told", outcome.level)
    if outcome.level == "f1":
        trial.set_user_attr("f1_only", True)
    if outcome.reason:
        trial.set_user_attr("reason", outcome.reason)
    study.tell(trial, told_values(metrics, objectives))


def told_at_f2(trial: FrozenTrial) -> bool:
    """A COMPLETE trial whose values are F2 results (trials told before promotion existed all were)."""
    return trial.state == TrialState.COMPLETE and trial.user_attrs.get("told", "f2") == "f2"


def make_promoter(study: optuna.Study, config: SearchConfig, objectives: tuple[str, ...]) -> Promoter:
    """The promotion pool a resumed run starts from: every F1 result the study has measured, once per recipe, in
    trial order, and the recipes that were scored at F2."""
    promoter = Promoter(config.promotion, config.eta, [direction(o) for o in objectives])
    for t in study.get_trials(deepcopy=False):
        f1, key = t.user_attrs.get("f1", {}), str(t.user_attrs.get("recipe_hash", ""))
        if not finished(t) or "accuracy" not in f1 or not all(o in f1 for o in objectives):
            continue
        promoter.add([float(f1[o]) for o in objectives], key)
        if "f2" in t.user_attrs and key:
            promoter.scored.add(key)
    return promoter


@dataclass
class Progress:
    """Trial count, best accuracy so far and an ETA, on one line per trial (and a tqdm bar when wanted); with a
    wall-clock budget the ETA is never past the time left."""

    total: int
    done: int
    log: Callable[[str], None]
    clock: Clock | None = None
    started: float = field(default_factory=time.monotonic)
    new: int = 0
    best: float = float("nan")

    def update(self, outcome: Outcome, recipe: Recipe, number: int) -> None:
        self.done += 1
        self.new += 1
        acc = outcome.metrics.get(outcome.level, {}).get("accuracy")
        if acc is not None and outcome.state == TrialState.COMPLETE and outcome.level == "f2" \
                and not acc <= self.best:
            self.best = acc
        rate = (time.monotonic() - self.started) / self.new
        eta = rate * max(self.total - self.done, 0)
        left = self.clock.left() if self.clock else None
        eta = eta if left is None else min(eta, left)
        what = f"{outcome.level.upper()} acc {acc:.2f}%" if acc is not None else \
            ("infeasible at F0" if outcome.level == "f0" else outcome.state.name.lower())
        why = f" | {outcome.reason[:120]}" if outcome.reason else ""
        self.log(f"[{self.done}/{self.total}] trial {number}: {what} ({outcome.seconds:.0f} s) best {self.best:.2f}% "
                 f"ETA {eta / 60:.1f} min | {describe(recipe)}{why}")


@dataclass
class Loop:
    """What the search loop of either backend needs besides the study: the rules, the promotion pool, the clock."""

    objectives: tuple[str, ...]
    constraints: tuple[Constraint, ...]
    trials: int
    promoter: Promoter
    clock: Clock
    # Seconds a recipe's trial is priced at on this machine (its own network's F1 and F2, and its student's training
    # where no trial trained it yet: `search.sizing.trial_prices`); None: no price, the clock alone decides.
    price: Callable[[Recipe], float] | None = None

    def may_ask(self, study: optuna.Study, running: int = 0) -> bool:
        """Another trial may start: the count is not reached (running trials included) and time is left."""
        return count_finished(study) + running < self.trials and not self.clock.up()

    def too_late(self, recipe: Recipe) -> str:
        """Why the trial of `recipe` must not start (its price is more than the clock has left), or ""."""
        left = self.clock.left()
        if left is None or self.price is None:
            return ""
        cost = self.price(recipe)
        return f"not started: priced at {cost:.0f} s, {left:.0f} s left on the search's clock" if cost > left else ""

    def skip(self, study: optuna.Study, trial: optuna.Trial, recipe: Recipe, reason: str) -> None:
        """Tell a trial that was asked but must not run (`too_late`): pruned, with its reason."""
        trial.set_user_attr("recipe", recipe.to_json())
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.PRUNED)

    def told(self, study: optuna.Study, trial: optuna.Trial, recipe: Recipe, outcome: Outcome,
             progress: Progress) -> None:
        tell(study, trial, recipe, outcome, self.objectives, self.constraints)
        self.clock.record(study, outcome.seconds)
        progress.update(outcome, recipe, trial.number)


def asked(study: optuna.Study, space: SearchSpace, total: int,
          clock: Clock | None = None) -> Iterator[tuple[optuna.Trial, Recipe]]:
    """Trials to run until `total` count as finished or the clock is up (interrupted ones are retried first)."""
    while count_finished(study) < total and not (clock and clock.up()):
        trial = ask(study)
        yield trial, space.suggest(trial)


def run_local(study: optuna.Study, space: SearchSpace, evaluator: Evaluator, loop: Loop, progress: Progress) -> None:
    for trial, recipe in asked(study, space, loop.trials, loop.clock):
        late = loop.too_late(recipe)
        if late:  # the search ends here: a trial that cannot finish would overrun the budget
            loop.skip(study, trial, recipe, late)
            progress.log(f"search stops: trial {trial.number} ({describe(recipe)}) {late}")
            return
        outcome = judge(first_rung(evaluator, recipe, loop.constraints), loop.promoter, loop.objectives)
        if outcome.awaits_f2:
            outcome = second_rung(evaluator, recipe, outcome)
        loop.told(study, trial, recipe, outcome, progress)

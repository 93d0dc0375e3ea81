"""A run sized to its wall-clock budget: teacher epochs, trials and F2/F3 step counts from measured step times.

Why: a profile's counts were chosen on one machine; on a slower one the same `cpu` profile runs for hours, on a
faster one it leaves most of the hour unused. With `[search] budget` (and `sizing = "fit"`, the default) the
budget is the whole run's wall time: a few training steps of the teacher's network and a few evaluation
batches are timed on this machine, and the budget is shared out (`Shares`: the teacher's; the search and the
final stage share the rest). Nothing is sized below `Minimums`; when even
those do not fit, the plan says so and gives its estimate. The plan is written to `plan.json` in the run
folder: a resumed run reads it instead of measuring again, so it searches the same space with the same teacher.

The cost model is deliberately simple. Each fresh student's training step is timed on the student itself (a
smaller network is not a faster one per step: MobileNetV2 with its small stem costs more than twice the ResNet-50
teacher's step at 32 px), and each (student, distillation, step count) is trained once. A recipe's
fine-tuning and evaluation cost what its own network costs: the baselines' networks are known, a searched
recipe's is the mean over the space's networks. Evaluation is timed per network, float and fake-quantized, because
it does not scale like training (per image, a fake-quantized network costs far more than its training step's ratio
to the teacher's says): the images a recipe is scored on run at its quantized rate, calibration and BN statistics
at the float one. MO-ASHA promotes 1/eta of the trials. When the profile does not fit, every step count (students
at each level, F2 and F3 fine-tuning) shrinks by one common factor k, found by bisection, and the trial count by
sqrt(k): F3 never gets fewer steps than F2, and the search keeps its breadth. The measurements behind these rules
are in docs/results/sizing/README.md.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from evaluators.candidate import FidelityConfig
from evaluators.candidate import LevelConfig
from evaluators.data.batches import Batcher
from evaluators.data.splits import Splits
from evaluators.teacher.prepare import CacheStatus
from evaluators.training.loop import Schedule
from evaluators.training.loop import TrainConfig
from evaluators.training.loop import train
from evaluators.training.precision import Precision
from evaluators.training.precision import cpu_has_bf16
from search.config import StudyConfig
from search.engine import final
from search.engine.budget import Sizing
from search.engine.budget import describe_duration
from search.engine.budget import parse_duration
from search.engine.final import Candidate
from search.engine.promotion import PromotionKind
from search.sizing.recipe_work import recipe_unscored
from search.sizing.recipe_work import searched_unscored
from spaces.models.architectures import create_model
from spaces.quant.quantization import calibrate
from spaces.quant.quantization import quantize_model
from spaces.recipe import TEACHER
from spaces.recipe import Calibration
from spaces.recipe import DistillKind
from spaces.recipe import PruneSchedule
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import finetunes
from spaces.space import distillation_variants

PLAN_FILE = "plan.json"
MAX_GROWTH = 4  # a loose budget multiplies the profile's teacher epochs and trials by at most this
WARM_STEPS = 1
TIMED_STEPS = 2
# The teacher's step prices most of the run (its epochs, and every fine-tune and evaluation scales from it): timed
# longer, because a short timing varied widely between runs minutes apart (docs/results/sizing/README.md).
TEACHER_WARM_STEPS = 2
TEACHER_TIMED_STEPS = 3
EVAL_TIMED = 64  # images per timed evaluation batch
# Seconds per evaluation job beyond its steps and images (building the recipe, cost models, the sampler): a small
# network's F1 trial costs several times what its steps and images predict (docs/results/sizing/README.md).
JOB_OVERHEAD_S = 0.5


@dataclass(frozen=True)
class Shares:
    """The most of the budget the teacher's training may take, and the least the search keeps (`plan_run`).

    Why a guaranteed share: without one the final stage's floor (11 baselines scored on the whole test split) and
    the teacher took the hour, and the `cpu` run of issue 30 searched for 2 minutes. At 30% on a 2-core Xeon the
    fresh run still searches about 18 minutes; with the teacher and baselines cached the search takes what the
    front's final stage leaves."""

    teacher: float = 0.35
    search: float = 0.30


@dataclass(frozen=True)
class StepTimes:
    """Seconds measured on this machine: one teacher training step, one fine-tune step of the teacher's network
    (at the fine-tune batch size), and one image's forward pass in evaluation."""

    teacher_step: float
    finetune_step: float
    eval_image: float
    student_step: dict[str, float] = field(default_factory=dict)  # per fresh student network, its batch size
    # Seconds per evaluated image of each network ("teacher": the teacher's), as it is (float) and fake-quantized
    # (8-bit PTQ): neither scales like training (measured: docs/results/sizing/README.md).
    eval_float: dict[str, float] = field(default_factory=dict)
    eval_quant: dict[str, float] = field(default_factory=dict)
    # The teacher's arithmetic when `auto` could choose: bf16 and fp32 both timed on a CPU with bf16 instructions,
    # the faster kept ("": nothing to choose). Such a CPU is not always faster in bf16, even where it usually is
    # (docs/results/sizing/README.md).
    teacher_precision: str = ""
    teacher_steps: dict[str, float] = field(default_factory=dict)  # seconds per step in each arithmetic timed
    # Seconds per QAT fine-tune step of the teacher's network (8-bit fake quantization; 0: not timed, priced as a
    # float step). QAT steps cost more than float ones, which left the baselines' QAT recipes under-priced.
    qat_step: float = 0.0

    def qat_ratio(self) -> float:
        return self.qat_step / self.finetune_step if self.qat_step and self.finetune_step else 1.0

    def student(self, arch: str) -> float:
        """Seconds per training step of `arch` (a plan from before students were timed: the fine-tune step)."""
        return self.student_step.get(arch, self.finetune_step)


@dataclass(frozen=True)
class Counts:
    teacher_epochs: int
    trials: int
    student_steps: int  # at the level that trains students longest (F3); the other levels in proportion
    f2_steps: int
    f3_steps: int
    final: int = 0  # front recipes given F3 (and a cascade); 0: the profile's `final_max`


@dataclass(frozen=True)
class RunPlan:
    budget: str
    shares: Shares
    times: StepTimes
    counts: Counts
    profile: Counts  # the profile's own counts, for comparison
    teacher_ready: bool  # the user's teacher, or the profile's already cached: no training time
    estimate: dict[str, float]  # seconds: teacher, search, final
    notes: tuple[str, ...] = ()
    # The most trials the search may run: `counts.trials` is what the estimate prices, but the search's clock is
    # the limit that keeps the run to its budget, so trials that cost less than priced leave room for more
    # (0: a plan from before, where the estimate was the limit).
    trial_cap: int = 0
    # Seconds of the final stage that wait for the front (F3 of its recipes, their students, the cascades); the
    # rest, the baselines, run before the search (0: a plan from before, the whole final stage waits).
    front_stage: float = 0.0
    baseline_stage: float = 0.0  # seconds of the baselines (0: cached for the teacher at these counts)
    teacher_from: int = 0  # epochs of the cached entry the teacher's training continues (0: a new teacher)
    teacher_cached: int = 0  # epochs of the strongest cached teacher when the plan was made
    baselines_cached: bool = False  # the baselines' results are in the cache for this teacher and these counts

    @property
    def search_budget(self) -> str:
        """The search's own wall-clock limit (the clock that stops asking for trials)."""
        return describe_duration(max(self.estimate["search"], 1.0))

    def search_seconds(self, spent: float) -> float:
        """The search's wall-clock limit once `spent` seconds (sizing, data, teacher, baselines) have gone: what the
        budget leaves after them and the estimate of the front's final stage (a plan from before `front_stage`: the
        whole final stage). A teacher or baselines faster than their measured steps said leave the search more time,
        slower ones less, so the run as a whole keeps to the budget; never below a quarter of the planned search (a
        search of a few trials says nothing)."""
        still = self.front_stage or self.estimate["final"]
        left = parse_duration(self.budget) - spent - still
        return round(max(left, self.estimate["search"] / 4, 1.0), 1)

    def apply(self, config: StudyConfig) -> StudyConfig:
        """The sized config. Its budget is the search's share and its sizing `off`: sized once, it stays so
        wherever it is read back (config.json, a Ray worker)."""
        c, fid = self.counts, config.fidelity
        precision = Precision(self.times.teacher_precision or config.teacher.train.precision)
        if self.teacher_ready:  # the user's (or one given in memory), or the cache's as it is: never trained here
            teacher = config.teacher if not self.teacher_cached else config.teacher.for_epochs(
                min(self.teacher_cached, config.teacher.train.epochs))
        else:
            teacher = config.teacher.for_epochs(c.teacher_epochs)
            teacher = replace(teacher, train=replace(teacher.train, precision=precision))
        return replace(config, teacher=teacher, fidelity=sized_fidelity(fid, c, self.profile),
                       search=replace(config.search, trials=max(c.trials, self.trial_cap), budget=self.search_budget,
                                      sizing=Sizing.OFF, final_max=c.final or config.search.final_max))

    def describe(self) -> str:
        """The plan as one block of lines, printed before the run and kept in report.md."""
        c, p, t, s, e = self.counts, self.profile, self.times, self.shares, self.estimate
        students = ", ".join(f"{a} {v:.3f}" for a, v in sorted(t.student_step.items()))
        timed = ", ".join(f"{k} {v:.3f}" for k, v in sorted(t.teacher_steps.items()))
        arithmetic = f" in {t.teacher_precision} ({timed} s/step timed)" if t.teacher_precision else ""
        return "\n".join([
            f"run plan for a budget of {self.budget} (the teacher at most {s.teacher:.0%}, the search at least "
            f"{s.search:.0%}):",
            *self.share_lines(),
            f"  measured here: teacher {t.teacher_step:.3f} s/step, fine-tune {t.finetune_step:.3f} s/step, "
            f"evaluation {1000 * t.eval_image:.3f} ms/image, plus {JOB_OVERHEAD_S} s per evaluation job",
            *([f"  student steps (s): {students}"] if students else []),
            f"  teacher: {self.teacher_line()}{arithmetic if not self.teacher_ready else ''}",
            f"  search: about {c.trials} trials (profile {p.trials}; at most {max(c.trials, self.trial_cap)}) within "
            f"{self.search_budget}, moved by what the run really spends before it; F2 "
            f"{c.f2_steps} fine-tune steps (profile {p.f2_steps}), students up to {c.student_steps} steps "
            f"(profile {p.student_steps}), about {describe_duration(e['search'])}",
            f"  final stage: F3 {c.f3_steps} fine-tune steps (profile {p.f3_steps}), about "
            f"{describe_duration(e['final'])}"
            + (f", of which the baselines {describe_duration(self.baseline_stage)}" if self.baseline_stage else
               " (the baselines' results are cached for this teacher and these counts)" if self.baselines_cached
               else ""),
            f"  estimated total {describe_duration(sum(e.values()))}",
            *(f"  note: {n}" for n in self.notes)])

    def as_json(self) -> dict:
        return asdict(self)

    def teacher_line(self) -> str:
        c, p, e = self.counts, self.profile, self.estimate
        if self.teacher_ready:
            return "ready (the user's, or the strongest in the cache" + (
                f", {self.teacher_cached} epochs" if self.teacher_cached else "") + "): no training"
        start = f" continuing the cached {self.teacher_from}" if self.teacher_from else ""
        return f"{c.teacher_epochs} epochs{start} (profile {p.teacher_epochs}), about {describe_duration(e['teacher'])}"

    def share_lines(self) -> list[str]:
        """The shares the plan chose, each with its reason."""
        e = self.estimate
        total = max(sum(e.values()), 1e-9)
        why_teacher = "no training" if self.teacher_ready else (
            f"{self.counts.teacher_epochs - self.teacher_from} epochs to train, at most {self.shares.teacher:.0%}")
        why_base = "cached for this teacher and these counts" if self.baselines_cached else \
            "scored before the search, at the plan's step counts"
        return [f"  shares: teacher {e['teacher'] / total:.0%} ({why_teacher}); baselines "
                f"{self.baseline_stage / total:.0%} ({why_base}); search {e['search'] / total:.0%} (at least "
                f"{self.shares.search:.0%}: its clock gets what the rest leaves); front's final stage "
                f"{(e['final'] - self.baseline_stage) / total:.0%} (F3, and a cascade where the study makes them, "
                f"for up to {self.counts.final or self.profile.final} front recipes)"]

    @classmethod
    def from_json(cls, raw: dict) -> RunPlan:
        """A plan read back; a plan.json written by an older version raises KeyError or TypeError (sized again)."""
        if "baseline_stage" not in raw:
            raise KeyError("plan.json was written by an older version")
        return cls(**{k: v for k, v in raw.items() if k not in ("shares", "times", "counts", "profile", "notes")},
                   shares=Shares(**raw["shares"]), times=StepTimes(**raw["times"]), counts=Counts(**raw["counts"]),
                   profile=Counts(**raw["profile"]), notes=tuple(raw["notes"]))


def sized_fidelity(fid: FidelityConfig, c: Counts, profile: Counts) -> FidelityConfig:
    """The profile's levels with the plan's step counts (the other levels' student and recovery steps in
    proportion)."""
    scale = c.student_steps / max(profile.student_steps, 1)
    f2 = _with_steps(fid.f2, c.f2_steps, scale, c.f2_steps / max(profile.f2_steps, 1))
    f3 = _with_steps(fid.f3, c.f3_steps, scale, c.f3_steps / max(profile.f3_steps, 1))
    f1 = _with_steps(fid.f1, fid.f1.budget.finetune_steps, scale, c.f2_steps / max(profile.f2_steps, 1))
    return replace(fid, f1=f1, f2=f2, f3=f3)


def _with_steps(level: LevelConfig, finetune: int, student_scale: float, recovery_scale: float) -> LevelConfig:
    b = level.budget
    return replace(level, budget=replace(b, finetune_steps=finetune if b.finetune_steps else 0,
                                         student_steps=scaled_steps(b.student_steps, student_scale),
                                         recovery_steps=scaled_steps(b.recovery_steps, recovery_scale)))


def scaled_steps(steps: int, scale: float) -> int:
    """A level's student (or recovery) steps at `scale` of the profile's; a level without any keeps 0."""
    return max(1, round(steps * scale)) if steps else 0


@dataclass(frozen=True)
class Minimums:
    """Below these a run says nothing: one teacher epoch, one sampler generation, a few steps per level (or the
    profile's own count where that is smaller)."""

    teacher_epochs: int = 1
    f2_steps: int = 10
    f3_steps: int = 20
    student_steps: int = 50
    final: int = 2  # front recipes given F3: the knee and the most accurate

    def of(self, profile: Counts, population: int) -> Counts:
        return Counts(teacher_epochs=min(self.teacher_epochs, profile.teacher_epochs),
                      trials=min(population, profile.trials), student_steps=min(self.student_steps,
                                                                                profile.student_steps),
                      f2_steps=min(self.f2_steps, profile.f2_steps), f3_steps=min(self.f3_steps, profile.f3_steps),
                      final=min(self.final, profile.final))


def profile_counts(config: StudyConfig) -> Counts:
    f = config.fidelity
    return Counts(teacher_epochs=config.teacher.train.epochs, trials=config.search.trials,
                  student_steps=max(f.f1.budget.student_steps, f.f2.budget.student_steps, f.f3.budget.student_steps),
                  f2_steps=f.f2.budget.finetune_steps, f3_steps=f.f3.budget.finetune_steps,
                  final=config.search.final_max)


@dataclass(frozen=True)
class Workload:
    """What the study does per unit, in the units `StepTimes` prices: steps and images."""

    teacher_epoch_steps: int
    teacher_eval_images: int
    level_images: dict[str, int]  # images evaluated per recipe at f1, f2, f3
    recovery_steps: dict[str, int]  # the profile's steps per recovery phase of an iterative pruning, per level
    promoted: float  # share of trials that reach F2
    final_jobs: int  # front recipes given F3
    baseline_jobs: int  # baselines, given F1, F2 and F3
    # Each (student network, distillation kind) the search may train at F1 and F2, once per (temperature, alpha)
    # setting; the baselines' (trained at F1, F2 and F3, unless the search has them); and the front's that F3 may
    # train (at most final_jobs more of the space's).
    search_students: tuple[tuple[str, str], ...] = ()
    baseline_students: tuple[tuple[str, str], ...] = ()
    front_students: tuple[tuple[str, str], ...] = ()
    cascades: int = 0  # front members that become a cascade with the teacher (each scored on validation and test)
    student_levels: dict[str, int] = field(default_factory=dict)  # the profile's student steps at f1, f2, f3
    student_batch: int = 64  # images per student step: feature distillation runs the teacher on each of them
    distill_images: int = 0  # training images the teacher labels once (its logits are cached) when any pair distils
    # The network each baseline fine-tunes and evaluates (empty: the teacher's, for all), and those the search may
    # pick: a MobileNetV2 recipe's fine-tune step and evaluation cost what its network costs, not the teacher's.
    baseline_networks: tuple[str, ...] = ()
    space_networks: tuple[str, ...] = (TEACHER,)
    # Recovery phases (an iterative pruning in n steps trains between them: n - 1) of each baseline, and of a
    # searched recipe on average; the profile's fine-tune steps per level, which recovery scales with.
    baseline_recoveries: tuple[int, ...] = ()
    searched_recoveries: float = 0.0
    finetune_levels: dict[str, int] = field(default_factory=dict)
    # Of `level_images`, those scored (validation and test) on the finished, usually fake-quantized, recipe; the
    # rest (calibration, BN statistics, pruning candidates) run on the float network. Which baselines quantize, and
    # the share of the space's quantization kinds that do.
    scored_images: dict[str, int] = field(default_factory=dict)
    baseline_quantized: tuple[bool, ...] = ()
    searched_quantized: float = 0.0
    # Which baselines fine-tune (a pruned recipe recovers, QAT trains; an unpruned float or PTQ recipe trains
    # nothing at any level), and the share of the space's (pruning, quantization) kinds that do.
    baseline_finetunes: tuple[bool, ...] = ()
    searched_finetunes: float = 1.0
    # The images each baseline, and a searched recipe on average, evaluates besides its scored ones, per level
    # (`search.sizing.recipe_work`; empty: every recipe as if it calibrated and scored every pruning candidate), and
    # which baselines (the space's share of recipes) fine-tune with QAT.
    baseline_unscored: tuple[dict[str, int], ...] = ()
    searched_unscored: dict[str, float] = field(default_factory=dict)
    baseline_qat: tuple[bool, ...] = ()
    searched_qat: float = 0.0
    # Images every recipe's job runs per level to score its accuracy under the targets' other arithmetics
    # (`HardwareConfig.extra_arithmetics`: the DPU's): each calibrates on `calib_images` and scores the level's
    # validation (and at F3 test) images once more, on an emulated quantized network. Empty: one arithmetic.
    arithmetic_images: dict[str, int] = field(default_factory=dict)

    def student_steps(self, level: str, top: int) -> int:
        """`level`'s student steps when the longest level (F3) gets `top`."""
        return scaled_steps(self.student_levels.get(level, 0), top / max(max(self.student_levels.values(),
                                                                                 default=0), 1))


def workload(config: StudyConfig, splits: Splits, baselines: list[Candidate]) -> Workload:
    sizes, fid, space = splits.sizes(), config.fidelity, config.space

    def scored(name: str) -> int:
        level: LevelConfig = getattr(fid, name)
        val = level.val_images or sizes["val"]
        test = (level.test_images or sizes["test"]) if name == "f3" else 0
        return min(val, sizes["val"]) + min(test, sizes["test"])

    def images(name: str) -> int:  # EagleEye recalibrates BN and scores each candidate
        b = getattr(fid, name).budget
        return scored(name) + b.calib_images + (b.bn_images + b.score_images) * b.max_candidates

    variants = distillation_variants(space) or config.search.trials  # a continuous range: a student per trial
    kinds = [(str(k), 1 if k == DistillKind.NONE else variants) for k in space.distill_kinds]
    searched = [(s, k) for s in space.students if s != TEACHER for k, n in kinds for _ in range(n)]
    owned = list(dict.fromkeys((r.recipe.student, str(r.recipe.distill.kind)) for r in baselines
                               if r.recipe.student != TEACHER))
    others = sorted(dict.fromkeys(p for p in searched if p not in owned))
    iterative = (space.iterative_steps - 1) / len(space.schedules) if PruneSchedule.ITERATIVE in space.schedules else 0
    promoted = 1.0 / config.search.eta if config.search.promotion == PromotionKind.MOASHA else 1.0
    distils = any(kind != DistillKind.NONE for _, kind in [*searched, *owned])
    extra = len(config.hardware.extra_arithmetics())
    return Workload(teacher_epoch_steps=len(splits.train) // config.teacher.train.batch_size,
                    teacher_eval_images=sizes["val"] + sizes["test"],
                    level_images={n: images(n) for n in ("f1", "f2", "f3")},
                    recovery_steps={n: getattr(fid, n).budget.recovery_steps for n in ("f1", "f2", "f3")},
                    promoted=promoted, final_jobs=config.search.final_max, baseline_jobs=len(baselines),
                    search_students=tuple(searched), baseline_students=tuple(owned),
                    front_students=tuple(others[: config.search.final_max]),
                    cascades=config.search.final_max if config.search.cascades else 0,
                    student_batch=fid.f3.budget.student_train.batch_size,
                    student_levels={n: getattr(fid, n).budget.student_steps for n in ("f1", "f2", "f3")},
                    distill_images=len(splits.train) if distils else 0,
                    baseline_networks=tuple(r.recipe.student for r in baselines), space_networks=space.students,
                    baseline_recoveries=tuple(r.recipe.prune.steps - 1 if r.recipe.prune.schedule ==
                                              PruneSchedule.ITERATIVE else 0 for r in baselines),
                    searched_recoveries=iterative,
                    finetune_levels={n: getattr(fid, n).budget.finetune_steps for n in ("f1", "f2", "f3")},
                    scored_images={n: scored(n) for n in ("f1", "f2", "f3")},
                    baseline_quantized=tuple(r.recipe.quant.kind != QuantKind.NONE for r in baselines),
                    searched_quantized=sum(k != QuantKind.NONE for k in space.quant_kinds) / len(space.quant_kinds),
                    baseline_finetunes=tuple(finetunes(r.recipe.prune.kind, r.recipe.quant.kind) for r in baselines),
                    searched_finetunes=sum(finetunes(p, q) for p in space.prune_kinds for q in space.quant_kinds) /
                    max(len(space.prune_kinds) * len(space.quant_kinds), 1),
                    baseline_unscored=tuple({n: recipe_unscored(r.recipe, getattr(fid, n).budget)
                                             for n in ("f1", "f2", "f3")} for r in baselines),
                    searched_unscored={n: searched_unscored(space, getattr(fid, n).budget) for n in ("f1", "f2", "f3")},
                    baseline_qat=tuple(r.recipe.quant.kind == QuantKind.QAT for r in baselines),
                    searched_qat=sum(k == QuantKind.QAT for k in space.quant_kinds) / len(space.quant_kinds),
                    arithmetic_images={n: extra * (scored(n) + getattr(fid, n).budget.calib_images)
                                       for n in ("f1", "f2", "f3")} if extra else {})


@dataclass(frozen=True)
class Price:
    """Seconds of each piece of work at the measured step times."""

    times: StepTimes
    work: Workload

    def speed(self, network: str) -> float:
        """What a step or an evaluated image of `network` costs against the teacher's network's (the ratio of their
        measured training steps: evaluation is taken to scale like training)."""
        return 1.0 if network == TEACHER else self.times.student(network) / max(self.times.finetune_step, 1e-9)

    def eval_image(self, network: str, quantized: bool) -> float:
        """Seconds per evaluated image of `network` (a plan from before these were timed: the teacher's float
        evaluation scaled like training)."""
        measured = (self.times.eval_quant if quantized else self.times.eval_float).get(network)
        return measured if measured is not None else self.speed(network) * self.times.eval_image

    def level(self, name: str, steps: int, network: str = TEACHER, recoveries: float | None = None,
              quantized: bool = False, trains: float = 1.0, unscored: float | None = None, qat: float = 0.0) -> float:
        """One evaluation job at `name` with `steps` fine-tune steps, on `network`, with `recoveries` recovery phases
        (None: a searched recipe's mean); recovery shrinks with the fine-tuning (`RunPlan.apply`). The scored images
        run on the finished recipe (fake-quantized when `quantized`), the others on the float network. `trains`:
        whether (or the share of recipes for which) the fine-tune steps run at all (`finetunes`); `qat`: whether (or
        the share for which) they are QAT steps; `unscored`: the images evaluated besides the scored ones (None: all
        of the level's). Every job also scores the targets' other arithmetics (`Workload.arithmetic_images`)."""
        w = self.work
        phases = w.searched_recoveries if recoveries is None else recoveries
        profile = w.finetune_levels.get(name, 0)
        recovery = phases * w.recovery_steps[name] * (steps / profile if profile else 1.0)
        scored = w.scored_images.get(name, 0)
        unscored = w.level_images[name] - scored if unscored is None else unscored
        step = self.times.finetune_step * (1 + qat * (self.times.qat_ratio() - 1))
        return (JOB_OVERHEAD_S + trains * self.speed(network) * (steps + recovery) * step
                + (scored + w.arithmetic_images.get(name, 0)) * self.eval_image(network, quantized)
                + unscored * self.eval_image(network, False))

    @property
    def searched_networks(self) -> tuple[str, ...]:
        return self.work.space_networks or (TEACHER,)

    def searched_level(self, name: str, steps: int, networks: tuple[str, ...] | None = None) -> float:
        """A level of a recipe the search picks: the mean over the space's networks (or `networks`) and its kinds."""
        w = self.work
        q, t, u = w.searched_quantized, w.searched_finetunes, w.searched_unscored.get(name)
        qat = w.searched_qat / q if q else 0.0
        nets = networks or self.searched_networks
        return sum(q * self.level(name, steps, n, quantized=True, trains=t, unscored=u, qat=qat)
                   + (1 - q) * self.level(name, steps, n, trains=t, unscored=u) for n in nets) / len(nets)

    def trial(self, f2: int) -> float:
        return self.searched_level("f1", 0) + self.work.promoted * self.searched_level("f2", f2)

    def network_trial(self, network: str, f2: int) -> float:
        """The most a trial on `network` costs when its student is trained already: F1, and F2 should it be
        promoted (the engine starts no trial that this says cannot finish before the search's clock)."""
        return self.searched_level("f1", 0, (network,)) + self.searched_level("f2", f2, (network,))

    def student_step(self, pair: tuple[str, str]) -> float:
        arch, kind = pair
        teacher = self.work.student_batch * self.times.eval_image if kind == DistillKind.FEATURE else 0.0
        return self.times.student(arch) + teacher

    def search_students(self, top: int) -> float:
        """Every pair of the space trained at F1 and at F2 (each step count once: a cached student is shared), and
        the teacher's logits over the training split once."""
        w = self.work
        steps = sum(dict.fromkeys(w.student_steps(n, top) for n in ("f1", "f2")))
        return w.distill_images * self.times.eval_image + steps * sum(self.student_step(p) for p in w.search_students)

    def final_students(self, top: int, pairs: tuple[tuple[str, str], ...] | None = None) -> float:
        """The students the final stage trains (`pairs`: the baselines' and the front's): every level's for a pair
        the search never trains, F3's for the others (each step count once: a cached student is shared)."""
        w = self.work
        levels = [w.student_steps(n, top) for n in ("f1", "f2", "f3")]
        searched = set(levels[:2])
        total = 0.0
        for pair in (*w.baseline_students, *w.front_students) if pairs is None else pairs:
            steps = sum(dict.fromkeys(levels)) if pair not in w.search_students else \
                (0 if levels[2] in searched else levels[2])
            total += steps * self.student_step(pair)
        return total

    def cascade_stage(self) -> float:
        """Each cascade scores its front member and the teacher on the validation and test images."""
        w = self.work
        images = w.scored_images.get("f3", w.level_images["f3"])
        q = w.searched_quantized
        member = sum(q * self.eval_image(n, True) + (1 - q) * self.eval_image(n, False)
                     for n in self.searched_networks) / len(self.searched_networks)
        return w.cascades * images * (self.eval_image(TEACHER, False) + member)

    def final(self, f2: int, f3: int, top: int = 0) -> float:
        """The final stage: F3 for the front, F1, F2 and F3 for every baseline (each on its own network), the
        students these train, and the cascades."""
        return self.front_stage(f3, top) + self.baselines(f2, f3, top)

    def baselines(self, f2: int, f3: int, top: int) -> float:
        """F1, F2 and F3 for every baseline, each on its own network, and the students only they train."""
        w = self.work
        nets = w.baseline_networks or (TEACHER,) * w.baseline_jobs
        n = len(nets)
        rows = zip(nets, w.baseline_recoveries or (0,) * n, w.baseline_quantized or (False,) * n,
                   w.baseline_finetunes or (True,) * n, w.baseline_unscored or ({},) * n,
                   w.baseline_qat or (False,) * n, strict=True)
        return self.final_students(top, w.baseline_students) + sum(
            self.level(name, s, net, r, q, t, u.get(name), float(qat))
            for net, r, q, t, u, qat in rows for name, s in (("f1", 0), ("f2", f2), ("f3", f3)))

    def front_stage(self, f3: int, top: int) -> float:
        """The part of the final stage that waits for the search's front: F3 for its recipes, the students they
        train, and the cascades (the baselines need no front: a sized run scores them before the search)."""
        w = self.work
        return w.final_jobs * self.searched_level("f3", f3) + self.final_students(top, w.front_students) + \
            self.cascade_stage()

    def search(self, counts: Counts) -> float:
        return self.search_students(counts.student_steps) + counts.trials * self.trial(counts.f2_steps)

    def after_teacher(self, counts: Counts) -> float:
        return self.search(counts) + self.final(counts.f2_steps, counts.f3_steps, counts.student_steps)


def plan_run(config: StudyConfig, times: StepTimes, work: Workload, *, teacher_ready: bool = False,
             cache: CacheStatus | None = None, baselines_at: Counts | None = None, shares: Shares = Shares(),
             minimums: Minimums = Minimums()) -> RunPlan:
    """Share the budget out (`Shares`). The search keeps at least its share: the final stage's steps (baselines and
    the front's F3) and the trials shrink by one factor k (trials by sqrt(k)) until they fit beside it, never below
    `Minimums`; then the teacher's epochs are cut, never below one. The teacher gets at most its share, and more
    than the profile's epochs only while everything else has the profile's counts. A teacher in the cache with
    enough epochs costs nothing (`cache`; `teacher_ready`: the user's own), one with fewer is trained further, and
    baselines cached for that teacher at some step counts (`baselines_at`) cost nothing when the plan keeps those
    counts. Then the trials fill what is left."""
    budget = float(config.search.budget_seconds or 0.0)
    profile, price = profile_counts(config), Price(times, work)
    low = minimums.of(profile, config.search.population)
    epoch_s = work.teacher_epoch_steps * times.teacher_step + work.teacher_eval_images * times.eval_image
    most = max(low.teacher_epochs, min(math.floor(shares.teacher * budget / max(epoch_s, 1e-9)),
                                       MAX_GROWTH * profile.teacher_epochs))
    def choose(epochs: range, cached: CacheStatus | None) -> tuple[_Fit, bool]:
        """Concessions, in order, until the search has its share: steps (inside `_fit`), teacher epochs, front F3
        count. Returns the plan and whether it met the rules."""
        candidates = [_fit(config, _with_front(price, final), budget, e, teacher_ready, cached, baselines_at, shares,
                           low, epoch_s) for final in range(profile.final, low.final - 1, -1) for e in epochs]
        fits = [f for f in candidates
                if f.search_share >= shares.search and (f.k >= 1 or f.epochs <= profile.teacher_epochs)]
        return (fits[0], True) if fits else (max(candidates, key=lambda f: (f.search_share, f.epochs)), False)

    # The teacher's epochs are those a teacher trained from scratch would get here; the cache then saves what it
    # has of them. So the plan of a second run on the same machine asks for the epochs the first one trained (its
    # teacher and baselines come from the cache), and a plan trains a cached teacher further only where a fresh
    # teacher would have had more epochs (a larger budget, a faster machine).
    chosen, met = choose(range(most, low.teacher_epochs - 1, -1), None)
    if cache is not None and not teacher_ready:
        chosen, met = choose(range(chosen.epochs, chosen.epochs - 1, -1), cache)
    fits = [chosen] if met else []
    notes = list(chosen.notes)
    if chosen.epochs < most and not chosen.ready:
        notes.append(f"teacher epochs cut from {most} to {chosen.epochs}: the search keeps at least "
                     f"{shares.search:.0%} of the budget")
    if chosen.counts.final < profile.final:
        notes.append(f"F3 (and a cascade) for {chosen.counts.final} front recipes instead of {profile.final}: the "
                     f"search keeps at least {shares.search:.0%} of the budget")
    if not fits:
        notes.append(f"the search gets {chosen.search_share:.0%} of the budget, less than its {shares.search:.0%}: "
                     "the minimum final stage and teacher leave no more")
    if chosen.epochs == 1 and config.teacher.single_pass and not chosen.ready and not chosen.start:
        changed = ", ".join(f"{key} {value}" for key, value in config.teacher.single_pass)
        notes.append(f"one teacher epoch: it trains with teacher.single_pass's settings ({changed})")
    if sum(chosen.estimate.values()) > budget * 1.05:
        notes.append(f"the budget is too small for the minimum plan: it needs about "
                     f"{describe_duration(sum(chosen.estimate.values()))}, more than {config.search.budget}")
    return RunPlan(budget=config.search.budget, shares=shares, times=times, counts=chosen.counts, profile=profile,
                   teacher_ready=chosen.ready, estimate=chosen.estimate, notes=tuple(notes),
                   trial_cap=max(chosen.cap, chosen.counts.trials), front_stage=chosen.front,
                   baseline_stage=chosen.baselines, teacher_from=chosen.start,
                   teacher_cached=cache.epochs if cache is not None else 0, baselines_cached=chosen.baselines_cached)


@dataclass(frozen=True)
class _Fit:
    epochs: int
    ready: bool
    start: int  # epochs the trained entry starts from
    k: float
    counts: Counts
    estimate: dict[str, float]
    front: float
    baselines: float
    cap: int
    baselines_cached: bool
    notes: tuple[str, ...]

    @property
    def search_share(self) -> float:
        total = sum(self.estimate.values())
        return self.estimate["search"] / total if total else 0.0


def _with_front(price: Price, final: int) -> Price:
    """`price` with `final` front recipes given F3 (and a cascade each, where the study makes cascades)."""
    w = price.work
    return replace(price, work=replace(w, final_jobs=min(final, w.final_jobs), cascades=min(final, w.cascades),
                                       front_students=w.front_students[:final]))


def _fit(config: StudyConfig, price: Price, budget: float, epochs: int, given: bool, cache: CacheStatus | None,
         baselines_at: Counts | None, shares: Shares, low: Counts, epoch_s: float) -> _Fit:
    """The plan with the teacher at `epochs`: the largest step factor k whose final stage leaves the search its
    share, and the trials that fill the rest."""
    profile = profile_counts(config)
    ready = given or (cache is not None and cache.ready_for(epochs))
    start = 0 if ready or cache is None else cache.continued_from
    teacher_s = 0.0 if ready else (epochs - start) * epoch_s
    room = budget - teacher_s
    pinned = baselines_at if ready and baselines_at is not None else None
    front = price.work.final_jobs

    def at(k: float) -> Counts:
        if pinned is not None:  # the cached baselines' step counts, or they would be scored again
            return replace(pinned, teacher_epochs=0, trials=max(low.trials, round(profile.trials * math.sqrt(k))),
                           final=front)
        return Counts(teacher_epochs=0 if ready else epochs, final=front,
                      trials=max(low.trials, round(profile.trials * math.sqrt(k))),
                      student_steps=max(low.student_steps, round(profile.student_steps * k)),
                      f2_steps=max(low.f2_steps, round(profile.f2_steps * k)),
                      f3_steps=max(low.f3_steps, round(profile.f3_steps * k)))

    def final(c: Counts) -> float:
        front = price.front_stage(c.f3_steps, c.student_steps)
        return front if pinned is not None else front + price.baselines(c.f2_steps, c.f3_steps, c.student_steps)

    def needs(k: float) -> float:
        c = at(k)
        return final(c) + max(shares.search * budget, price.search(c))

    k, notes = 1.0, []
    if pinned is None and needs(1.0) > room:
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if needs(mid) <= room else (lo, mid)
        k = lo
        notes.append(f"steps at {k:.0%} of the profile's (trials at {math.sqrt(k):.0%} before filling): the largest "
                     "share that leaves the search its time")
    counts = at(k)
    final_s = final(counts)
    cap = MAX_GROWTH * profile.trials
    if config.search.max_trials:
        cap = min(cap, config.search.max_trials)
    fill = math.floor((room - final_s - price.search_students(counts.student_steps)) /
                      max(price.trial(counts.f2_steps), 1e-9))
    counts = replace(counts, trials=min(max(fill, min(low.trials, cap)), cap))
    if config.search.max_trials and fill > config.search.max_trials:
        notes.append(f"trials capped at {config.search.max_trials} (--trials / [search] max_trials)")
    search_s = max(room - final_s, price.search(counts), 0.0)
    baselines_s = 0.0 if pinned is not None else price.baselines(counts.f2_steps, counts.f3_steps, counts.student_steps)
    estimate = {"teacher": round(teacher_s, 1), "search": round(search_s, 1), "final": round(final_s, 1)}
    return _Fit(epochs, ready, start, k, counts, estimate, round(final_s - baselines_s, 1), round(baselines_s, 1), cap,
                pinned is not None, tuple(notes))


def _timed_steps(model: nn.Module, splits: Splits, batcher: Batcher, config: TrainConfig,
                 device: torch.device, warm: int = WARM_STEPS, timed: int = TIMED_STEPS) -> float:
    """Seconds per training step after warm-up steps (constant schedule: a step costs the same under any)."""
    config = replace(config, schedule=Schedule.CONSTANT, epochs=1)
    train(model, splits.train, batcher, config, device=device, max_steps=warm, progress=False)
    return train(model, splits.train, batcher, config, device=device, max_steps=timed, progress=False).seconds / timed


def teacher_choices(config: TrainConfig, device: torch.device) -> tuple[Precision, ...]:
    """The arithmetics worth timing for the teacher: bf16 and fp32 where `auto` meets a CPU with bf16 instructions
    (either may be faster there), else none (the config's precision is what it is)."""
    auto_cpu = config.precision == Precision.AUTO and device.type == "cpu" and cpu_has_bf16()
    return (Precision.BF16, Precision.FP32) if auto_cpu else ()


def _teacher_steps(config: TrainConfig, network: Callable[[], nn.Module], splits: Splits, batcher: Batcher,
                   device: torch.device, choices: tuple[Precision, ...]) -> dict[str, float]:
    """Seconds per teacher step in each of `choices` (each on its own untrained network: the layouts differ), or
    in the config's own precision under the key "" when there is nothing to choose."""
    runs = {str(p): replace(config, precision=p) for p in choices} or {"": config}
    return {key: round(_timed_steps(network(), splits, batcher, c, device, TEACHER_WARM_STEPS, TEACHER_TIMED_STEPS),
                       4) for key, c in runs.items()}


def fastest_teacher_step(config: TrainConfig, network: Callable[[], nn.Module], splits: Splits, batcher: Batcher,
                         device: torch.device) -> tuple[str, float]:
    """The teacher's arithmetic (bf16 or fp32 where `auto` may choose, else "") and its seconds per step, the
    faster where both were timed."""
    steps = _teacher_steps(config, network, splits, batcher, device, teacher_choices(config, device))
    fastest = min(steps, key=steps.__getitem__)
    return fastest, steps[fastest]


def _eval_batches(config: StudyConfig, splits: Splits, batcher: Batcher, device: torch.device
                  ) -> list[torch.Tensor]:
    """A warm-up batch and a timed one of the evaluation batch size (at most EVAL_TIMED images: a fake-quantized
    small-stem network is slow per image on a small CPU; docs/results/sizing/README.md)."""
    size = min(config.fidelity.f1.budget.eval_batch_size, EVAL_TIMED)
    return [x for x, _ in batcher.eval_batches(splits.val.first(2 * size), size, device=device)]


def _eval_seconds(model: nn.Module, batches: list[torch.Tensor]) -> float:
    """Seconds per image of `model` in evaluation, after a warm-up batch."""
    model.eval()
    with torch.no_grad():
        model(batches[0])
        t0 = time.monotonic()
        count = sum(len(model(x)) for x in batches[1:])
    return (time.monotonic() - t0) / max(count, 1)


def measure(config: StudyConfig, network: Callable[[], nn.Module], splits: Splits, batcher: Batcher,
            device: torch.device) -> StepTimes:
    """Time the teacher's training step, a fine-tune step and evaluation on this machine (seconds), on an untrained
    copy of the teacher's network (`network()` builds one; the real teacher is never touched)."""
    steps = _teacher_steps(config.teacher.train, network, splits, batcher, device,
                           teacher_choices(config.teacher.train, device))
    fastest = min(steps, key=steps.__getitem__)
    model = network()
    finetune = config.fidelity.f2.budget.finetune_train
    finetune_step = _timed_steps(model, splits, batcher, finetune, device)
    batches = _eval_batches(config, splits, batcher, device)
    eval_image = _eval_seconds(model, batches)
    qat = quantize_model(network(), Quantization(kind=QuantKind.QAT))
    calibrate(qat, batches[:1], Calibration.MINMAX)
    return StepTimes(teacher_step=steps[fastest], finetune_step=round(finetune_step, 4),
                     eval_image=round(eval_image, 6), teacher_precision=fastest,
                     teacher_steps=steps if fastest else {},
                     qat_step=round(_timed_steps(qat, splits, batcher, finetune, device), 4))


def measure_evaluation(config: StudyConfig, networks: dict[str, Callable[[], nn.Module]], splits: Splits,
                       batcher: Batcher, device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per evaluated image of each network, float and fake-quantized at 8 bits (calibrated on one batch of
    the calibration split: only the speed is wanted)."""
    batches = _eval_batches(config, splits, batcher, device)
    calib = [x for x, _ in batcher.eval_batches(splits.calib.first(len(batches[0])), len(batches[0]), device=device)]
    floats, quants = {}, {}
    for name, build in networks.items():
        model = build().eval()
        floats[name] = round(_eval_seconds(model, batches), 6)
        quantized = quantize_model(model, Quantization(kind=QuantKind.PTQ))
        calibrate(quantized, calib, Calibration.MINMAX)
        quants[name] = round(_eval_seconds(quantized, batches), 6)
    return floats, quants


def measure_students(config: StudyConfig, networks: dict[str, Callable[[], nn.Module]], splits: Splits,
                     batcher: Batcher, device: torch.device) -> dict[str, float]:
    """Seconds per training step of every fresh student the run may train (`student_networks`), each on its own
    untrained network at the students' batch size (the F3 level's training settings)."""
    train_config = config.fidelity.f3.budget.student_train
    return {arch: round(_timed_steps(build(), splits, batcher, train_config, device), 4)
            for arch, build in networks.items()}


def student_networks(work: Workload, splits: Splits, batcher: Batcher, device: torch.device
                     ) -> dict[str, Callable[[], nn.Module]]:
    """A builder of an untrained network for every fresh student the run may train or evaluate."""
    info = splits.info
    archs = {arch for arch, _ in (*work.search_students, *work.baseline_students, *work.front_students)}
    archs |= {n for n in (*work.baseline_networks, *work.space_networks) if n != TEACHER}

    def builder(arch: str) -> Callable[[], nn.Module]:
        return lambda: create_model(arch, num_classes=info.num_classes, in_channels=info.channels,
                                    resolution=batcher.resolution).to(device)

    return {arch: builder(arch) for arch in sorted(archs)}


def copy_of(model: nn.Module) -> Callable[[], nn.Module]:
    return lambda: copy.deepcopy(model)


def read_plan(out: Path) -> RunPlan | None:
    """The run folder's plan (None: none, or one written by an older version, which is sized again)."""
    path = out / PLAN_FILE
    try:
        return RunPlan.from_json(json.loads(path.read_text())) if path.is_file() else None
    except (KeyError, TypeError, ValueError):
        return None


def sized_by(out: Path, config: StudyConfig) -> RunPlan | None:
    """The plan `config` was sized by: the run folder's, when it made `config`'s search budget (None: the run was
    not sized, or its plan.json was made for another budget)."""
    plan = read_plan(out)
    return plan if plan is not None and plan.search_budget == config.search.budget else None


def write_plan(out: Path, plan: RunPlan) -> None:
    (out / PLAN_FILE).write_text(json.dumps(plan.as_json(), indent=2))


def append_report(report: Path, plan: RunPlan) -> None:
    """The plan the run was sized by, as printed, at the end of report.md."""
    with report.open("a") as f:
        f.write(f"\n## Run plan ({PLAN_FILE})\n\n```\n{plan.describe()}\n```\n")


def sized(config: StudyConfig, out: Path, splits: Splits, batcher: Batcher, network: Callable[[], nn.Module], *,
          teacher_ready: bool, device: torch.device, log: Callable[[str], None], cache: CacheStatus | None = None,
          baselines_at: Counts | None = None) -> StudyConfig:
    """`config` sized to its budget: by the run folder's plan.json when it was made for the same budget (a resumed
    run keeps its plan), else by a new plan from step times measured now, which is written there. `cache`: the
    teacher cache's state; `baselines_at`: the step counts the baselines are cached at for its strongest teacher."""
    plan = read_plan(out)
    if plan is not None and plan.budget == config.search.budget:
        log(f"run plan kept from {out / PLAN_FILE}")
    else:
        if plan is not None:
            log(f"{out / PLAN_FILE} was made for a budget of {plan.budget}; sizing the run again")
        t0 = time.monotonic()
        times = measure(config, network, splits, batcher, device)
        work = workload(config, splits, final.baselines(config.search.baselines, config.teacher.arch))
        students = student_networks(work, splits, batcher, device)
        floats, quants = measure_evaluation(config, {TEACHER: network, **students}, splits, batcher, device)
        times = replace(times, student_step=measure_students(config, students, splits, batcher, device),
                        eval_float=floats, eval_quant=quants)
        plan = plan_run(config, times, work, teacher_ready=teacher_ready, cache=cache, baselines_at=baselines_at)
        write_plan(out, plan)
        log(f"measured step times in {time.monotonic() - t0:.0f} s")
    log(plan.describe())
    return plan.apply(config)


"""The joint search space: which recipes a study may try, sampled define-by-run through an optuna trial.

Parameter names are namespaced (`student`, `distill.kind`, `prune.ratio`, `quant.bits.layer3`, ...) and a
name always carries the same distribution, as optuna's samplers require. Where a choice is impossible
for the sampled student (feature distillation of the teacher itself, layer pruning of a network without
residual blocks, BN-scale importance without BatchNorm) the parameter gets a name that lists the choices
left, e.g. `prune.kind[none|structured|unstructured]`: samplers then learn each variant separately instead
of seeing one name with two meanings. Every suggested recipe is validated before it is returned.

The same function serves Ray Tune (`ray.tune.search.optuna.OptunaSearch(space=space.define_by_run)`);
`from_params` rebuilds the recipe of a finished trial from its parameters.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import field
from enum import StrEnum
from typing import Any

import optuna

from hardware_models.targets import capability
from hardware_models.targets import common_native_bits
from hardware_models.targets import get_target
from spaces.compress import checks
from spaces.compress.distillation import HINT_LAYERS
from spaces.compress.distillation import default_pairs
from spaces.compress.pruning import network_facts
from spaces.models.architectures import create_model
from spaces.models.architectures import get_architecture
from spaces.models.architectures import list_architectures
from spaces.quant.quantization import layer_groups
from spaces.quant.quantization import quantizable_layers
from spaces.recipe import MAX_PRUNE_RATIO
from spaces.recipe import TEACHER
from spaces.recipe import Allocation
from spaces.recipe import Calibration
from spaces.recipe import Distillation
from spaces.recipe import DistillKind
from spaces.recipe import Importance
from spaces.recipe import PruneKind
from spaces.recipe import PruneSchedule
from spaces.recipe import Pruning
from spaces.recipe import Quantization
from spaces.recipe import QuantKind
from spaces.recipe import Recipe
from spaces.recipe import bits_problem
from spaces.validated import settings


class BitGrouping(StrEnum):
    UNIFORM = "uniform"  # one weight bit-width for the whole network
    GROUP = "group"  # one per coarse group (`spaces.quant.quantization.layer_groups`: stem, stages, head)
    LAYER = "layer"  # one per Conv2d/Linear: the most freedom, the hardest search
    # Per layer too, from two sampled numbers: a higher precision and the share of MACs that may run at it;
    # a sensitivity measure (spaces.compress.sensitivity) picks the layers. Precisions come from `layer_precisions`.
    SENSITIVITY = "sensitivity"


class BitSource(StrEnum):
    LISTED = "listed"  # bit_choices / act_bit_choices / quant_kinds as written
    TARGET = "target"  # ... limited to what every target of the study executes as asked (`for_targets`)


@settings
class SpaceConfig:
    """What a study lets the search vary. Tuples list the allowed choices (strings are accepted)."""

    # Only the teacher by default: a registry student needs a distillation budget (`student_steps`) that a study
    # must choose; the ResNet-50 study lists the thesis's students.
    students: tuple[str, ...] = (TEACHER,)
    distill_kinds: tuple[DistillKind, ...] = (DistillKind.NONE, DistillKind.LOGIT, DistillKind.FEATURE)
    temperature_min: float = field(default=2.0, metadata={"min": 0.1, "max": 100.0})
    temperature_max: float = field(default=8.0, metadata={"min": 0.1, "max": 100.0})
    alpha_min: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    alpha_max: float = field(default=0.95, metadata={"min": 0.0, "max": 1.0})
    # Listed values instead of the ranges above (a categorical choice). A grid keeps a searched distillation
    # affordable: each (student, kind, temperature, alpha) is one student, trained once per level and shared from
    # the cache by every recipe that starts from it, where a continuous range trains a new student almost every trial.
    temperatures: tuple[float, ...] = field(default=(), metadata={"min": 0.1, "max": 100.0})
    alphas: tuple[float, ...] = field(default=(), metadata={"min": 0.0, "max": 1.0})
    prune_kinds: tuple[PruneKind, ...] = tuple(PruneKind)
    importances: tuple[Importance, ...] = (Importance.L1, Importance.L2, Importance.BN_SCALE, Importance.TAYLOR)
    schedules: tuple[PruneSchedule, ...] = tuple(PruneSchedule)
    search_global: bool = True  # also try one global channel ranking instead of the same ratio everywhere
    ratio_min: float = field(default=0.1, metadata={"min": 0.0, "max": MAX_PRUNE_RATIO})
    ratio_max: float = field(default=0.7, metadata={"min": 0.0, "max": MAX_PRUNE_RATIO})
    sparsity_min: float = field(default=0.3, metadata={"min": 0.0, "max": MAX_PRUNE_RATIO})
    sparsity_max: float = field(default=0.9, metadata={"min": 0.0, "max": MAX_PRUNE_RATIO})
    ratio_step: float = field(default=0.05, metadata={"min": 0.01, "max": 0.5})
    round_to: int = field(default=8, metadata={"min": 1, "max": 256})  # the ZCU104 DPU computes 16 channels at once
    candidates: int = field(default=8, metadata={"min": 1, "max": 256})
    iterative_steps: int = field(default=3, metadata={"min": 2, "max": 100})
    quant_kinds: tuple[QuantKind, ...] = (QuantKind.NONE, QuantKind.PTQ, QuantKind.QAT)
    bit_choices: tuple[int, ...] = (4, 6, 8)
    act_bit_choices: tuple[int, ...] = (8,)
    grouping: BitGrouping = BitGrouping.GROUP
    # grouping "sensitivity": the precisions a layer may run at on the targets (the Pi: int8 or fp32; the Pi 5
    # adds fp16, so (8, 16, 32)). The lowest is every layer's default (with act_bit_choices for activations);
    # one higher precision is sampled, and the share of MACs it may use from high_fraction_min .. _max.
    layer_precisions: tuple[int, ...] = (8, 32)
    high_fraction_min: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    high_fraction_max: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    calibrations: tuple[Calibration, ...] = tuple(Calibration)
    per_channel: bool = True
    bits: BitSource = BitSource.LISTED

    def __post_init__(self) -> None:  # runs after @settings has turned strings into enums and lists into tuples
        problem = self.problem()
        if problem:
            raise ValueError(f"invalid search space: {problem}")

    def problem(self) -> str | None:
        """The first reason this configuration is unusable, or None."""
        lists = ("students", "distill_kinds", "prune_kinds", "importances", "schedules", "quant_kinds", "bit_choices",
                 "act_bit_choices", "calibrations")
        empty = [name for name in lists if not getattr(self, name)]
        unknown = [s for s in self.students if s != TEACHER and s not in list_architectures()]
        bits_reason = bits_problem((*self.bit_choices, *self.act_bit_choices, *self.layer_precisions))
        one_precision = self.grouping == BitGrouping.SENSITIVITY and len(set(self.layer_precisions)) < 2
        checks = [
            (empty, f"{', '.join(empty)} must list at least one choice"),
            (unknown, f"unknown students {unknown}; known: {', '.join(list_architectures())} or {TEACHER!r}"),
            (bits_reason, bits_reason),
            (self.ratio_min > self.ratio_max or self.sparsity_min > self.sparsity_max, "a minimum exceeds its maximum"),
            (self.ratio_min <= 0 or self.sparsity_min <= 0, "ratio_min and sparsity_min must be > 0 (kind none is 0)"),
            (self.temperature_min > self.temperature_max or self.alpha_min > self.alpha_max
             or self.high_fraction_min > self.high_fraction_max, "a minimum exceeds its maximum"),
            (one_precision, f"grouping 'sensitivity' needs at least two layer_precisions (e.g. [8, 32]), got "
                            f"{list(self.layer_precisions)}"),
        ]
        return next((reason for failed, reason in checks if failed), None)


def for_targets(config: SpaceConfig, targets: tuple[str, ...]) -> SpaceConfig:
    """`bits = "target"`: the space limited to precisions every target executes as asked, so the search spends
    no trials on widths a board would widen (4-bit runs as int8 everywhere) or refuse (fp16 on the DPU).

    Integer widths keep 8 only (sub-8-bit codes are never native); 16 and 32 in a quantized network stay only
    where every target runs them (32 on the Pis, not on the DPU); quant kind `fp16` stays only where every
    target has fp16 kernels, and `none` where every target deploys a float network (the DPU re-quantizes it).
    A config with `bits = "listed"` is returned unchanged. Raises ValueError naming the targets and what they
    have in common when nothing of a list is left."""
    if config.bits != BitSource.TARGET:
        return config
    common = common_native_bits(targets)
    where = f"space.bits = 'target' with hardware.targets {list(targets)}"
    if not common:
        raise ValueError(f"{where}: the targets have no precision in common; drop a target or use bits = 'listed'")
    floats_ok = all(capability(t).runs_float_network(get_target(t).default_runtime) for t in targets)
    kinds = tuple(k for k in config.quant_kinds if k in (QuantKind.PTQ, QuantKind.QAT)
                  or (k == QuantKind.FP16 and 16 in common) or (k == QuantKind.NONE and floats_ok))
    limited = {"bit_choices": tuple(b for b in config.bit_choices if b in common),
               "act_bit_choices": tuple(b for b in config.act_bit_choices if b in common), "quant_kinds": kinds}
    for name, values in limited.items():
        if not values:
            raise ValueError(f"{where}: none of space.{name} {[getattr(v, 'value', v) for v in getattr(config, name)]}"
                             f" runs as asked on every target; they execute {sorted(common)} bits in common "
                             "(integer codes below 8 run as int8); add one of them or use bits = 'listed'")
    return dataclasses.replace(config, **limited)


@functools.cache
def _layer_names(arch: str, grouping: BitGrouping, resolution: int | None) -> tuple[str, ...]:
    """Names that get their own bit-width parameter: groups or layers of the (unpruned) student, built with the
    stem it gets at `resolution` (groups follow the resolution stages, which a small stem moves)."""
    model = create_model(arch, resolution=resolution)
    return tuple(layer_groups(model)) if grouping == BitGrouping.GROUP else tuple(quantizable_layers(model))


def distillation_variants(config: SpaceConfig) -> int | None:
    """How many (temperature, alpha) settings a distilling student can be trained with: the grid's size, 1 for
    fixed values, None for a continuous range (a new student almost every trial)."""
    temperatures = len(config.temperatures) or (1 if config.temperature_min == config.temperature_max else None)
    alphas = len(config.alphas) or (1 if config.alpha_min == config.alpha_max else None)
    return None if temperatures is None or alphas is None else temperatures * alphas


def _choose(trial: optuna.Trial, name: str, allowed: list[Any], configured: tuple[Any, ...]) -> Any:
    """suggest_categorical, with the remaining choices in the name when some are impossible here."""
    if len(allowed) == 1:
        return allowed[0]
    if tuple(allowed) != tuple(configured):
        name = f"{name}[{'|'.join(str(getattr(a, 'value', a)) for a in allowed)}]"
    values = [getattr(a, "value", a) for a in allowed]
    picked = trial.suggest_categorical(name, values)
    return allowed[values.index(picked)]


def _float(trial: optuna.Trial, name: str, low: float, high: float, **kwargs: Any) -> float:
    return low if low == high else trial.suggest_float(name, low, high, **kwargs)


class SearchSpace:
    """Recipes for one teacher architecture, suggested through any optuna trial (or Ray Tune's wrapper)."""

    def __init__(self, config: SpaceConfig, teacher_arch: str, resolution: int | None = None) -> None:
        """`resolution`: the training input size, which picks each student's stem (None: the registry's default)."""
        get_architecture(teacher_arch)  # raises KeyError naming the known ones
        self.config, self.teacher_arch, self.resolution = config, teacher_arch, resolution

    def arch(self, student: str) -> str:
        return self.teacher_arch if student == TEACHER else student

    def suggest(self, trial: optuna.Trial) -> Recipe:
        student = trial.suggest_categorical("student", list(self.config.students))
        prune = self._prune(trial, self.arch(student))
        recipe = Recipe(student=student, distill=self._distill(trial, student), prune=prune,
                        quant=self._quant(trial, self.arch(student)))
        checks.validate(recipe, self.teacher_arch)  # failing here is a bug in the space, not in the trial
        return recipe

    def define_by_run(self, trial: optuna.Trial) -> dict[str, str]:
        """Ray Tune's define-by-run form: samples through `trial`, returns the recipe as a constant."""
        return {"recipe": self.suggest(trial).to_json()}

    def from_params(self, params: dict[str, Any]) -> Recipe:
        """The recipe a trial with these parameters got (replays `suggest` on a FixedTrial)."""
        return self.suggest(optuna.trial.FixedTrial({k: v for k, v in params.items() if k != "recipe"}))

    def _distill(self, trial: optuna.Trial, student: str) -> Distillation:
        c = self.config
        feature_ok = student != TEACHER and {self.arch(student), self.teacher_arch} <= set(HINT_LAYERS)
        allowed = [k for k in c.distill_kinds if k != DistillKind.FEATURE or feature_ok]
        kind = _choose(trial, "distill.kind", allowed, c.distill_kinds)
        if kind == DistillKind.NONE:
            return Distillation()
        temperature = _choose(trial, "distill.temperature", list(c.temperatures), c.temperatures) if c.temperatures \
            else _float(trial, "distill.temperature", c.temperature_min, c.temperature_max, log=True)
        alpha = _choose(trial, "distill.alpha", list(c.alphas), c.alphas) if c.alphas \
            else _float(trial, "distill.alpha", c.alpha_min, c.alpha_max)
        pairs = default_pairs(self.arch(student), self.teacher_arch) if kind == DistillKind.FEATURE else ()
        return Distillation(kind=kind, temperature=temperature, alpha=alpha, feature_pairs=pairs)

    def _prune(self, trial: optuna.Trial, arch: str) -> Pruning:
        c, facts = self.config, network_facts(arch)
        kinds = [k for k in c.prune_kinds if k != PruneKind.LAYER or facts.removable_blocks > 0]
        kind = _choose(trial, "prune.kind", kinds, c.prune_kinds)
        if kind == PruneKind.NONE:
            return Pruning()
        schedule = _choose(trial, "prune.schedule", list(c.schedules), c.schedules)
        steps = c.iterative_steps if schedule == PruneSchedule.ITERATIVE else 1
        common = {"kind": kind, "schedule": schedule, "steps": steps, "round_to": c.round_to}
        if kind == PruneKind.UNSTRUCTURED:
            sparsity = _float(trial, "prune.sparsity", c.sparsity_min, c.sparsity_max, step=c.ratio_step)
            return Pruning(ratio=sparsity, global_ranking=self._global(trial), **common)
        importances = [i for i in c.importances if i != Importance.BN_SCALE or facts.has_batchnorm]
        importance = _choose(trial, "prune.importance", importances, c.importances)
        ratio = _float(trial, "prune.ratio", c.ratio_min, c.ratio_max, step=c.ratio_step)
        if kind == PruneKind.LAYER:
            blocks = min(facts.removable_blocks, max(1, round(ratio * facts.removable_blocks)))
            return Pruning(blocks_removed=blocks, importance=importance, **common)
        candidates = c.candidates if schedule == PruneSchedule.ONESHOT else Pruning().candidates
        return Pruning(ratio=ratio, importance=importance, global_ranking=self._global(trial), candidates=candidates,
                       **common)

    def _global(self, trial: optuna.Trial) -> bool:
        return bool(trial.suggest_categorical("prune.global", [False, True])) if self.config.search_global else False

    def _quant(self, trial: optuna.Trial, arch: str) -> Quantization:
        c = self.config
        kind = _choose(trial, "quant.kind", list(c.quant_kinds), c.quant_kinds)
        if kind not in (QuantKind.PTQ, QuantKind.QAT):
            return Quantization(kind=kind)
        calibration = _choose(trial, "quant.calibration", list(c.calibrations), c.calibrations)
        act_bits = _choose(trial, "quant.abits", list(c.act_bit_choices), c.act_bit_choices)
        common = {"kind": kind, "act_bits": act_bits, "calibration": calibration, "per_channel": c.per_channel}
        if c.grouping == BitGrouping.UNIFORM:
            return Quantization(weight_bits=_choose(trial, "quant.bits", list(c.bit_choices), c.bit_choices), **common)
        if c.grouping == BitGrouping.SENSITIVITY:
            return self._sensitivity(trial, common)
        names = _layer_names(arch, c.grouping, self.resolution)
        bits = [_choose(trial, f"quant.bits.{n}", list(c.bit_choices), c.bit_choices) for n in names]
        return Quantization(layer_bits=tuple((n, b, act_bits) for n, b in zip(names, bits, strict=True)), **common)

    def _sensitivity(self, trial: optuna.Trial, common: dict[str, Any]) -> Quantization:
        """Two parameters whatever the network's depth: the higher precision and its share of the MACs."""
        c = self.config
        low = min(c.layer_precisions)
        highs = sorted({p for p in c.layer_precisions if p > low})
        high = _choose(trial, "quant.high_bits", highs, tuple(highs))
        fraction = _float(trial, "quant.high_fraction", c.high_fraction_min, c.high_fraction_max, step=c.ratio_step)
        return Quantization(weight_bits=low, allocation=Allocation.SENSITIVITY, high_bits=high,
                            high_fraction=fraction, **common)

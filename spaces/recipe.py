"""A Recipe: the frozen, JSON-round-tripping description of one compressed model.

Four parts, applied in this order: student (which network), distillation (how it learns from the
teacher), pruning (what is removed) and quantization (how numbers are stored). The recipe hash keys
every cache (results by fidelity, checkpoints), so it must be identical across processes: it is the
sha256 of the canonical JSON, never Python's `hash()`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum
from typing import Any

TEACHER = "teacher"  # student name meaning "compress the teacher itself"


class DistillKind(StrEnum):
    NONE = "none"
    LOGIT = "logit"  # Hinton et al.: KL between softened logits, temperature T, weight alpha
    FEATURE = "feature"  # FitNets: learnable 1x1 adapters map student features onto the teacher's


class PruneKind(StrEnum):
    NONE = "none"
    STRUCTURED = "structured"  # channel pruning through torch-pruning's dependency graph
    UNSTRUCTURED = "unstructured"  # magnitude masks; pays only where the runtime exploits sparsity
    LAYER = "layer"  # remove whole residual blocks


class Importance(StrEnum):
    L1 = "l1"
    L2 = "l2"
    BN_SCALE = "bn_scale"
    TAYLOR = "taylor"
    RANDOM = "random"


class PruneSchedule(StrEnum):
    ONESHOT = "oneshot"  # EagleEye: sample K per-layer ratio vectors, adaptive-BN, keep the best on validation
    ITERATIVE = "iterative"  # N steps with recovery fine-tuning between them


class QuantKind(StrEnum):
    NONE = "none"
    FP16 = "fp16"
    PTQ = "ptq"
    QAT = "qat"


class Allocation(StrEnum):
    """Who decides each layer's bits: the recipe (`layer_bits`), or a sensitivity measure under a budget."""

    EXPLICIT = "explicit"  # weight_bits/act_bits everywhere, then the layer_bits overrides
    SENSITIVITY = "sensitivity"  # the most sensitive layers get high_bits, up to high_fraction of the MACs


class Calibration(StrEnum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"


@dataclass(frozen=True, kw_only=True)
class Distillation:
    kind: DistillKind = DistillKind.NONE
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the distillation term; (1 - alpha) goes to the hard labels
    # Feature distillation: (student_layer, teacher_layer) module-name pairs whose outputs are matched.
    feature_pairs: tuple[tuple[str, str], ...] = ()
    feature_weight: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Pruning:
    kind: PruneKind = PruneKind.NONE
    ratio: float = 0.0  # structured: fraction of channels removed; unstructured: target sparsity
    importance: Importance = Importance.L1
    schedule: PruneSchedule = PruneSchedule.ONESHOT
    global_ranking: bool = False  # rank channels across layers instead of the same ratio in each layer
    round_to: int = 1  # channel counts rounded to a multiple the target likes (the DPU: 16)
    candidates: int = 8  # one-shot: K sampled per-layer ratio vectors scored after adaptive BN
    steps: int = 1  # iterative: N pruning steps with recovery between
    blocks_removed: int = 0  # layer pruning: number of residual blocks removed


@dataclass(frozen=True, kw_only=True)
class Quantization:
    kind: QuantKind = QuantKind.NONE
    weight_bits: int = 8  # default for every layer
    act_bits: int = 8
    # Per-layer or per-group overrides: (layer-or-group name, weight_bits, act_bits).
    layer_bits: tuple[tuple[str, int, int], ...] = ()
    per_channel: bool = True
    calibration: Calibration = Calibration.MINMAX
    fold_bn: bool = True  # fold BatchNorm into convolutions before quantizing, as deployment does
    # Sensitivity allocation (spaces.compress.sensitivity): layers run at (weight_bits, act_bits) except the most
    # sensitive ones, which run at (high_bits, high_bits) while their MACs fit in high_fraction of the total.
    # Added after recipes were first stored: omitted from the JSON and the hash while at their defaults.
    allocation: Allocation = Allocation.EXPLICIT
    high_bits: int = 32
    high_fraction: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Recipe:
    student: str = TEACHER
    distill: Distillation = field(default_factory=Distillation)
    prune: Pruning = field(default_factory=Pruning)
    quant: Quantization = field(default_factory=Quantization)
    label: str = ""  # a human name ("thesis: OS 20% + PTQ"); not part of the hash

    def to_json(self) -> str:
        return json.dumps(_canonical(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        return recipe_from_dict(json.loads(text))

    def hash(self) -> str:
        data = _canonical(self)
        data.pop("label")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def problems(self) -> list[str]:
        """Every reason this recipe cannot be applied to any network. The checks that need the networks (does
        the student exist, has it the blocks and layers the recipe names) are `spaces.compress.checks`'s."""
        return [reason for rule in RULES if (reason := rule(self))]

    def validate(self) -> None:
        """Raise ValueError naming every problem (one line) when the recipe cannot be applied."""
        raise_problems(self, self.problems())


def raise_problems(recipe: Recipe, found: list[str]) -> None:
    if found:
        name = f" {recipe.label!r}" if recipe.label else ""
        raise ValueError(f"invalid recipe{name}: " + "; ".join(found))


def recovers(prune: PruneKind, quant: QuantKind) -> bool:
    """Whether a recipe fine-tunes its float network after pruning: QAT trains the quantized one instead, which
    recovers the pruning too, so a pruned QAT recipe is not also recovered in float."""
    return prune != PruneKind.NONE and quant != QuantKind.QAT


def finetunes(prune: PruneKind, quant: QuantKind) -> bool:
    """Whether a recipe trains after its student at all (recovery, or QAT): `spaces.compress.apply` spends its
    `finetune_steps` then, and `search.sizing.plan` prices them only then."""
    return recovers(prune, quant) or quant == QuantKind.QAT


def describe(recipe: Recipe) -> str:
    """One line for logs and tables: `resnet18 kd:logit prune:structured:0.3 ptq:4/8b` (`ptq:8/32b@0.25`)."""
    parts = [recipe.student]
    if recipe.distill.kind != DistillKind.NONE:
        parts.append(f"kd:{recipe.distill.kind.value}")
    if recipe.prune.kind != PruneKind.NONE:
        parts.append(f"prune:{recipe.prune.kind.value}:{recipe.prune.ratio or recipe.prune.blocks_removed:g}")
    if recipe.quant.kind in (QuantKind.PTQ, QuantKind.QAT):
        parts.append(f"{recipe.quant.kind.value}:{weight_bits_label(recipe.quant)}b")
        if recipe.quant.allocation == Allocation.SENSITIVITY:
            parts[-1] += f"@{recipe.quant.high_fraction:g}"  # ptq:8/32b@0.25: a quarter of the MACs at 32 bits
    elif recipe.quant.kind != QuantKind.NONE:
        parts.append(recipe.quant.kind.value)
    return " ".join(parts)


def weight_bits_label(quant: Quantization) -> str:
    """The weight widths a recipe uses: `4/8` for explicit per-layer bits, `8/32` for sensitivity allocation."""
    if quant.allocation == Allocation.SENSITIVITY:
        return f"{quant.weight_bits}/{quant.high_bits}"
    return "/".join(map(str, sorted({b for _, b, _ in quant.layer_bits}) or [quant.weight_bits]))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.value if isinstance(value, StrEnum) else value


# Fields added after recipes were first hashed, with the defaults that mean "as before": left out of the JSON and
# the hash while at the default, so every stored recipe, result file and checkpoint keeps its hash.
LATE_FIELDS: dict[str, dict[str, Any]] = {"quant": {"allocation": "explicit", "high_bits": 32, "high_fraction": 0.0}}


def _canonical(recipe: Recipe) -> dict[str, Any]:
    data = _plain(asdict(recipe))
    for part, defaults in LATE_FIELDS.items():
        for name, default in defaults.items():
            if data[part][name] == default:
                del data[part][name]
    return data


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Inverse of `asdict`: enums from their values, lists back to tuples (so equal recipes compare equal)."""
    parts = {"distill": Distillation, "prune": Pruning, "quant": Quantization}
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k not in parts}
    for name, cls in parts.items():
        raw = {k: _tuples(v) for k, v in data.get(name, {}).items()}
        hints = {f: cls.__dataclass_fields__[f].type for f in raw}
        kwargs[name] = cls(**{k: _enum(hints[k], v) for k, v in raw.items()})
    return Recipe(**kwargs)


ENUMS = {e.__name__: e for e in (DistillKind, PruneKind, Importance, PruneSchedule, QuantKind, Calibration,
                                  Allocation)}


def _enum(type_name: Any, value: Any) -> Any:
    enum = ENUMS.get(str(type_name))
    return enum(value) if enum is not None else value


# --- validation: each rule returns the reason a recipe is invalid, or None ------------------------------------

# The bit-widths and the prune-ratio cap are defined here, once, and imported by the code that applies them
# (spaces.quant.fake_quant, spaces.compress.pruning, spaces.space, evaluators.cost): this module is the
# lowest layer and free of torch, so every other module can import it, and validation cannot accept what the
# code rejects.
INT_BITS = frozenset(range(2, 9))  # integer codes, simulated by spaces.quant.fake_quant
FLOAT_BITS = frozenset({16, 32})  # 16: fp16 rounding; 32: not quantized
VALID_BITS = INT_BITS | FLOAT_BITS
MAX_PRUNE_RATIO = 0.95  # never remove more than this fraction of any group: a layer with no channels cannot run
MAGNITUDE_ONLY = frozenset({Importance.L1, Importance.L2, Importance.RANDOM})  # single weights have no BN/Taylor


def _ratio(r: Recipe) -> str | None:
    p = r.prune
    if not 0.0 <= p.ratio <= MAX_PRUNE_RATIO:
        return f"prune.ratio {p.ratio} is outside 0 .. {MAX_PRUNE_RATIO}"
    if p.kind in (PruneKind.STRUCTURED, PruneKind.UNSTRUCTURED) and p.ratio == 0.0:
        return f"{p.kind.value} pruning with ratio 0 removes nothing; use prune.kind 'none'"
    if p.kind in (PruneKind.NONE, PruneKind.LAYER) and p.ratio != 0.0:
        return f"prune.ratio {p.ratio} has no meaning for prune.kind {p.kind.value!r} (layer pruning counts blocks)"
    return None


def _layer_counts(r: Recipe) -> str | None:
    p = r.prune
    if p.kind == PruneKind.LAYER and p.blocks_removed < 1:
        return "layer pruning needs prune.blocks_removed >= 1"
    if p.kind != PruneKind.LAYER and p.blocks_removed:
        return f"prune.blocks_removed is only for layer pruning, not {p.kind.value!r}"
    return None


def _prune_settings(r: Recipe) -> str | None:
    p = r.prune
    if p.round_to < 1 or p.candidates < 1 or p.steps < 1:
        return "prune.round_to, prune.candidates and prune.steps must all be >= 1"
    if p.kind == PruneKind.UNSTRUCTURED and p.importance not in MAGNITUDE_ONLY:
        return f"unstructured pruning ranks single weights: importance {p.importance.value!r} needs channels"
    return None


def bits_problem(bits: Iterable[int]) -> str | None:
    """The reason some of `bits` cannot be used, or None; shared with `spaces.space` so both say the same.

    The advice is written from the sets above, so it cannot drift from them: "use 2..8, 16 or 32".
    """
    bad = sorted({b for b in bits if b not in VALID_BITS})
    floats = " or ".join(str(b) for b in sorted(FLOAT_BITS))
    advice = f"use {min(INT_BITS)}..{max(INT_BITS)}, {floats}"
    return f"bit widths {bad} are not supported; {advice}" if bad else None


def _bits(r: Recipe) -> str | None:
    q = r.quant
    return bits_problem([q.weight_bits, q.act_bits, *(b for _, w, a in q.layer_bits for b in (w, a))])


def _allocation(r: Recipe) -> str | None:
    q = r.quant
    if q.allocation == Allocation.EXPLICIT:
        late = (q.high_bits, q.high_fraction) != (32, 0.0)
        return "quant.high_bits and quant.high_fraction need quant.allocation 'sensitivity'" if late else None
    if q.kind not in (QuantKind.PTQ, QuantKind.QAT):
        return f"sensitivity allocation chooses integer layers, so it needs ptq or qat, not {q.kind.value!r}"
    if q.layer_bits:
        return "sensitivity allocation chooses every layer's bits itself: leave quant.layer_bits empty"
    if not 0.0 <= q.high_fraction <= 1.0:
        return f"quant.high_fraction {q.high_fraction} is outside 0 .. 1"
    bad = bits_problem([q.high_bits])
    if bad or q.high_bits <= q.weight_bits:
        return bad or f"quant.high_bits {q.high_bits} must exceed quant.weight_bits {q.weight_bits}"
    return None


def _distill(r: Recipe) -> str | None:
    d = r.distill
    if d.temperature <= 0 or not 0.0 <= d.alpha <= 1.0 or d.feature_weight < 0:
        return "distillation needs temperature > 0, 0 <= alpha <= 1 and feature_weight >= 0"
    if d.kind == DistillKind.FEATURE and r.student == TEACHER:
        return "feature distillation needs a separate student; the teacher compressed in place uses 'logit'"
    if d.kind == DistillKind.FEATURE and not d.feature_pairs:
        return ("feature distillation needs distill.feature_pairs "
                "(spaces.compress.distillation.default_pairs proposes them)")
    if d.kind != DistillKind.FEATURE and d.feature_pairs:
        return f"distill.feature_pairs are only used by feature distillation, not {d.kind.value!r}"
    return None


RULES: tuple[Callable[[Recipe], str | None], ...] = (_ratio, _layer_counts, _prune_settings, _bits, _allocation,
                                                     _distill)

"""A Recipe: the frozen, JSON-round-tripping description of one compressed model.

Four parts, applied in this order: student (which network), distillation (how it learns from the
teacher), pruning (what is removed) and quantization (how numbers are stored). The recipe hash keys
every cache (results by fidelity, checkpoints), so it must be identical across processes: it is the
sha256 of the canonical JSON, never Python's `hash()`.
"""

from __future__ import annotations

import hashlib
import json
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


@dataclass(frozen=True, kw_only=True)
class Recipe:
    student: str = TEACHER
    distill: Distillation = field(default_factory=Distillation)
    prune: Pruning = field(default_factory=Pruning)
    quant: Quantization = field(default_factory=Quantization)
    label: str = ""  # a human name ("thesis: OS 20% + PTQ"); not part of the hash

    def to_json(self) -> str:
        return json.dumps(_plain(asdict(self)), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        return recipe_from_dict(json.loads(text))

    def hash(self) -> str:
        data = _plain(asdict(self))
        data.pop("label")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.value if isinstance(value, StrEnum) else value


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


ENUMS = {e.__name__: e for e in (DistillKind, PruneKind, Importance, PruneSchedule, QuantKind, Calibration)}


def _enum(type_name: Any, value: Any) -> Any:
    enum = ENUMS.get(str(type_name))
    return enum(value) if enum is not None else value

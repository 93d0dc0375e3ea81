"""Cascades: a cheap stage (the INT8 knee, a pruned student) that escalates to a precise one (its float
counterpart, the teacher) when the input needs it - the survey's "adaptive switching".

Every policy reduces, at run time, to one rule per stage boundary k: escalate an input when its confidence
score at stage k is below `thresholds[k]`, or when stage k predicts a class in `classes`. What differs between
the policies (a registry, `POLICIES`) is how the thresholds are chosen and what they must satisfy:

- `confidence`: thresholds on max softmax (or the top-2 margin), fitted on validation for a goal;
- `budget`: an expected cost per inference (latency ms or energy mJ on one target) that fixes the escalation
  rate; the thresholds are those that escalate exactly that share of the validation inputs;
- `priority`: a class list that always escalates (the survey's "critical tasks at high precision").

One rule means one runner (`search/bundle/scripts/run_cascade.py`) applies every policy, and what was fitted is what
ships. This module is numpy only: probabilities in, decisions out; the models and the costs live elsewhere
(`search.cascade.fit`, `search.cascade.cost`).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np

from evaluators import metric_names as names
from evaluators.metric_names import PerTarget
from hardware_models.registry import register_once
from spaces.validated import ConfigError
from spaces.validated import settings


class CascadeError(ConfigError):
    """A cascade or its policy is invalid; the message names the problem and the fix."""


def max_softmax(probs: np.ndarray) -> np.ndarray:
    return probs.max(axis=1)


def top2_margin(probs: np.ndarray) -> np.ndarray:
    """The gap between the two most likely classes: small when the model hesitates between two."""
    top = np.partition(probs, -2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


# Confidence scores, each in [0, 1] for a probability vector, so a threshold is always a number in [0, 1].
SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"max_softmax": max_softmax, "margin": top2_margin}


@dataclass(frozen=True)
class PolicyKind:
    """One escalation policy: what its fields must hold (a one-line error otherwise)."""

    name: str
    check: Callable[[Policy], None]
    about: str


POLICIES: dict[str, PolicyKind] = {}


def register_policy(name: str, about: str) -> Callable[[Callable[[Policy], None]], Callable[[Policy], None]]:
    def decorate(check: Callable[[Policy], None]) -> Callable[[Policy], None]:
        register_once(POLICIES, name, PolicyKind(name, check, about), "escalation policy")
        return check

    return decorate


def lookup(table: dict[str, Any], key: str, what: str, fix: str = "") -> Any:
    """A registry entry, or a one-line CascadeError naming the known keys (and how to add one)."""
    if key not in table:
        raise CascadeError(f"unknown {what} {key!r}; known: {', '.join(sorted(table))}{'; ' + fix if fix else ''}")
    return table[key]


def policy_kind(name: str) -> PolicyKind:
    return lookup(POLICIES, name, "escalation policy")


@settings
class Policy:
    """When to escalate. `thresholds[k]` applies after stage k (one per boundary); `classes` always escalate;
    `budget` (units of `budget_metric`, e.g. `energy_zcu104` in mJ) is what fixed the thresholds of a budget
    policy, recorded so the bundle says why its thresholds are what they are."""

    kind: str = field(default="confidence", metadata={"choices": lambda: sorted(POLICIES)})
    score: str = field(default="max_softmax", metadata={"choices": lambda: sorted(SCORES)})
    thresholds: tuple[float, ...] = ()
    classes: tuple[int, ...] = ()
    budget: float = 0.0
    budget_metric: str = ""

    def __post_init__(self) -> None:
        for t in self.thresholds:
            if not 0.0 <= t <= 1.0:
                raise CascadeError(f"threshold {t:g} is outside [0, 1]: confidence scores are probabilities; "
                                   "use a value between 0 (never escalate) and 1 (always)")
        if any(c < 0 for c in self.classes):
            raise CascadeError(f"class list {list(self.classes)} has a negative index; classes are 0-based indices")
        policy_kind(self.kind).check(self)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "score": self.score, "thresholds": list(self.thresholds),
                "classes": list(self.classes), "budget": self.budget, "budget_metric": self.budget_metric,
                "rule": "after stage k, escalate when score < thresholds[k] or the predicted class is in classes"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        return cls(kind=str(data["kind"]), score=str(data.get("score", "max_softmax")),
                   thresholds=tuple(float(t) for t in data.get("thresholds", ())),
                   classes=tuple(int(c) for c in data.get("classes", ())), budget=float(data.get("budget", 0.0)),
                   budget_metric=str(data.get("budget_metric", "")))


@register_policy("confidence", "escalate when the stage's confidence score is below its threshold")
def _check_confidence(policy: Policy) -> None:
    if policy.classes:
        raise CascadeError("a confidence policy has no class list; use kind 'priority' to always escalate classes")


@register_policy("budget", "an expected cost per inference fixes the share of inputs that escalate")
def _check_budget(policy: Policy) -> None:
    parsed = names.parse_target_metric(policy.budget_metric)
    if policy.budget <= 0 or parsed is None or parsed.kind not in (PerTarget.LATENCY, PerTarget.ENERGY):
        raise CascadeError(f"a budget policy needs budget > 0 and budget_metric 'latency_<target>' or "
                           f"'energy_<target>', got {policy.budget:g} {policy.budget_metric!r}")


@register_policy("priority", "the listed classes always escalate (critical classes at high precision)")
def _check_priority(policy: Policy) -> None:
    if not policy.classes:
        raise CascadeError("a priority policy needs a non-empty class list, e.g. classes = [3, 5]")


@dataclass(frozen=True)
class Stage:
    """One model of a cascade, as the cascade sees it: what it takes and what it returns."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    precision: str  # "int8" (runs on the DPU where there is one) or "fp32"


@dataclass(frozen=True)
class Cascade:
    stages: tuple[Stage, ...]
    policy: Policy

    def __post_init__(self) -> None:
        if not 2 <= len(self.stages) <= 3:
            raise CascadeError(f"a cascade has 2 or 3 stages, got {len(self.stages)}; drop or add a stage")
        first = self.stages[0]
        for stage in self.stages[1:]:
            if tuple(stage.input_shape) != tuple(first.input_shape):
                raise CascadeError(f"stage {stage.name!r} takes input {list(stage.input_shape)} but {first.name!r} "
                                   f"takes {list(first.input_shape)}: every stage must read the same image; "
                                   "export the stages at one input size")
            if stage.num_classes != first.num_classes:
                raise CascadeError(f"stage {stage.name!r} has {stage.num_classes} classes but {first.name!r} has "
                                   f"{first.num_classes}: a cascade's stages must classify the same classes")
        boundaries = len(self.stages) - 1
        if self.policy.thresholds and len(self.policy.thresholds) != boundaries:
            raise CascadeError(f"{len(self.policy.thresholds)} thresholds for {boundaries} stage boundaries; "
                               "give one threshold per boundary")
        wrong = [c for c in self.policy.classes if c >= first.num_classes]
        if wrong:
            raise CascadeError(f"classes {wrong} do not exist: the stages have {first.num_classes} classes "
                               f"(0..{first.num_classes - 1})")

    def with_thresholds(self, thresholds: Sequence[float]) -> Cascade:
        policy = Policy(**{**_fields(self.policy), "thresholds": tuple(float(t) for t in thresholds)})
        return Cascade(self.stages, policy)

    def to_json(self) -> dict[str, Any]:
        return {"stages": [{"name": s.name, "input_shape": list(s.input_shape), "num_classes": s.num_classes,
                            "precision": s.precision} for s in self.stages], "policy": self.policy.to_json()}


def _fields(policy: Policy) -> dict[str, Any]:
    return {"kind": policy.kind, "score": policy.score, "thresholds": policy.thresholds,
            "classes": policy.classes, "budget": policy.budget, "budget_metric": policy.budget_metric}


@dataclass(frozen=True)
class Outcome:
    """What a cascade did on one split: accuracy, and the share of inputs that reached each stage."""

    split: str
    images: int
    accuracy: float                 # percent
    reach: tuple[float, ...]        # share of inputs that ran stage k (reach[0] = 1)
    stage_accuracy: tuple[float, ...]  # each stage alone on the same images, percent

    @property
    def escalation_rate(self) -> float:
        """Share of inputs that ran more than the first stage."""
        return self.reach[1]

    def as_json(self) -> dict[str, Any]:
        return {"split": self.split, "images": self.images, "accuracy": round(self.accuracy, 4),
                "escalation_rate": round(self.escalation_rate, 6), "reach": [round(r, 6) for r in self.reach],
                "stage_accuracy": [round(a, 4) for a in self.stage_accuracy]}


def escalates(policy: Policy, probs: np.ndarray, boundary: int) -> np.ndarray:
    """The one run-time rule (also in search/bundle/scripts/run_cascade.py): score below threshold, or a listed
    class."""
    out = np.zeros(len(probs), dtype=bool)
    if policy.thresholds:
        out |= SCORES[policy.score](probs) < policy.thresholds[boundary]
    if policy.classes:
        out |= np.isin(probs.argmax(axis=1), np.asarray(policy.classes))
    return out


def run(cascade: Cascade, probs: Sequence[np.ndarray], labels: np.ndarray, split: str) -> Outcome:
    """Apply the cascade to precomputed per-stage probabilities (every stage on every image: costs nothing here,
    and each stage's own accuracy comes with it)."""
    if len(probs) != len(cascade.stages) or any(len(p) != len(labels) for p in probs):
        raise CascadeError(f"need probabilities of all {len(cascade.stages)} stages for all {len(labels)} images")
    n = len(labels)
    prediction = probs[0].argmax(axis=1)
    active = np.ones(n, dtype=bool)
    reach = [1.0]
    for k in range(1, len(probs)):
        active &= escalates(cascade.policy, probs[k - 1], k - 1)
        prediction = np.where(active, probs[k].argmax(axis=1), prediction)
        reach.append(float(active.mean()) if n else 0.0)
    accuracy = 100.0 * float((prediction == labels).mean()) if n else 0.0
    alone = tuple(100.0 * float((p.argmax(axis=1) == labels).mean()) if n else 0.0 for p in probs)
    return Outcome(split, n, accuracy, tuple(reach), alone)

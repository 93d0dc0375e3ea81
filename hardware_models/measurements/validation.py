"""Honest held-out errors: leave-network-family-out refits from the prior, and the naive baseline.

Leave-one-out over a measurement table flatters a model when the table holds several variants of one
network (the thesis's ResNet-50 after three trainings, the same ResNet-50 pruned to 20% and 95%): each
held-out row has a near-copy in the training rows. Holding out a whole *architecture family* at once asks
what a user needs - how well does the model predict a network unlike anything it was fitted on - and
every refit starts from the physical prior, not from the fit that already saw the held-out rows.

Families are a registry of name patterns (first match wins, so more specific patterns come first); a
spec no pattern matches is its own family (every NAS-Bench-201 cell, for instance).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hardware_models.fitting.intervals import conformal_halfwidth
from hardware_models.graph.executed import Network


@dataclass(frozen=True)
class FamilyRule:
    name: str
    pattern: re.Pattern[str]


FAMILY_RULES: list[FamilyRule] = []


def register_family(name: str, pattern: str) -> None:
    """Specs whose text matches `pattern` (case-insensitive search) belong to family `name`."""
    if any(rule.name == name and rule.pattern.pattern == pattern for rule in FAMILY_RULES):
        return
    FAMILY_RULES.append(FamilyRule(name, re.compile(pattern, re.IGNORECASE)))


# Bottleneck ResNets (50/101/152, pruned or not) are one family and basic-block ResNets (18/34) another:
# they share the stem but not the block. Every MobileNet version is one family (the example).
for _name, _pattern in (
        ("resnext", r"resnext"),
        ("resnet-bottleneck", r"(wide_)?resnet(50|101|152)"),
        ("resnet-basic", r"resnet(18|34)"),
        ("mobilenet", r"mobilenet"),
        ("inception", r"inception|googlenet"),
        ("squeezenet", r"squeezenet"),
        ("vgg", r"vgg"),
        ("shufflenet", r"shufflenet"),
        ("efficientnet", r"efficientnet"),
        ("mnasnet", r"mnasnet"),
        ("regnet", r"regnet"),
        ("densenet", r"densenet"),
):
    register_family(_name, _pattern)


def family_of(spec: str) -> str:
    """The architecture family of a network spec (`thesis:resnet50_os20` -> `resnet-bottleneck`)."""
    for rule in FAMILY_RULES:
        if rule.pattern.search(spec):
            return rule.name
    _, _, name = spec.partition(":")
    match = re.match(r"[a-z]+", name.lower())
    return match.group(0) if match else spec


def family_folds(specs: Sequence[str], max_folds: int | None = None) -> list[list[int]]:
    """Row indices grouped by family, in order of first appearance.

    With `max_folds`, families are dealt round-robin into that many folds (a family is never split):
    300 NAS-Bench-201 cells are 300 families, and 300 refits buy nothing that 10 do not.
    """
    groups: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(family_of(spec), []).append(i)
    families = list(groups.values())
    if max_folds is None or len(families) <= max_folds:
        return families
    folds: list[list[int]] = [[] for _ in range(max_folds)]
    for k, members in enumerate(families):
        folds[k % max_folds].extend(members)
    return [sorted(f) for f in folds]


class TimedCase(Protocol):
    """What the naive baseline reads of a calibration case (`hardware_models.estimators.costmodel.Case`)."""

    network: Network
    runtime: str
    precision: str
    threads: int
    clock_ghz: float


def naive_macs(cases: Sequence[TimedCase], measured: np.ndarray, folds: Sequence[Sequence[int]],
               literal: bool = False) -> np.ndarray:
    """The baseline latency = k x MACs, with k fitted (log space) per setting on each fold's training rows.

    A setting is (runtime, precision, threads, clock): the baseline gets one k per configuration the
    model distinguishes, or the k of all training rows when its setting has none.
    """
    macs = np.array([c.network.macs_literal if literal else max(c.network.macs, 1) for c in cases], float)
    setting = [(c.runtime, c.precision, c.threads, c.clock_ghz) for c in cases]
    y = measured
    out = np.full(y.size, np.nan)
    for held in folds:
        train = np.setdiff1d(np.arange(y.size), held)
        overall = np.exp(np.mean(np.log(y[train] / macs[train])))
        for i in held:
            same = [j for j in train if setting[j] == setting[i]]
            k = np.exp(np.mean(np.log(y[same] / macs[same]))) if same else overall
            out[i] = k * macs[i]
    return out


def coverage(predicted: np.ndarray, measured: np.ndarray, folds: Sequence[Sequence[int]],
             groups: Sequence[str], level: float = 0.9) -> tuple[float, np.ndarray]:
    """Share of held-out rows inside their split-conformal interval, and each row's log half-width.

    A row's half-width is the conformal quantile of the |log residuals| of the *other* folds' rows in the
    same group (runtime x precision): the row's own measurement never sets its interval.
    """
    log_residual = np.abs(np.log(predicted / measured))
    halfwidth = np.full(measured.size, np.nan)
    for held in folds:
        others = np.setdiff1d(np.arange(measured.size), held)
        for i in held:
            pool = [j for j in others if groups[j] == groups[i]] or list(others)
            halfwidth[i] = conformal_halfwidth(log_residual[pool], level)
    return float(np.mean(log_residual <= halfwidth + 1e-12)), halfwidth


@dataclass(frozen=True)
class ReplicateAgreement:
    """How well a table agrees with itself where it measured the same executed graph more than once."""

    rows: int            # rows that share their executed graph with at least one other row
    groups: int          # distinct executed graphs among them
    within: float        # share of those rows within the tolerance of their group's median
    median_error: float  # median |row / group median - 1|


def executed_signature(network: Network) -> tuple:
    """What the runtime executes, whatever the spec's wording: the multiset of computed layers (kind, op,
    kernel, stride, groups, shapes). Two NAS-Bench-201 cells that differ only in edges the graph optimiser
    removes get the same signature."""
    return tuple(sorted((layer.kind.value, layer.op, layer.kernel, layer.stride, layer.groups, layer.in_shape,
                         layer.out_shape) for layer in network.computed()))


def replicate_agreement(signatures: Sequence[tuple], measured: np.ndarray,
                        tolerance: float = 0.10) -> ReplicateAgreement:
    """Rows measured on identical executed graphs, against their group's median.

    Any model whose input is the executed graph predicts one value per group, so `within` bounds the
    share of rows it can get within `tolerance` (optimistically: the median is chosen on the rows
    themselves). On HW-NAS-Bench's Raspberry Pi 4 rows it says whether a miss is the model's or the table's.
    """
    groups: dict[tuple, list[int]] = {}
    for i, signature in enumerate(signatures):
        groups.setdefault(signature, []).append(i)
    shared = [g for g in groups.values() if len(g) > 1]
    errors = np.concatenate([np.abs(measured[g] / np.median(measured[g]) - 1.0) for g in shared]) \
        if shared else np.zeros(0)
    return ReplicateAgreement(rows=int(errors.size), groups=len(shared),
                              within=float(np.mean(errors <= tolerance + 1e-12)) if errors.size else float("nan"),
                              median_error=float(np.median(errors)) if errors.size else float("nan"))

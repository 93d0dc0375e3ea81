"""Does the front beat a baseline recipe? Only by differences larger than their noise.

Why: a "win" of 0.26 points on one seed and a few thousand test images is a tie; counting it inflates the claim.
Each objective is compared three ways (`intervals.Comparison`): accuracy by the 95% interval of the test
accuracy difference, each modelled cost by a relative relevance of 2%. Then, per baseline:

- dominated: a front member is more accurate beyond the interval and no cost is relevantly worse: the strict
  reading of "the front dominates it", and the only one the headline count uses;
- cheaper at tied accuracy: a front member is relevantly cheaper in some cost, no cost worse, and its accuracy is
  inside the interval (not shown to be better, nor worse): a real saving, listed apart so the reader can weigh it;
- ties: a front member matches it in every objective within the interval and the relevance;
- not dominated: every front member is worse beyond relevance in some objective;
- failed: the baseline itself collapsed to chance accuracy (no point to compare).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from evaluators import metric_names as names
from search.analysis.intervals import Comparison
from search.analysis.intervals import compare_accuracy
from search.analysis.intervals import compare_cost
from search.analysis.intervals import difference_interval
from search.analysis.intervals import measured
from search.engine.final import Candidate
from search.engine.final import scored
from spaces.recipe import describe


class Outcome(StrEnum):
    DOMINATED = "dominated"
    CHEAPER_AT_TIE = "cheaper at tied accuracy"
    TIES = "ties"
    NOT_DOMINATED = "not dominated"
    FAILED = "failed"


@dataclass(frozen=True)
class Verdict:
    """How the front compares with one baseline, and which front member decides it."""

    baseline: str
    outcome: Outcome
    by: str = ""  # the deciding front member ("trial 12")
    difference: tuple[float, float] | None = None  # 95% interval of (front member - baseline) test accuracy, points
    reason: str = ""


def comparisons(member: Candidate, baseline: Candidate, objectives: tuple[str, ...]) -> list[Comparison]:
    """`member` against `baseline` at F3, one `Comparison` per objective (each accuracy: the test split, under its
    own arithmetic)."""
    mine, theirs = member.metrics["f3"], baseline.metrics["f3"]
    return [compare_accuracy(measured(mine, names.on_test(o)), measured(theirs, names.on_test(o)))
            if names.is_accuracy(o) else compare_cost(float(mine[o]), float(theirs[o])) for o in objectives]


def _rank(verdicts: list[Comparison], accuracy_at: list[int]) -> Outcome:
    """Dominated: no objective worse beyond relevance and an accuracy (any arithmetic's) better beyond its
    interval."""
    if Comparison.WORSE in verdicts:
        return Outcome.NOT_DOMINATED
    if any(verdicts[i] == Comparison.BETTER for i in accuracy_at):
        return Outcome.DOMINATED
    return Outcome.CHEAPER_AT_TIE if Comparison.BETTER in verdicts else Outcome.TIES


PREFERENCE = (Outcome.DOMINATED, Outcome.CHEAPER_AT_TIE, Outcome.TIES, Outcome.NOT_DOMINATED)


def judge(baseline: Candidate, front: list[Candidate], objectives: tuple[str, ...]) -> Verdict:
    """The strongest outcome any front member achieves against `baseline`."""
    name = baseline.recipe.label or describe(baseline.recipe)
    if baseline.failure or "f3" not in baseline.metrics:
        return Verdict(name, Outcome.FAILED, reason=baseline.failure or "no F3 result")
    acc = [i for i, o in enumerate(objectives) if names.is_accuracy(o)]
    best: tuple[int, Candidate] | None = None
    for member in (m for m in scored(front) if "f3" in m.metrics):
        rank = PREFERENCE.index(_rank(comparisons(member, baseline, objectives), acc))
        if best is None or rank < best[0]:
            best = (rank, member)
    if best is None or PREFERENCE[best[0]] == Outcome.NOT_DOMINATED:
        return Verdict(name, Outcome.NOT_DOMINATED)
    member = best[1]
    diff = difference_interval(measured(member.metrics["f3"], "test_accuracy"),
                               measured(baseline.metrics["f3"], "test_accuracy"))
    return Verdict(name, PREFERENCE[best[0]], member.source, diff)


def judge_all(baselines: list[Candidate], front: list[Candidate], objectives: tuple[str, ...]) -> list[Verdict]:
    return [judge(b, front, objectives) for b in baselines]


def verdict_lines(verdicts: list[Verdict]) -> list[str]:
    """report.md's section: the count that uses only differences beyond the interval, then every baseline."""
    count = {o: [v for v in verdicts if v.outcome == o] for o in Outcome}
    lines = ["## Baselines against the front (F3: test accuracy with 95% intervals, modelled costs)", "",
             f"Dominated by the front: {len(count[Outcome.DOMINATED])} of {len(verdicts)} "
             f"({', '.join(v.baseline for v in count[Outcome.DOMINATED]) or 'none'}). A front member dominates a "
             "baseline only when a test accuracy (each target arithmetic's, where the study scores several) is "
             "higher beyond the 95% interval of the difference (Newcombe), none is lower beyond it, and none of its "
             "costs is more than 2% worse; smaller differences read \"ties\".", ""]
    lines += [f"- {o.value}: {len(count[o])}" for o in Outcome if o != Outcome.DOMINATED and count[o]]
    lines += ["", "| baseline | outcome | decided by | test accuracy difference, 95% interval (points) |",
              "|---|---|---|---|"]
    for v in verdicts:
        diff = f"[{v.difference[0]:+.2f}, {v.difference[1]:+.2f}]" if v.difference else ""
        lines.append(f"| {v.baseline} | {v.outcome.value}{': ' + v.reason if v.reason else ''} | {v.by} | {diff} |")
    return [*lines, ""]

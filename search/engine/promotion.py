"""Which F1 results earn F2: asynchronous successive halving by non-dominated rank (MO-ASHA, Schmucker et al. 2021).

Every sampled recipe is scored at F1 (about a second: no training of its own); F2 (tens of seconds) is spent only
on the promising fraction. The decision is asynchronous, as in ASHA: it is taken when a trial's F1 result
arrives, against every F1 result seen so far, and never revisited (the trial is told to optuna at once, so a Ray
worker never waits for a rung to fill). A result is promoted when it ranks among the top `ceil(n / eta)` of the
`n` F1 points seen, itself included: ordered by non-dominated rank, then, within one rank, by an epsilon-net.

Why an epsilon-net and not NSGA-II's crowding distance to break ties: with four or more objectives most points
of a small front sit at the extreme of some objective, and crowding gives every extreme point the same infinite
distance, so the tie-break would promote nearly the whole first front. The epsilon-net (greedy farthest-point
order in the pool's normalised objective space, started at the most accurate point) is a total order: the next
point is always the one that covers the most new ground. syne-tune's MO-ASHA offers the same choice.

Why `ceil`: the first results have nothing to be compared with; promoting the first arrival gives the search
its first F2 points (the front is chosen on F2) and the rate settles at 1/eta as results accumulate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from enum import StrEnum

import numpy as np

from search.analysis.pareto import Directions
from search.analysis.pareto import dominates
from search.analysis.pareto import to_minimisation


class PromotionKind(StrEnum):
    MOASHA = "moasha"  # F2 for the top 1/eta of the F1 results by non-dominated rank
    LADDER = "ladder"  # F2 for every recipe that passes F0 (the fixed F1 -> F2 ladder, for comparison)


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """0 for the first front, 1 for the front once it is removed, and so on (minimisation)."""
    beats = dominates(points, points)
    ranks = np.full(len(points), -1, dtype=int)
    rank = 0
    while (ranks < 0).any():
        left = ranks < 0
        free = left & ~np.any(beats[left], axis=0)
        ranks[free] = rank
        rank += 1
    return ranks


def normalised(points: np.ndarray) -> np.ndarray:
    """Each objective scaled to [0, 1] over the points (a constant objective becomes 0): distances in the
    epsilon-net then weigh a millisecond and a percentage point by their spread, not by their units."""
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (points - low) / span


def epsilon_net_order(points: np.ndarray) -> list[int]:
    """A total order of `points` (normalised, minimised): the best in the first objective, then repeatedly the
    point farthest from those already chosen; ties go to the earlier point."""
    if len(points) == 0:
        return []
    first = int(np.lexsort((points.sum(axis=1), points[:, 0]))[0])
    order = [first]
    nearest = np.linalg.norm(points - points[first], axis=1)
    nearest[first] = -1.0
    for _ in range(len(points) - 1):
        pick = int(np.argmax(nearest))  # argmax returns the first of equal values: the earlier point
        order.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[pick], axis=1))
        nearest[order] = -1.0
    return order


def promotion_order(points: np.ndarray, directions: Directions) -> list[int]:
    """Indices of `points` from most to least promising: by non-dominated rank, then epsilon-net within a rank."""
    p = normalised(to_minimisation(np.asarray(points, dtype=float).reshape(len(points), -1), directions))
    ranks = nondominated_ranks(p)
    order: list[int] = []
    for rank in range(int(ranks.max()) + 1 if len(p) else 0):
        members = np.flatnonzero(ranks == rank)
        order += [int(members[i]) for i in epsilon_net_order(p[members])]
    return order


@dataclass(frozen=True)
class Decision:
    """Whether one F1 result earns F2, and where it stood among the F1 results seen when it arrived."""

    promoted: bool
    position: int  # 0 = the most promising of the `seen` F1 points
    seen: int  # F1 points compared, itself included
    quota: int  # how many of them the rule promotes

    @property
    def standing(self) -> float:
        """The share of the seen F1 points ranked ahead of it, in [0, 1): 0 for the best. An F1-only trial tells
        it to the sampler as a constraint violation (`search.engine.loop.tell`)."""
        return self.position / self.seen

    def note(self) -> str:
        verdict = "promoted to F2" if self.promoted else "not promoted (F1 only)"
        if self.promoted and self.position >= self.quota:
            verdict += " (scored there before)"
        return f"{verdict}: F1 rank {self.position + 1} of {self.seen}, top {self.quota} promoted"


Rule = Callable[[np.ndarray, int, Directions, int], Decision]


def moasha(points: np.ndarray, index: int, directions: Directions, eta: int) -> Decision:
    """Row `index` of `points` (the result that just arrived) against all rows: promoted when among the top
    `ceil(n / eta)` by `promotion_order`."""
    n = len(points)
    position = promotion_order(points, directions).index(index % n)
    quota = math.ceil(n / eta)
    return Decision(position < quota, position, n, quota)


def ladder(points: np.ndarray, index: int, directions: Directions, eta: int) -> Decision:
    """Every result climbs to F2, whatever F1 said: today's fixed ladder, kept to compare against."""
    return Decision(True, 0, len(points), len(points))


RULES: dict[PromotionKind, Rule] = {PromotionKind.MOASHA: moasha, PromotionKind.LADDER: ladder}


@dataclass
class Promoter:
    """The F1 results of one study so far (rebuilt from the storage on resume) and the rule that reads them."""

    kind: PromotionKind
    eta: int
    directions: Sequence[str]
    points: list[list[float]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the recipe hash of each point ("" when not known)
    scored: set[str] = field(default_factory=set)  # recipes promoted before: their F2 result is cached

    def add(self, point: Sequence[float], key: str = "") -> int:
        """The index of the recipe's result in the pool, added when the recipe is new to it."""
        if key and key in self.keys:
            return self.keys.index(key)
        self.points.append([float(v) for v in point])
        self.keys.append(key)
        return len(self.points) - 1

    def decide(self, point: Sequence[float], key: str = "") -> Decision:
        """The decision for a result that just arrived. A recipe sampled again counts once in the pool (a second
        copy of one point would push other results down): it is judged where its first result stands now, and
        one promoted before is promoted again, since its F2 result is cached and costs nothing."""
        index = self.add(point, key)
        decision = RULES[self.kind](np.array(self.points, dtype=float), index, self.directions, self.eta)
        if key in self.scored and not decision.promoted:
            decision = replace(decision, promoted=True)
        if decision.promoted and key:
            self.scored.add(key)
        return decision

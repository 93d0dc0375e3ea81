"""MO-ASHA promotion on constructed F1 points, the wall-clock budget, and what optuna is told for trials that stop
below F2 (F1-only, rejected at F0). Real optuna studies in memory; no dataset needed (fast tier)."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search.analysis.objectives import Constraint
from search.analysis.reference import ReferenceBox
from search.engine import loop as engine
from search.engine.budget import Clock
from search.engine.budget import describe_duration
from search.engine.budget import parse_duration
from search.engine.final import completed
from search.engine.loop import Outcome
from search.engine.loop import SearchConfig
from search.engine.promotion import Promoter
from search.engine.promotion import PromotionKind
from search.engine.promotion import epsilon_net_order
from search.engine.promotion import moasha
from search.engine.promotion import nondominated_ranks
from search.engine.promotion import promotion_order
from spaces.recipe import Recipe
from spaces.thesis_recipes import PTQ8
from spaces.thesis_recipes import QAT8

ACC_LATENCY = ["max", "min"]  # accuracy (%), latency (ms)
SEEN = [[90.0, 1.0], [85.0, 0.5], [80.0, 2.0], [70.0, 3.0], [60.0, 4.0]]


def dominated_by(point: np.ndarray, others: np.ndarray) -> int:
    """How many rows of `others` dominate `point` (accuracy maximised, latency minimised)."""
    better_or_equal = (others[:, 0] >= point[0]) & (others[:, 1] <= point[1])
    strictly = (others[:, 0] > point[0]) | (others[:, 1] < point[1])
    return int(np.sum(better_or_equal & strictly))


def test_an_f1_point_dominated_by_the_promoted_share_is_not_promoted() -> None:
    """Six F1 results, eta 3: the top ceil(6/3) = 2 are promoted. (75, 2.5) is dominated by three earlier results,
    so at least those three rank ahead of it: not promoted, and told with its standing."""
    decision = moasha(np.array([*SEEN, [75.0, 2.5]]), -1, ACC_LATENCY, eta=3)
    assert (decision.seen, decision.quota) == (6, 2)
    assert not decision.promoted and decision.position >= 3
    assert 0 < decision.standing < 1 and "not promoted" in decision.note()


@pytest.mark.parametrize("new", [[95.0, 0.4],  # dominates every earlier result
                                 [97.0, 5.0]])  # non-dominated: the most accurate, and the slowest
def test_a_non_dominated_f1_point_that_covers_new_ground_is_promoted(new: list[float]) -> None:
    decision = moasha(np.array([*SEEN, new]), -1, ACC_LATENCY, eta=3)
    assert decision.promoted and decision.position == 0 and decision.standing == 0.0


def test_the_rule_never_promotes_a_point_dominated_by_its_quota_on_random_streams() -> None:
    """Asynchronous decisions on a stream of random 3-objective points: every decision is taken against all
    points so far, and a point dominated by at least `quota` others is never promoted."""
    rng = np.random.default_rng(0)
    directions = ["max", "min", "min"]
    promoter = Promoter(PromotionKind.MOASHA, 3, directions)
    promoted = 0
    for point in rng.random((60, 3)):
        decision = promoter.decide(point)
        pts = -np.array(promoter.points) * np.array([1, -1, -1])  # all minimised
        p = pts[-1]
        beaten_by = int(np.sum(np.all(pts <= p, axis=1) & np.any(pts < p, axis=1)))
        if beaten_by >= decision.quota:
            assert not decision.promoted
        promoted += decision.promoted
    assert 5 <= promoted < 60 / 2  # the rate settles near 1/eta, far below the ladder's 60


def test_a_recipe_sampled_again_counts_once_and_keeps_its_f2() -> None:
    promoter = Promoter(PromotionKind.MOASHA, 3, ACC_LATENCY)
    decisions = {key: promoter.decide(p, key) for key, p in zip("abcde", SEEN, strict=True)}
    assert decisions["a"].promoted and not decisions["e"].promoted
    again = promoter.decide(SEEN[4], "e")
    assert len(promoter.points) == 5 and (again.seen, again.position, again.promoted) == (5, 4, False)
    for key, better in zip("fghi", [[99.0, 0.1], [98.0, 0.09], [97.0, 0.08], [96.0, 0.07]], strict=True):
        promoter.decide(better, key)  # four results that dominate the first push it out of the top share...
    first_again = promoter.decide(SEEN[0], "a")
    assert first_again.position >= first_again.quota
    assert first_again.promoted and "scored there before" in first_again.note()  # ...but its F2 is cached


def test_nondominated_ranks_and_the_promotion_order() -> None:
    minimised = np.array([[1.0, 1.0], [2.0, 2.0], [0.5, 3.0], [3.0, 3.0], [1.0, 1.0]])
    assert nondominated_ranks(minimised).tolist() == [0, 1, 0, 2, 0]
    order = promotion_order(np.array(SEEN), ACC_LATENCY)
    assert sorted(order) == list(range(len(SEEN)))
    assert order[:2] == [0, 1]  # the front {90 @ 1 ms, 85 @ 0.5 ms}, most accurate first
    assert order[-1] == 4  # 60 @ 4 ms is dominated by all four others


def test_the_epsilon_net_starts_at_the_best_and_then_covers_the_farthest_point() -> None:
    points = np.array([[0.5, 0.5], [0.0, 1.0], [0.49, 0.51], [1.0, 0.0]])
    assert epsilon_net_order(points) == [1, 3, 0, 2]  # the near-duplicate of point 0 comes last


def test_the_ladder_promotes_every_result() -> None:
    promoter = Promoter(PromotionKind.LADDER, 3, ACC_LATENCY)
    assert all(promoter.decide(p).promoted for p in [*SEEN, [10.0, 9.0]])


@pytest.mark.parametrize(("text", "seconds"), [("60m", 3600), ("1h30m", 5400), ("90s", 90), ("1h", 3600),
                                               ("2m30s", 150), (" 45M ", 2700)])
def test_budgets_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(describe_duration(seconds)) == seconds


@pytest.mark.parametrize(("text", "message"), [("60", "is not a wall-clock time"),
                                               ("an hour", "is not a wall-clock time"),
                                               ("30m1h", "is not a wall-clock time"), ("", "is not a wall-clock time"),
                                               ("0m", "leaves no time to search")])
def test_bad_budgets_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)
    if text:
        with pytest.raises(ValueError, match=f"search.budget: .*{message}"):
            SearchConfig(budget=text)


def test_the_clock_counts_what_earlier_runs_spent() -> None:
    study = optuna.create_study()
    Clock(limit=None, spent_before=50.0).record(study)
    resumed = Clock.of_study(study, limit=60.0)
    assert resumed.spent() >= 50.0 and not resumed.up() and resumed.left() <= 10.0
    assert Clock.of_study(study, limit=40.0).up()


def test_no_trial_starts_when_less_than_half_a_mean_trial_is_left() -> None:
    """A trial cannot be stopped midway: started with 30 s left, an 80-s trial would overrun the limit by 50."""
    assert Clock(limit=100.0, spent_before=70.0, trial_seconds=[80.0]).up()
    assert not Clock(limit=100.0, spent_before=70.0, trial_seconds=[40.0]).up()  # 20 s expected past: it starts
    assert not Clock(limit=100.0, spent_before=70.0).up()  # nothing measured yet: the limit itself
    study = optuna.create_study()  # a resumed run knows its earlier trials' times
    for seconds in (70.0, 90.0):
        trial = study.ask()
        trial.set_user_attr("seconds", seconds)
        study.tell(trial, 1.0)
    Clock(limit=None, spent_before=70.0).record(study)
    resumed = Clock.of_study(study, limit=100.0)
    assert resumed.mean_trial() == 80.0 and resumed.up()
    resumed.record(study, 10.0)
    assert resumed.mean_trial() == pytest.approx(170 / 3)


OBJECTIVES = ("accuracy", "latency_zcu104", "size_mb")
SIZE_LIMIT = Constraint("size_mb", "<=", 0.5)


def _study() -> optuna.Study:
    config = SearchConfig(population=2, seed=0)
    return optuna.create_study(directions=["maximize", "minimize", "minimize"],
                               sampler=engine.make_sampler(config))


def _metrics(acc: float | None, latency: float, size: float) -> dict[str, float]:
    m = {"latency_zcu104": latency, "size_mb": size}
    return m if acc is None else {**m, "accuracy": acc, "accuracy_images": 1000}


def test_f0_rejected_and_f1_only_trials_are_told_as_infeasible_and_never_reach_the_front() -> None:
    study = _study()
    recipes = [Recipe(label=f"r{i}") for i in range(3)]
    f0 = Outcome(TrialState.COMPLETE, {"f1": _metrics(None, 0.3, 0.8)}, "infeasible at F0: size_mb", level="f0")
    f1 = Outcome(TrialState.COMPLETE, {"f1": _metrics(70.0, 0.2, 0.1)}, "not promoted", level="f1", standing=0.4)
    f2 = Outcome(TrialState.COMPLETE, {"f1": _metrics(60.0, 0.5, 0.3), "f2": _metrics(80.0, 0.5, 0.3)})
    for recipe, outcome in zip(recipes, (f0, f1, f2), strict=True):
        engine.tell(study, study.ask(), recipe, outcome, OBJECTIVES, (SIZE_LIMIT,))
    rejected, f1_only, scored = study.trials
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    # F0: its exact costs, a worst-case accuracy, and how far past the bound it lies (what NSGA-II learns from)
    assert rejected.values == [engine.WORST_ACCURACY, 0.3, 0.8]
    assert rejected.constraints == pytest.approx({"0:size_mb <= 0.5": 0.3})
    assert rejected.user_attrs["feasible"] is False and rejected.user_attrs["told"] == "f0"
    assert "accuracy" not in rejected.user_attrs["f1"]  # nothing was measured
    # F1 only: its F1 values, infeasible by its F1 standing (behind every F2 trial), feasible for the user's limit
    assert f1_only.values == [70.0, 0.2, 0.1] and f1_only.user_attrs["f1_only"] is True
    assert f1_only.constraints == pytest.approx({"0:size_mb <= 0.5": -0.4, engine.F1_STANDING: 0.4})
    # The sampler's own front (optuna's best trials in a constrained study) and ours hold only the F2 trial.
    assert [t.number for t in study.best_trials] == [scored.number]
    assert [c.trial for c in completed(study)] == [scored.number]
    assert engine.count_finished(study) == 3  # every one of them uses up budget
    study.ask()  # NSGA-II samples a next trial from this population without complaint


def test_the_promotion_pool_is_rebuilt_from_the_storage_on_resume() -> None:
    study = _study()
    f1 = Outcome(TrialState.COMPLETE, {"f1": _metrics(70.0, 0.2, 0.1)}, level="f1", standing=0.5)
    f2 = Outcome(TrialState.COMPLETE, {"f1": _metrics(60.0, 0.5, 0.3), "f2": _metrics(80.0, 0.5, 0.3)})
    f0 = Outcome(TrialState.COMPLETE, {"f1": _metrics(None, 0.3, 0.8)}, "infeasible", level="f0")
    recipes = [Recipe(), Recipe(quant=PTQ8), Recipe(quant=QAT8), Recipe()]  # the last: the first sampled again
    for recipe, outcome in zip(recipes, (f1, f2, f0, f1), strict=True):
        engine.tell(study, study.ask(), recipe, outcome, OBJECTIVES, ())
    study.ask()  # left RUNNING, as a killed run leaves it
    promoter = engine.make_promoter(study, SearchConfig(eta=4), OBJECTIVES)
    assert promoter.points == [[70.0, 0.2, 0.1], [60.0, 0.5, 0.3]]  # F1 results only, the rejected one has none
    assert promoter.keys == [recipes[0].hash(), recipes[1].hash()]  # the repeated recipe counts once
    assert promoter.scored == {recipes[1].hash()}  # the recipe scored at F2
    assert (promoter.kind, promoter.eta) == (PromotionKind.MOASHA, 4)


def test_the_history_of_the_front_counts_f2_trials_only() -> None:
    from search.engine.history import hypervolume_history

    study = _study()
    f1 = Outcome(TrialState.COMPLETE, {"f1": _metrics(99.0, 0.01, 0.01)}, level="f1", standing=0.5)
    engine.tell(study, study.ask(), Recipe(), f1, OBJECTIVES, ())
    box = ReferenceBox.of_study(OBJECTIVES, 10, 100.0, {"latency_zcu104": 1.0, "size_mb": 1.0})
    assert [p.hypervolume for p in hypervolume_history(study, box)] == [0.0]
    assert math.isclose(box.hypervolume(np.array([[99.0, 0.01, 0.01]])), 0.97, rel_tol=0.05)  # it would count

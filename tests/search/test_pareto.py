"""Pareto front, hypervolume and knee: exact answers on fronts small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from search.analysis.pareto import hypervolume
from search.analysis.pareto import pareto_mask
from search.analysis.pareto import staircase


def test_front_keeps_only_non_dominated_points_with_mixed_directions() -> None:
    # (accuracy max, latency min)
    pts = np.array([[90, 10], [85, 5], [80, 6], [95, 20], [85, 5], [70, 30]])
    assert pareto_mask(pts, ["max", "min"]).tolist() == [True, True, False, True, True, False]


def test_no_front_point_is_dominated_by_any_point_on_random_data() -> None:
    rng = np.random.default_rng(0)
    pts = rng.random((200, 3))
    dirs = ["max", "min", "min"]
    mask = pareto_mask(pts, dirs)
    signed = pts * np.array([-1, 1, 1])
    for i in np.flatnonzero(mask):
        assert not any(np.all(signed[j] <= signed[i]) and np.any(signed[j] < signed[i]) for j in range(len(pts)))
    for i in np.flatnonzero(~mask):
        assert any(np.all(signed[j] <= signed[i]) and np.any(signed[j] < signed[i]) for j in np.flatnonzero(mask))


def test_hypervolume_exact_in_2d_and_3d() -> None:
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    # Staircase under reference (4, 4): 3*1 + 2*1 + 1*1 = 6
    assert hypervolume(pts, [4, 4], ["min", "min"]) == pytest.approx(6.0)
    assert hypervolume(pts * [-1, 1], [-4, 4], ["max", "min"]) == pytest.approx(6.0)
    cube = np.array([[0.0, 0.0, 0.0]])
    assert hypervolume(cube, [1, 2, 3], ["min"] * 3) == pytest.approx(6.0)
    two = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    # Union of boxes [0,2]^2x[1,2] (vol 4) and [1,2]^2x[0,2] (vol 2), overlap [1,2]^2x[1,2] (vol 1): 5
    assert hypervolume(two, [2, 2, 2], ["min"] * 3) == pytest.approx(5.0)
    assert hypervolume(np.array([[5.0, 5.0]]), [4, 4], ["min", "min"]) == 0.0


def test_adding_a_dominated_point_leaves_hypervolume_unchanged_and_a_new_front_point_grows_it() -> None:
    rng = np.random.default_rng(1)
    pts = rng.random((30, 3))
    ref = [1.1, 1.1, 1.1]
    base = hypervolume(pts, ref, ["min"] * 3)
    assert hypervolume(np.vstack([pts, pts.max(axis=0)]), ref, ["min"] * 3) == pytest.approx(base)
    assert hypervolume(np.vstack([pts, [[0.0, 0.0, 1.0]]]), ref, ["min"] * 3) > base


def test_staircase_is_the_projections_front_in_cost_order() -> None:
    accuracy = [84.0, 97.8, 90.0, 97.2, 95.0, 96.0]
    latency = [0.565, 0.568, 0.570, 0.5675, 0.5660, 0.600]
    # 90.0 at 0.570 and 96.0 at 0.600 are beaten in this projection (kept on the front by other objectives).
    assert staircase(accuracy, latency) == [0, 4, 3, 1]
    assert staircase([], []) == []


def test_a_panel_says_when_a_cost_barely_varies_across_the_front() -> None:
    from search.report.plots import flat_note

    assert flat_note([0.565, 0.5675, 0.568], "latency") == "latency varies < 3% across the front (0.5%)"
    assert flat_note([0.3, 0.6], "latency") is None and flat_note([0.5], "latency") is None


def test_cascades_far_right_of_every_other_point_do_not_stretch_the_axis() -> None:
    from search.report.plots import cascade_edge

    # docs/results/cpu-xeon-4, zcu104: trials, front and baselines within 1.0-3.7 ms, cascades at 3.7-73 ms
    shown, cascades = [1.0, 1.654, 1.992, 3.667], [3.7, 14.8, 39.2, 73.4]
    assert cascade_edge(shown, cascades) == pytest.approx(3.667 * 1.25)
    assert cascade_edge(shown, [3.7, 4.0]) is None  # within reach: the axis takes them as they are
    assert cascade_edge([], cascades) is None and cascade_edge(shown, []) is None

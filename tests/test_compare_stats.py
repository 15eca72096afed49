"""The statistics of the comparison report: t-intervals, curve crossings and the paired time to match."""

from __future__ import annotations

import math

import pytest

from alchemist_pl.compare_stats import crossing, curve_at, paired_time_to_match, t_interval


def _run(points: list[tuple[int, float]]) -> dict:
    return {"metrics": {"eval_curve": [{"step": s, "domain_kid": v} for s, v in points]}}


def test_t_interval_is_the_student_t_interval_of_the_mean():
    mean, half, n = t_interval([1.0, 2.0, 3.0, None, float("nan")])
    # t_{0.975, 2} = 4.3027, s = 1, n = 3: half = 4.3027 / sqrt(3)
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert t_interval([5.0, 5.0])[1] == 0.0
    assert math.isnan(t_interval([4.0])[1]) and t_interval([])[2] == 0


def test_crossing_interpolates_between_the_points_around_it():
    steps, kid = [100, 200, 300], [0.10, 0.06, 0.02]
    assert crossing(steps, kid, 0.04) == pytest.approx(250.0)  # halfway from 0.06 to 0.02
    assert crossing(steps, kid, 0.2) == 100.0  # the first point already reaches it
    assert crossing(steps, kid, 0.01) is None
    assert crossing(steps, [1, 3, 5], 4, lower=False) == pytest.approx(250.0)  # higher is better


def test_paired_time_to_match_pairs_seeds_and_gives_an_interval():
    runs = {0: _run([(100, 0.10), (200, 0.06), (300, 0.02)]), 1: _run([(100, 0.10), (200, 0.05), (300, 0.03)])}
    baselines = {0: _run([(100, 0.2), (300, 0.04)]), 1: _run([(100, 0.2), (300, 0.03)])}
    t = paired_time_to_match(runs, baselines, "domain_kid")
    assert t["per_seed"][0]["steps"] == pytest.approx(250.0)  # seed 0 against seed 0's final 0.04
    assert t["per_seed"][1]["steps"] == pytest.approx(300.0)  # seed 1 against seed 1's final 0.03
    mean, half, n = t["steps"]
    assert (mean, n, t["reached"], t["at_first_point"]) == (pytest.approx(275.0), 2, 2, 0)
    assert half == pytest.approx(12.706 * 25.0, rel=1e-3)  # t_{.975,1} = 12.706, s / sqrt(n) = 25
    assert t["ratio"][0] == pytest.approx(275.0 / 300.0)


def test_paired_time_to_match_needs_a_curve_and_counts_misses():
    one_point = {0: _run([(300, 0.02)])}
    with pytest.raises(ValueError, match="evaluation point"):
        paired_time_to_match(one_point, one_point, "domain_kid")
    never = paired_time_to_match({0: _run([(100, 0.3), (200, 0.2)])}, {0: _run([(200, 0.1)])}, "domain_kid")
    assert never["reached"] == 0 and never["per_seed"][0]["steps"] is None and never["steps"][2] == 0
    assert curve_at(_run([(100, 0.3), (200, 0.2)]), "domain_kid", 200) == 0.2
    assert curve_at(_run([(100, 0.3)]), "domain_kid", 150) is None

"""The CPU study's statistics (src/reporting/cpu_repro/stats.py) against scipy and brute force, on fixed
inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from src.reporting.cpu_repro import stats as rs

A = np.array([80.1, 78.4, 81.0, 79.2, 77.9, 80.6])
B = np.array([79.0, 78.9, 79.5, 77.1, 78.0, 79.4])
# task -> paired differences: unequal seed counts, so the pooled mean is not the mean of the pairs
BY_TASK = {"mrpc": [1.2, -0.4, 2.0, 0.9], "stsb": [0.3, 1.1], "cola": [-2.5, 3.0], "sst2": [0.4, 0.2]}


def test_the_t_interval_is_scipys_paired_t_interval():
    ci = stats.ttest_rel(A, B).confidence_interval(0.95)
    assert rs.t_interval(A - B) == pytest.approx((ci.low, ci.high), rel=1e-12)


def test_the_bootstrap_interval_brackets_the_mean_and_matches_scipys_percentile_bootstrap():
    d = A - B
    low, high = rs.bootstrap_interval(d)
    ref = stats.bootstrap((d,), np.mean, method="percentile", n_resamples=10_000, random_state=1)
    assert low < d.mean() < high
    assert (low, high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=0.1)


def test_the_paired_t_mde_is_the_sum_of_the_two_t_quantiles_times_the_standard_error():
    sd, n = 1.7, 4
    expected = (stats.t.ppf(0.975, 3) + stats.t.ppf(0.80, 3)) * sd / math.sqrt(n)
    assert rs.paired_t_mde(sd, n) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(rs.paired_t_mde(sd, 1))


def test_a_true_difference_of_the_paired_t_mde_is_detected_about_80_percent_of_the_time():
    sd, n = 2.0, 12
    mde, crit = rs.paired_t_mde(sd, n), stats.t.ppf(0.975, n - 1)
    nc = mde * math.sqrt(n) / sd  # the exact power, from the noncentral t
    power = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
    assert power == pytest.approx(0.80, abs=0.02)


def test_the_normal_mde_uses_the_normal_quantiles():
    assert rs.normal_mde(0.5) == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * 0.5, rel=1e-12)
    assert rs.normal_mde(1.0) == pytest.approx(2.8016, abs=1e-4)


def test_the_pooled_mean_weights_tasks_equally():
    assert rs.pooled_mean(BY_TASK) == pytest.approx((0.925 + 0.7 + 0.25 + 0.3) / 4)


def brute_force_p(by_task):
    """Every sign pattern, one at a time."""
    tasks = list(by_task.values())
    flat = [(i, x) for i, d in enumerate(tasks) for x in d]
    observed = abs(np.mean([np.mean(d) for d in tasks]))
    hits = 0
    for signs in itertools.product((1, -1), repeat=len(flat)):
        flipped = [[] for _ in tasks]
        for s, (i, x) in zip(signs, flat, strict=True):
            flipped[i].append(s * x)
        hits += abs(np.mean([np.mean(d) for d in flipped])) >= observed - 1e-9
    return hits / 2 ** len(flat)


def test_the_exact_sign_flip_p_is_the_brute_force_enumeration():
    p, exact = rs.sign_flip_p(BY_TASK)
    assert exact and p == pytest.approx(brute_force_p(BY_TASK), rel=1e-12)


def test_the_sign_flip_p_of_one_task_is_scipys_paired_permutation_test():
    res = stats.permutation_test(
        (A, B),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf,
        alternative="two-sided",
    )
    p, exact = rs.sign_flip_p({"mrpc": A - B})
    assert exact and p == pytest.approx(res.pvalue, rel=1e-9)


def test_the_sign_flip_p_of_several_tasks_is_scipys_paired_permutation_test_on_the_weighted_mean():
    a = np.concatenate([np.asarray(d) for d in BY_TASK.values()])
    weights = np.concatenate([np.full(len(d), 1 / (4 * len(d))) for d in BY_TASK.values()])
    res = stats.permutation_test(
        (a, np.zeros_like(a)),
        lambda x, y, axis: np.sum((x - y) * weights, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf,
    )
    assert rs.sign_flip_p(BY_TASK)[0] == pytest.approx(res.pvalue, rel=1e-9)


def test_beyond_2_to_the_16_patterns_the_p_is_sampled_and_close_to_the_exact_one():
    by_task = {**BY_TASK, "rte": [0.5, -1.5, 2.2, 0.1], "extra": [0.3, 0.6, -0.2]}  # 19 pairs
    p, exact = rs.sign_flip_p(by_task)
    assert not exact
    values, weights = rs._weights(by_task)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(values))))
    exact_p = float((np.abs(signs @ (values * weights)) >= abs(values @ weights) - 1e-9).mean())
    assert p == pytest.approx(exact_p, abs=0.01)
    assert rs.sign_flip_p(by_task) == (p, exact)  # a fixed seed


def test_with_one_pair_per_task_the_task_bootstrap_is_scipys_percentile_bootstrap_of_the_tasks():
    one_each = {f"t{i}": [x] for i, x in enumerate(A - B)}
    out = rs.pooled(one_each)
    ref = stats.bootstrap((A - B,), np.mean, method="percentile", n_resamples=10_000, random_state=2)
    assert (out["low"], out["high"]) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high), abs=0.1
    )
    assert out["se"] == pytest.approx(ref.standard_error, rel=0.05)


def test_the_task_then_seed_bootstrap_resamples_seeds_within_a_task():
    # one task: the bootstrap is the ordinary bootstrap of its seeds
    out = rs.pooled({"mrpc": list(A - B)})
    low, high = rs.bootstrap_interval(A - B)
    assert (out["low"], out["high"]) == pytest.approx((low, high), abs=0.1)
    # constant tasks: no spread, whatever is drawn
    flat = rs.pooled({"a": [1.0, 1.0], "b": [3.0, 3.0, 3.0]})
    assert flat["mean"] == pytest.approx(2.0) and flat["low"] == pytest.approx(1.0) and flat["high"] == 3.0


def test_pooled_reports_counts_mde_and_skips_empty_tasks():
    out = rs.pooled({**BY_TASK, "rte": []})
    assert (out["tasks"], out["pairs"]) == (4, 10)
    assert out["mde"] == pytest.approx(rs.normal_mde(out["se"]))
    assert out["low"] <= out["mean"] <= out["high"]
    assert rs.pooled({"rte": []}) is None


def test_a_pool_too_small_to_reach_p_005_has_no_mde():
    assert rs.smallest_p(5) == pytest.approx(0.0625) and rs.smallest_p(6) == pytest.approx(0.03125)
    five = rs.pooled({"a": [1.0, 2.0, 3.0], "b": [1.5, 2.5]})
    six = rs.pooled({"a": [1.0, 2.0, 3.0], "b": [1.5, 2.5, 0.5]})
    assert five["p"] == pytest.approx(rs.smallest_p(5)) and math.isinf(five["mde"])
    assert math.isfinite(six["mde"])

"""Statistics of the CPU study's write-up: paired differences per cell, and their pooling over tasks.

A cell (task × budget × comparison) holds paired differences, one per seed: the seed fixes the data
order and the initialisation both runs share. Per cell: the mean with a 95% paired t-interval and a
percentile bootstrap interval, and the minimal detectable effect of a paired t-test at that n and
spread. Pooled over tasks (``pooled``): the mean over tasks of each task's mean difference (tasks
weighted equally, whatever their seed count), tested with a sign-flip permutation test and bracketed
by a bootstrap that resamples tasks, then seeds within each drawn task.

- Sign flip: under the null of no difference, each paired difference is as likely to have either
  sign (its two runs are exchangeable within the pair), independently across pairs. Every sign
  pattern is enumerated when there are at most ``2**EXACT_MAX_PAIRS`` of them, else
  ``SIGN_FLIP_DRAWS`` random patterns with a fixed seed. Two-sided: the share of patterns whose
  statistic is at least as far from 0 as the observed one.
- Bootstrap: tasks are the resampling unit (the population a claim about "GLUE tasks" is about),
  seeds the unit within a task. With four or five tasks its interval is coarse and, like any
  percentile bootstrap on few units, tends to be too narrow; the sign-flip p is the test.
- Minimal detectable effect (MDE): the smallest true difference a two-sided test at level ``ALPHA``
  would detect with probability ``POWER``: per cell (t_{1−α/2,n−1} + t_{power,n−1}) · sd / √n for the
  paired t-test, pooled (z_{1−α/2} + z_{power}) · SE with SE the bootstrap standard error.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

CI = 0.95
ALPHA = 1 - CI
POWER = 0.80
BOOTSTRAP_RESAMPLES = 10_000
EXACT_MAX_PAIRS = 16  # 2**16 sign patterns are enumerated; more are sampled
SIGN_FLIP_DRAWS = 20_000
SEED = 0


def t_interval(d: Sequence[float], ci: float = CI) -> tuple[float, float]:
    """The paired t-interval of the mean of ``d`` (at least two values)."""
    d = np.asarray(d, dtype=float)
    n, mean = len(d), float(d.mean())
    half = float(stats.t.ppf(0.5 + ci / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def bootstrap_interval(d: Sequence[float], seed: int = SEED, ci: float = CI) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d``, ``BOOTSTRAP_RESAMPLES`` resamples."""
    d = np.asarray(d, dtype=float)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(BOOTSTRAP_RESAMPLES, len(d)))].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - ci) / 2, 0.5 + ci / 2])
    return float(lo), float(hi)


def paired_t_mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference a two-sided paired t-test on ``n`` pairs with difference spread
    ``sd`` detects with probability ``power`` (the usual approximation: the noncentral t replaced by
    a shifted central t). NaN below two pairs."""
    if n < 2:
        return math.nan
    df = n - 1
    return (float(stats.t.ppf(1 - alpha / 2, df)) + float(stats.t.ppf(power, df))) * sd / math.sqrt(n)


def normal_mde(se: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The same for an estimate with standard error ``se`` and a normal reference distribution."""
    return (float(stats.norm.ppf(1 - alpha / 2)) + float(stats.norm.ppf(power))) * se


def pooled_mean(by_task: Mapping[str, Sequence[float]]) -> float:
    """Mean over tasks of each task's mean difference."""
    return float(np.mean([np.mean(d) for d in by_task.values()]))


def _weights(by_task: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """The pooled mean as a weighted sum: each pair weighs 1 / (tasks × its task's pairs)."""
    values = np.concatenate([np.asarray(d, dtype=float) for d in by_task.values()])
    weights = np.concatenate([np.full(len(d), 1.0 / (len(by_task) * len(d))) for d in by_task.values()])
    return values, weights


def sign_flip_p(by_task: Mapping[str, Sequence[float]], seed: int = SEED) -> tuple[float, bool]:
    """Two-sided sign-flip permutation p of ``pooled_mean``, and whether it was exact (every pattern
    enumerated) rather than sampled. The sampled p counts the observed pattern, (k + 1) / (draws + 1),
    so it is never 0."""
    values, weights = _weights(by_task)
    observed = abs(float(values @ weights))
    tol = 1e-9 * max(1.0, observed)
    n = len(values)
    if n <= EXACT_MAX_PAIRS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        null = np.abs(signs @ (values * weights))
        return float((null >= observed - tol).mean()), True
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(SIGN_FLIP_DRAWS, n))
    null = np.abs(signs @ (values * weights))
    return float(((null >= observed - tol).sum() + 1) / (SIGN_FLIP_DRAWS + 1)), False


def task_seed_bootstrap(by_task: Mapping[str, Sequence[float]], seed: int = SEED) -> np.ndarray:
    """``BOOTSTRAP_RESAMPLES`` values of the pooled mean: draw tasks with replacement, then within each
    drawn task its pairs with replacement."""
    rng = np.random.default_rng(seed)
    sizes = np.array([len(d) for d in by_task.values()])
    padded = np.zeros((len(sizes), sizes.max()))
    for j, d in enumerate(by_task.values()):
        padded[j, : len(d)] = d
    drawn = rng.integers(0, len(sizes), size=(BOOTSTRAP_RESAMPLES, len(sizes)))
    n = sizes[drawn][..., None]  # the drawn task's pair count, per slot
    slots = np.arange(sizes.max())
    picks = np.floor(rng.random((*drawn.shape, sizes.max())) * n).astype(int)
    values = padded[drawn[..., None], picks]
    task_means = np.where(slots < n, values, 0.0).sum(axis=-1) / n[..., 0]
    return task_means.mean(axis=1)


def smallest_p(pairs: int) -> float:
    """The smallest two-sided p the exact sign-flip test reaches on ``pairs`` pairs: 2 / 2^pairs (the
    all-positive and all-negative patterns)."""
    return 2.0 / 2.0**pairs


def pooled(by_task: Mapping[str, Sequence[float]], seed: int = SEED) -> dict | None:
    """The pooled verdict's numbers for task -> paired differences (tasks without pairs left out):
    mean, sign-flip p, bootstrap interval and standard error, MDE. None without any pair. The MDE is
    infinite where the test cannot reach p < ``ALPHA`` on so few pairs, whatever the effect."""
    by_task = {t: list(d) for t, d in by_task.items() if len(d)}
    if not by_task:
        return None
    boot = task_seed_bootstrap(by_task, seed)
    lo, hi = np.quantile(boot, [ALPHA / 2, 1 - ALPHA / 2])
    se = float(boot.std(ddof=1))
    p, exact = sign_flip_p(by_task, seed)
    pairs = sum(len(d) for d in by_task.values())
    return {
        "tasks": len(by_task),
        "pairs": pairs,
        "mean": pooled_mean(by_task),
        "p": p,
        "exact": exact,
        "low": float(lo),
        "high": float(hi),
        "se": se,
        "mde": normal_mde(se) if smallest_p(pairs) < ALPHA else math.inf,
    }

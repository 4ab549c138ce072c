"""Pooled verdicts of the CPU study: each claim's paired differences pooled over tasks and seeds.

A comparison is, per task, two runs per seed (``a`` and ``b``, seed -> score ×100); its pooled effect is
``repro_stats.pooled`` of the differences ``a − b``, once over ``POOL_TASKS`` and once with RTE added.
The pool is fixed before any result is read: RTE stays out of the main pool because every method's
mean there is within ``FLOOR_MARGIN`` points of a constant predictor (the backbone barely learns it at
this scale), and is added back in the second pool so that its exclusion is visible.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

from src.reporting.cpu_repro import stats as repro_stats
from src.reporting.tables import DASH, TASK_LABEL

POOL_TASKS = ("mrpc", "stsb", "cola", "sst2")
OUT_OF_POOL = "rte"
WITH_RTE = (*POOL_TASKS, OUT_OF_POOL)
Pairs = Mapping[str, tuple[Mapping[int, float], Mapping[int, float]]]  # task -> (a, b) by seed


def differences(pairs: Pairs, tasks=POOL_TASKS) -> dict[str, list[float]]:
    """task -> ``a − b`` over the seeds both have, for the ``tasks`` with at least one such seed."""
    out = {}
    for task in tasks:
        if task not in pairs:
            continue
        a, b = pairs[task]
        d = [a[s] - b[s] for s in sorted(set(a) & set(b))]
        if d:
            out[task] = d
    return out


def both_pools(pairs: Pairs) -> tuple[dict | None, dict | None]:
    """``repro_stats.pooled`` without RTE and with it (None where the pool has no pair)."""
    return repro_stats.pooled(differences(pairs)), repro_stats.pooled(differences(pairs, WITH_RTE))


def cell_mde(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    """The paired t-test's minimal detectable effect for one cell (NaN below two common seeds)."""
    d = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    return repro_stats.paired_t_mde(statistics.stdev(d), len(d)) if len(d) >= 2 else math.nan


def fmt_mde(mde: float) -> str:
    return DASH if math.isnan(mde) else f"{mde:.2f}"


def pooled_verdict(pool: dict | None, higher: str = "better", lower: str = "worse") -> str:
    """``higher`` / ``lower`` when the sign-flip p is below ``repro_stats.ALPHA``, else no detected
    difference; "too few pairs to test" where p < ALPHA is out of reach; "n/a" without pairs."""
    if pool is None:
        return "n/a"
    if not math.isfinite(pool["mde"]):
        return "too few pairs to test"
    if pool["p"] < repro_stats.ALPHA:
        return higher if pool["mean"] > 0 else lower
    return "no difference detected"


def fmt_pool(pool: dict | None) -> str:
    """``+1.20 [−0.40, +2.10], p 0.31, MDE 2.50 (4 tasks, 10 pairs)``."""
    if pool is None:
        return DASH
    p = f"p {pool['p']:.3f}" if pool["exact"] else f"p {pool['p']:.3f} (sampled)"
    mde = f"MDE {pool['mde']:.2f}" if math.isfinite(pool["mde"]) else "no MDE"
    return (
        f"{pool['mean']:+.2f} [{pool['low']:+.2f}, {pool['high']:+.2f}], {p}, {mde} "
        f"({_plural(pool['tasks'], 'task')}, {_plural(pool['pairs'], 'pair')})"
    )


def pooled_rows(
    comparisons: list[tuple[str, str, Pairs]], rte: bool = True, **words
) -> tuple[list[list[str]], list[dict]]:
    """Table rows (comparison, r̄, pool, effect, verdict) for ``(label, r̄, pairs)`` comparisons, and
    the pooled numbers found (``label``, ``avg_rank``, ``pool``, ``with_rte``); ``rte=False`` leaves
    out the second pool where RTE was never run."""
    rows, found = [], []
    for label, avg_rank, pairs in comparisons:
        pool, with_rte = both_pools(pairs)
        found.append(
            {"label": label, "avg_rank": avg_rank, "pool": pool, "with_rte": with_rte if rte else None}
        )
        rows.append([label, avg_rank, "without RTE", fmt_pool(pool), pooled_verdict(pool, **words)])
        if rte:
            rows.append([label, avg_rank, "with RTE", fmt_pool(with_rte), pooled_verdict(with_rte, **words)])
    return rows, found


HEADER = ["Comparison", "r̄", "tasks", "pooled mean [95% bootstrap], sign-flip p, MDE", "verdict"]


def method_text() -> str:
    """What the pooled tables compute, and under which assumptions; printed before the results."""
    return (
        f"**Pooled verdicts.** Each comparison is pooled over {_names(POOL_TASKS)}, fixed before reading "
        f"any result: {TASK_LABEL[OUT_OF_POOL]} stays out because every method's mean there is within 5 "
        "points of a constant predictor, and each pool is reported again with it (`with RTE`). The pooled "
        "effect is the mean over tasks of each task's mean paired difference (tasks weighted equally; "
        "scores ×100 whatever the metric). Test: a sign-flip permutation test on the paired differences "
        "(assumption: under the null, the two runs of a pair are exchangeable, so each difference's sign "
        "is + or − with equal chance, independently across pairs); every sign pattern is enumerated up "
        f"to 2^{repro_stats.EXACT_MAX_PAIRS} of them, else {repro_stats.SIGN_FLIP_DRAWS:,} are drawn with "
        "a fixed seed (marked sampled); two-sided p, verdict at p < 0.05. Interval: a 95% percentile "
        f"bootstrap ({repro_stats.BOOTSTRAP_RESAMPLES:,} resamples, fixed seed) that draws tasks with "
        "replacement, then seeds within each drawn task (tasks are the resampling unit; with 4–5 tasks "
        "the interval is coarse and likely too narrow, so the p decides). MDE: the smallest true "
        "difference the test would detect with 80% power at α = 0.05 two-sided: per cell "
        "(t₀.₉₇₅,ₙ₋₁ + t₀.₈₀,ₙ₋₁) · sd / √n of the paired t-test, pooled (z₀.₉₇₅ + z₀.₈₀) · SE with SE "
        "the bootstrap standard error (both optimistic on few pairs); a pool of five pairs or fewer has "
        "none, as the sign-flip test cannot reach p < 0.05 there (its smallest p is 2 / 2^pairs). A verdict "
        "of no difference means: no effect at least as large as the MDE, not no effect."
    )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _names(tasks) -> str:
    labels = [TASK_LABEL[t] for t in tasks]
    return ", ".join(labels[:-1]) + " and " + labels[-1] if len(labels) > 1 else "".join(labels)


def claim_sentence(found: list[dict], **words) -> str:
    """``Pooled over MRPC, …: <label> r̄ 2 <effect>: <verdict>; …`` and, with RTE, the verdicts
    that change (the with-RTE numbers are in the tables)."""
    if not found:
        return ""
    parts = [
        f"{f['label']} r̄ {f['avg_rank']} {fmt_pool(f['pool'])}: **{pooled_verdict(f['pool'], **words)}**"
        for f in found
        if f["pool"] is not None
    ]
    untested = [f"{f['label']} r̄ {f['avg_rank']}" for f in found if f["pool"] is None]
    if untested:
        parts.append(f"{', '.join(untested)}: **not testable yet** (no pair outside RTE)")
    changed = [
        f"{f['label']} r̄ {f['avg_rank']} {pooled_verdict(f['with_rte'], **words)} "
        f"(p {f['with_rte']['p']:.3f})"
        for f in found
        if f["with_rte"] is not None
        and pooled_verdict(f["with_rte"], **words) != pooled_verdict(f["pool"], **words)
    ]
    with_rte = any(f["with_rte"] is not None for f in found)
    return (
        f"Pooled over {_names(POOL_TASKS)} (mean [95% bootstrap], sign-flip p, MDE): "
        + "; ".join(parts)
        + "."
        + (
            ""
            if not with_rte
            else f" With RTE: {'; '.join(changed)}."
            if changed
            else " With RTE: the same verdicts."
        )
    )


def floor_note(found: list[dict]) -> str:
    """A sentence naming the pools too small to ever reach p < ALPHA: with k pairs the exact sign-flip
    test's smallest two-sided p is 2 / 2^k (both all-same-sign patterns). Empty when none is."""
    pools = [f[key] for f in found for key in ("pool", "with_rte") if f[key] is not None]
    small = sorted({p["pairs"] for p in pools if repro_stats.smallest_p(p["pairs"]) >= repro_stats.ALPHA})
    if not small:
        return ""
    floors = ", ".join(f"{repro_stats.smallest_p(k):.3g} with {_plural(k, 'pair')}" for k in small)
    return (
        f" The exact sign-flip test cannot go below p = {floors}: such a pool cannot reach p < "
        f"{repro_stats.ALPHA:.2g} whatever the effect, and is marked too few pairs to test."
    )

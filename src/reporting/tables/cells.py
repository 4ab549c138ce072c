"""One cell of a table: the values of a metric over a cell's runs, and how numbers are printed."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

import pandas as pd

from src.reporting.tables.columns import DASH


def fmt_lr(lr) -> str:
    """A learning rate as researchers write it (3e-4, 1.5e-4), exact to seven significant digits."""
    if lr is None or (isinstance(lr, float) and math.isnan(lr)):
        return DASH
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def metric_values(runs: pd.DataFrame, task: str, metric: str) -> list[float]:
    """The best-evaluation values of ``metric`` over ``runs`` of ``task``, in percent; runs without
    the metric (or with NaN) contribute nothing, so a missing metric is never read as 0."""
    values = []
    rows = runs[runs["task"] == task]
    for run_id, best in zip(rows["run_id"], rows["best"], strict=True):
        v = best.get(metric)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if abs(v) > 1.0 + 1e-9:  # records hold fractions (GLUE, SQuAD and ROUGE alike)
            raise ValueError(
                f"run {run_id}: {metric}={v} is not a fraction in [-1, 1]; records store fractions"
            )
        values.append(100.0 * v)
    return values


def fmt_cell(values: list[float]) -> str:
    if not values:
        return DASH
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def mean_params(values: Iterable) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.mean(values) if values else None


def fmt_params(mean: float | None, column_max: float) -> str:
    """A parameter count as the papers print it (1.33M, 0.33M), in one unit per column: M with 2
    decimals when the column reaches 1M, M with 3 below that (0.083M), K for tiny models (12.0K)."""
    if mean is None:
        return DASH
    if column_max >= 1e6:
        return f"{mean / 1e6:.2f}M"
    if column_max >= 1e5:
        return f"{mean / 1e6:.3f}M"
    return f"{mean / 1e3:.1f}K"


def task_average(
    cell_means: dict[tuple[str, str], float | None], tasks: list[str], scheme: dict
) -> float | None:
    """Mean over ``tasks`` of each task's mean over its ``scheme`` metrics; None if any is missing."""
    per_task = []
    for task in tasks:
        parts = [cell_means.get((task, m)) for m in scheme[task]]
        if any(p is None for p in parts):
            return None
        per_task.append(sum(parts) / len(parts))
    return sum(per_task) / len(per_task) if per_task else None

"""The study's records as one row per run (the latest ok record per task, method, budget, variant
and seed), the constants every section shares, and the per-cell paired statistics."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd

from src.reporting import lr_selection
from src.reporting.cpu_repro import stats as repro_stats
from src.reporting.tables import (
    DASH,
    DEFAULT_AXES,
    METHOD_ORDER,
)

STUDY = "cpu-repro"


# The study asks whether SUBJECT beats the others; REFERENCE is the fixed-rank baseline every method
# is paired against, and BASELINES are the other adaptive methods of the overhead claim.
SUBJECT, REFERENCE, BASELINES = "triadapt", "lora", ("adalora", "increlora")


TASKS = list(lr_selection.TASKS)


METRIC_LABEL = {"accuracy": "acc", "matthews": "MCC", "pearson": "Pearson"}


DEFAULT = "default"


CI = repro_stats.CI


MIN_PAIRS = 3  # fewer seeds give an interval (and a bootstrap) too fragile to call


# Dev-set score (×100) of a model that predicts one constant: the majority class's share for accuracy
# (RTE 146/277, MRPC 279/408, SST-2 444/872, counted in the GLUE validation splits), 0 for CoLA's MCC.
# A correlation is undefined for a constant, so STS-B has none. tests/test_repro_report.py recounts them.
CONSTANT_FLOOR = {"rte": 100 * 146 / 277, "mrpc": 100 * 279 / 408, "sst2": 100 * 444 / 872, "cola": 0.0}


FLOOR_MARGIN = 5.0  # a mean fewer points than this above the floor is a model that barely learned the task


# What a predictor without information about the label scores: the constant floor, and 0 for a
# correlation (a constant's is undefined, but a prediction independent of the label correlates 0).
NO_INFORMATION = {**CONSTANT_FLOOR, "stsb": 0.0}


def variant_label(method: str, method_cfg: dict) -> str:
    """ "default", or the non-default options of an ablation run (``schedule=fixed top_h=15``)."""
    changed = [
        f"{axis}={method_cfg[axis]}"
        for axis, default in DEFAULT_AXES.get(method, {}).items()
        if method_cfg.get(axis, default) != default
    ]
    if method_cfg.get("schedule") == "fixed":
        changed.append(f"top_h={method_cfg.get('top_h')}")
    return " ".join(changed) or DEFAULT


# Fields the record schema gained after the first runs, each with the value an earlier record has
# implicitly: no CPU time measured, no host or commit known, no final evaluation or log kept.
ADDED_FIELDS = {
    "cpu_time_s": None,
    "host": {},
    "git": {},
    "final": {},
    "budget": {},
    "train_log": [],
    "finished_at": "",
}


def current_schema(record: dict) -> dict:
    """``record`` brought to the current schema as it loads: a field it predates gets its
    ``ADDED_FIELDS`` value, and a method option added after it ran gets its default (``DEFAULT_AXES``),
    which is what that run did. Everything downstream reads the current schema only."""
    config = record.get("config") or {}
    method = {**DEFAULT_AXES.get(record.get("method"), {}), **(config.get("method") or {})}
    present = {key: value for key, value in record.items() if value is not None}
    return {**ADDED_FIELDS, **present, "config": {**config, "method": method}}


def study_frame(records: list[dict], study: str = STUDY, keep=None) -> pd.DataFrame:
    """Ok runs of ``study`` (or those ``keep(record)`` accepts), the latest per (task, method, budget,
    variant, seed), each record first brought to the current schema."""
    rows = []
    for r in map(current_schema, records):
        config = r["config"]
        wanted = keep(r) if keep is not None else config.get("study") == study
        if not wanted or r.get("status") != "ok" or not r.get("best"):
            continue
        final = r["budget"].get("final") or {}
        metric = r["primary_metric"]
        rows.append(
            {
                "run_id": r["run_id"],
                "task": r["task"],
                "method": r["method"],
                "budget": config["budget"]["name"],
                "avg_rank": config["budget"]["avg_rank"],
                "variant": variant_label(r["method"], config["method"]),
                "seed": r["seed"],
                "metric": metric,
                "value": 100.0 * r["best"][metric],
                "last_value": 100.0 * r["final"].get(metric, math.nan),
                "wall_time_s": r.get("wall_time_s"),
                "cpu_time_s": r["cpu_time_s"],
                "end_train_loss": end_train_loss(r),
                "total_steps": r.get("total_steps"),
                "total_rank": final.get("total_rank"),
                "target_total_rank": final.get("target_total_rank"),
                "effective_adapter": final.get("effective_adapter"),
                "trainable_adapter": final.get("trainable_adapter"),
                "threads": r["host"].get("torch_threads"),
                "finished_at": r["finished_at"],
                "git_sha": r["git"].get("sha") or "",
                "git_dirty": bool(r["git"].get("dirty")),
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.sort_values(["finished_at", "run_id"])
    return frame.drop_duplicates(["task", "method", "budget", "variant", "seed"], keep="last")


def paired_difference(a: dict[int, float], b: dict[int, float], seed: int = 0) -> dict | None:
    """``a - b`` over the seeds both have: mean, 95% t-interval, percentile bootstrap interval, wins.

    Seeds fix the data order and the initialisation shared by both methods, so pairing by seed
    removes that variance from the comparison. None with fewer than ``MIN_PAIRS`` pairs.
    """
    seeds = sorted(set(a) & set(b))
    if len(seeds) < MIN_PAIRS:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    t_low, t_high = repro_stats.t_interval(d, CI)
    boot_low, boot_high = repro_stats.bootstrap_interval(d, seed, CI)
    return {
        "n": len(d),
        "mean": float(d.mean()),
        "t_low": t_low,
        "t_high": t_high,
        "boot_low": boot_low,
        "boot_high": boot_high,
        "wins": int((d > 0).sum()),
        "mde": repro_stats.paired_t_mde(float(d.std(ddof=1)), len(d)),
    }


def verdict(diff: dict | None) -> str:
    """better / worse when the t-interval excludes 0, otherwise unresolved."""
    if diff is None:
        return "n/a"
    if diff["t_low"] > 0:
        return "better"
    if diff["t_high"] < 0:
        return "worse"
    return "unresolved"


def fmt_diff(diff: dict | None) -> str:
    if diff is None:
        return DASH
    return (
        f"{diff['mean']:+.2f} [{diff['t_low']:+.2f}, {diff['t_high']:+.2f}] "
        f"(boot [{diff['boot_low']:+.2f}, {diff['boot_high']:+.2f}]; {diff['wins']}/{diff['n']} seeds)"
    )


def fmt_pairs(diff: dict | None, a: dict[int, float], b: dict[int, float]) -> str:
    """``diff`` (``paired_difference(a, b)``) with its interval where there is one, else the mean of
    ``a - b`` over their common seeds and its signs (a task planned with two seeds still shows which
    way its pairs point)."""
    if diff is not None:
        return fmt_diff(diff)
    d = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if not d:
        return DASH
    return f"{statistics.mean(d):+.2f} ({sum(x > 0 for x in d)}/{len(d)} seeds; too few for an interval)"


def by_seed(frame: pd.DataFrame, **where) -> dict[int, float]:
    rows = frame
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return dict(zip(rows["seed"], rows["value"], strict=True))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _tasks(frame: pd.DataFrame) -> list[str]:
    return [t for t in TASKS if t in set(frame["task"])]


def _budgets(frame: pd.DataFrame) -> list[tuple[str, int]]:
    return sorted(set(zip(frame["budget"], frame["avg_rank"], strict=True)), key=lambda b: b[1])


def _methods(frame: pd.DataFrame) -> list[str]:
    return [m for m in METHOD_ORDER if m in set(frame["method"])]


def _metric(frame: pd.DataFrame, task: str) -> str:
    return METRIC_LABEL.get(frame[frame["task"] == task]["metric"].iloc[0], "")


def end_train_loss(record: dict) -> float:
    """Mean task loss logged in the last 10% of the run's steps (NaN if none was logged): the logged
    loss is what was optimised, so a method's regulariser (logged as ``orth_reg``) is taken out."""
    total = record.get("total_steps") or 0
    losses = [
        e["loss"] - e.get("orth_reg", 0.0)
        for e in record["train_log"]
        if "loss" in e and e["step"] > 0.9 * total
    ]
    return statistics.mean(losses) if losses else float("nan")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def tuned_frame(records: list[dict], selected: dict[tuple[str, str], float]) -> pd.DataFrame:
    """The tuned protocol's runs: main grid and controls at each cell's selected LR, seed 41 left out."""
    return study_frame(records, keep=lambda r: lr_selection.is_tuned_run(r, selected))

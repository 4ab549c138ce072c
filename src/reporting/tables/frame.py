"""Records -> one row per run (``runs_frame``), and the runs a cell counts (``latest_ok``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from src.reporting.budgets import final_and_target
from src.reporting.tables.columns import ADHOC, DASH, DEFAULT_AXES, OTHER_FAMILY


def load_records(runs_dir: str | Path) -> list[dict]:
    """Every ``*.json`` record under ``runs_dir`` (atomic writes leave no partial files)."""
    records = []
    for path in sorted(Path(runs_dir).glob("*.json")):
        with open(path) as f:
            records.append(json.load(f))
    return records


def _variant(method: str, method_cfg: dict) -> dict:
    return {axis: method_cfg.get(axis, default) for axis, default in DEFAULT_AXES.get(method, {}).items()}


RUN_COLUMNS = [
    "run_id", "status", "study", "backbone", "task", "family", "metrics", "primary_metric",
    "method", "budget", "avg_rank", "learning_rate", "seed", "schedule",
    "is_default", "ablation_other_default", "params", "final_total_rank", "target_total_rank",
    "finished_at", "best",
]  # fmt: skip


def runs_frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per record: identity, status, budget, variant, and the best evaluation's metrics."""
    rows = []
    for r in records:
        config = r.get("config") or {}
        budget_cfg = config.get("budget") or {}
        method_cfg = config.get("method") or {}
        task_cfg = config.get("task") or {}
        final_budget = (r.get("budget") or {}).get("final") or {}
        final_rank, target_rank = final_and_target(r)
        primary = r.get("primary_metric") or task_cfg.get("primary_metric")
        variant = _variant(r["method"], method_cfg)
        rows.append(
            {
                "run_id": r["run_id"],
                "status": r.get("status"),
                "study": config.get("study") or ADHOC,
                "backbone": r["backbone"],
                "task": r["task"],
                "family": task_cfg.get("family") or OTHER_FAMILY,
                # the metrics the task reports, in its config's order (the primary one if none listed)
                "metrics": list(task_cfg.get("metrics") or ([primary] if primary else [])),
                "primary_metric": primary,
                "method": r["method"],
                "budget": budget_cfg.get("name", DASH),
                "avg_rank": budget_cfg.get("avg_rank"),
                "learning_rate": (config.get("trainer") or {}).get("learning_rate"),
                "seed": r["seed"],
                "schedule": method_cfg.get("schedule"),
                "is_default": all(variant[a] == d for a, d in DEFAULT_AXES.get(r["method"], {}).items()),
                "ablation_other_default": all(
                    variant[a] == d for a, d in DEFAULT_AXES.get(r["method"], {}).items() if a != "schedule"
                ),
                "params": final_budget.get("effective_adapter"),
                "final_total_rank": final_rank,
                "target_total_rank": target_rank,
                "finished_at": r.get("finished_at") or "",
                "best": r.get("best") or {},
            }
        )
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS, dtype=object)  # object: a missing r̄ stays None, not NaN
    return frame.astype({"is_default": bool, "ablation_other_default": bool})


def latest_ok(runs: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The ok runs, one per ``keys`` + learning rate + seed (the most recently finished); also the
    superseded ids. A run at another learning rate is another cell, never a rerun of this one."""
    ok = runs[runs["status"] == "ok"].sort_values(["finished_at", "run_id"])
    keep = ok.drop_duplicates([*keys, "learning_rate", "seed"], keep="last")
    return keep, sorted(set(ok["run_id"]) - set(keep["run_id"]))


def several_lrs(ok: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Per row of ``ok``: does its ``keys`` cell hold runs at more than one learning rate?"""
    count = ok.groupby(keys, dropna=False)["learning_rate"].transform(lambda lr: lr.nunique(dropna=False))
    return count > 1

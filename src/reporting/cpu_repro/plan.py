"""How much of the planned study has run: seeds per cell against the plan, and the runs and hours left."""

from __future__ import annotations

import statistics

import pandas as pd

from src.reporting import lr_selection
from src.reporting.cpu_repro.frame import DEFAULT, TASKS
from src.reporting.tables import (
    METHOD_LABEL,
    METHOD_ORDER,
    TASK_LABEL,
)

# The plan is src/reporting/lr_selection.py's, as scripts/cpu_repro.py runs it: seeds per cell of the
# fixed-lr study, its option variants per ablation task (each seeded as the task), and the tuned seeds.
PLANNED_SEEDS = {t: len(seeds) for t, seeds in lr_selection.FIXED_SEEDS.items()}
PLANNED_ABLATIONS = {t: len(lr_selection.ABLATION_VARIANTS) for t in lr_selection.FIXED_ABLATION_TASKS}


# seeds per task the tuned protocol plans (the selection seed apart)
TUNED_PLANNED = {t: len(seeds.split(",")) for t, seeds in lr_selection.TUNED_SEEDS.items()}


def coverage(main: pd.DataFrame, planned_seeds: dict[str, int] = PLANNED_SEEDS) -> list[str]:
    """One line per task × budget with fewer seeds than planned for some method."""
    lines = []
    for task, planned in planned_seeds.items():
        for budget in ("r2", "r8"):
            rows = main[(main["task"] == task) & (main["budget"] == budget)]
            counts = {m: int((rows["method"] == m).sum()) for m in METHOD_ORDER}
            if min(counts.values()) < planned:
                done = ", ".join(f"{METHOD_LABEL[m]} {n}/{planned}" for m, n in counts.items())
                lines.append(f"{TASK_LABEL[task]} {budget}: {done}")
    return lines


def ablation_coverage(frame: pd.DataFrame) -> str | None:
    """One line on how many planned ablation runs have finished, None when all have."""
    ablated = frame[frame["variant"] != DEFAULT]
    done = {t: int((ablated["task"] == t).sum()) for t in PLANNED_ABLATIONS}
    planned = {t: n * PLANNED_SEEDS[t] for t, n in PLANNED_ABLATIONS.items()}
    if all(done[t] >= planned[t] for t in planned):
        return None
    left = sum(max(planned[t] - done[t], 0) for t in planned)
    # an ablation run costs what one finished so far did (else a main-grid run of the study)
    per_run = (ablated if len(ablated) else frame)["wall_time_s"].mean()
    return (
        f"Ablations: {sum(done.values())} of {sum(planned.values())} planned runs finished ("
        + ", ".join(f"{TASK_LABEL[t]} {done[t]}/{planned[t]}" for t in planned)
        + f"); the {left} still to run take about {left * per_run / 3600:.1f} h of run wall time summed. "
        "The ablation table and claim 4 use the seeds finished so far."
    )


def missing_runs(frame: pd.DataFrame, planned: dict[str, int], budgets, methods) -> dict[str, int]:
    """Per task: the runs each (budget, method) cell still lacks against its planned seed count."""
    return {
        task: sum(
            max(n - int(((frame["task"] == task) & (frame["budget"] == b) & (frame["method"] == m)).sum()), 0)
            for b in budgets
            for m in methods
        )
        for task, n in planned.items()
    }


def remaining_hours(main: pd.DataFrame) -> tuple[int, float]:
    """Main-grid runs still missing, and their wall time at each task's mean wall time per finished run
    (the mean over all tasks where a task has none yet)."""
    overall = main["wall_time_s"].mean()
    left = missing_runs(main, PLANNED_SEEDS, ("r2", "r8"), METHOD_ORDER)
    seconds = 0.0
    for task, n in left.items():
        rows = main[main["task"] == task]
        seconds += n * (rows["wall_time_s"].mean() if len(rows) else overall)
    return sum(left.values()), seconds / 3600


def schedule_runs_left(schedules: pd.DataFrame) -> dict[str, int]:
    """Per claim-4 task: the schedule runs still missing against the tuned seeds."""
    done = schedules["task"].value_counts() if len(schedules) else {}
    planned = len(lr_selection.SCHEDULE_VARIANTS)
    return {t: max(planned * TUNED_PLANNED[t] - int(done.get(t, 0)), 0) for t in lr_selection.SCHEDULE_TASKS}


def tuned_remaining(
    main: pd.DataFrame, controls: pd.DataFrame, records: list[dict], schedules: pd.DataFrame | None = None
) -> str | None:
    """One line on the tuned runs still missing and their time, at each task's mean wall time per run
    under this protocol so far (selection and tuned runs: the fixed-lr study's ran faster); None when
    nothing is missing."""
    main_left = missing_runs(main, TUNED_PLANNED, ("r2", "r8"), METHOD_ORDER)
    control_left = missing_runs(
        controls,
        {t: TUNED_PLANNED[t] for t in lr_selection.CONTROL_TASKS},
        (lr_selection.BUDGET,),
        lr_selection.CONTROLLED,
    )
    schedule_left = schedule_runs_left(schedules if schedules is not None else pd.DataFrame())
    if not sum(main_left.values()) + sum(control_left.values()) + sum(schedule_left.values()):
        return None
    walls: dict[str, list[float]] = {}
    for r in records:
        study = (r.get("config") or {}).get("study")
        if study in (lr_selection.LR_STUDY, lr_selection.TUNED_STUDY) and r.get("status") == "ok":
            if r.get("wall_time_s"):
                walls.setdefault(r["task"], []).append(r["wall_time_s"])
    if not walls:
        return None
    overall = statistics.mean(w for ws in walls.values() for w in ws)
    per_run = {t: statistics.mean(walls[t]) if t in walls else overall for t in TASKS}
    hours = (
        sum((main_left[t] + control_left.get(t, 0) + schedule_left.get(t, 0)) * per_run[t] for t in TASKS)
        / 3600
    )
    return (
        f"Left: {sum(main_left.values())} main-grid runs, {sum(control_left.values())} control runs and "
        f"{sum(schedule_left.values())} schedule runs, "
        f"about {hours:.1f} h of run time at each task's mean wall time per run under this protocol so far ("
        + ", ".join(f"{TASK_LABEL[t]} {per_run[t] / 60:.0f} min" for t in TASKS)
        + f"): about {hours / 2:.1f} h elapsed with two runs side by side."
    )

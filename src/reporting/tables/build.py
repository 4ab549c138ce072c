"""Run rows -> tables: one per kind (GLUE, SQuAD, summarisation, the schedule ablation, and a table
per family for other tasks) and (study, backbone) group."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import pandas as pd

from src.reporting.budgets import OFF_TARGET_MARK, off_target, off_target_text
from src.reporting.tables.anchors import ANCHOR_SOURCE, ANCHORS, anchor_rows
from src.reporting.tables.cells import (
    fmt_cell,
    fmt_lr,
    fmt_params,
    mean_params,
    metric_values,
    task_average,
)
from src.reporting.tables.columns import (
    ADHOC,
    DASH,
    FAMILY_TITLE,
    GLUE_TASKS,
    METHOD_LABEL,
    METHOD_ORDER,
    ONE_METRIC,
    SCHEDULE_ABLATION_METHOD,
    SCHEDULES,
    TASK_COLUMNS,
    TASK_LABEL,
    TASK_MEAN,
    Column,
    family_columns,
)
from src.reporting.tables.frame import latest_ok, runs_frame, several_lrs
from src.reporting.tables.render import Table


def _present_columns(columns: list[Column], runs: pd.DataFrame, all_columns: bool) -> list[Column]:
    if all_columns:
        return list(columns)
    tasks = set(runs["task"])
    return [c for c in columns if c.task in tasks]


def _row_order(
    keys: pd.DataFrame, row_field: str, order: list[str], required: Iterable[tuple] = (), by_lr: bool = False
) -> list[tuple]:
    """(row key, budget name, r̄, learning rate) of every row, highest budget first (the paper's order),
    then ``order``, then the learning rate; the learning rate is None unless ``by_lr``."""
    rank = {name: i for i, name in enumerate(order)}
    lrs = keys["learning_rate"] if by_lr else [None] * len(keys)
    rows = set(zip(keys[row_field], keys["budget"], keys["avg_rank"], lrs, strict=True))
    if not by_lr:  # a sweep's rows are the rates that ran
        rows |= {(*req, None) for req in required}
    return sorted(rows, key=lambda p: (-(p[2] or 0), p[1], rank.get(p[0], len(rank)), str(p[0]), p[3] or 0.0))


def _lr_note(ok: pd.DataFrame, row_field: str, row_labels: dict[str, str], rows: list[tuple]) -> str | None:
    """The learning rate of each row's cells, for a table whose rows are not split by it; None when no
    record names one (records written before the trainer config was stored)."""
    known = ok[ok["learning_rate"].notna()]
    if known.empty:
        return None
    lrs = sorted(set(known["learning_rate"]))
    if len(lrs) == 1:
        return f"Learning rate (trainer.learning_rate): {fmt_lr(lrs[0])} in every cell."
    parts = []
    for key, budget, _, _ in rows:
        cell = known[(known[row_field] == key) & (known["budget"] == budget)]
        if cell.empty:
            continue
        tasks_at = cell.groupby("learning_rate")["task"].agg(
            lambda t: ", ".join(TASK_LABEL.get(x, x) for x in dict.fromkeys(t))
        )
        at = "; ".join(f"{fmt_lr(lr)} ({tasks})" for lr, tasks in tasks_at.items())
        parts.append(f"{row_labels.get(key, str(key))} {budget}: {at}")
    return "Learning rate (trainer.learning_rate) per row: " + " | ".join(parts) + "."


def _excluded_notes(group: pd.DataFrame, superseded: list[str]) -> list[str]:
    notes = []
    failed = sorted(group.loc[group["status"] == "failed", "run_id"])
    unfinished = sorted(group.loc[~group["status"].isin(["ok", "failed"]), "run_id"])
    if failed:
        notes.append(f"Excluded: {len(failed)} failed run(s): {', '.join(failed)}.")
    if unfinished:
        notes.append(
            f"Excluded: {len(unfinished)} unfinished run(s) (status running): {', '.join(unfinished)}."
        )
    if superseded:
        notes.append(f"Superseded by a later run of the same cell and seed: {', '.join(superseded)}.")
    return notes


def _off_target(runs: pd.DataFrame) -> pd.Series:
    """Per run: did it end at a total rank other than its target R*?"""
    ends = zip(runs["final_total_rank"], runs["target_total_rank"], strict=True)
    return pd.Series([off_target(total, target) for total, target in ends], index=runs.index, dtype=bool)


def _budget_notes(ok: pd.DataFrame) -> list[str]:
    """Which counted runs ended off their target total rank R*, with their final budget; or, where
    every run with a target reached it, that they did (so a silent table never hides a short one)."""
    targeted = ok[ok["target_total_rank"].notna()]
    if targeted.empty:
        return []
    off = targeted[_off_target(targeted)].sort_values("run_id")
    if off.empty:
        return [
            f"R*: all {len(targeted)} run(s) with a target total rank (budget.final.target_total_rank) "
            "ended at it."
        ]
    ends = zip(off["run_id"], off["final_total_rank"], off["target_total_rank"], strict=True)
    return [
        f"{OFF_TARGET_MARK}: the cell counts a run that ended off its target total rank R* "
        f"(budget.final.total_rank): {'; '.join(off_target_text(*end) for end in ends)}."
    ]


def _row(
    cell_runs: pd.DataFrame, label: list[str], avg_rank, columns: list[Column], avg_tasks: list[str]
) -> list:
    """One row: ``label`` cells, r̄, the mean #Params (formatted once the column is known), a cell per
    column (marked where a run of it ended off R*), and the GLUE averages over ``avg_tasks``."""
    means: dict[tuple[str, str], float | None] = {}
    metrics = {(c.task, c.metric) for c in columns}
    metrics |= {(t, m) for t in avg_tasks for m in ONE_METRIC[t] + TASK_MEAN[t]}
    for task, metric in metrics:
        values = metric_values(cell_runs, task, metric)
        means[(task, metric)] = statistics.mean(values) if values else None
    off_tasks = set(cell_runs.loc[_off_target(cell_runs), "task"])
    row = [*label, str(avg_rank) if avg_rank is not None else DASH, mean_params(cell_runs["params"])]
    for c in columns:
        mark = f" {OFF_TARGET_MARK}" if c.task in off_tasks else ""
        row.append(fmt_cell(metric_values(cell_runs, c.task, c.metric)) + mark)
    for scheme in (ONE_METRIC, TASK_MEAN) if avg_tasks else ():
        avg = task_average(means, avg_tasks, scheme)
        row.append(DASH if avg is None else f"{avg:.2f}")
    return row


def _standard_notes(avg_tasks: list[str], by_lr: bool, lr_note: str | None) -> list[str]:
    notes = [
        "Cells: best dev evaluation of each run (selected on the task's primary metric), ×100; "
        "mean ± sample std over seeds, n = number of seeds; — = no run or no value.",
        "#Params: adapter parameters at the end of training (budget.final.effective_adapter, heads "
        "excluded), mean over the row's runs.",
    ]
    if by_lr:
        notes.append("LR: trainer.learning_rate; a cell run at several learning rates has a row per rate.")
    elif lr_note is not None:
        notes.append(lr_note)
    if avg_tasks:
        names = ", ".join(TASK_LABEL[t] for t in avg_tasks)
        notes.append(
            f"Averages over {len(avg_tasks)} task(s) ({names}) of the cell means: "
            f"Avg ({len(avg_tasks)}-metric) takes one metric per task (MNLI-m, QQP acc, STS-B Pearson); "
            "Avg (task mean) averages each task's metrics first (MNLI m/mm, QQP acc/F1, STS-B "
            "(Pearson + Spearman)/2), AdaLoRA's All Ave. convention (spec §6)."
        )
    return notes


def build_table(
    name: str,
    title: str,
    group: pd.DataFrame,
    columns: list[Column],
    row_field: str,
    row_labels: dict[str, str],
    row_order: list[str],
    averages: bool,
    anchors: list | None = None,
    anchor_source: str = "",
    all_columns: bool = False,
    extra_notes: Iterable[str] = (),
    required_rows: Iterable[tuple] = (),
) -> Table | None:
    """Rows ``row_field`` × budget, one cell per column; None if no column has a run.

    ``required_rows`` ((key, budget name, r̄) tuples) appear even without runs, their cells empty.
    """
    columns = _present_columns(columns, group, all_columns)
    if not columns:
        return None
    tasks = list(dict.fromkeys(c.task for c in columns))
    table_runs = group[group["task"].isin(tasks)]
    ok, superseded = latest_ok(table_runs, ["task", row_field, "budget"])
    # A learning-rate sweep puts several learning rates in one cell: each gets a row of its own.
    by_lr = bool(several_lrs(ok, ["task", row_field, "budget"]).any())
    avg_tasks = [t for t in GLUE_TASKS if t in tasks] if averages else []
    header = ["Method" if row_field == "method" else row_field.capitalize(), *(["LR"] if by_lr else [])]
    header += ["r̄", "#Params", *(c.header for c in columns)]
    if avg_tasks:
        header += [f"Avg ({len(avg_tasks)}-metric)", "Avg (task mean)"]
    order = _row_order(ok if by_lr else table_runs, row_field, row_order, required_rows, by_lr)
    rows = []
    for key, budget, avg_rank, lr in order:
        cell_runs = ok[(ok[row_field] == key) & (ok["budget"] == budget)]
        if by_lr:  # a record written before the trainer config was stored has no rate: a row of its own
            at = cell_runs["learning_rate"].isna() if lr is None else cell_runs["learning_rate"] == lr
            cell_runs = cell_runs[at]
        label = [row_labels.get(key, str(key)), *([fmt_lr(lr)] if by_lr else [])]
        rows.append(_row(cell_runs, label, avg_rank, columns, avg_tasks))
    params_at = header.index("#Params")
    column_max = max([row[params_at] for row in rows if row[params_at] is not None], default=0)
    for row in rows:
        row[params_at] = fmt_params(row[params_at], column_max)
    lr_note = None if by_lr else _lr_note(ok, row_field, row_labels, order)
    notes = _standard_notes(avg_tasks, by_lr, lr_note)
    if anchors:
        rows += anchor_rows(anchors, columns, avg_tasks)
        notes.append(f"(published): {anchor_source}; not our runs, shown for reference.")
        if any(c.task == "stsb" for c in columns) and name.startswith("glue"):
            notes.append("†: published STS-B is (Pearson + Spearman)/2, used in both averages.")
    notes += _budget_notes(ok)
    notes += list(extra_notes)
    notes += _excluded_notes(table_runs, superseded)
    return Table(name, title, header, rows, notes)


def tables_for_group(
    group: pd.DataFrame, study: str, backbone: str, anchors: bool = False, all_columns: bool = False
) -> list[Table]:
    """Every table that has data in one (study, backbone) group of runs."""
    tables = []
    where = f"study `{study}`, backbone `{backbone}`"
    adhoc = [
        f"Study `{ADHOC}`: runs no sweep config tagged; their settings may differ beyond method and budget."
    ]
    main = group[group["is_default"]]
    for kind, title in [
        ("glue", "GLUE dev"),
        ("squad", "SQuAD dev (EM / F1)"),
        ("summarisation", "Summarisation (ROUGE-1/2/L)"),
    ]:
        table = build_table(
            f"{kind}_{study}_{backbone}",
            f"{title}: {where}",
            main,
            TASK_COLUMNS[kind],
            "method",
            METHOD_LABEL,
            METHOD_ORDER,
            averages=kind == "glue",
            anchors=ANCHORS[kind] if anchors else None,
            anchor_source=ANCHOR_SOURCE[kind],
            all_columns=all_columns and kind == "glue",
            extra_notes=adhoc if study == ADHOC else (),
        )
        if table is not None:
            tables.append(table)
    tables += _family_tables(main, study, backbone, adhoc if study == ADHOC else [])
    tables += _schedule_ablation(group, study, backbone, adhoc if study == ADHOC else [])
    return tables


def _family_tables(main: pd.DataFrame, study: str, backbone: str, extra: list[str]) -> list[Table]:
    """A table per family of the tasks no paper table shows (``<family>_tasks_<study>_<backbone>``),
    laid out like the paper's: rows method × budget, a column per task and metric its records list."""
    tables = []
    for family, columns in family_columns(main).items():
        tasks = list(dict.fromkeys(c.task for c in columns))
        primary = ", ".join(
            f"{TASK_LABEL.get(t, t)} {m}"
            for t, m in dict.fromkeys(zip(main["task"], main["primary_metric"], strict=True))
            if t in tasks
        )
        title = FAMILY_TITLE.get(family, f"{family.replace('_', ' ').capitalize()} dev")
        table = build_table(
            f"{family}_tasks_{study}_{backbone}",
            f"{title}, tasks outside the paper's tables: study `{study}`, backbone `{backbone}`",
            main,
            columns,
            "method",
            METHOD_LABEL,
            METHOD_ORDER,
            averages=False,
            extra_notes=[
                f"Columns: each task's metrics as its records list them (config.task.metrics); "
                f"primary metric: {primary}.",
                *extra,
            ],
        )
        if table is not None:
            tables.append(table)
    return tables


def _schedule_ablation(group: pd.DataFrame, study: str, backbone: str, extra: list[str]) -> list[Table]:
    ablation = group[(group["method"] == SCHEDULE_ABLATION_METHOD) & group["ablation_other_default"]]
    if not len(ablation):
        return []
    columns = [c for cols in TASK_COLUMNS.values() for c in cols]
    columns += [c for cols in family_columns(ablation).values() for c in cols]
    table = build_table(
        f"ablation_schedule_{study}_{backbone}",
        f"TriAdaptLoRA threshold schedule (method.schedule): study `{study}`, backbone `{backbone}`",
        ablation,
        columns,
        "schedule",
        {s: s for s in SCHEDULES},
        SCHEDULES,
        averages=set(ablation["task"]) <= set(GLUE_TASKS),
        extra_notes=[
            "Other TriAdaptLoRA options at their defaults (score, init, scaling, new_params_lr).",
            *extra,
        ],
        required_rows=[  # a schedule that was not run is shown, empty
            (schedule, budget, avg_rank)
            for budget, avg_rank in set(zip(ablation["budget"], ablation["avg_rank"], strict=True))
            for schedule in SCHEDULES
        ],
    )
    return [] if table is None else [table]


def build_tables(records: list[dict], anchors: bool = False, all_columns: bool = False) -> list[Table]:
    runs = runs_frame(records)
    tables = []
    for (study, backbone), group in runs.groupby(["study", "backbone"], sort=True):
        tables += tables_for_group(group, study, backbone, anchors=anchors, all_columns=all_columns)
    return tables

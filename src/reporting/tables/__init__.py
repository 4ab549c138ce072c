"""Paper tables from run records alone: ``python -m src.reporting.tables [--runs results/runs] [--out results/tables]``.

Every number comes from ``results/runs/*.json`` (src/records.py): the best evaluation of each run
(selected on the task's primary metric, spec §6), shown ×100 as mean ± sample std over seeds with the
seed count. Records are grouped into studies (``config.study``, set by the sweep configs in
configs/sweep/; ad-hoc runs have none) and backbones, one set of tables per group, so a CPU grid on
MiniLM never shares a cell with a DeBERTa run. Failed and unfinished runs are excluded from the cells
and listed under the table. A cell is a task × method (or schedule) × budget at one learning rate: a
learning-rate sweep's cells get a row per rate (column LR), and other tables name the rate of each row
in a note. The published rows of spec §8 can be shown beside ours (``--anchors``);
they are marked as published and never mixed into our cells. A cell that counts a run which ended off
its target total rank R* is marked ‡ and the run's final budget is named under the table
(src/reporting/budgets.py).

Tables: GLUE (rows method × budget, the AdaLoRA Table 1 layout), SQuAD v1.1/v2.0 EM/F1,
summarisation ROUGE-1/2/L, the TriAdaptLoRA threshold-schedule ablation, and for tasks outside those
(tweets, aclsum) a table per task family (``config.task.family``) with the metrics their records list.
Each is written as Markdown and LaTeX under ``results/tables/``.

The package, by job: ``columns`` (labels, column sets), ``frame`` (records -> runs), ``cells``
(numbers in a cell), ``anchors`` (published rows), ``build`` (the tables), ``render`` (Markdown and
LaTeX), ``cli`` (files and the command line). Everything other code uses is importable from here.
"""

from src.reporting.tables.anchors import ANCHOR_GLUE, ANCHOR_SOURCE, ANCHORS, anchor_rows
from src.reporting.tables.build import build_table, build_tables, tables_for_group
from src.reporting.tables.cells import fmt_cell, fmt_lr, fmt_params, mean_params, metric_values, task_average
from src.reporting.tables.cli import main, write_tables
from src.reporting.tables.columns import (
    ADHOC,
    DASH,
    DEFAULT_AXES,
    GLUE_COLUMNS,
    GLUE_TASKS,
    METHOD_LABEL,
    METHOD_ORDER,
    ONE_METRIC,
    SCHEDULES,
    SQUAD_COLUMNS,
    SUMMARISATION_COLUMNS,
    TASK_COLUMNS,
    TASK_LABEL,
    TASK_MEAN,
    Column,
    family_columns,
)
from src.reporting.tables.frame import latest_ok, load_records, runs_frame, several_lrs
from src.reporting.tables.render import Table, latex_escape

__all__ = [
    "ADHOC", "ANCHORS", "ANCHOR_GLUE", "ANCHOR_SOURCE", "DASH", "DEFAULT_AXES", "GLUE_COLUMNS", "GLUE_TASKS",
    "METHOD_LABEL", "METHOD_ORDER", "ONE_METRIC", "SCHEDULES", "SQUAD_COLUMNS", "SUMMARISATION_COLUMNS",
    "TASK_COLUMNS", "TASK_LABEL", "TASK_MEAN", "Column", "Table", "anchor_rows", "build_table", "build_tables",
    "family_columns", "fmt_cell", "fmt_lr", "fmt_params", "latest_ok", "latex_escape", "load_records", "main",
    "mean_params", "metric_values", "runs_frame", "several_lrs", "tables_for_group", "task_average",
    "write_tables",
]  # fmt: skip

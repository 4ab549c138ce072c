"""What the tables show: method and task labels, the paper's column sets, the GLUE averages, and the
columns of a task the paper's tables do not have (read from its records)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from src.registry import ENTRIES

DASH = "—"  # a missing cell: no run, or no value for that metric; never 0
METHOD_ORDER = list(ENTRIES)  # labels, order and defaults: each method's entry in src/registry.py
METHOD_LABEL = {name: entry.label for name, entry in ENTRIES.items()}
ADHOC = "adhoc"  # the study of records that no sweep config tagged
SCHEDULE_ABLATION_METHOD = "triadapt"  # the paper's ablation: TriAdaptLoRA's threshold schedule (spec §6)

DEFAULT_AXES = {name: dict(entry.default_axes) for name, entry in ENTRIES.items() if entry.default_axes}
SCHEDULES = ["linear", "exponential", "fixed"]


@dataclass(frozen=True)
class Column:
    header: str
    task: str
    metric: str  # key in the record's `best` evaluation (no "eval_" prefix)


# GLUE in the AdaLoRA Table 1 order. STS-B is shown as Pearson, the selection metric (spec §6).
GLUE_COLUMNS = [
    Column("MNLI-m", "mnli", "matched_accuracy"),
    Column("MNLI-mm", "mnli", "mismatched_accuracy"),
    Column("SST-2", "sst2", "accuracy"),
    Column("CoLA", "cola", "matthews"),
    Column("QQP acc", "qqp", "accuracy"),
    Column("QQP F1", "qqp", "f1"),
    Column("QNLI", "qnli", "accuracy"),
    Column("RTE", "rte", "accuracy"),
    Column("MRPC", "mrpc", "accuracy"),
    Column("STS-B", "stsb", "pearson"),
]
GLUE_TASKS = ["mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb"]
TASK_LABEL = {
    "mnli": "MNLI", "sst2": "SST-2", "cola": "CoLA", "qqp": "QQP", "qnli": "QNLI", "rte": "RTE", "mrpc": "MRPC",
    "stsb": "STS-B", "squad": "SQuAD v1.1", "squad_v2": "SQuAD v2.0", "xsum": "XSum", "cnn_dailymail": "CNN/DM",
    "tweets": "Tweets", "aclsum": "ACLSum",
}  # fmt: skip
# The two GLUE averages of spec §6. One metric per task ("8-metric" over all eight tasks) ...
ONE_METRIC = {
    "mnli": ["matched_accuracy"],
    "sst2": ["accuracy"],
    "cola": ["matthews"],
    "qqp": ["accuracy"],
    "qnli": ["accuracy"],
    "rte": ["accuracy"],
    "mrpc": ["accuracy"],
    "stsb": ["pearson"],
}
# ... and the task mean (AdaLoRA's "All Ave."): each task's metrics averaged first, then the tasks.
# STS-B enters as (Pearson + Spearman) / 2, the single correlation AdaLoRA's tables print.
TASK_MEAN = {**ONE_METRIC, "mnli": ["matched_accuracy", "mismatched_accuracy"], "qqp": ["accuracy", "f1"]}
TASK_MEAN["stsb"] = ["pearson_spearman_mean"]

SQUAD_COLUMNS = [
    Column("SQuAD v2.0 EM", "squad_v2", "exact"),
    Column("SQuAD v2.0 F1", "squad_v2", "f1"),
    Column("SQuAD v1.1 EM", "squad", "exact"),
    Column("SQuAD v1.1 F1", "squad", "f1"),
]
SUMMARISATION_COLUMNS = [
    Column(f"{label} {name}", task, metric)
    for task, label in [("xsum", "XSum"), ("cnn_dailymail", "CNN/DM")]
    for name, metric in [("R-1", "rouge1"), ("R-2", "rouge2"), ("R-L", "rougeL")]
]
TASK_COLUMNS = {"glue": GLUE_COLUMNS, "squad": SQUAD_COLUMNS, "summarisation": SUMMARISATION_COLUMNS}
PAPER_TASKS = {c.task for cols in TASK_COLUMNS.values() for c in cols}

# Any other task (a demo or offline task: tweets, aclsum) gets a table per family (the record's
# config.task.family, the family src/tasks builds it with), its columns the metrics its records list.
OTHER_FAMILY = "other"  # records written before config.task.family was stored
FAMILY_TITLE = {
    "classification": "Classification dev",
    "question_answering": "Question answering dev (EM / F1)",
    "summarisation": "Summarisation dev (ROUGE F)",
}
METRIC_LABEL = {
    "accuracy": "acc", "f1": "F1", "matthews": "MCC", "pearson": "Pearson", "spearman": "Spearman",
    "exact": "EM", "rouge1": "R-1", "rouge2": "R-2", "rougeL": "R-L", "rougeLsum": "R-Lsum",
}  # fmt: skip


def family_columns(runs: pd.DataFrame) -> dict[str, list[Column]]:
    """family -> a column per (task, metric) of the tasks in ``runs`` that no paper table shows: each
    task's metrics in the order its records list them (``config.task.metrics``, else the primary
    metric), kept if some run's best evaluation has a value; tasks in TASK_LABEL order, then by name."""
    other = runs[~runs["task"].isin(PAPER_TASKS)]
    order = {task: i for i, task in enumerate(TASK_LABEL)}
    tasks = sorted(set(other["task"]), key=lambda t: (order.get(t, len(order)), t))
    found: dict[str, list[Column]] = {}
    for task in tasks:
        rows = other[other["task"] == task]
        listed = dict.fromkeys(m for metrics in rows["metrics"] for m in metrics)
        reported = {k for best in rows["best"] for k, v in best.items() if v is not None}
        label = TASK_LABEL.get(task, task)
        columns = [Column(f"{label} {METRIC_LABEL.get(m, m)}", task, m) for m in listed if m in reported]
        family = next(iter(dict.fromkeys(rows["family"])))
        found.setdefault(family, []).extend(columns)
    return {family: columns for family, columns in sorted(found.items()) if columns}

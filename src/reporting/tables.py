"""Paper tables from run records alone: ``python -m src.reporting.tables [--runs results/runs] [--out results/tables]``.

Every number comes from ``results/runs/*.json`` (src/records.py): the best evaluation of each run
(selected on the task's primary metric, spec §6), shown ×100 as mean ± sample std over seeds with the
seed count. Records are grouped into studies (``config.study``, set by the sweep configs in
configs/sweep/; ad-hoc runs have none) and backbones, one set of tables per group, so a CPU grid on
MiniLM never shares a cell with a DeBERTa run. Failed and unfinished runs are excluded from the cells
and listed under the table. A cell is a task × method (or schedule) × budget at one learning rate: a
learning-rate sweep's cells get a row per rate (column LR), and other tables name the rate of each row
in a note. The published rows of spec §8 can be shown beside ours (``--anchors``);
they are marked as published and never mixed into our cells.

Tables: GLUE (rows method × budget, the AdaLoRA Table 1 layout), SQuAD v1.1/v2.0 EM/F1,
summarisation ROUGE-1/2/L, and the TriAdaptLoRA threshold-schedule ablation. Each is written as
Markdown and LaTeX under ``results/tables/``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from src.records import atomic_write_text

DASH = "—"  # a missing cell: no run, or no value for that metric; never 0
METHOD_ORDER = ["lora", "adalora", "increlora", "triadapt"]
METHOD_LABEL = {"lora": "LoRA", "adalora": "AdaLoRA", "increlora": "IncreLoRA", "triadapt": "TriAdaptLoRA"}
ADHOC = "adhoc"  # the study of records that no sweep config tagged
SCHEDULE_ABLATION_METHOD = "triadapt"  # the paper's ablation: TriAdaptLoRA's threshold schedule (spec §6)

# The main tables compare each method at its defaults; records that change one of these axes are
# ablations (spec §6) and only appear in the ablation tables. A key missing from a record's config
# counts as the default (records written before the option existed).
DEFAULT_AXES = {
    "triadapt": {
        "schedule": "linear",
        "score": "increment",
        "init": "identity",
        "scaling": "rank",
        "new_params_lr": "follow",
    },
    "increlora": {"score": "sensitivity"},  # score=random is the allocation control (spec §5.5)
}
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

# Published rows (spec §8; not ours), in percent, keyed like our columns. AdaLoRA paper (arXiv
# 2303.10512) Table 1, DeBERTaV3-base, mean of 5 seeds. Its STS-B is (Pearson + Spearman) / 2, shown in
# our Pearson column with a dagger.
ANCHOR_SOURCE = {
    "glue": "AdaLoRA paper Table 1 (DeBERTaV3-base, GLUE dev, 5 seeds)",
    "squad": "AdaLoRA paper Table 2 (DeBERTaV3-base); budget 0.08/0.16/0.32/0.65% = r̄ 1/2/4/8",
    "summarisation": "AdaLoRA paper Table 3 (BART-large); budget as % of parameters",
}
ANCHOR_GLUE = [  # (label, r̄ or None, params, values)
    ("Full FT", None, "184M", [89.90, 90.12, 95.63, 69.19, 92.40, 89.80, 94.03, 83.75, 89.46, 91.60]),
    ("LoRA", 8, "1.33M", [90.65, 90.69, 94.95, 69.82, 91.99, 89.38, 93.87, 85.20, 89.95, 91.60]),
    ("AdaLoRA", 8, "1.27M", [90.76, 90.79, 96.10, 71.45, 92.23, 89.74, 94.55, 88.09, 90.69, 91.84]),
    ("LoRA", 2, "0.33M", [90.30, 90.38, 94.95, 68.71, 91.61, 88.91, 94.03, 85.56, 89.71, 91.68]),
    ("AdaLoRA", 2, "0.32M", [90.66, 90.70, 95.80, 70.04, 91.78, 89.16, 94.49, 87.36, 90.44, 91.63]),
]
_SQUAD_BUDGETS = [(1, "0.08%"), (2, "0.16%"), (4, "0.32%"), (8, "0.65%")]
_SQUAD = {  # method -> per budget (v2.0 EM, F1, v1.1 EM, F1)
    "LoRA": [
        (84.7, 87.5, 86.4, 92.8),
        (83.6, 86.7, 86.6, 92.9),
        (84.5, 87.4, 86.7, 93.1),
        (85.0, 88.0, 86.7, 93.1),
    ],
    "AdaLoRA": [
        (85.6, 88.7, 87.2, 93.4),
        (85.7, 88.8, 87.5, 93.6),
        (85.5, 88.6, 87.5, 93.7),
        (86.0, 88.9, 87.6, 93.7),
    ],
}
ANCHOR_SQUAD = [
    (method, rank, pct, list(vals))
    for method, rows in _SQUAD.items()
    for (rank, pct), vals in zip(_SQUAD_BUDGETS, rows, strict=True)
]
ANCHOR_SUMMARISATION = [
    ("Full FT", None, "100%", [45.49, 22.33, 37.26, 44.16, 21.28, 40.90]),
    ("LoRA", None, "2.20%", [43.95, 20.72, 35.68, 45.03, 21.84, 42.15]),
    ("AdaLoRA", None, "2.20%", [44.72, 21.46, 36.46, 45.00, 21.89, 42.16]),
    ("LoRA", None, "1.10%", [43.40, 20.20, 35.20, 44.72, 21.58, 41.84]),
    ("AdaLoRA", None, "1.10%", [44.35, 21.13, 36.13, 44.96, 21.77, 42.09]),
    ("LoRA", None, "0.26%", [43.18, 19.89, 34.92, 43.95, 20.91, 40.98]),
    ("AdaLoRA", None, "0.26%", [43.55, 20.17, 35.20, 44.39, 21.28, 41.50]),
    ("LoRA", None, "0.13%", [42.81, 19.68, 34.73, 43.68, 20.63, 40.71]),
    ("AdaLoRA", None, "0.13%", [43.29, 19.95, 35.04, 43.94, 20.83, 40.96]),
]
ANCHORS = {"glue": ANCHOR_GLUE, "squad": ANCHOR_SQUAD, "summarisation": ANCHOR_SUMMARISATION}


# -- records -> one row per run ------------------------------------------------------------------
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
    "run_id", "status", "study", "backbone", "task", "method", "budget", "avg_rank", "learning_rate", "seed",
    "schedule",
    "is_default", "ablation_other_default", "params", "finished_at", "best",
]  # fmt: skip


def runs_frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per record: identity, status, budget, variant, and the best evaluation's metrics."""
    rows = []
    for r in records:
        config = r.get("config") or {}
        budget_cfg = config.get("budget") or {}
        method_cfg = config.get("method") or {}
        final_budget = (r.get("budget") or {}).get("final") or {}
        variant = _variant(r["method"], method_cfg)
        rows.append(
            {
                "run_id": r["run_id"],
                "status": r.get("status"),
                "study": config.get("study") or ADHOC,
                "backbone": r["backbone"],
                "task": r["task"],
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


def fmt_lr(lr) -> str:
    """A learning rate as researchers write it (3e-4, 1.5e-4), exact to seven significant digits."""
    if lr is None or (isinstance(lr, float) and math.isnan(lr)):
        return DASH
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


# -- cells -----------------------------------------------------------------------------------------
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


# -- tables ----------------------------------------------------------------------------------------
@dataclass
class Table:
    name: str  # file stem under results/tables/
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        spec = "l" * 2 + "r" * (len(self.header) - 2)
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            "\\scriptsize",
            f"\\caption{{{latex_escape(self.title)}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(latex_escape(h) for h in self.header) + " \\\\",
            "\\midrule",
            *[" & ".join(latex_escape(c) for c in row) + " \\\\" for row in self.rows],
            "\\bottomrule",
            "\\end{tabular}",
        ]
        if self.notes:
            lines += ["\\par\\smallskip", "\\begin{minipage}{\\linewidth}\\tiny"]
            lines += [latex_escape(note) + "\\\\" for note in self.notes]
            lines.append("\\end{minipage}")
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"


_LATEX = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "±": "$\\pm$",
    "—": "\\textemdash{}",
    "†": "$^\\dagger$",
    "×": "$\\times$",
    "`": "",
}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX.get(ch, ch) for ch in text)
    return out.replace("r̄", "$\\bar r$")


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
    params_at = header.index("#Params")
    rows = []
    for key, budget, avg_rank, lr in order:
        cell_runs = ok[(ok[row_field] == key) & (ok["budget"] == budget)]
        if by_lr:  # a record written before the trainer config was stored has no rate: a row of its own
            at = cell_runs["learning_rate"].isna() if lr is None else cell_runs["learning_rate"] == lr
            cell_runs = cell_runs[at]
        means: dict[tuple[str, str], float | None] = {}
        metrics = {(c.task, c.metric) for c in columns}
        metrics |= {(t, m) for t in avg_tasks for m in ONE_METRIC[t] + TASK_MEAN[t]}
        for task, metric in metrics:
            values = metric_values(cell_runs, task, metric)
            means[(task, metric)] = statistics.mean(values) if values else None
        row = [row_labels.get(key, str(key)), *([fmt_lr(lr)] if by_lr else [])]
        row += [str(avg_rank) if avg_rank is not None else DASH, mean_params(cell_runs["params"])]
        row += [fmt_cell(metric_values(cell_runs, c.task, c.metric)) for c in columns]
        if avg_tasks:
            for scheme in (ONE_METRIC, TASK_MEAN):
                avg = task_average(means, avg_tasks, scheme)
                row.append(DASH if avg is None else f"{avg:.2f}")
        rows.append(row)
    column_max = max([row[params_at] for row in rows if row[params_at] is not None], default=0)
    for row in rows:
        row[params_at] = fmt_params(row[params_at], column_max)
    notes = [
        "Cells: best dev evaluation of each run (selected on the task's primary metric), ×100; "
        "mean ± sample std over seeds, n = number of seeds; — = no run or no value.",
        "#Params: adapter parameters at the end of training (budget.final.effective_adapter, heads "
        "excluded), mean over the row's runs.",
    ]
    if by_lr:
        notes.append("LR: trainer.learning_rate; a cell run at several learning rates has a row per rate.")
    elif (lr_note := _lr_note(ok, row_field, row_labels, order)) is not None:
        notes.append(lr_note)
    if avg_tasks:
        names = ", ".join(TASK_LABEL[t] for t in avg_tasks)
        notes.append(
            f"Averages over {len(avg_tasks)} task(s) ({names}) of the cell means: "
            f"Avg ({len(avg_tasks)}-metric) takes one metric per task (MNLI-m, QQP acc, STS-B Pearson); "
            "Avg (task mean) averages each task's metrics first (MNLI m/mm, QQP acc/F1, STS-B "
            "(Pearson + Spearman)/2), AdaLoRA's All Ave. convention (spec §6)."
        )
    if anchors:
        rows += _anchor_rows(anchors, columns, avg_tasks)
        notes.append(f"(published): {anchor_source}; not our runs, shown for reference.")
        if any(c.task == "stsb" for c in columns) and name.startswith("glue"):
            notes.append("†: published STS-B is (Pearson + Spearman)/2, used in both averages.")
    notes += list(extra_notes)
    notes += _excluded_notes(table_runs, superseded)
    return Table(name, title, header, rows, notes)


def _anchor_rows(anchors: list, columns: list[Column], avg_tasks: list[str]) -> list[list[str]]:
    all_columns = {
        "glue": GLUE_COLUMNS,
        "squad": SQUAD_COLUMNS,
        "summarisation": SUMMARISATION_COLUMNS,
    }
    source = next(cols for cols in all_columns.values() if set(columns) <= set(cols))
    rows = []
    for label, rank, params, values in anchors:
        by_column = dict(zip(source, values, strict=True))
        row = [f"{label} (published)", DASH if rank is None else str(rank), params]
        for c in columns:
            dagger = "†" if c.task == "stsb" else ""
            row.append(f"{by_column[c]:.2f}{dagger}")
        if avg_tasks:
            means = {(c.task, c.metric): v for c, v in by_column.items()}
            if "stsb" in avg_tasks:  # the published STS-B number is the (P+S)/2 both averages use
                means[("stsb", "pearson_spearman_mean")] = means[("stsb", "pearson")]
            for scheme in (ONE_METRIC, TASK_MEAN):
                avg = task_average(means, avg_tasks, scheme)
                row.append(DASH if avg is None else f"{avg:.2f}")
        rows.append(row)
    return rows


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
    ablation = group[(group["method"] == SCHEDULE_ABLATION_METHOD) & group["ablation_other_default"]]
    if len(ablation):
        columns = [c for cols in TASK_COLUMNS.values() for c in cols]
        table = build_table(
            f"ablation_schedule_{study}_{backbone}",
            f"TriAdaptLoRA threshold schedule (method.schedule): {where}",
            ablation,
            columns,
            "schedule",
            {s: s for s in SCHEDULES},
            SCHEDULES,
            averages=set(ablation["task"]) <= set(GLUE_TASKS),
            extra_notes=[
                "Other TriAdaptLoRA options at their defaults (score, init, scaling, new_params_lr).",
                *(adhoc if study == ADHOC else []),
            ],
            required_rows=[  # a schedule that was not run is shown, empty
                (schedule, budget, avg_rank)
                for budget, avg_rank in set(zip(ablation["budget"], ablation["avg_rank"], strict=True))
                for schedule in SCHEDULES
            ],
        )
        if table is not None:
            tables.append(table)
    return tables


def build_tables(records: list[dict], anchors: bool = False, all_columns: bool = False) -> list[Table]:
    runs = runs_frame(records)
    tables = []
    for (study, backbone), group in runs.groupby(["study", "backbone"], sort=True):
        tables += tables_for_group(group, study, backbone, anchors=anchors, all_columns=all_columns)
    return tables


def write_tables(tables: list[Table], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in tables:
        for suffix, text in [(".md", table.to_markdown()), (".tex", table.to_latex())]:
            path = out / f"{table.name}{suffix}"
            atomic_write_text(path, text)
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="results/runs", help="folder of run records (*.json)")
    parser.add_argument("--out", default="results/tables", help="where the .md and .tex files go")
    parser.add_argument("--anchors", action="store_true", help="add the published rows of spec §8")
    parser.add_argument("--all-columns", action="store_true", help="every GLUE column, even without runs")
    args = parser.parse_args(argv)
    records = load_records(args.runs)
    tables = build_tables(records, anchors=args.anchors, all_columns=args.all_columns)
    for path in write_tables(tables, args.out):
        print(path)
    if not tables:
        print(f"no records with results under {args.runs}")


if __name__ == "__main__":
    main()

"""The published rows of spec §8 (not ours), shown beside our rows with ``--anchors`` and never mixed
into our cells."""

from __future__ import annotations

from src.reporting.tables.cells import task_average
from src.reporting.tables.columns import (
    DASH,
    GLUE_COLUMNS,
    ONE_METRIC,
    SQUAD_COLUMNS,
    SUMMARISATION_COLUMNS,
    TASK_MEAN,
    Column,
)

# In percent, keyed like our columns. AdaLoRA paper (arXiv 2303.10512) Table 1, DeBERTaV3-base, mean
# of 5 seeds. Its STS-B is (Pearson + Spearman) / 2, shown in our Pearson column with a dagger.
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


def anchor_rows(anchors: list, columns: list[Column], avg_tasks: list[str]) -> list[list[str]]:
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

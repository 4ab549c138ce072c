"""The CPU mini-reproduction write-up (``results/cpu-repro/README.md``) from run records alone.

``python -m src.reporting.cpu_repro [--runs results/runs] [--out results/cpu-repro]``

Reads the records of the ``cpu-repro`` studies (configs/sweep/cpu_repro.yaml; the tuned protocol's
plan is src/reporting/lr_selection.py) and writes: the results table (mean ± sample std over seeds,
n), paired comparisons against LoRA (mean difference over the seeds both methods finished, with a 95%
t-interval, a percentile bootstrap interval and the minimal detectable effect), the claims' pooled
verdicts over tasks, the seed spread, the budgets actually reached, wall and CPU time per step, the
TriAdaptLoRA option ablations, the paper's claims checked against these numbers, and the figures.
Nothing here is typed in by hand: the verdicts are computed, so they change when the records do.

Modules, each importing only those above it: ``stats`` (the statistics), ``pooled`` (pooling over
tasks), ``frame`` (records -> one row per run), ``plan`` (coverage and what is left), ``diagnostics``
(adapter effect), ``sections`` (tables), ``claims``, ``render`` (the write-up).
"""

from src.reporting.cpu_repro.diagnostics import (
    STARTUP,
    TUNED_STARTUP,
    inert_methods,
    load_startup,
    load_tuned_startups,
)
from src.reporting.cpu_repro.frame import (
    CONSTANT_FLOOR,
    DEFAULT,
    STUDY,
    TASKS,
    paired_difference,
    study_frame,
    variant_label,
    verdict,
)
from src.reporting.cpu_repro.plan import PLANNED_ABLATIONS, PLANNED_SEEDS, remaining_hours
from src.reporting.cpu_repro.render import lr_selection_section, main, render, report_figures, write_report
from src.reporting.cpu_repro.sections import budget_response_table
from src.reporting.tables import METHOD_ORDER

__all__ = [
    "CONSTANT_FLOOR",
    "DEFAULT",
    "METHOD_ORDER",
    "PLANNED_ABLATIONS",
    "PLANNED_SEEDS",
    "STARTUP",
    "STUDY",
    "TASKS",
    "TUNED_STARTUP",
    "budget_response_table",
    "inert_methods",
    "load_startup",
    "load_tuned_startups",
    "lr_selection_section",
    "main",
    "paired_difference",
    "remaining_hours",
    "render",
    "report_figures",
    "study_frame",
    "variant_label",
    "verdict",
    "write_report",
]

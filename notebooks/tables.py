# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Paper tables from the run records
#
# Renders the tables of `src/reporting/tables.py` (the same as `make tables` writes to `results/tables/`) from the
# run records in `results/runs/`, or in `$REPORT_RUNS_DIR`. This notebook only renders: every number
# comes from `src.reporting.tables`. Set `REPORT_ANCHORS=1` to show the published rows of spec §8 beside ours.

# %%
import os
from pathlib import Path

from IPython.display import Markdown, display

import src
from src.reporting.tables import build_tables, load_records

ROOT = Path(src.__file__).resolve().parents[1]
RUNS_DIR = Path(os.environ.get("REPORT_RUNS_DIR", ROOT / "results" / "runs"))
ANCHORS = os.environ.get("REPORT_ANCHORS", "0") == "1"
records = load_records(RUNS_DIR)
print(f"{len(records)} records in {RUNS_DIR}")

# %%
tables = build_tables(records, anchors=ANCHORS)
for table in tables:
    display(Markdown(table.to_markdown()))
if not tables:
    print("no tables: no records yet (make glue-sweep-cpu writes some)")

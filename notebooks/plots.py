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
# # Figures from the run records
#
# Renders the figures of `src/reporting/figures.py` (the same as `make figures` writes to `results/figures/`) from
# the run records in `results/runs/`, or in `$REPORT_RUNS_DIR`: final rank allocation heatmaps of the
# adaptive methods, the rank budget over training, the primary dev metric over training, and the seed
# spread per task. This notebook only renders.

# %%
import os
from pathlib import Path

from IPython.display import Image, Markdown, display

import src
from src.reporting.figures import figure_png, group_figures, selected_runs
from src.reporting.tables import load_records

ROOT = Path(src.__file__).resolve().parents[1]
RUNS_DIR = Path(os.environ.get("REPORT_RUNS_DIR", ROOT / "results" / "runs"))
groups = selected_runs(load_records(RUNS_DIR))
print(f"{len(groups)} (study, backbone) group(s) in {RUNS_DIR}")

# %%
for (study, backbone), runs in groups.items():
    display(Markdown(f"## study `{study}`, backbone `{backbone}` ({len(runs)} runs)"))
    for (kind, budget), fig in group_figures(runs).items():
        display(Markdown(f"**{kind}**" + (f" ({budget})" if budget else "")))
        display(Image(figure_png(fig)))

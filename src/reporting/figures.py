"""Figures from run records alone: ``python -m src.reporting.figures [--runs results/runs] [--out results/figures]``.

Per (study, backbone) group of runs, the same selection as the tables (src/reporting/tables/: ok runs at the
methods' default options, the latest per seed; cells run at several learning rates left out), written as
PNG and PDF; studies with a write-up of their own (``STUDIES_WITH_WRITEUP``: cpu-repro) get theirs beside
the write-up instead:

- ``rank_heatmaps_<group>_<budget>``: final rank per layer × matrix type, one panel per adaptive
  method and task (mean over seeds), from ``rank_patterns.modules`` and the last ``rank_patterns.history``;
- ``budget_<group>``: total rank and effective adapter parameters vs step (``budget.history``), one line per run,
  the target total rank R* of each budget as a dotted line, and a run that ended off R* marked ‡ at its
  end and named with its final budget (src/reporting/budgets.py; the heatmaps mark its panel too);
- ``metric_<group>``: the primary dev metric vs step (``evals``), mean over seeds, per task;
- ``seed_spread_<group>``: the best primary metric of every seed, per task, method and budget.

Figures are built on ``matplotlib.figure.Figure`` (no pyplot state), sized for a paper page (7 in wide).
"""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from src.records import atomic_write
from src.registry import ENTRIES
from src.reporting.budgets import OFF_TARGET_MARK, final_and_target, off_target, off_target_text
from src.reporting.tables import (
    METHOD_LABEL,
    METHOD_ORDER,
    TASK_LABEL,
    latest_ok,
    load_records,
    runs_frame,
    several_lrs,
)
from src.target_names import longest_match

STYLE = {
    "font.size": 7,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
    "figure.dpi": 100,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
PAGE_WIDTH = 7.0  # inches: a two-column paper's text width
# A study with a write-up of its own keeps its figures beside it (results/<study>/figures/, written with
# the write-up by src/reporting/cpu_repro/); results/figures/ holds every other study's: one place
# per figure.
STUDIES_WITH_WRITEUP = ("cpu-repro",)
METHOD_COLOR = {name: entry.colour for name, entry in ENTRIES.items()}
LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")
SHORT_TYPE = {  # target module suffix -> column label
    "query": "Q", "query_proj": "Q", "q_proj": "Q", "q": "Q",
    "key": "K", "key_proj": "K", "k_proj": "K", "k": "K",
    "value": "V", "value_proj": "V", "v_proj": "V", "v": "V",
    "attention.output.dense": "O", "o_proj": "O", "out_proj": "O", "o": "O",
    "intermediate.dense": "FF1", "fc1": "FF1", "wi": "FF1", "up_proj": "FF1",
    "gate_proj": "Gate", "output.dense": "FF2", "fc2": "FF2", "wo": "FF2", "down_proj": "FF2",
}  # fmt: skip


# -- rank patterns -------------------------------------------------------------------------------
def _targets(record: dict) -> list[str]:
    config = record.get("config") or {}
    for node in (config.get("method") or {}, config.get("backbone") or {}):
        if node.get("target_modules"):
            return list(node["target_modules"])
    return []


def module_position(name: str, targets: list[str]) -> tuple[str, str]:
    """(layer label, matrix type) of an adapted module's qualified name."""
    match = LAYER_RE.search(name)
    layer = match.group(1) if match else "?"
    if ".decoder." in f".{name}.":
        layer = f"dec {layer}"
    suffix = longest_match(name, targets) or name.rsplit(".", 1)[-1]
    return layer, SHORT_TYPE.get(suffix, suffix)


def final_rank_grid(record: dict) -> tuple[list[str], list[str], np.ndarray] | None:
    """Layers × matrix types of the final rank pattern; None when the record has no pattern."""
    patterns = record.get("rank_patterns") or {}
    modules, history = patterns.get("modules"), patterns.get("history")
    if not modules or not history:
        return None
    ranks = history[-1]["ranks"]
    targets = _targets(record)
    cells = [module_position(m, targets) for m in modules]
    layers = list(dict.fromkeys(layer for layer, _ in cells))
    types = list(dict.fromkeys(kind for _, kind in cells))
    grid = np.full((len(layers), len(types)), np.nan)
    for (layer, kind), rank in zip(cells, ranks, strict=True):
        grid[layers.index(layer), types.index(kind)] = rank
    return layers, types, grid


def _draw_heatmap(ax, layers, types, grid, vmax, annotate=True):
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax, aspect="auto", origin="lower")
    ax.set_xticks(range(len(types)), types)
    ax.set_yticks(range(len(layers)), layers)
    ax.set_xlabel("matrix type")
    ax.set_ylabel("layer")
    ax.tick_params(length=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    if annotate and grid.size <= 96:
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                text = f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"
                color = "white" if v < 0.6 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=5.5, color=color)
    return image


def rank_heatmap_figure(record: dict) -> Figure | None:
    """One run's final rank allocation (what W&B shows for the run); None without a rank pattern."""
    found = final_rank_grid(record)
    if found is None:
        return None
    layers, types, grid = found
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.4, 0.35 * len(layers) + 1.1), layout="constrained")
        ax = fig.add_subplot()
        image = _draw_heatmap(ax, layers, types, grid, vmax=max(1.0, np.nanmax(grid)))
        fig.colorbar(image, ax=ax, label="final rank")
        budget = ((record.get("config") or {}).get("budget") or {}).get("avg_rank", "?")
        label = METHOD_LABEL.get(record["method"], record["method"])
        ax.set_title(f"{label} on {TASK_LABEL.get(record['task'], record['task'])}, r̄ = {budget}")
    return fig


# -- selection (the tables' runs) ------------------------------------------------------------------
def selected_runs(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(study, backbone) -> the records the tables use: ok, default options, latest per seed. A cell run
    at several learning rates (an LR sweep) is left out: its seeds would mix learning rates, and its
    table gives a row per rate."""
    by_id = {r["run_id"]: r for r in records}
    runs = runs_frame(records)
    cell = ["study", "backbone", "task", "method", "budget"]
    chosen, _ = latest_ok(runs[runs["is_default"]], cell)
    chosen = chosen[~several_lrs(chosen, cell)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for (study, backbone), group in chosen.groupby(["study", "backbone"], sort=True):
        groups[(study, backbone)] = [by_id[i] for i in sorted(group["run_id"])]
    return groups


def _budget(record: dict) -> tuple[str, int | None]:
    """(budget name, r̄); records written before the budget group existed have ("nobudget", None)."""
    budget = (record.get("config") or {}).get("budget") or {}
    return budget.get("name", "nobudget"), budget.get("avg_rank")


def _methods(records):
    present = {r["method"] for r in records}
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def _tasks(records):
    present = {r["task"] for r in records}
    return [t for t in TASK_LABEL if t in present] + sorted(present - set(TASK_LABEL))


def _budgets(records):
    return sorted({_budget(r) for r in records}, key=lambda b: (b[1] is None, b[1] or 0))


def _is_adaptive(records: list[dict]) -> bool:
    for r in records:
        initial = (r.get("budget") or {}).get("initial") or {}
        history = (r.get("rank_patterns") or {}).get("history") or []
        if initial.get("target_total_rank") is not None or len(history) > 1:
            return True
    return False


def targets(records: list[dict]) -> list[int]:
    """The target total ranks R* of ``records``, sorted (one per backbone and budget, as a rule)."""
    return sorted({t for r in records if (t := final_and_target(r)[1]) is not None})


def off_target_runs(records: list[dict]) -> list[tuple[str, int, int]]:
    """(run id, final total rank, R*) of every record that ended off its target total rank."""
    found = [(r["run_id"], *final_and_target(r)) for r in records]
    return sorted(f for f in found if off_target(f[1], f[2]))


def _off_target_caption(records: list[dict], limit: int = 3) -> str:
    """Lines under a title naming the runs that ended off R* (the first ``limit``, one per line, so
    a long run id never runs off the page); empty when none did."""
    found = off_target_runs(records)
    if not found:
        return ""
    lines = [f"{OFF_TARGET_MARK} ended off its target total rank R*:"]
    lines += [off_target_text(*f) for f in found[:limit]]
    if len(found) > limit:
        lines.append(f"and {len(found) - limit} more")
    return "\n" + "\n".join(lines)


def _label(method: str) -> str:
    return METHOD_LABEL.get(method, method)


def _metric_name(metric: str) -> str:
    return metric.replace("_", " ")


# -- figures for a group of runs -------------------------------------------------------------------
def rank_heatmaps_figure(records: list[dict], budget: str) -> Figure | None:
    """Final rank per layer × matrix type for every adaptive method (columns) and task (rows)."""
    records = [r for r in records if _budget(r)[0] == budget and final_rank_grid(r) is not None]
    methods = [m for m in _methods(records) if _is_adaptive([r for r in records if r["method"] == m])]
    tasks = _tasks([r for r in records if r["method"] in methods])
    if not methods:
        return None
    panels = {}
    for task in tasks:
        for method in methods:
            grids = [final_rank_grid(r) for r in records if r["task"] == task and r["method"] == method]
            if grids:
                layers, types = grids[0][0], grids[0][1]
                panels[(task, method)] = (layers, types, np.mean([g[2] for g in grids], axis=0), len(grids))
    vmax = max(np.nanmax(p[2]) for p in panels.values())
    n_layers = max(len(p[0]) for p in panels.values())
    with matplotlib.rc_context(STYLE):
        height = len(tasks) * (0.17 * n_layers + 0.75) + 0.6
        fig = Figure(figsize=(PAGE_WIDTH, height), layout="constrained")
        axes = fig.subplots(len(tasks), len(methods), squeeze=False, sharex=True, sharey=True)
        image = None
        for i, task in enumerate(tasks):
            for j, method in enumerate(methods):
                ax = axes[i][j]
                if (task, method) not in panels:
                    ax.set_axis_off()
                    continue
                layers, types, grid, n = panels[(task, method)]
                image = _draw_heatmap(ax, layers, types, grid, vmax)
                panel = [r for r in records if r["task"] == task and r["method"] == method]
                mark = f" {OFF_TARGET_MARK}" if off_target_runs(panel) else ""
                ax.set_title(f"{_label(method)}, {TASK_LABEL.get(task, task)} (n={n}){mark}")
                if i < len(tasks) - 1:
                    ax.set_xlabel("")
                if j > 0:
                    ax.set_ylabel("")
        fig.colorbar(image, ax=axes, label="final rank (mean over seeds)", shrink=0.8)
        rank = dict(_budgets(records)).get(budget)
        shown = [r for r in records if r["method"] in methods]
        fig.suptitle(
            f"Final rank allocation, r̄ = {'?' if rank is None else rank}{_off_target_caption(shown)}"
        )
    return fig


def budget_figure(records: list[dict]) -> Figure | None:
    """Total rank (top) and effective adapter parameters (bottom) vs step, one line per run."""
    records = [r for r in records if (r.get("budget") or {}).get("history")]
    if not records:
        return None
    budgets = _budgets(records)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(PAGE_WIDTH, 3.6), layout="constrained")
        axes = fig.subplots(2, len(budgets), squeeze=False, sharex="col")
        for j, (name, rank) in enumerate(budgets):
            for r in (r for r in records if _budget(r)[0] == name):
                history = r["budget"]["history"]
                end = r.get("total_steps") or history[-1]["step"]
                steps = [h["step"] for h in history] + [end]
                for i, key in enumerate(["total_rank", "effective_adapter"]):
                    values = [h.get(key) for h in history]
                    if any(v is None for v in values):
                        continue
                    values = values + values[-1:]
                    if key == "effective_adapter":
                        values = [v / 1e3 for v in values]
                    axes[i][j].plot(
                        steps, values, drawstyle="steps-post", color=METHOD_COLOR.get(r["method"]),
                        alpha=0.55, linewidth=1.0, label=_label(r["method"]),
                    )  # fmt: skip
                    if i == 0 and off_target_runs([r]):  # where the run stopped, short of (or past) R*
                        axes[0][j].plot(
                            steps[-1], values[-1], marker="X", markersize=5, color="black", linestyle="none",
                            label=f"{OFF_TARGET_MARK} ended off R*",
                        )  # fmt: skip
            for target in targets([r for r in records if _budget(r)[0] == name]):
                axes[0][j].axhline(target, color="black", linestyle=":", linewidth=0.8, label="target R*")
                axes[0][j].annotate(
                    f"R* = {target}", (1.0, target), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=6,
                )  # fmt: skip
            axes[0][j].set_title(f"r̄ = {'?' if rank is None else rank}")
            axes[0][j].set_ylabel("total rank Σ r_i")
            axes[1][j].set_ylabel("effective adapter params (K)")
            axes[1][j].set_xlabel("optimizer step")
        _method_legend(fig, axes, METHOD_ORDER, extra=["target R*", f"{OFF_TARGET_MARK} ended off R*"])
        fig.suptitle(f"Rank budget over training (one line per run){_off_target_caption(records)}")
    return fig


def _method_legend(fig, axes, methods, extra: tuple[str, ...] | list[str] = ()) -> None:
    """One legend for the whole figure, one entry per method present, in ``methods`` order, then the
    ``extra`` labels present (R* lines, markers)."""
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    order = [_label(m) for m in methods if _label(m) in handles] + [k for k in extra if k in handles]
    fig.legend(
        [handles[k] for k in order], order, loc="outside lower center", ncols=len(order), frameon=False
    )


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return (n + cols - 1) // cols, cols


def metric_figure(records: list[dict]) -> Figure | None:
    """The primary dev metric (×100) vs step, mean over seeds, per method and budget; a panel per task."""
    records = [r for r in records if r.get("evals") and r.get("primary_metric")]
    if not records:
        return None
    tasks, budgets = _tasks(records), _budgets(records)
    styles = ["--", "-", ":", "-."]
    rows, cols = _grid(len(tasks))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(PAGE_WIDTH, 1.9 * rows + 0.6), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for k, task in enumerate(tasks):
            ax = axes[k // cols][k % cols]
            task_records = [r for r in records if r["task"] == task]
            metric = task_records[0]["primary_metric"]
            for method in _methods(task_records):
                for b, (name, rank) in enumerate(budgets):
                    runs = [r for r in task_records if r["method"] == method and _budget(r)[0] == name]
                    by_step: dict[int, list[float]] = {}
                    for r in runs:
                        for e in r["evals"]:
                            if e.get(metric) is not None:
                                by_step.setdefault(e["step"], []).append(100 * e[metric])
                    if not by_step:
                        continue
                    steps = sorted(by_step)
                    ax.plot(
                        steps, [np.mean(by_step[s]) for s in steps], styles[b % len(styles)], marker="o",
                        markersize=2.5, linewidth=1.1, color=METHOD_COLOR.get(method),
                        label=f"{_label(method)}, r̄ = {'?' if rank is None else rank}",
                    )  # fmt: skip
            ax.set_title(TASK_LABEL.get(task, task))
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(f"dev {_metric_name(metric)} ×100")
        for k in range(len(tasks), rows * cols):
            axes[k // cols][k % cols].set_axis_off()
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes.flat[1:]:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), frameon=False)
        fig.suptitle("Primary dev metric vs step (mean over seeds)")
    return fig


def seed_spread_figure(records: list[dict]) -> Figure | None:
    """Every seed's best primary metric (dots) and their mean (bar), per method and budget; a panel per task."""
    records = [r for r in records if r.get("best") and r.get("primary_metric")]
    if not records:
        return None
    tasks, budgets, methods = _tasks(records), _budgets(records), _methods(records)
    rows, cols = _grid(len(tasks))
    width = 0.8 / len(methods)  # each budget is one group on the x axis, methods side by side within it
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(PAGE_WIDTH, 1.8 * rows + 0.6), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for k, task in enumerate(tasks):
            ax = axes[k // cols][k % cols]
            task_records = [r for r in records if r["task"] == task]
            metric = task_records[0]["primary_metric"]
            for g, (name, _) in enumerate(budgets):
                for i, method in enumerate(methods):
                    runs = [r for r in task_records if r["method"] == method and _budget(r)[0] == name]
                    values = [100 * r["best"][metric] for r in runs if r["best"].get(metric) is not None]
                    if not values:
                        continue
                    x = g - 0.4 + width * (i + 0.5)
                    jitter = np.linspace(-0.25, 0.25, len(values)) * width if len(values) > 1 else np.zeros(1)
                    ax.scatter(x + jitter, values, s=10, color=METHOD_COLOR.get(method), zorder=3,
                               label=_label(method))  # fmt: skip
                    ax.hlines(np.mean(values), x - 0.4 * width, x + 0.4 * width, color="black", linewidth=1.0)
            ax.set_xticks(
                range(len(budgets)), [f"r̄ = {'?' if rank is None else rank}" for _, rank in budgets]
            )
            ax.set_xlim(-0.5, len(budgets) - 0.5)
            ax.set_title(TASK_LABEL.get(task, task))
            ax.set_ylabel(f"best dev {_metric_name(metric)} ×100")
        for k in range(len(tasks), rows * cols):
            axes[k // cols][k % cols].set_axis_off()
        _method_legend(fig, axes, methods)
        fig.suptitle("Seed spread: best dev score of each seed (dots) and their mean (bar)")
    return fig


# -- writing ---------------------------------------------------------------------------------------
def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure (for notebooks and W&B, without pyplot)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def save(fig: Figure, path_stem: Path, dpi: int = 200) -> list[Path]:
    paths = []
    for suffix in (".png", ".pdf"):
        path = path_stem.with_suffix(suffix)
        metadata = {"Software": None} if suffix == ".png" else {"CreationDate": None}
        atomic_write(path, lambda tmp, metadata=metadata: fig.savefig(tmp, dpi=dpi, metadata=metadata))
        paths.append(path)
    return paths


def group_figures(records: list[dict]) -> dict[tuple[str, str | None], Figure]:
    """(kind, budget or None) -> figure, for one (study, backbone) group of selected runs."""
    figures = {}
    for name, _ in _budgets(records):
        fig = rank_heatmaps_figure(records, name)
        if fig is not None:
            figures[("rank_heatmaps", name)] = fig
    for kind, make in [
        ("budget", budget_figure),
        ("metric", metric_figure),
        ("seed_spread", seed_spread_figure),
    ]:
        fig = make(records)
        if fig is not None:
            figures[(kind, None)] = fig
    return figures


def study_figures(
    records: list[dict], skip_studies: tuple[str, ...] = STUDIES_WITH_WRITEUP
) -> dict[str, Figure]:
    """File stem (``<kind>_<study>_<backbone>[_<budget>]``) -> figure, for every study but ``skip_studies``."""
    figures = {}
    for (study, backbone), group in selected_runs(records).items():
        if study in skip_studies:
            continue
        for (kind, budget), fig in group_figures(group).items():
            figures["_".join([kind, study, backbone, *([budget] if budget else [])])] = fig
    return figures


def write_figures(
    records: list[dict], out_dir: str | Path, skip_studies: tuple[str, ...] = STUDIES_WITH_WRITEUP
) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        path for stem, fig in study_figures(records, skip_studies).items() for path in save(fig, out / stem)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="results/runs", help="folder of run records (*.json)")
    parser.add_argument("--out", default="results/figures", help="where the .png and .pdf files go")
    parser.add_argument(
        "--all-studies", action="store_true", help=f"also the studies with a write-up: {STUDIES_WITH_WRITEUP}"
    )
    args = parser.parse_args(argv)
    skip = () if args.all_studies else STUDIES_WITH_WRITEUP
    for path in write_figures(load_records(args.runs), args.out, skip):
        print(path)


if __name__ == "__main__":
    main()

"""The CPU mini-reproduction write-up (``results/cpu-repro/README.md``) from run records alone.

``python -m src.reporting.cpu_repro [--runs results/runs] [--out results/cpu-repro]``

Reads the records of the ``cpu-repro`` study (configs/sweep/cpu_repro.yaml) and writes: the results
table (mean ± sample std over seeds, n), paired comparisons against LoRA (mean difference over the
seeds both methods finished, with a 95% t-interval and a percentile bootstrap interval), the seed
spread, the budgets actually reached, wall and CPU time per step, the TriAdaptLoRA option ablations, the
paper's claims checked against these numbers, and the figures. Nothing here is typed in by hand: the
verdicts are computed, so they change when the records do.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from src.records import atomic_write_text
from src.reporting import lr_selection, repro_pooled, repro_stats
from src.reporting.figures import group_figures, save
from src.reporting.tables import (
    DASH,
    DEFAULT_AXES,
    METHOD_LABEL,
    METHOD_ORDER,
    TASK_LABEL,
    fmt_cell,
    fmt_lr,
    load_records,
)

STUDY = "cpu-repro"
# The study asks whether SUBJECT beats the others; REFERENCE is the fixed-rank baseline every method
# is paired against, and BASELINES are the other adaptive methods of the overhead claim.
SUBJECT, REFERENCE, BASELINES = "triadapt", "lora", ("adalora", "increlora")
TASKS = ["rte", "mrpc", "stsb", "cola", "sst2"]
METRIC_LABEL = {"accuracy": "acc", "matthews": "MCC", "pearson": "Pearson"}
PLANNED_SEEDS = {"rte": 5, "mrpc": 5, "stsb": 3, "cola": 3, "sst2": 3}  # scripts/cpu_repro.py
PLANNED_ABLATIONS = {
    "rte": 4,
    "mrpc": 4,
}  # option variants per task (scripts/cpu_repro.py), each seeded as above
DEFAULT = "default"
CI = repro_stats.CI
MIN_PAIRS = 3  # fewer seeds give an interval (and a bootstrap) too fragile to call
TIME_MARGIN = 0.10  # relative-to-LoRA time gaps smaller than this are load noise
# Dev-set score (×100) of a model that predicts one constant: the majority class's share for accuracy
# (RTE 146/277, MRPC 279/408, SST-2 444/872, counted in the GLUE validation splits), 0 for CoLA's MCC.
# A correlation is undefined for a constant, so STS-B has none. tests/test_repro_report.py recounts them.
CONSTANT_FLOOR = {"rte": 100 * 146 / 277, "mrpc": 100 * 279 / 408, "sst2": 100 * 444 / 872, "cola": 0.0}
FLOOR_MARGIN = 5.0  # a mean fewer points than this above the floor is a model that barely learned the task
# What a predictor without information about the label scores: the constant floor, and 0 for a
# correlation (a constant's is undefined, but a prediction independent of the label correlates 0).
NO_INFORMATION = {**CONSTANT_FLOOR, "stsb": 0.0}
# seeds per task the tuned protocol plans (the selection seed apart)
TUNED_PLANNED = {t: len(seeds.split(",")) for t, seeds in lr_selection.TUNED_SEEDS.items()}


# -- records -> one row per run ------------------------------------------------------------------
def variant_label(method: str, method_cfg: dict) -> str:
    """ "default", or the non-default options of an ablation run (``schedule=fixed top_h=15``)."""
    changed = [
        f"{axis}={method_cfg[axis]}"
        for axis, default in DEFAULT_AXES.get(method, {}).items()
        if method_cfg.get(axis, default) != default
    ]
    if method_cfg.get("schedule") == "fixed":
        changed.append(f"top_h={method_cfg.get('top_h')}")
    return " ".join(changed) or DEFAULT


def study_frame(records: list[dict], study: str = STUDY, keep=None) -> pd.DataFrame:
    """Ok runs of ``study`` (or those ``keep(record)`` accepts), the latest per (task, method, budget,
    variant, seed)."""
    rows = []
    for r in records:
        config = r.get("config") or {}
        wanted = keep(r) if keep is not None else config.get("study") == study
        if not wanted or r.get("status") != "ok" or not r.get("best"):
            continue
        final = (r.get("budget") or {}).get("final") or {}
        metric = r["primary_metric"]
        rows.append(
            {
                "run_id": r["run_id"],
                "task": r["task"],
                "method": r["method"],
                "budget": config["budget"]["name"],
                "avg_rank": config["budget"]["avg_rank"],
                "variant": variant_label(r["method"], config.get("method") or {}),
                "seed": r["seed"],
                "metric": metric,
                "value": 100.0 * r["best"][metric],
                "last_value": 100.0 * (r.get("final") or {}).get(metric, math.nan),
                "wall_time_s": r.get("wall_time_s"),
                "cpu_time_s": r.get("cpu_time_s"),
                "end_train_loss": end_train_loss(r),
                "total_steps": r.get("total_steps"),
                "total_rank": final.get("total_rank"),
                "target_total_rank": final.get("target_total_rank"),
                "effective_adapter": final.get("effective_adapter"),
                "trainable_adapter": final.get("trainable_adapter"),
                "threads": (r.get("host") or {}).get("torch_threads"),
                "finished_at": r.get("finished_at") or "",
                "git_sha": (r.get("git") or {}).get("sha") or "",
                "git_dirty": bool((r.get("git") or {}).get("dirty")),
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.sort_values(["finished_at", "run_id"])
    return frame.drop_duplicates(["task", "method", "budget", "variant", "seed"], keep="last")


# -- statistics ------------------------------------------------------------------------------------
def paired_difference(a: dict[int, float], b: dict[int, float], seed: int = 0) -> dict | None:
    """``a - b`` over the seeds both have: mean, 95% t-interval, percentile bootstrap interval, wins.

    Seeds fix the data order and the initialisation shared by both methods, so pairing by seed
    removes that variance from the comparison. None with fewer than ``MIN_PAIRS`` pairs.
    """
    seeds = sorted(set(a) & set(b))
    if len(seeds) < MIN_PAIRS:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    t_low, t_high = repro_stats.t_interval(d, CI)
    boot_low, boot_high = repro_stats.bootstrap_interval(d, seed, CI)
    return {
        "n": len(d),
        "mean": float(d.mean()),
        "t_low": t_low,
        "t_high": t_high,
        "boot_low": boot_low,
        "boot_high": boot_high,
        "wins": int((d > 0).sum()),
        "mde": repro_stats.paired_t_mde(float(d.std(ddof=1)), len(d)),
    }


def verdict(diff: dict | None) -> str:
    """better / worse when the t-interval excludes 0, otherwise unresolved."""
    if diff is None:
        return "n/a"
    if diff["t_low"] > 0:
        return "better"
    if diff["t_high"] < 0:
        return "worse"
    return "unresolved"


def fmt_diff(diff: dict | None) -> str:
    if diff is None:
        return DASH
    return (
        f"{diff['mean']:+.2f} [{diff['t_low']:+.2f}, {diff['t_high']:+.2f}] "
        f"(boot [{diff['boot_low']:+.2f}, {diff['boot_high']:+.2f}]; {diff['wins']}/{diff['n']} seeds)"
    )


def fmt_pairs(diff: dict | None, a: dict[int, float], b: dict[int, float]) -> str:
    """``diff`` (``paired_difference(a, b)``) with its interval where there is one, else the mean of
    ``a - b`` over their common seeds and its signs (a task planned with two seeds still shows which
    way its pairs point)."""
    if diff is not None:
        return fmt_diff(diff)
    d = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if not d:
        return DASH
    return f"{statistics.mean(d):+.2f} ({sum(x > 0 for x in d)}/{len(d)} seeds; too few for an interval)"


def by_seed(frame: pd.DataFrame, **where) -> dict[int, float]:
    rows = frame
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return dict(zip(rows["seed"], rows["value"], strict=True))


# -- sections --------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _tasks(frame: pd.DataFrame) -> list[str]:
    return [t for t in TASKS if t in set(frame["task"])]


def _budgets(frame: pd.DataFrame) -> list[tuple[str, int]]:
    return sorted(set(zip(frame["budget"], frame["avg_rank"], strict=True)), key=lambda b: b[1])


def _methods(frame: pd.DataFrame) -> list[str]:
    return [m for m in METHOD_ORDER if m in set(frame["method"])]


def _metric(frame: pd.DataFrame, task: str) -> str:
    return METRIC_LABEL.get(frame[frame["task"] == task]["metric"].iloc[0], "")


def end_train_loss(record: dict) -> float:
    """Mean task loss logged in the last 10% of the run's steps (NaN if none was logged): the logged
    loss is what was optimised, so a method's regulariser (logged as ``orth_reg``) is taken out."""
    total = record.get("total_steps") or 0
    losses = [
        e["loss"] - e.get("orth_reg", 0.0)
        for e in record.get("train_log") or []
        if "loss" in e and e["step"] > 0.9 * total
    ]
    return statistics.mean(losses) if losses else float("nan")


def train_loss_table(main: pd.DataFrame) -> list[str]:
    """How well each method fits the training data: a method far above the others underfits."""
    tasks = _tasks(main)
    rows = []
    for budget, avg_rank in _budgets(main):
        for method in _methods(main):
            cells = []
            for task in tasks:
                runs = main[(main["task"] == task) & (main["method"] == method) & (main["budget"] == budget)]
                value = runs["end_train_loss"].mean()
                cells.append(DASH if math.isnan(value) else f"{value:.3f}")
            rows.append([METHOD_LABEL[method], str(avg_rank), *cells])
    return _table(["Method", "r̄", *[TASK_LABEL[t] for t in tasks]], rows)


def results_table(main: pd.DataFrame) -> list[str]:
    tasks = _tasks(main)
    header = ["Method", "r̄", *[f"{TASK_LABEL[t]} ({_metric(main, t)})" for t in tasks], "Avg."]
    rows = []
    for budget, avg_rank in _budgets(main):
        for method in _methods(main):
            cells, means = [], []
            for task in tasks:
                values = list(by_seed(main, task=task, method=method, budget=budget).values())
                cells.append(fmt_cell(values))
                means.append(statistics.mean(values) if values else None)
            avg = DASH if None in means else f"{statistics.mean(means):.2f}"
            rows.append([METHOD_LABEL[method], str(avg_rank), *cells, avg])
    floors = [CONSTANT_FLOOR.get(t) for t in tasks]
    rows.append(
        [
            "Constant prediction",
            DASH,
            *(DASH if f is None else f"{f:.2f}" for f in floors),
            DASH if None in floors else f"{statistics.mean(floors):.2f}",
        ]
    )
    return _table(header, rows)


def near_floor(main: pd.DataFrame) -> list[str]:
    """Where the scores sit within FLOOR_MARGIN of a constant prediction: a whole task, when every
    method × budget mean does (the backbone barely learns it, so it says little about allocation), else
    the single cells that do (a method that barely trained there)."""
    whole, cells = [], []
    for task in _tasks(main):
        if (floor := CONSTANT_FLOOR.get(task)) is None:
            continue
        means = {
            (method, avg_rank): statistics.mean(values)
            for budget, avg_rank in _budgets(main)
            for method in _methods(main)
            if (values := list(by_seed(main, task=task, method=method, budget=budget).values()))
        }
        low = {key: mean for key, mean in means.items() if mean < floor + FLOOR_MARGIN}
        if low and len(low) == len(means):
            whole.append(f"{TASK_LABEL[task]} (best mean {max(means.values()):.2f}, floor {floor:.2f})")
        else:
            cells += [
                f"{METHOD_LABEL[m]} r̄ {r} on {TASK_LABEL[task]} ({mean:.2f}, floor {floor:.2f})"
                for (m, r), mean in low.items()
            ]
    out = []
    if whole:
        out.append(
            f"Every mean on {' and '.join(whole)} is within {FLOOR_MARGIN:g} points of a constant "
            "prediction: at this scale the backbone barely learns the task, and taking the best of "
            "four evaluations per epoch lifts even a near-chance run above the floor. Differences there "
            "say little about allocation."
        )
    if cells:
        out.append(
            f"Means within {FLOOR_MARGIN:g} points of a constant prediction (a method that barely trained): "
            + "; ".join(cells)
            + "."
        )
    return out


def collapsed_runs(main: pd.DataFrame) -> list[str]:
    """Runs whose last evaluation fell back within FLOOR_MARGIN of a predictor without information after
    a best at least twice that far above it (on RTE, where every run sits near the floor, evaluation
    noise alone moves a run across one margin). The tables report each run's best evaluation, which
    keeps a score from before the collapse, so the reader is told which runs those are."""
    found = []
    for task in _tasks(main):
        if (floor := NO_INFORMATION.get(task)) is None:
            continue
        runs = main[main["task"] == task].sort_values(["avg_rank", "method", "seed"])
        found += [
            f"{METHOD_LABEL[row.method]} r̄ {row.avg_rank} on {TASK_LABEL[task]}, seed {row.seed} "
            f"(best {row.value:.2f}, last {row.last_value:.2f})"
            for row in runs.itertuples()
            # NaN (no final evaluation) is never below the band
            if row.last_value < floor + FLOOR_MARGIN and row.value >= floor + 2 * FLOOR_MARGIN
        ]
    if not found:
        return []
    return [
        f"Runs that collapsed (the last evaluation back within {FLOOR_MARGIN:g} points of a predictor "
        "without information about the label, 0 for a correlation, after a best at least "
        f"{2 * FLOOR_MARGIN:g} points above it): "
        + "; ".join(found)
        + ". The tables give each run's best evaluation, from before the collapse, and the means keep "
        "it: no run is dropped or rerun after the fact."
    ]


def paired_table(main: pd.DataFrame, reference: str) -> tuple[list[str], list[dict]]:
    rows, found = [], []
    for budget, avg_rank in _budgets(main):
        for task in _tasks(main):
            ref = by_seed(main, task=task, method=reference, budget=budget)
            for method in _methods(main):
                if method == reference:
                    continue
                mine = by_seed(main, task=task, method=method, budget=budget)
                diff = paired_difference(mine, ref)
                found.append({"task": task, "budget": budget, "method": method, "diff": diff})
                rows.append(
                    [
                        TASK_LABEL[task],
                        str(avg_rank),
                        METHOD_LABEL[method],
                        fmt_pairs(diff, mine, ref),
                        verdict(diff),
                        repro_pooled.fmt_mde(repro_pooled.cell_mde(mine, ref)),
                    ]
                )
    header = ["Task", "r̄", "Method", f"− {METHOD_LABEL[reference]}: mean [95% t-interval]", "verdict", "MDE"]
    return _table(header, rows), found


def spread_table(main: pd.DataFrame) -> tuple[list[str], list[dict[str, float]]]:
    """Sample std over seeds per cell (at least ``MIN_PAIRS`` seeds), and the method spreading least;
    also each cell's stds by method, for the stability claim."""
    stds: list[dict[str, float]] = []
    rows = []
    for budget, avg_rank in _budgets(main):
        for task in _tasks(main):
            cell = {}
            for method in _methods(main):
                values = list(by_seed(main, task=task, method=method, budget=budget).values())
                if len(values) >= MIN_PAIRS:
                    cell[method] = statistics.stdev(values)
            if not cell:
                continue
            stds.append(cell)
            smallest = min(cell, key=cell.get)
            rows.append(
                [
                    TASK_LABEL[task],
                    str(avg_rank),
                    *[f"{cell[m]:.2f}" if m in cell else DASH for m in _methods(main)],
                    METHOD_LABEL[smallest],
                ]
            )
    header = ["Task", "r̄", *[METHOD_LABEL[m] for m in _methods(main)], "smallest"]
    return _table(header, rows), stds


# A method whose adapter moves the encoder's output by less than this share of LoRA's (measured by
# scripts/adapter_startup.py) is, in practice, training its classifier head alone.
INERT_EFFECT_SHARE = 0.05
STARTUP = "results/diagnostics/adapter_startup.json"  # scripts/adapter_startup.py's untagged output
# Beside it, the same measurement at each method's selected LR (issue #20), one file per task:
# ``scripts/adapter_startup.py --task <task> --selected-lrs --tag _tuned_<task>``.
TUNED_STARTUP = "adapter_startup_tuned_{task}.json"


def budget_response_table(main: pd.DataFrame) -> tuple[list[str], dict[str, dict[str, tuple[int, int]]]]:
    """Per method and task, best score at the largest budget minus the smallest, paired by seed, and how
    many seed pairs score exactly the same: an adapter that has not moved the model scores the same
    at every budget (the classifier head alone decides), whatever the allocation does."""
    budgets = _budgets(main)
    if len(budgets) < 2:
        return [], {}
    (low, low_rank), (high, high_rank) = budgets[0], budgets[-1]
    tasks = _tasks(main)
    same: dict[str, dict[str, tuple[int, int]]] = {}
    rows = []
    for method in _methods(main):
        cells = []
        for task in tasks:
            lo = by_seed(main, task=task, method=method, budget=low)
            hi = by_seed(main, task=task, method=method, budget=high)
            seeds = sorted(set(lo) & set(hi))
            if not seeds:
                cells.append(DASH)
                continue
            diffs = [hi[s] - lo[s] for s in seeds]
            equal = sum(abs(d) < 1e-9 for d in diffs)
            same.setdefault(method, {})[task] = (equal, len(seeds))
            cells.append(f"{statistics.mean(diffs):+.2f} ({equal}/{len(seeds)} equal)")
        rows.append([METHOD_LABEL[method], *cells])
    header = ["Method", *[f"{TASK_LABEL[t]}: r̄{high_rank} − r̄{low_rank}" for t in tasks]]
    return _table(header, rows), same


def load_startup(path: str | Path) -> dict | None:
    """scripts/adapter_startup.py's measurement: task, budget, steps and each method's adapter effect at
    the last step; None when it has not been run."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    rows = data.get("rows") or []
    if not rows:
        return None
    meta = data.get("meta", {})
    return {
        "task": meta.get("task"),
        "budget": meta.get("budget"),
        "steps": max(r["points"][-1]["step"] for r in rows),
        "total_step": max((r.get("total_step") or 0 for r in rows), default=0) or None,
        "effect": {r["method"]: r["points"][-1]["effect"] for r in rows},
        "lr": {r["method"]: r.get("lr") for r in rows},
        "source": path.with_suffix(".md").as_posix(),
    }


def load_tuned_startups(folder: str | Path) -> dict[str, dict]:
    """task -> ``load_startup`` of its measurement at the selected LRs, for the tasks measured so far."""
    found = {task: load_startup(Path(folder) / TUNED_STARTUP.format(task=task)) for task in TASKS}
    return {task: startup for task, startup in found.items() if startup}


def tuned_startup_section(startups: dict[str, dict], selected: dict[tuple[str, str], float]) -> list[str]:
    """The inert-adapter diagnostic redone at the selected LRs: each method's adapter effect per task,
    and the methods still below ``INERT_EFFECT_SHARE`` of LoRA's."""
    out = ["### Does every adapter move the model at its selected LR?", ""]
    todo = [t for t in TASKS if t not in startups]
    if len(todo) == len(TASKS):
        return out + ["Not measured yet: `python scripts/adapter_startup.py --task <task> --selected-lrs "
                      "--tag _tuned_<task>` for each task."]  # fmt: skip
    rows, inert, stale = [], [], []
    for task in [t for t in TASKS if t in startups]:
        startup = startups[task]
        effect, lrs = startup["effect"], startup["lr"]
        cells = []
        for method in METHOD_ORDER:
            if method not in effect:
                cells.append(DASH)
                continue
            measured = lrs.get(method)
            cell = f"{_pct(effect[method])} ({fmt_lr(measured) if measured else '?'})"
            if not _at_selected_lr(startup, task, method, selected):
                stale.append(f"{METHOD_LABEL[method]} on {TASK_LABEL[task]}")
                cell += "‡"
            if method in _below_reference(effect):
                inert.append(f"{METHOD_LABEL[method]} on {TASK_LABEL[task]}")
            cells.append(cell)
        of = f" of {startup['total_step']}" if startup.get("total_step") else ""
        rows.append([TASK_LABEL[task], f"{startup['steps']}{of}", *cells])
    sources = ", ".join(f"`{startups[t]['source']}`" for t in TASKS if t in startups)
    out += [
        "How far each adapter has moved the encoder after the first steps of the run (seed 41, r̄ 8): "
        "‖h_on − h_off‖ / ‖h_off‖ of the last hidden state on 64 dev examples, at each method's selected "
        f"LR (in brackets). The fixed-lr study's measurement (lr 1e-3) is in its section below. From {sources}.",
        "",
        *_table(["Task", "steps", *[METHOD_LABEL[m] for m in METHOD_ORDER]], rows),
        "",
        f"Below {_pct(INERT_EFFECT_SHARE)} of LoRA's effect on the same task (an adapter that has barely "
        "moved the model): " + ("; ".join(inert) if inert else "none") + ".",
    ]
    if stale:
        out += ["", f"‡ measured at an LR that is not the one selected now ({'; '.join(stale)}): rerun it."]
    if todo:
        out += ["", "Not measured yet: " + ", ".join(TASK_LABEL[t] for t in todo) + "."]
    return out


def _below_reference(effect: dict[str, float]) -> set[str]:
    reference = effect.get(REFERENCE)
    if not reference:
        return set()
    return {m for m, e in effect.items() if m != REFERENCE and e < INERT_EFFECT_SHARE * reference}


def inert_methods(same: dict[str, dict[str, tuple[int, int]]], startups: list[dict] = ()) -> list[str]:
    """Methods whose adapter has barely moved the model: measured directly (adapter effect below
    ``INERT_EFFECT_SHARE`` of LoRA's on some task in ``startups``), or seen in the scores (every one of at
    least ``MIN_PAIRS`` seed pairs of some task scores exactly the same at both budgets)."""
    flagged = set().union(*(_below_reference(s.get("effect", {})) for s in startups))
    for method, per_task in same.items():
        if any(pairs >= MIN_PAIRS and equal == pairs for equal, pairs in per_task.values()):
            flagged.add(method)
    return [m for m in METHOD_ORDER if m in flagged]


def _at_selected_lr(startup: dict, task: str, method: str, selected: dict[tuple[str, str], float]) -> bool:
    measured, chosen = startup["lr"].get(method), selected.get((task, method))
    return measured is not None and chosen is not None and math.isclose(measured, chosen)


def at_selected_lrs(startups: dict[str, dict], selected: dict[tuple[str, str], float]) -> list[dict]:
    """The tuned measurements, each keeping only the methods measured at the LR now selected for them:
    an effect measured at another LR says nothing about the runs being compared."""
    current = []
    for task, startup in startups.items():
        effect = {m: e for m, e in startup["effect"].items() if _at_selected_lr(startup, task, m, selected)}
        if effect:
            current.append({**startup, "task": startup.get("task") or task, "effect": effect})
    return current


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def _effects(effect: dict[str, float], methods: list[str]) -> str:
    return ", ".join(f"{_pct(effect[m])} ({METHOD_LABEL[m]})" for m in methods)


def inert_caveat(methods: list[str], same: dict, startups: list[dict] = ()) -> list[str]:
    if not methods:
        return []
    names = " and ".join(METHOD_LABEL[m] for m in methods)
    parts = [
        f"0. **Caveat: {names} barely move{'s' if len(methods) == 1 else ''} the model under this protocol.**"
    ]
    for startup in startups:
        effect = startup.get("effect", {})
        # quote a measurement where it shows a flagged method inert, with every flagged method's number
        if not (_below_reference(effect) & set(methods)) or not all(m in effect for m in methods):
            continue
        others = [m for m in METHOD_ORDER if m in effect and m not in methods]
        parts.append(
            f"Measured on {TASK_LABEL.get(startup['task'], startup['task'])} (budget {startup['budget']}, "
            f"{startup['steps']} steps; {startup['source']}), the adapter changes the encoder's last hidden "
            f"state by {_effects(effect, methods)}"
            + (f", against {_effects(effect, others)}." if others else ".")
        )
    for m in methods:
        tasks = [t for t, (equal, pairs) in same.get(m, {}).items() if equal == pairs]
        if tasks:
            parts.append(
                f"{METHOD_LABEL[m]} scores exactly the same at both budgets on every seed pair of "
                + ", ".join(f"{TASK_LABEL[t]} ({same[m][t][1]})" for t in tasks)
                + '; see "Does the budget matter?" below.'
            )
    parts.append(
        "Their scores are then mostly those of the trained classifier head: comparisons against them test "
        "how well the protocol (lr, epochs) suits their initialisation, not their rank allocation."
    )
    return [" ".join(parts)]


def budget_table(main: pd.DataFrame) -> list[str]:
    rows = []
    for budget, avg_rank in _budgets(main):
        for method in _methods(main):
            runs = main[(main["method"] == method) & (main["budget"] == budget)]
            ranks = sorted({int(x) for x in runs["total_rank"].dropna()})
            target = sorted({int(x) for x in runs["target_total_rank"].dropna()})
            eff = runs["effective_adapter"].dropna()
            train = runs["trainable_adapter"].dropna()
            rows.append(
                [
                    METHOD_LABEL[method],
                    str(avg_rank),
                    "–".join(str(r) for r in (ranks[:1] + ranks[-1:] if len(ranks) > 1 else ranks)) or DASH,
                    ", ".join(str(t) for t in target) or DASH,
                    f"{eff.mean() / 1e3:.1f}K" if len(eff) else DASH,
                    f"{train.mean() / 1e3:.1f}K" if len(train) else DASH,
                    str(len(runs)),
                ]
            )
    header = [
        "Method", "r̄", "final total rank (min–max)", "target R*", "effective adapter params",
        "trainable adapter params", "runs",
    ]  # fmt: skip
    return _table(header, rows)


TIME_COLUMNS = {"wall_time_s": "wall", "cpu_time_s": "CPU"}


def per_step_seconds(main: pd.DataFrame, column: str) -> dict[str, dict[tuple[str, str], float]]:
    """Mean seconds per optimizer step (whole run / T) per method and (task, budget) cell, from the
    runs that have `column`; records written before CPU time was recorded lack it."""
    main = main.dropna(subset=[column]).assign(per_step=lambda f: f[column] / f["total_steps"])
    cells = main.groupby(["method", "task", "budget"])["per_step"].mean()
    out: dict[str, dict[tuple[str, str], float]] = {}
    for (method, task, budget), value in cells.items():
        out.setdefault(method, {})[(task, budget)] = value
    return out


def relative_to_reference(per_step: dict[str, dict[tuple[str, str], float]]) -> dict[str, float]:
    """Each method's per-step time over LoRA's in the same task and budget, averaged over the cells
    both have."""
    lora = per_step.get(REFERENCE, {})
    relative = {}
    for method, cells in per_step.items():
        ratios = [v / lora[c] for c, v in cells.items() if c in lora]
        relative[method] = statistics.mean(ratios) if ratios else float("nan")
    return {m: relative[m] for m in METHOD_ORDER if m in relative}


def time_table(main: pd.DataFrame) -> tuple[list[str], dict[str, float], str]:
    """Seconds per step, wall and CPU, per method, budget and task; and the ratios to LoRA that claim 3
    reads: CPU time where every method has it in some cell (one torch thread per run, so other jobs on
    the machine inflate it far less than wall time), wall time otherwise."""
    tasks = _tasks(main)
    steps = {column: per_step_seconds(main, column) for column in TIME_COLUMNS}
    rows = []
    for budget, avg_rank in _budgets(main):
        for method in _methods(main):
            runs = main[(main["method"] == method) & (main["budget"] == budget)]
            cells = []
            for task in tasks:
                for column in TIME_COLUMNS:
                    value = steps[column].get(method, {}).get((task, budget), float("nan"))
                    cells.append(DASH if math.isnan(value) else f"{value:.2f}")
            rows.append(
                [METHOD_LABEL[method], str(avg_rank), *cells, f"{runs['wall_time_s'].sum() / 3600:.2f}"]
            )
    header = ["Method", "r̄"]
    header += [f"{TASK_LABEL[t]} {label} s/step" for t in tasks for label in TIME_COLUMNS.values()]
    header += ["total wall h"]
    cpu = relative_to_reference(steps["cpu_time_s"])
    if sum(not math.isnan(r) for r in cpu.values()) == len(_methods(main)):
        return _table(header, rows), cpu, "CPU"
    return _table(header, rows), relative_to_reference(steps["wall_time_s"]), "wall"


def ablation_table(frame: pd.DataFrame) -> tuple[list[str], list[dict]]:
    tri = frame[frame["method"] == SUBJECT]
    ablated = tri[tri["variant"] != DEFAULT]
    rows, found = [], []
    for (task, budget), group in ablated.groupby(["task", "budget"], sort=True):
        base = by_seed(tri, task=task, budget=budget, variant=DEFAULT)
        rows.append(
            [
                TASK_LABEL[task],
                budget,
                "linear, identity, increment (default)",
                fmt_cell(list(base.values())),
                DASH,
            ]
        )
        for variant in sorted(set(group["variant"])):
            values = by_seed(group, variant=variant)
            diff = paired_difference(values, base)
            found.append({"task": task, "budget": budget, "variant": variant, "diff": diff})
            rows.append([TASK_LABEL[task], budget, variant, fmt_cell(list(values.values())), fmt_diff(diff)])
    header = ["Task", "budget", "TriAdaptLoRA options", "score", "− default: mean [95% t-interval]"]
    return _table(header, rows), found


def schedule_evidence(ablations: list[dict]) -> str | None:
    """What the schedule ablations say about claim 4 (linear is best), None without any."""
    schedules = [a for a in ablations if a["variant"].startswith("schedule=")]
    if not schedules:
        return None
    better = [a for a in schedules if verdict(a["diff"]) == "better"]
    count = {k: sum(verdict(a["diff"]) == k for a in schedules) for k in ("worse", "unresolved", "n/a")}
    return (
        f"{_count(len(schedules), 'paired comparison')} of another "
        f"schedule against linear: {len(better)} significantly better than linear, "
        f"{count['worse']} significantly worse, {count['unresolved']} unresolved"
        + (f", {count['n/a']} with fewer than {MIN_PAIRS} seeds so far" if count["n/a"] else "")
        + ". "
        + (
            f"**Does not hold**: {', '.join(a['variant'] + ' on ' + TASK_LABEL[a['task']] for a in better)} "
            "beat linear."
            if better
            else "**Not testable yet.**"
            if count["n/a"] == len(schedules)
            else "**Consistent with the claim**: no other schedule beat linear significantly."
        )
    )


def claims(
    main, pairs_vs_lora, stds, relative, ablations, clock="wall", same=None, startups=(), pooled=None
) -> list[str]:
    """The paper's claims, each with what these runs say (computed, not typed in). ``startups``:
    scripts/adapter_startup.py's measurements of the LRs these runs used, for the inert-adapter caveat;
    ``pooled``: claim number -> the pooled verdict's sentence, appended to that claim."""
    same = same or {}
    lines = inert_caveat(inert_methods(same, startups), same, startups)
    lines += [best_claim(main, pairs_vs_lora), stability_claim(main, stds)]
    if relative:
        lines.append(overhead_claim(relative, clock))
    if evidence := schedule_evidence(ablations):
        lines.append(f"4. **The linear schedule is best.** {evidence}")
    for number, sentence in (pooled or {}).items():
        lines = [
            f"{line} {sentence}" if sentence and line.startswith(f"{number}. ") else line for line in lines
        ]
    return lines


def best_claim(main: pd.DataFrame, pairs_vs_lora: list[dict]) -> str:
    """Claim 1, cell by cell: where TriAdaptLoRA has the highest mean; its paired verdicts against LoRA."""
    methods = _methods(main)
    cells = [(t, b) for b, _ in _budgets(main) for t in _tasks(main)]
    best_in, contested = 0, 0  # a cell counts once every method has a run in it
    for task, budget in cells:
        means = {
            m: statistics.mean(v)
            for m in methods
            if (v := list(by_seed(main, task=task, method=m, budget=budget).values()))
        }
        if len(means) == len(methods):
            contested += 1
            best_in += max(means, key=means.get) == SUBJECT
    tri = [p for p in pairs_vs_lora if p["method"] == SUBJECT]
    counts = {k: sum(verdict(p["diff"]) == k for p in tri) for k in ("better", "worse", "unresolved")}
    return (
        f"1. **TriAdaptLoRA beats LoRA, AdaLoRA and IncreLoRA.** It has the highest mean in {best_in} of "
        + (
            f"{len(cells)} task × budget cells"
            if contested == len(cells)
            else f"the {_count(contested, 'task × budget cell')} with runs of every method ({len(cells)} in all)"
        )
        + ". Against LoRA, paired over seeds, its 95% t-interval lies above "
        f"zero in {_count(counts['better'], 'cell')}, below zero in {counts['worse']}, and contains zero in "
        f"{counts['unresolved']}. "
        + (
            "**Not testable yet**: no cell has three seeds of both methods."
            if not any(p["diff"] for p in tri)
            else "**Holds at this scale.**"
            if counts["better"] > len(tri) / 2 and counts["worse"] == 0
            else "**Not supported at this scale**: the differences are mostly within seed noise."
            if counts["worse"] == 0
            else "**Contradicted in some cells** (see the paired table)."
        )
    )


def stability_claim(main: pd.DataFrame, stds: list[dict[str, float]]) -> str:
    """Claim 2, cell by cell: each method's mean seed std over the cells where every method has one."""
    methods = _methods(main)
    # Means over the same cells only: a method missing a noisy cell would otherwise look stable.
    common = [cell for cell in stds if len(cell) == len(methods)]
    if SUBJECT not in methods or len(methods) < 2 or not common:
        return (
            "2. **Better stability (smaller spread over seeds).** **Not testable yet**: no cell has three "
            "seeds of every method."
        )
    mean_std_of = {m: statistics.mean(cell[m] for cell in common) for m in methods}
    order = sorted(mean_std_of, key=mean_std_of.get)
    least_in = sum(min(cell, key=cell.get) == SUBJECT for cell in common)
    where = (
        ""
        if len(common) == len(stds)
        else f" (over the {_count(len(common), 'cell')} where every method has three seeds)"
    )
    return (
        f"2. **Better stability (smaller spread over seeds).** Mean seed std per method{where}: "
        + ", ".join(f"{METHOD_LABEL[m]} {mean_std_of[m]:.2f}" for m in order)
        + f"; TriAdaptLoRA spreads least in {least_in} of {_count(len(common), 'cell')}"
        + (
            ". **Holds**: TriAdaptLoRA has the smallest mean spread."
            if order[0] == SUBJECT
            else f". **Does not hold**: {METHOD_LABEL[order[0]]} spreads least."
        )
    )


def overhead_claim(relative: dict[str, float], clock: str) -> str:
    """Claim 3: time per step relative to LoRA; only a gap beyond ``TIME_MARGIN`` counts (whole runs on
    a machine other jobs share)."""
    adaptive = {m: r for m, r in relative.items() if m in BASELINES and not math.isnan(r)}
    tri_rel = relative.get(SUBJECT, float("nan"))
    margin = TIME_MARGIN
    if not adaptive or math.isnan(tri_rel):
        verdict_text = "**Not testable yet.**"
    elif all(tri_rel < r - margin for r in adaptive.values()):
        verdict_text = "**Holds**."
    elif any(tri_rel > r + margin for r in adaptive.values()):
        verdict_text = "**Does not hold** here."
    else:
        verdict_text = f"**Not resolved**: the gaps are within the ±{margin:.2f} that machine load explains."
    return (
        f"3. **Less overhead than the other adaptive methods.** {clock[0].upper() + clock[1:]} time per step "
        "relative to LoRA: "
        + ", ".join(f"{METHOD_LABEL[m]} {r:.2f}×" for m, r in relative.items() if not math.isnan(r))
        + f". {verdict_text} (Whole runs, evaluation included, on a 2-core machine shared with other "
        "jobs; the controlled per-step measurement is results/bench/overhead_cpu_*.md. LoRA and "
        "AdaLoRA are peft's layers; IncreLoRA and TriAdaptLoRA are this project's, which add their "
        "branch to the frozen output with one addmm, so they can measure below LoRA.)"
    )


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


# -- the write-up ----------------------------------------------------------------------------------
def provenance(frame: pd.DataFrame) -> str:
    """Which commits the runs behind the tables ran at, and how many had uncommitted changes: a record's
    git SHA is only evidence of its code when the checkout was clean."""
    counts = frame.groupby("git_sha", sort=False).size().sort_values(ascending=False)
    commits = ", ".join(f"{sha[:8] or 'unknown'} ({n})" for sha, n in counts.items())
    dirty = int(frame["git_dirty"].sum())
    line = f"The {len(frame)} runs in these tables ran at commit{'s' if len(counts) > 1 else ''} {commits}; "
    if not dirty:
        return line + "none says `dirty: true` (uncommitted changes in its checkout)."
    return line + (
        f"{dirty} say `dirty: true`: their checkout had uncommitted changes when they ran (the `git` "
        "field of each record in results/runs/)."
    )


def tuned_frame(records: list[dict], selected: dict[tuple[str, str], float]) -> pd.DataFrame:
    """The tuned protocol's runs: main grid and controls at each cell's selected LR, seed 41 left out."""
    return study_frame(records, keep=lambda r: lr_selection.is_tuned_run(r, selected))


def control_table(main: pd.DataFrame, controls: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """Each growing method − its own ``score: random`` control at r̄ 8, paired by seed."""
    rows, found = [], []
    for task in lr_selection.CONTROL_TASKS:
        for method in lr_selection.CONTROLLED:
            mine = by_seed(main, task=task, method=method, budget=lr_selection.BUDGET)
            random_ = by_seed(controls, task=task, method=method, budget=lr_selection.BUDGET)
            if not mine and not random_:
                continue
            diff = paired_difference(mine, random_)
            found.append({"task": task, "method": method, "diff": diff})
            rows.append(
                [TASK_LABEL[task], METHOD_LABEL[method], fmt_cell(list(mine.values())),
                 fmt_cell(list(random_.values())), fmt_pairs(diff, mine, random_), verdict(diff),
                 repro_pooled.fmt_mde(repro_pooled.cell_mde(mine, random_))]
            )  # fmt: skip
    header = [
        "Task",
        "Method",
        "importance score",
        "random",
        "score − random: mean [95% t-interval]",
        "verdict",
        "MDE",
    ]
    return _table(header, rows), found


def control_claim(found: list[dict], pooled: str = "") -> str:
    counts = {
        k: sum(verdict(f["diff"]) == k for f in found) for k in ("better", "worse", "unresolved", "n/a")
    }
    # a task planned with fewer seeds than an interval needs stays without one when it is complete
    by_design = [f for f in found if f["diff"] is None and TUNED_PLANNED[f["task"]] < MIN_PAIRS]
    so_far = counts["n/a"] - len(by_design)
    design_tasks = " and ".join(dict.fromkeys(TASK_LABEL[f["task"]] for f in by_design))
    text = (
        f"5. **The importance score allocates better than chance** (the control this study adds). Each "
        f"growing method against its own random-allocation control at r̄ 8, paired by seed: "
        f"{counts['better']} better, {counts['worse']} worse, {counts['unresolved']} unresolved"
        + (f", {so_far} with fewer than {MIN_PAIRS} paired seeds so far" if so_far else "")
        + (
            f", {len(by_design)} on {design_tasks}, planned with fewer than {MIN_PAIRS} seeds: too few "
            "for an interval (their paired means are in the control table)"
            if by_design
            else ""
        )
        + ". "
    )
    if not found or counts["n/a"] == len(found):
        text += "**Not testable yet.**"
    elif counts["better"] > (len(found) - counts["n/a"]) / 2 and counts["worse"] == 0:
        text += "**Holds at this scale.**"
    elif counts["worse"]:
        text += "**Contradicted in some cells**: random allocation scored higher."
    else:
        text += "**Not supported at this scale**: the score is indistinguishable from random allocation."
    return text + (" " + pooled if pooled else "")


def _seed_text() -> str:
    """The tuned seeds per task, in words (``seeds 42–45 on every task``)."""
    by_seeds: dict[str, list[str]] = {}
    for task, seeds in lr_selection.TUNED_SEEDS.items():
        first, *_, last = seeds.split(",")
        by_seeds.setdefault(f"{first}–{last}", []).append(TASK_LABEL[task])
    if len(by_seeds) == 1:
        return f"seeds {next(iter(by_seeds))} on every task"
    return ", ".join(f"seeds {seeds} on {' and '.join(tasks)}" for seeds, tasks in by_seeds.items())


def _pairs(a: pd.DataFrame, b: pd.DataFrame, tasks, a_where: dict, b_where: dict) -> repro_pooled.Pairs:
    return {t: (by_seed(a, task=t, **a_where), by_seed(b, task=t, **b_where)) for t in tasks}


def subject_comparisons(main: pd.DataFrame) -> list[tuple[str, str, repro_pooled.Pairs]]:
    """Claim 1: TriAdaptLoRA − each other method, per budget, paired by seed."""
    return [
        (
            f"TriAdaptLoRA − {METHOD_LABEL[other]}",
            str(avg_rank),
            _pairs(
                main, main, _tasks(main), {"method": SUBJECT, "budget": b}, {"method": other, "budget": b}
            ),
        )
        for b, avg_rank in _budgets(main)
        for other in _methods(main)
        if other != SUBJECT
    ]


def stability_comparisons(main: pd.DataFrame) -> list[tuple[str, str, repro_pooled.Pairs]]:
    """Claim 2: per task, TriAdaptLoRA's seed std minus the other method's over their common seeds (at
    least two). A spread belongs to a set of seeds, not to one, so each task gives one difference."""
    out = []
    for budget, avg_rank in _budgets(main):
        for other in (m for m in _methods(main) if m != SUBJECT):
            pairs = {}
            for task, (mine, theirs) in _pairs(
                main,
                main,
                _tasks(main),
                {"method": SUBJECT, "budget": budget},
                {"method": other, "budget": budget},
            ).items():
                seeds = sorted(set(mine) & set(theirs))
                if len(seeds) >= 2:
                    sd = [statistics.stdev(x[s] for s in seeds) for x in (mine, theirs)]
                    pairs[task] = ({0: sd[0]}, {0: sd[1]})
            out.append((f"TriAdaptLoRA − {METHOD_LABEL[other]} (seed std)", str(avg_rank), pairs))
    return out


def control_comparisons(
    main: pd.DataFrame, controls: pd.DataFrame
) -> list[tuple[str, str, repro_pooled.Pairs]]:
    """Claim 5: each growing method's importance score − its random control at r̄ 8, paired by seed."""
    where = {"budget": lr_selection.BUDGET}
    return [
        (
            f"{METHOD_LABEL[m]} score − random",
            str(controls["avg_rank"].iloc[0]) if len(controls) else "8",
            _pairs(
                main, controls, lr_selection.CONTROL_TASKS, {"method": m, **where}, {"method": m, **where}
            ),
        )
        for m in lr_selection.CONTROLLED
    ]


def schedule_comparisons(
    main: pd.DataFrame, schedules: pd.DataFrame
) -> list[tuple[str, str, repro_pooled.Pairs]]:
    """Claim 4: each other schedule − linear, TriAdaptLoRA at r̄ 8, paired by seed."""
    linear = {"method": SUBJECT, "budget": lr_selection.BUDGET}
    variants = sorted(set(schedules["variant"])) if len(schedules) else []
    return [
        (f"{v} − linear", "8", _pairs(schedules, main, lr_selection.SCHEDULE_TASKS, {"variant": v}, linear))
        for v in variants
    ]


def schedule_table(main: pd.DataFrame, schedules: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """Per task and schedule: score, linear's, the paired difference, verdict and MDE."""
    rows, found = [], []
    for label, _, pairs in schedule_comparisons(main, schedules):
        variant = label.removesuffix(" − linear")
        for task, (other, linear) in pairs.items():
            if not other:
                continue
            diff = paired_difference(other, linear)
            found.append({"task": task, "variant": variant, "diff": diff})
            rows.append(
                [TASK_LABEL[task], variant, fmt_cell(list(other.values())), fmt_cell(list(linear.values())),
                 fmt_pairs(diff, other, linear), verdict(diff),
                 repro_pooled.fmt_mde(repro_pooled.cell_mde(other, linear))]
            )  # fmt: skip
    header = ["Task", "schedule", "score", "linear", "− linear: mean [95% t-interval]", "verdict", "MDE"]
    return _table(header, rows), found


def pooled_table(comparisons, rte: bool = True, **words) -> tuple[list[str], list[dict]]:
    rows, found = repro_pooled.pooled_rows(comparisons, rte, **words)
    return _table(repro_pooled.HEADER, rows), found


STABILITY_WORDS = {"higher": "spreads more", "lower": "spreads less"}
SCHEDULE_WORDS = {"higher": "beats linear", "lower": "below linear"}
CONTROL_WORDS = {"higher": "better than random", "lower": "worse than random"}


def schedule_claim(
    main: pd.DataFrame, schedules: pd.DataFrame, found: list[dict], pooled: list[dict], fixed_lr: list[dict]
) -> str:
    """Claim 4 under the tuned protocol, then what the fixed-lr study's ablation says."""
    planned = sum(
        len(lr_selection.SCHEDULE_VARIANTS) * len(lr_selection.TUNED_SEEDS[t].split(","))
        for t in lr_selection.SCHEDULE_TASKS
    )
    return (
        "4. **The linear schedule is best.** TriAdaptLoRA's exponential and fixed schedules at its selected "
        "LR, r̄ 8, each paired by seed with its linear main-grid run "
        f"({_count(len(schedules), 'run')} of {planned} planned so far; on a task whose selected LR is "
        "1e-3 they are the fixed-lr study's ablation runs): "
        + (schedule_evidence(found) or "none has finished yet.")
        + "".join(" " + s for s in [repro_pooled.claim_sentence(pooled, **SCHEDULE_WORDS)] if s)
        + repro_pooled.floor_note(pooled)
        + " The fixed-lr study's ablation (every method at lr 1e-3, below): "
        + (schedule_evidence(list(fixed_lr)) or "no schedule ablation has finished yet.")
    )


def _tuned_intro(selected: dict[tuple[str, str], float]) -> list[str]:
    lr_rows = [
        [TASK_LABEL[t], *[
            (fmt_lr(selected[(t, m)]) + ("†" if lr_selection.reuses_fixed_lr(m, selected[(t, m)]) else ""))
            if (t, m) in selected else "open"
            for m in METHOD_ORDER
        ]]
        for t in TASKS
    ]  # fmt: skip
    return [
        "## Tuned protocol: every method at its own selected learning rate",
        "",
        "The fixed-lr study below gave every method lr 1e-3, under which two of them barely trained. Here "
        "each method × task runs at the LR the selection rule picked at seed 41 (stage 1, next section); "
        f"{_seed_text()}, both budgets; seed 41 is never in a mean. "
        "Study `cpu-repro-tuned`; † marks cells whose selected LR is 1e-3, whose runs are the fixed-lr "
        "study's records (same configuration). The control is TriAdaptLoRA and IncreLoRA with "
        "`score: random` (spec §5.5): the same schedule and K, modules drawn at random.",
        "",
        *_table(["Task", *[f"{METHOD_LABEL[m]} LR" for m in METHOD_ORDER]], lr_rows),
        "",
    ]


def tuned_section(
    records: list[dict], startups: dict[str, dict] | None = None, fixed_lr_ablations: list[dict] = ()
) -> list[str]:
    """The tuned protocol: every method at its selected LR, the control, the schedules, the claims with
    their pooled verdicts. Claim 4 also quotes the fixed-lr study's schedule ablation
    (``fixed_lr_ablations``)."""
    selected = lr_selection.selected_lrs(records)
    if not selected:
        return []
    frame = tuned_frame(records, selected)
    out = _tuned_intro(selected)
    if frame.empty:
        return out + [
            "No tuned runs have finished yet: `python scripts/cpu_repro.py --chunk tuned-rte ...`.",
            "",
        ]
    main = frame[frame["variant"] == DEFAULT]
    controls = frame[frame["variant"] == "score=random"]
    schedules = study_frame(records, keep=lambda r: lr_selection.is_schedule_run(r, selected))
    missing = coverage(main, TUNED_PLANNED)
    if missing:
        out += ["**Incomplete** — seeds finished per method where fewer than planned:", ""]
        out += [f"- {m}" for m in missing] + [""]
    if (left := tuned_remaining(main, controls, records, schedules)) is not None:
        out += [left, ""]
    return out + _tuned_body(
        main, controls, schedules, frame, startups or {}, selected, fixed_lr_ablations, missing
    )


def _tuned_body(
    main, controls, schedules, frame, startups, selected, fixed_lr_ablations, missing
) -> list[str]:
    t = _tuned_tables(main, controls, schedules)
    return _tuned_claims(
        t, main, schedules, startups, selected, fixed_lr_ablations, missing
    ) + _tuned_results(t, main, schedules, frame, startups, selected)


def _tuned_tables(main: pd.DataFrame, controls: pd.DataFrame, schedules: pd.DataFrame) -> dict:
    """Every table of the tuned section, and what each found, by name."""
    t = {}
    t["paired"], t["pairs"] = paired_table(main, REFERENCE)
    t["spread"], t["stds"] = spread_table(main)
    t["times"], t["relative"], t["clock"] = time_table(main)
    t["response"], t["same"] = budget_response_table(main)
    t["control"], t["found"] = control_table(main, controls)
    t["subject_pool"], t["subject_found"] = pooled_table(subject_comparisons(main))
    t["stability_pool"], t["stability_found"] = pooled_table(stability_comparisons(main), **STABILITY_WORDS)
    t["control_pool"], t["control_found"] = pooled_table(control_comparisons(main, controls), **CONTROL_WORDS)
    t["schedule_cells"], t["schedule_found"] = schedule_table(main, schedules)
    t["schedule_pool"], t["schedule_pooled"] = pooled_table(
        schedule_comparisons(main, schedules), rte=False, **SCHEDULE_WORDS
    )
    return t


def _tuned_claims(t: dict, main, schedules, startups, selected, fixed_lr_ablations, missing) -> list[str]:
    pooled = {
        1: repro_pooled.claim_sentence(t["subject_found"]) + repro_pooled.floor_note(t["subject_found"]),
        2: repro_pooled.claim_sentence(t["stability_found"], **STABILITY_WORDS)
        + " One difference per task: a spread belongs to a set of seeds, not to one, so the pairs are tasks."
        + repro_pooled.floor_note(t["stability_found"]),
    }
    control = repro_pooled.claim_sentence(t["control_found"], **CONTROL_WORDS)
    return [
        "### Claims of the paper under the tuned protocol",
        "",
        *(
            ["Computed from the runs finished so far: provisional until the grid above is complete.", ""]
            if missing
            else []
        ),
        repro_pooled.method_text(),
        "",
        *claims(
            main,
            t["pairs"],
            t["stds"],
            t["relative"],
            [],
            t["clock"],
            t["same"],
            at_selected_lrs(startups, selected),
            pooled,
        ),  # fmt: skip
        schedule_claim(main, schedules, t["schedule_found"], t["schedule_pooled"], fixed_lr_ablations),
        control_claim(t["found"], control + repro_pooled.floor_note(t["control_found"])),
        "",
    ]


def _tuned_results(t: dict, main, schedules, frame, startups, selected) -> list[str]:
    out = [
        "### Results (mean ± std over seeds, n)",
        "",
        *results_table(main),
        "",
        *(line for sentence in near_floor(main) + collapsed_runs(main) for line in (sentence, "")),
        provenance(frame),
        "",
        "### Paired comparison against LoRA",
        "",
        "MDE: the paired t-test's minimal detectable effect in the cell (80% power, α = 0.05), from two "
        "seeds on.",
        "",
        *t["paired"],
        "",
        "Pooled over tasks: TriAdaptLoRA against each method (claim 1).",
        "",
        *t["subject_pool"],
        "",
        "### Spread over seeds (sample std; cells with three seeds or more)",
        "",
        *t["spread"],
        "",
        "Pooled over tasks: TriAdaptLoRA's seed std minus the other method's, one difference per task over "
        "their common seeds (two or more; claim 2).",
        "",
        *t["stability_pool"],
        "",
        "### Allocation control: importance score against random allocation (r̄ 8)",
        "",
        *t["control"],
        "",
        "Pooled over tasks (claim 5).",
        "",
        *t["control_pool"],
        "",
        "### Schedules: TriAdaptLoRA's other schedules against linear (r̄ 8, claim 4)",
        "",
        "RTE is not in this plan: no method there is far from a constant predictor.",
        "",
        *(
            t["schedule_cells"] + ["", *t["schedule_pool"]]
            if len(schedules)
            else ["No schedule run has finished yet."]
        ),
        "",
        *tuned_startup_section(startups, selected),
        "",
    ]
    if t["response"]:
        out += ["### Does the budget matter?", "", *t["response"], ""]
    out += ["### Time per step", "", *t["times"], ""]
    return out


def lr_selection_section(records: list[dict]) -> list[str]:
    """The tuned protocol's first stage (issue #20): the grid, and what is left while it is under way."""
    selections = lr_selection.grid_points(records)
    if not any(
        sel.sources.get(lr) == lr_selection.LR_STUDY for sel in selections.values() for lr in sel.scores
    ):
        return []
    methods = list(METHOD_ORDER)
    open_cells = [sel for (task, _), sel in selections.items() if task in TASKS and not sel.complete]
    to_run = sum(len(sel.missing) for sel in open_cells) + sum(
        len(lr_selection.GRID) for t in TASKS for m in methods if (t, m) not in selections
    )
    return [
        f"## Tuned protocol, stage 1: learning-rate selection{' (under way)' if to_run else ''}",
        "",
        "One rule for every method × task (README, *The tuned protocol*): r̄ 8, seed 41, lr ∈ {1e-3, 3e-3, "
        "1e-2}; a best LR at an edge adds the next point beyond it (3e-4 or 3e-2); the best dev score "
        "selects, the smaller LR on a tie. † marks a reused record (the fixed-lr study at 1e-3, the earlier "
        "RTE check at 1e-2, both the same configuration); bold is the selected LR. A cell's main-grid runs "
        "and controls start once its LR is selected (`tuned-<task>` chunks). "
        + (f"Points still to run: {to_run}." if to_run else "Every cell is selected."),
        "",
        *lr_selection.selection_table(selections, TASKS, methods),
        "",
    ]


def render(
    records: list[dict],
    figure_names: list[str],
    startup: dict | None = None,
    tuned_startups: dict[str, dict] | None = None,
) -> str:
    frame = study_frame(records)
    if frame.empty:
        return "# CPU mini-reproduction\n\nNo finished runs of the `cpu-repro` study yet: run `make cpu-repro`.\n"
    ablation, ablations = ablation_table(frame)
    head = [
        "# CPU mini-reproduction: LoRA, AdaLoRA, IncreLoRA and TriAdaptLoRA on real GLUE",
        "",
        "Generated by `make results` (src/reporting/derived.py → src/reporting/cpu_repro.py; `make cpu-repro` "
        "first runs what is missing) from the run records in `results/runs/`; do not edit by hand. Scores "
        "×100. Pretrained MiniLM-L6 with all six linear maps of each layer adapted, on 2 CPU cores "
        "(configs/sweep/cpu_repro.yaml).",
        "",
        *tuned_section(records, tuned_startups, ablations),
        *lr_selection_section(records),
    ]
    return "\n".join(head + fixed_lr_section(frame, ablation, ablations, figure_names, startup))


def fixed_lr_section(
    frame: pd.DataFrame,
    ablation: list[str],
    ablations: list[dict],
    figure_names: list[str],
    startup: dict | None,
) -> list[str]:
    """The fixed-lr study (every method at lr 1e-3): status, claims, tables and figures, its headings one
    level below its own."""
    main = frame[frame["variant"] == DEFAULT]
    paired, pairs = paired_table(main, REFERENCE)
    spread, stds = spread_table(main)
    times, relative, clock = time_table(main)
    response, same = budget_response_table(main)
    out = fixed_lr_status(frame, main)
    out += [
        "## Claims of the paper, checked at this scale",
        "",
        *claims(main, pairs, stds, relative, ablations, clock, same, [startup] if startup else []),
        "",
    ]
    out += fixed_lr_tables(main, paired, spread, response, times, ablation, figure_names)
    return [out[0], *("#" + line if line.startswith("## ") else line for line in out[1:])]


def fixed_lr_status(frame: pd.DataFrame, main: pd.DataFrame) -> list[str]:
    """The fixed-lr study's protocol, its runs, and what is still to run."""
    missing = coverage(main)
    threads = sorted({int(t) for t in frame["threads"].dropna()})
    out = [
        "## Fixed-lr study (secondary): lr 1e-3 for every method",
        "",
        "Records with `study: cpu-repro`. Protocol: configs/sweep/cpu_repro.yaml "
        "(pretrained MiniLM-L6, all six linear maps of each layer adapted, batch 32, lr 1e-3, identical for "
        "every method; best of four evaluations per epoch on the full dev set). Scores ×100.",
        "",
        f"Runs: {len(main)} main-grid runs and {len(frame) - len(main)} ablation runs; total wall time "
        f"{frame['wall_time_s'].sum() / 3600:.1f} h on a 2-core CPU"
        + (f" (torch threads per run: {', '.join(map(str, threads))})" if threads else "")
        + ".",
        "",
    ]
    if missing:
        out += ["**Incomplete grid** — seeds finished per method where fewer than planned:", ""]
        out += [f"- {m}" for m in missing] + [""]
        left, hours = remaining_hours(main)
        out += [
            f"Still to run: {left} main-grid runs, about {hours:.1f} h of run wall time summed at each task's "
            "mean so far (about half that elapsed with two runs at a time, as `make cpu-repro JOBS=2` runs "
            "them).",
            "",
        ]
    if ablations_left := ablation_coverage(frame):
        out += [ablations_left, ""]
    return out


def fixed_lr_tables(main, paired, spread, response, times, ablation, figure_names) -> list[str]:
    out = ["## Results (mean ± std over seeds, n)", "", *results_table(main), ""]
    out += [line for sentence in near_floor(main) + collapsed_runs(main) for line in (sentence, "")]
    out += [
        "## Paired comparison against LoRA",
        "",
        "Difference of the best dev score, method − LoRA, over the seeds both finished: mean, 95% t-interval, "
        "percentile bootstrap interval (10,000 resamples) and the seeds on which the method scored higher. "
        "With 3–5 seeds the intervals are wide; `unresolved` means the interval contains zero.",
        "",
        *paired,
        "",
    ]
    out += ["## Spread over seeds (sample std)", "", *spread, ""]
    out += ["## Budgets reached", "", *budget_table(main), ""]
    if response:
        out += [
            "## Does the budget matter?",
            "",
            "Best dev score at the larger average rank minus the smaller, paired by seed (mean), and the seed "
            "pairs whose two scores are exactly equal. A method whose adapter has not moved the model scores "
            "the same at every budget.",
            "",
            *response,
            "",
        ]
    out += [
        "## Training loss at the end",
        "",
        "Mean of the task losses logged in the last 10% of steps (the logged orthogonal regulariser "
        "taken out), mean over seeds.",
        "",
        *train_loss_table(main),
        "",
    ]
    out += ["## Time per step", "", *times, ""]
    if len(ablation) > 2:
        out += ["## TriAdaptLoRA options (one changed at a time)", "", *ablation, ""]
    if figure_names:
        out += ["## Figures", ""] + [f"![{name}](figures/{name})" for name in figure_names] + [""]
    return out


def report_figures(records: list[dict]) -> dict[str, Figure]:
    """File stem (``<kind>[_<budget>]``) -> figure of the study's main grid, for ``figures/``."""
    frame = study_frame(records)
    chosen = set(frame[frame["variant"] == DEFAULT]["run_id"]) if not frame.empty else set()
    selected = [r for r in records if r["run_id"] in chosen]
    if not selected:
        return {}
    return {
        "_".join([kind, *([budget] if budget else [])]): fig
        for (kind, budget), fig in group_figures(selected).items()
    }


def write_report(
    runs_dir: str | Path,
    out_dir: str | Path,
    startup: str | Path = STARTUP,
) -> list[Path]:
    records = load_records(runs_dir)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figures = report_figures(records)
    paths = [path for stem, fig in figures.items() for path in save(fig, out / "figures" / stem)]
    readme = out / "README.md"
    text = render(
        records,
        [f"{stem}.png" for stem in figures],
        load_startup(startup),
        load_tuned_startups(Path(startup).parent),
    )
    atomic_write_text(readme, text)
    return [readme, *paths]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="results/runs")
    parser.add_argument("--out", default="results/cpu-repro")
    parser.add_argument("--startup", default=STARTUP, help="scripts/adapter_startup.py's output")
    args = parser.parse_args(argv)
    for path in write_report(args.runs, args.out, args.startup):
        print(path)


if __name__ == "__main__":
    main()

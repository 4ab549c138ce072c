"""The write-up's tables, each a pure function of the study's frame: results, paired comparisons,
spread, budgets, time, ablations, controls, schedules and their pools over tasks."""

from __future__ import annotations

import math
import statistics

import pandas as pd

from src.reporting import lr_selection
from src.reporting.cpu_repro import pooled as repro_pooled
from src.reporting.cpu_repro.frame import (
    CONSTANT_FLOOR,
    DEFAULT,
    FLOOR_MARGIN,
    MIN_PAIRS,
    NO_INFORMATION,
    REFERENCE,
    SUBJECT,
    _budgets,
    _methods,
    _metric,
    _table,
    _tasks,
    by_seed,
    fmt_diff,
    fmt_pairs,
    paired_difference,
    verdict,
)
from src.reporting.tables import (
    DASH,
    METHOD_LABEL,
    METHOD_ORDER,
    TASK_LABEL,
    fmt_cell,
)


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
    runs that have `column` (a record that predates CPU time has none)."""
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

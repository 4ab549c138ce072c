"""The CPU study's run plan, and the tuned protocol's learning-rate selection rule.

The plan (tasks, seeds, ablation variants, controls, schedules) lives here alone: scripts/cpu_repro.py
queues it, src/reporting/cpu_repro/ checks the records against it, and the selection below reads it.

The rule, one for every method × task:

At r̄ 8 and seed 41, each method is run at lr ∈ {1e-3, 3e-3, 1e-2}; a best LR at an edge of that grid
adds the next point beyond it (3e-4 below, 3e-2 above), once; the LR with the best dev score is
selected, the smaller one on a tie. Pure functions of the run records:

- grid points come from ``study: cpu-repro-lr`` and, for the methods whose configuration did not
  change, from the fixed-lr study (``cpu-repro``, lr 1e-3) and the earlier RTE check
  (``cpu-repro-lr1e-2``); IncreLoRA's only from ``cpu-repro-lr`` (its defaults changed since);
- ``selection`` says, per task and method, the selected LR or what is still to run;
- ``tuned_sweeps`` names the runs of the main grid and of the random-allocation control at the
  selected LRs, and ``is_tuned_run`` picks their records (reused fixed-lr records included).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from src.reporting.tables import DEFAULT_AXES, fmt_lr

TASKS = ("rte", "mrpc", "stsb", "cola", "sst2")
LR_STUDY = "cpu-repro-lr"
SEED, BUDGET = 41, "r8"
GRID = (1e-3, 3e-3, 1e-2)
BEYOND = {1e-3: 3e-4, 1e-2: 3e-2}  # the edge extension: the next point past each end of GRID
# studies whose records are grid points, and for which methods (None: every method)
REUSED = ("lora", "adalora", "triadapt")
SOURCES = {LR_STUDY: None, "cpu-repro": REUSED, "cpu-repro-lr1e-2": REUSED}
# The main grid at the selected LRs: both budgets, the seeds after the selection seed (which is never
# in a mean). A method whose selected LR is the fixed-lr study's 1e-3 reuses that study's records.
TUNED_STUDY = "cpu-repro-tuned"
FIXED_STUDY, FIXED_LR = "cpu-repro", 1e-3
TUNED_SEEDS = {t: "42,43,44,45" for t in TASKS}
# The seeds the fixed-lr study ran: a reused cell runs only the tuned seeds that study lacks.
FIXED_SEEDS = {
    "rte": (41, 42, 43, 44, 45),
    "mrpc": (41, 42, 43, 44, 45),
    "stsb": (41, 42, 43),
    "cola": (41, 42, 43),
    "sst2": (41, 42, 43),
}
# The allocation control (§5.5 ``score: random``): the growing methods at r̄ 8 on these tasks, same
# schedule, seeds and selected LR, each compared with its own default run paired by seed.
CONTROL, CONTROL_TASKS, CONTROLLED = (
    "random",
    ("rte", "mrpc", "cola", "stsb", "sst2"),
    ("increlora", "triadapt"),
)
# Claim 4 under the tuned protocol: TriAdaptLoRA's other schedules at its selected LR, r̄ 8, each paired
# by seed with the linear main-grid run. RTE stays out: no method there is far from a constant
# predictor. The fixed schedule adds top_h = 15 modules per event, which fills r̄ 8 after as many
# events as the linear one. Where the selected LR is the fixed-lr study's 1e-3 and that study ran the
# ablation on the task, its records are reused.
SCHEDULE_TASKS = ("mrpc", "stsb", "cola", "sst2")
SCHEDULED = "triadapt"  # the method whose schedule claim 4 is about
SCHEDULE_VARIANTS = ("method.schedule=exponential", "method.schedule=fixed method.top_h=15")
# The fixed-lr study's TriAdaptLoRA options, compared one at a time against its defaults (linear /
# identity / increment) on these tasks at their fixed-lr seeds.
FIXED_ABLATION_TASKS = ("rte", "mrpc")
ABLATION_VARIANTS = (
    "method.schedule=exponential",
    "method.schedule=fixed method.top_h=15",
    "method.init=gaussian",
    "method.score=level",
)


@dataclass
class Selection:
    task: str
    method: str
    scores: dict[float, float] = field(default_factory=dict)  # lr -> best dev score ×100
    sources: dict[float, str] = field(default_factory=dict)  # lr -> study of the record
    metric: str = ""
    selected: float | None = None
    missing: list[float] = field(default_factory=list)  # grid or edge points still to run

    @property
    def complete(self) -> bool:
        return self.selected is not None


def _score(record: dict) -> str | None:
    return ((record.get("config") or {}).get("method") or {}).get("score")


def _is_default(record: dict) -> bool:
    """The method at its default options: no ablation variant, no random-score control (a
    ``DEFAULT_AXES`` axis of both growing methods)."""
    method, method_cfg = record.get("method"), (record.get("config") or {}).get("method") or {}
    return all(method_cfg.get(axis, value) == value for axis, value in DEFAULT_AXES.get(method, {}).items())


def grid_points(records: list[dict]) -> dict[tuple[str, str], Selection]:
    """(task, method) -> the grid's scores at seed 41, r̄ 8 (the latest record per point; a point of
    the grid's own study wins over a reused one)."""
    chosen: dict[tuple[str, str, float], tuple[int, str, dict]] = {}
    for r in records:
        config = r.get("config") or {}
        study = config.get("study")
        if study not in SOURCES or r.get("status") != "ok" or not r.get("best"):
            continue
        if SOURCES[study] is not None and r.get("method") not in SOURCES[study]:
            continue
        if r.get("seed") != SEED or (config.get("budget") or {}).get("name") != BUDGET or not _is_default(r):
            continue
        lr = (config.get("trainer") or {}).get("learning_rate")
        if lr is None:
            continue
        lr = float(lr)
        key = (r["task"], r["method"], lr)
        rank = (study == LR_STUDY, r.get("finished_at") or "")
        if key not in chosen or rank > chosen[key][0]:
            chosen[key] = (rank, study, r)
    out: dict[tuple[str, str], Selection] = {}
    for (task, method, lr), (_, study, r) in sorted(chosen.items()):
        sel = out.setdefault((task, method), Selection(task, method))
        sel.metric = r["primary_metric"]
        sel.scores[lr] = 100.0 * r["best"][r["primary_metric"]]
        sel.sources[lr] = study
    for sel in out.values():
        select(sel)
    return out


def select(sel: Selection) -> Selection:
    """Apply the rule: every grid point first, then the edge point a best-at-the-edge calls for."""
    sel.missing = [lr for lr in GRID if lr not in sel.scores]
    sel.selected = None
    if sel.missing:
        return sel
    best = _best(sel.scores, GRID)
    beyond = BEYOND.get(best)
    if beyond is not None:
        if beyond not in sel.scores:
            sel.missing = [beyond]
            return sel
        best = _best(sel.scores, (*GRID, beyond))
    sel.selected = best
    return sel


def _best(scores: dict[float, float], lrs: tuple[float, ...]) -> float:
    top = max(scores[lr] for lr in lrs)
    return min(lr for lr in lrs if scores[lr] == top)  # a tie goes to the smaller LR


def edge_sweeps(records: list[dict]) -> dict[str, list[str]]:
    """task -> Hydra sweep strings for the edge points the rule asks for (none while a grid is open)."""
    sweeps: dict[str, list[str]] = {}
    for (task, method), sel in sorted(grid_points(records).items()):
        edge = [lr for lr in sel.missing if lr not in GRID]
        if edge:
            sweeps.setdefault(task, []).append(
                f"method={method} budget={BUDGET} trainer.learning_rate={edge[0]:g} study={LR_STUDY}"
            )
    return sweeps


def selection_table(
    selections: dict[tuple[str, str], Selection], tasks: list[str], methods: list[str]
) -> list[str]:
    lrs = sorted({*GRID, *BEYOND.values()})
    header = ["task", "method", *map(fmt_lr, lrs), "selected"]
    rows = []
    for task in tasks:
        for method in methods:
            sel = selections.get((task, method), Selection(task, method, missing=list(GRID)))
            if not sel.scores:
                sel.missing = list(GRID)
            cells = []
            for lr in lrs:
                if lr in sel.scores:
                    mark = "" if sel.sources[lr] == LR_STUDY else "†"
                    cell = f"{sel.scores[lr]:.2f}{mark}"
                    cells.append(f"**{cell}**" if lr == sel.selected else cell)
                else:
                    cells.append("to run" if lr in sel.missing else "")
            rows.append([task, method, *cells, fmt_lr(sel.selected) if sel.complete else "open"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def selected_lrs(records: list[dict]) -> dict[tuple[str, str], float]:
    """(task, method) -> the selected LR, for the cells the rule has closed."""
    return {key: sel.selected for key, sel in grid_points(records).items() if sel.complete}


def reuses_fixed_lr(method: str, lr: float) -> bool:
    return method in REUSED and lr == FIXED_LR


def tuned_sweeps(records: list[dict]) -> dict[str, list[str]]:
    """task -> Hydra sweep strings for the main grid, the controls and the schedule runs at every
    selected LR. A sweep without ``seed=`` runs the task's tuned seeds; a reused cell names the seeds
    the fixed-lr study lacks."""
    sweeps: dict[str, list[str]] = {}
    schedules: dict[str, list[str]] = {}
    for (task, method), lr in sorted(selected_lrs(records).items()):
        at = f"trainer.learning_rate={lr:g} study={TUNED_STUDY}"
        if not reuses_fixed_lr(method, lr):
            sweeps.setdefault(task, []).append(f"method={method} budget=r2,r8 {at}")
        else:
            fixed = set(FIXED_SEEDS[task])
            extra = [s for s in TUNED_SEEDS[task].split(",") if int(s) not in fixed]
            if extra:
                sweeps.setdefault(task, []).append(
                    f"method={method} budget=r2,r8 {at} seed={','.join(extra)}"
                )
        if task in CONTROL_TASKS and method in CONTROLLED:
            sweeps.setdefault(task, []).append(f"method={method} budget={BUDGET} method.score={CONTROL} {at}")
        reused = reuses_fixed_lr(method, lr) and task in FIXED_ABLATION_TASKS
        if method == SCHEDULED and task in SCHEDULE_TASKS and not reused:
            schedules[task] = [f"method={method} budget={BUDGET} {v} {at}" for v in SCHEDULE_VARIANTS]
    for task, extra in schedules.items():  # after the main grid and the controls
        sweeps.setdefault(task, []).extend(extra)
    return sweeps


def is_tuned_run(record: dict, selected: dict[tuple[str, str], float]) -> bool:
    """A main-grid or control run at its cell's selected LR, the selection seed left out."""
    config = record.get("config") or {}
    lr = (config.get("trainer") or {}).get("learning_rate")
    chosen = selected.get((record.get("task"), record.get("method")))
    if chosen is None or lr is None or float(lr) != chosen or record.get("seed") == SEED:
        return False
    if config.get("study") == TUNED_STUDY:
        return _is_default(record) or _score(record) == CONTROL
    return (
        config.get("study") == FIXED_STUDY
        and reuses_fixed_lr(record["method"], chosen)
        and _is_default(record)
    )


def is_schedule_run(record: dict, selected: dict[tuple[str, str], float]) -> bool:
    """A claim-4 run: TriAdaptLoRA at r̄ 8 with another schedule (its other options at their defaults)
    at its selected LR on a ``SCHEDULE_TASKS`` task, the selection seed left out; the fixed-lr study's
    ablation counts where that LR is 1e-3 and that study ran the task's ablation."""
    config = record.get("config") or {}
    method, task = record.get("method"), record.get("task")
    if method != SCHEDULED or task not in SCHEDULE_TASKS or record.get("seed") == SEED:
        return False
    method_cfg = config.get("method") or {}
    axes = DEFAULT_AXES[method]
    if method_cfg.get("schedule", axes["schedule"]) == axes["schedule"]:
        return False
    if any(method_cfg.get(axis, value) != value for axis, value in axes.items() if axis != "schedule"):
        return False
    lr = (config.get("trainer") or {}).get("learning_rate")
    chosen = selected.get((task, method))
    if (
        chosen is None
        or lr is None
        or float(lr) != chosen
        or (config.get("budget") or {}).get("name") != BUDGET
    ):
        return False
    if config.get("study") == TUNED_STUDY:
        return True
    return (
        config.get("study") == FIXED_STUDY
        and reuses_fixed_lr(method, chosen)
        and task in FIXED_ABLATION_TASKS
    )

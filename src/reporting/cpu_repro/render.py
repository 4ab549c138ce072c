"""The write-up itself: the tuned protocol's section, the LR selection, the fixed-lr study, figures,
and ``write_report`` / ``main``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from src.records import atomic_write_text
from src.reporting import lr_selection
from src.reporting.cpu_repro import pooled as repro_pooled
from src.reporting.cpu_repro.claims import (
    CONTROL_WORDS,
    SCHEDULE_WORDS,
    STABILITY_WORDS,
    claims,
    control_claim,
    schedule_claim,
)
from src.reporting.cpu_repro.diagnostics import (
    STARTUP,
    at_selected_lrs,
    load_startup,
    load_tuned_startups,
    tuned_startup_section,
)
from src.reporting.cpu_repro.frame import DEFAULT, REFERENCE, TASKS, _table, study_frame, tuned_frame
from src.reporting.cpu_repro.plan import (
    TUNED_PLANNED,
    ablation_coverage,
    coverage,
    remaining_hours,
    tuned_remaining,
)
from src.reporting.cpu_repro.sections import (
    ablation_table,
    budget_response_table,
    budget_table,
    collapsed_runs,
    control_comparisons,
    control_table,
    near_floor,
    paired_table,
    pooled_table,
    provenance,
    results_table,
    schedule_comparisons,
    schedule_table,
    spread_table,
    stability_comparisons,
    subject_comparisons,
    time_table,
    train_loss_table,
)
from src.reporting.figures import group_figures, save
from src.reporting.tables import (
    METHOD_LABEL,
    METHOD_ORDER,
    TASK_LABEL,
    fmt_lr,
    load_records,
)


def _seed_text() -> str:
    """The tuned seeds per task, in words (``seeds 42–45 on every task``)."""
    by_seeds: dict[str, list[str]] = {}
    for task, seeds in lr_selection.TUNED_SEEDS.items():
        first, *_, last = seeds.split(",")
        by_seeds.setdefault(f"{first}–{last}", []).append(TASK_LABEL[task])
    if len(by_seeds) == 1:
        return f"seeds {next(iter(by_seeds))} on every task"
    return ", ".join(f"seeds {seeds} on {' and '.join(tasks)}" for seeds, tasks in by_seeds.items())


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
    """The tuned protocol's first stage: the grid, and what is left while it is under way."""
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
        "One rule for every method × task (docs/cpu-study.md, *The tuned protocol*): r̄ 8, seed 41, lr ∈ {1e-3, 3e-3, "
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
        "Generated by `make results` (src/reporting/derived.py → src/reporting/cpu_repro/; `make cpu-repro` "
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

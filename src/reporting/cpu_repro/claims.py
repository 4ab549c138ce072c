"""The paper's claims, each with what the runs say: computed verdicts, never typed in."""

from __future__ import annotations

import math
import statistics

import pandas as pd

from src.reporting import lr_selection
from src.reporting.cpu_repro import pooled as repro_pooled
from src.reporting.cpu_repro.diagnostics import inert_caveat, inert_methods
from src.reporting.cpu_repro.frame import (
    BASELINES,
    MIN_PAIRS,
    SUBJECT,
    _budgets,
    _count,
    _methods,
    _tasks,
    by_seed,
    verdict,
)
from src.reporting.tables import (
    METHOD_LABEL,
    TASK_LABEL,
)

TIME_MARGIN = 0.10  # relative-to-LoRA time gaps smaller than this are load noise


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


def control_claim(found: list[dict], pooled: str = "") -> str:
    counts = {
        k: sum(verdict(f["diff"]) == k for f in found) for k in ("better", "worse", "unresolved", "n/a")
    }
    text = (
        f"5. **The importance score allocates better than chance** (the control this study adds). Each "
        f"growing method against its own random-allocation control at r̄ 8, paired by seed: "
        f"{counts['better']} better, {counts['worse']} worse, {counts['unresolved']} unresolved"
        + (f", {counts['n/a']} with fewer than {MIN_PAIRS} paired seeds so far" if counts["n/a"] else "")
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

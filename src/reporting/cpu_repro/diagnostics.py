"""Does each adapter move the model? scripts/adapter_startup.py's measurements, read back, and the
inert-adapter caveat the claims open with."""

from __future__ import annotations

import json
import math
from pathlib import Path

from src.reporting.cpu_repro.frame import MIN_PAIRS, REFERENCE, TASKS, _pct, _table
from src.reporting.tables import (
    DASH,
    METHOD_LABEL,
    METHOD_ORDER,
    TASK_LABEL,
    fmt_lr,
)

# A method whose adapter moves the encoder's output by less than this share of LoRA's (measured by
# scripts/adapter_startup.py) is, in practice, training its classifier head alone.
INERT_EFFECT_SHARE = 0.05


STARTUP = "results/diagnostics/adapter_startup.json"  # scripts/adapter_startup.py's untagged output


# Beside it, the same measurement at each method's selected LR, one file per task:
# ``scripts/adapter_startup.py --task <task> --selected-lrs --tag _tuned_<task>``.
TUNED_STARTUP = "adapter_startup_tuned_{task}.json"


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

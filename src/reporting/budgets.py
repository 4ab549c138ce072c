"""Did a run end at its rank budget? A growing method (IncreLoRA, TriAdaptLoRA) grows towards a target
total rank R* and AdaLoRA prunes towards one; a run that stops off R* (growth cut short, a schedule
that never finished) was compared at a budget other than its row's, so tables and figures say so.

The record holds the final total rank and R* in ``budget.final`` (``total_rank``,
``target_total_rank``); records without a ``final`` entry are read from the last ``budget.history``
entry. LoRA has no target (``target_total_rank`` is null) and is never flagged.
"""

from __future__ import annotations

OFF_TARGET_MARK = "‡"  # beside a cell or a line whose run ended off its target total rank R*


def final_and_target(record: dict) -> tuple[int | None, int | None]:
    """(final total rank, target total rank R*) of a record; None where the record has no value."""
    budget = record.get("budget") or {}
    history = budget.get("history") or []
    entries = [budget.get("final") or {}, history[-1] if history else {}, budget.get("initial") or {}]
    total = next((e["total_rank"] for e in entries[:2] if e.get("total_rank") is not None), None)
    target = next((e["target_total_rank"] for e in entries if e.get("target_total_rank") is not None), None)
    return total, target


def off_target(total: int | None, target: int | None) -> bool:
    """Did the run end at a total rank other than its target? False when either is unknown."""
    return total is not None and target is not None and total != target


def off_target_text(run_id: str, total: int, target: int) -> str:
    return f"{run_id} ended at total rank {total} of R* {target}"

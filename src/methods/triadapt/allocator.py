"""TriAdaptLoRA's allocator as pure functions (spec §5.5–5.6)."""

from __future__ import annotations

import math

from src.methods.growing.allocator import growth_sizes, select_modules
from src.methods.triadapt.config import SCHEDULES

__all__ = [
    "allocation_size",
    "dry_run_schedule",
    "growth_sizes",
    "is_event_step",
    "progress",
    "select_modules",
]


def is_event_step(t: int, init_warmup: int, incre_interval: int) -> bool:
    return t > init_warmup and t % incre_interval == 0


def progress(t: int, init_warmup: int, total_step: int) -> float:
    return (t - init_warmup) / (total_step - init_warmup)


def allocation_size(
    schedule: str, remaining: int, t: int, init_warmup: int, total_step: int, top_h: int, num_modules: int
) -> int:
    """K = floor(R_rem·p) | floor(R_rem^p) | top_h, clipped to [1, M]."""
    if schedule == "linear":
        k = remaining * (t - init_warmup) // (total_step - init_warmup)  # exact, no float rounding
    elif schedule == "exponential":
        k = math.floor(remaining ** progress(t, init_warmup, total_step))
    elif schedule == "fixed":
        k = top_h
    else:
        raise ValueError(f"schedule={schedule!r}; choose one of {list(SCHEDULES)}")
    return min(max(k, 1), num_modules)


def dry_run_schedule(
    num_modules: int,
    init_rank: int,
    target_total_rank: int,
    incre_rank_num: int,
    total_step: int,
    init_warmup: int,
    incre_interval: int,
    schedule: str = "linear",
    top_h: int = 1,
    clip_to_budget: bool = True,
    last_step: int | None = None,
) -> list[dict]:
    """Counts-only simulation of the schedule (no ties assumed): one record per allocation event.

    ``last_step``: the last step the allocator is given (T, or T − 1 under ``before_step``)."""
    events, total = [], init_rank * num_modules
    first = (init_warmup // incre_interval + 1) * incre_interval
    last = total_step if last_step is None else last_step
    for t in range(first, last + 1, incre_interval):
        if total >= target_total_rank:
            break
        remaining = target_total_rank - total
        k = allocation_size(schedule, remaining, t, init_warmup, total_step, top_h, num_modules)
        grown = growth_sizes(k, total, target_total_rank, incre_rank_num, clip_to_budget)
        total += sum(grown)
        events.append({"step": t, "K": k, "grown": len(grown), "total_rank": total})
    return events

"""TriAdaptLoRA's allocator as pure functions (spec §5.5–5.6)."""

from __future__ import annotations

import math

from src.methods.triadapt.config import SCHEDULES


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


def select_modules(scores: list[float], k: int, selection: str = "top_k") -> list[int]:
    """Indices of the modules to grow, best first; ties broken by module order (stable)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if selection == "top_k":
        return order[:k]
    tau = scores[order[k - 1]]  # threshold (reference): every module reaching the K-th score
    return [i for i in order if scores[i] >= tau]


def growth_sizes(n_selected: int, total_rank: int, target_total_rank: int, k: int, clip: bool) -> list[int]:
    """Ranks given to each selected module in order: clipped, the last growth stops R at R*;
    unclipped (``clip_to_budget: false``, the reference), every selected module grows by k and R
    may pass R* (spec §5.6)."""
    if not clip:
        return [k] * n_selected
    sizes = []
    for _ in range(n_selected):
        if total_rank >= target_total_rank:
            break
        g = min(k, target_total_rank - total_rank) if clip else k
        sizes.append(g)
        total_rank += g
    return sizes


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
) -> list[dict]:
    """Counts-only simulation of the schedule (no ties assumed): one record per allocation event."""
    events, total = [], init_rank * num_modules
    first = (init_warmup // incre_interval + 1) * incre_interval
    for t in range(first, total_step + 1, incre_interval):
        if total >= target_total_rank:
            break
        remaining = target_total_rank - total
        k = allocation_size(schedule, remaining, t, init_warmup, total_step, top_h, num_modules)
        grown = growth_sizes(k, total, target_total_rank, incre_rank_num, clip_to_budget)
        total += sum(grown)
        events.append({"step": t, "K": k, "grown": len(grown), "total_rank": total})
    return events

"""IncreLoRA's allocator as pure functions (spec §4)."""

from __future__ import annotations

from src.methods.growing.allocator import last_allocator_step
from src.methods.increlora.config import IncreLoRAConfig


def schedule_capacity(config: IncreLoRAConfig, n_modules: int) -> int:
    """Most ranks the schedule can add before T: events × min(top_h, M) × k (counts only)."""
    last = last_allocator_step(config.total_step, config.allocator_timing)
    events = last // config.incre_interval - config.init_warmup // config.incre_interval
    return max(0, events) * min(config.top_h, n_modules) * config.k

"""What both growing methods' allocators share: where they run, the schedule warning, random scores."""

from __future__ import annotations

import torch

# where the HF loop runs the allocator (spec §1.4): on_optimizer_step, or on_pre_optimizer_step,
# where both references allocate (weights read before update t)
ALLOCATOR_TIMINGS = ("after_step", "before_step")


class ScheduleWarning(UserWarning):
    """The allocation schedule cannot reach the budget in the run (irrelevant to a loaded adapter)."""


def random_scores(seed: int | None, event: int, n: int) -> list[float]:
    """``score: random`` (spec §5.5): i.i.d. uniform scores from the run seed and the event number,
    so a resumed run draws what the uninterrupted one would have."""
    if seed is None:
        raise ValueError("score=random needs the run seed (method.seed); the training loop fills it")
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(event))
    return torch.rand(n, generator=generator, dtype=torch.float64).tolist()

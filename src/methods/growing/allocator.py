"""What both growing methods' allocators share: where they run, the schedule warning, random scores,
the stable top-k selection and the budget clip (pure functions)."""

from __future__ import annotations

import torch

# where the HF loop runs the allocator (spec §1.4): on_optimizer_step, or on_pre_optimizer_step,
# where both references allocate (weights read before update t)
ALLOCATOR_TIMINGS = ("after_step", "before_step")


def last_allocator_step(t: int, timing: str) -> int:
    """The step the allocator is given at optimizer step t (1-based): the updates already done, so
    t after ``optimizer.step()`` and t − 1 before it (the released code's 0-based ``global_step``,
    spec §1.4). At t = T it is the last step a schedule can allocate at."""
    if timing not in ALLOCATOR_TIMINGS:
        raise ValueError(f"allocator_timing={timing!r}; choose one of {list(ALLOCATOR_TIMINGS)}")
    return t - 1 if timing == "before_step" else t


class ScheduleWarning(UserWarning):
    """The allocation schedule cannot reach the budget in the run (irrelevant to a loaded adapter)."""


def random_scores(seed: int | None, event: int, n: int) -> list[float]:
    """``score: random`` (spec §5.5): i.i.d. uniform scores from the run seed and the event number,
    so a resumed run draws what the uninterrupted one would have."""
    if seed is None:
        raise ValueError("score=random needs the run seed (method.seed); the training loop fills it")
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(event))
    return torch.rand(n, generator=generator, dtype=torch.float64).tolist()


def select_modules(scores: list[float], k: int, selection: str = "top_k") -> list[int]:
    """Indices of the modules to grow, best first; ties broken by module order (stable).

    ``top_k``: the first k of that order (k beyond the number of modules takes them all);
    ``threshold`` (TriAdaptLoRA's reference): every module reaching the k-th score."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if selection == "top_k":
        return order[:k]
    tau = scores[order[k - 1]]  # threshold (reference): every module reaching the K-th score
    return [i for i in order if scores[i] >= tau]


def growth_sizes(n_selected: int, total_rank: int, target_total_rank: int, k: int, clip: bool) -> list[int]:
    """Ranks given to each selected module in order: clipped, the last growth stops R at R*;
    unclipped (``clip_to_budget: false``, the references), every selected module grows by k and R
    may pass R* (spec §4, §5.6; IncreLoRA's released code selects at most R* − R modules)."""
    if not clip:
        return [k] * n_selected
    sizes = []
    for _ in range(n_selected):
        if total_rank >= target_total_rank:
            break
        g = min(k, target_total_rank - total_rank)
        sizes.append(g)
        total_rank += g
    return sizes

"""``RankGrowthCallback``: a growing tuner's allocator in a ``transformers.Trainer``."""

from __future__ import annotations

from transformers import TrainerCallback

from src.methods import sync
from src.methods.growing.tuner import growing_tuner


class RankGrowthCallback(TrainerCallback):
    """Runs a growing tuner's allocator in a ``transformers.Trainer``; nothing else is needed.

    HF's order in one optimizer step (spec §1.4): clip -> ``on_pre_optimizer_step`` ->
    ``optimizer.step()`` -> ``on_optimizer_step`` -> scheduler step -> ``zero_grad()``. The callback
    calls ``update_and_allocate`` in whichever of the two the config's ``allocator_timing`` names, on
    the Trainer's own optimizer and LR scheduler. Events are kept in ``self.events``.

    Under torchrun (DDP) it also keeps the processes identical through growth (src/methods/sync.py):
    captured gradients are averaged before the allocator, and after an event the new tensors are
    broadcast from rank 0 and their gradients averaged from then on.
    """

    def __init__(self):
        self.events: list[dict] = []

    def on_pre_optimizer_step(
        self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs
    ):
        self._maybe_allocate("before_step", state, model, optimizer, lr_scheduler)

    def on_optimizer_step(
        self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs
    ):
        self._maybe_allocate("after_step", state, model, optimizer, lr_scheduler)

    def _maybe_allocate(self, timing: str, state, model, optimizer, lr_scheduler) -> None:
        tuner = growing_tuner(model)
        if tuner.allocator_timing == timing:
            sync.average_captured(model)
            event = tuner.update_and_allocate(state.global_step + 1, optimizer, lr_scheduler)
            if event is not None:
                sync.after_event(model, tuner.budget()["rank_pattern"])
                self.events.append(event)

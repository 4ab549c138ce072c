"""``RankGrowthCallback``: a growing tuner's allocator in a ``transformers.Trainer``."""

from __future__ import annotations

from transformers import TrainerCallback

from src.methods import sync
from src.methods.growing import resume
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

    ``trainer.train(resume_from_checkpoint=...)`` continues a grown run: each checkpoint carries the
    layout, the allocator state, these events and the event groups (src/methods/growing/resume.py).
    """

    def __init__(self):
        self.events: list[dict] = []
        self._optimizer = self._fold = None
        self._step = 0  # optimizer steps taken: the step of a checkpoint written now

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        tuner = growing_tuner(model)
        saved, tuner.resume_state = tuner.resume_state, None
        if saved is not None and saved["step"] == state.global_step:  # resumed from that checkpoint
            resume.split_groups(model, optimizer, lr_scheduler, saved)
            tuner.method.load_training_state(model, saved["allocator"])
            self.events = list(saved["events"])
        elif saved is not None and state.global_step:
            raise ValueError(
                f"the adapter was loaded from a checkpoint of step {saved['step']}, but the Trainer "
                f"resumes at step {state.global_step}; pass that checkpoint to resume_from_checkpoint"
            )
        self._optimizer, self._step = optimizer, state.global_step
        tuner.growth_callback = self
        # every optimizer state the Trainer saves from now on loads into a fresh optimizer
        inner = getattr(optimizer, "optimizer", optimizer)
        self._fold = inner.register_state_dict_post_hook(
            lambda opt, sd: resume.fold_state_dict(model, opt, sd)
        )

    def on_train_end(self, args, state, control, model=None, **kwargs):
        growing_tuner(model).growth_callback = None  # an adapter saved from now on is a plain one
        self._fold.remove()
        self._optimizer = self._fold = None

    def resume_payload(self, model) -> dict:
        tuner = growing_tuner(model)
        return resume.payload(model, self._optimizer, tuner.method, self.events, self._step)

    def on_pre_optimizer_step(
        self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs
    ):
        self._maybe_allocate("before_step", state, model, optimizer, lr_scheduler)

    def on_optimizer_step(
        self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs
    ):
        self._maybe_allocate("after_step", state, model, optimizer, lr_scheduler)
        self._step = state.global_step + 1  # the Trainer counts the step after this hook

    def _maybe_allocate(self, timing: str, state, model, optimizer, lr_scheduler) -> None:
        tuner = growing_tuner(model)
        if tuner.allocator_timing == timing:
            sync.average_captured(model)
            event = tuner.update_and_allocate(state.global_step + 1, optimizer, lr_scheduler)
            if event is not None:
                sync.after_event(model, tuner.budget()["rank_pattern"])
                self.events.append(event)

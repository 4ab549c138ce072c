"""allocator_timing (spec §1.4): at every allocation event the optimizer has done as many updates as
the step the allocator is given, and that count is a multiple of the interval past the warmup.

The released code allocates before ``optimizer.step()`` and passes its 0-based ``global_step``, the
count of updates already done; ``before_step`` must do the same (an outside check found its events
one update early when it passed t). ``after_step`` allocates after update t and passes t. Counted
here through a stock ``transformers.Trainer`` with ``RankGrowthCallback``, for both growing methods.
"""

from __future__ import annotations

import warnings

import peft
import pytest
import torch

from src.methods.growing.tuner import growing_tuner
from tests.test_peft_tuners import base_model, train_with_trainer, tuner_config

INIT_WARMUP, INTERVAL = 4, 2  # tuner_config's schedule


def updates_done(optimizer) -> int:
    """AdamW's step count of a tensor trained from the first step: the updates finished so far."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    first = optimizer.param_groups[0]["params"][0]
    state = optimizer.state.get(first, {})
    return int(state["step"]) if "step" in state else 0


@pytest.mark.parametrize("timing", ["after_step", "before_step"])
@pytest.mark.parametrize("method", ["triadapt", "increlora"])
def test_each_event_sees_the_updates_its_step_says(method, timing, tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the short schedule's dry-run warning
        model = peft.get_peft_model(base_model(), tuner_config(method, allocator_timing=timing))
    tuner = growing_tuner(model)
    allocate, seen = tuner.update_and_allocate, []

    def counting(global_step, optimizer=None, lr_scheduler=None):
        before = updates_done(optimizer)
        event = allocate(global_step, optimizer, lr_scheduler)
        if event is not None:
            seen.append((before, event["step"]))
        return event

    tuner.update_and_allocate = counting
    _, callback = train_with_trainer(model, tmp_path)
    assert len(seen) == len(callback.events) >= 2
    for updates, step in seen:
        assert updates == step, f"{timing}: event at step {step} came after {updates} updates"
        assert updates > INIT_WARMUP and updates % INTERVAL == 0
    assert seen[0][0] == INIT_WARMUP + INTERVAL  # the first event: as early as the schedule allows

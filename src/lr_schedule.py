"""Learning-rate schedules that follow parameter groups added during training.

A plain ``LambdaLR`` zips its per-group lists (built at construction) with ``optimizer.param_groups``:
older torch stopped at the shorter list, so a group that a growing method adds later trained at the
optimizer's default LR forever (shared/spec/methods.md §5.8); torch 2.13 zips strictly and raises.
``GroupLambdaLR.add_group`` registers the new group with its own lambda instead.
"""

from __future__ import annotations

import types
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

LRLambda = Callable[[int], float]


def linear_warmup_decay(warmup_steps: int, total_steps: int) -> LRLambda:
    """Linear warmup from 0 to 1 over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""

    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    lr_lambda.warmup_steps = warmup_steps  # read by groups born later (new_params_lr=restart_warmup)
    lr_lambda.total_steps = total_steps
    return lr_lambda


def restart_warmup(birth_step: int, warmup_steps: int, total_steps: int) -> LRLambda:
    """IncreLoRA's per-group schedule (spec §4): own warmup from ``birth_step``, then decay to 0 at T."""

    def lr_lambda(step: int) -> float:
        if step >= total_steps:  # a group born within W steps of T still ends at 0 with the others
            return 0.0
        age = step - birth_step
        if age < warmup_steps:
            return max(0.0, age / max(1, warmup_steps))
        return max(0.0, (total_steps - step) / max(1, total_steps - birth_step - warmup_steps))

    return lr_lambda


def constant_one(step: int) -> float:
    return 1.0


def group_lambda(spec: dict | None, default: LRLambda) -> LRLambda:
    """The lambda of one optimizer group from its ``lr_schedule`` entry (None: the global schedule).

    Groups born during training carry the entry (src.methods.growing.add_param_group), so a resumed
    run rebuilds every group's schedule from the optimizer state alone: ``follow`` = the global
    lambda, ``static`` = 1.0 to the end, ``restart_warmup`` = own warmup from the birth step.
    """
    kind = (spec or {}).get("kind", "follow")
    if kind == "follow":
        return default
    if kind == "static":
        return constant_one
    if kind == "restart_warmup":
        # ours carry the length; transformers' linear schedule is a partial with it as a keyword
        warmup = getattr(default, "warmup_steps", None)
        if warmup is None:
            warmup = (getattr(default, "keywords", None) or {}).get("num_warmup_steps")
        if warmup is None:
            raise ValueError(
                "new_params_lr=restart_warmup needs the global warmup length; build the scheduler "
                "with src.lr_schedule.linear_warmup_decay"
            )
        return restart_warmup(spec["birth_step"], warmup, spec["total_step"])
    raise ValueError(f"unknown lr_schedule kind {kind!r} in an optimizer group")


class GroupLambdaLR(LambdaLR):
    """``LambdaLR`` whose groups can grow: ``add_group`` registers the newest optimizer group.

    Built on an optimizer that already holds groups born during training (a resumed run), each
    group gets the lambda its ``lr_schedule`` entry names.
    """

    def __init__(self, optimizer: Optimizer, lr_lambda: LRLambda, last_epoch: int = -1):
        self.default_lambda = lr_lambda
        lambdas = [group_lambda(g.get("lr_schedule"), lr_lambda) for g in optimizer.param_groups]
        super().__init__(optimizer, lambdas, last_epoch)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("default_lambda", None)  # a closure: rebuilt from the config, not pickled
        return state

    def add_group(self, lr_lambda: LRLambda | None = None) -> None:
        """Schedule ``optimizer.param_groups[-1]``; ``None`` means the global schedule."""
        add_group(self, lr_lambda or self.default_lambda)


def plain_function(lr_lambda: LRLambda) -> LRLambda:
    """``lr_lambda`` as a plain function. A ``LambdaLR`` saves ``None`` for a function and the
    ``__dict__`` of any other callable (transformers' schedules are partials), and loading the latter
    into a scheduler with fewer groups fails; a group added during training must not stop its
    checkpoint from loading into the scheduler a resumed stock Trainer builds
    (src/methods/growing/resume.py)."""
    if isinstance(lr_lambda, types.FunctionType):
        return lr_lambda

    def scheduled(step: int) -> float:
        return lr_lambda(step)

    return scheduled


def add_group(scheduler: LambdaLR, lr_lambda: LRLambda) -> None:
    """Schedule the newest optimizer group of any ``LambdaLR`` (transformers' schedules are ones)."""
    n_scheduled = len(scheduler.base_lrs)
    if len(scheduler.optimizer.param_groups) != n_scheduled + 1:
        raise RuntimeError(
            f"add_group expects exactly one unscheduled optimizer group, found "
            f"{len(scheduler.optimizer.param_groups) - n_scheduled}"
        )
    group = scheduler.optimizer.param_groups[-1]
    group.setdefault("initial_lr", group["lr"])
    scheduler.base_lrs.append(group["initial_lr"])
    scheduler.lr_lambdas.append(plain_function(lr_lambda))
    group["lr"] = group["initial_lr"] * lr_lambda(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]

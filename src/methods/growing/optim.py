"""One optimizer group per allocation event, scheduled per ``new_params_lr`` (spec §5.8), and the
optimizer surgery a growth that replaces tensors needs."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from src import lr_schedule
from src.lr_schedule import group_lambda

NEW_PARAMS_LR = ("follow", "restart_warmup", "static")


def add_param_group(
    optimizer,
    lr_scheduler,
    params: list[nn.Parameter],
    new_params_lr: str,
    birth_step: int,
    total_step: int,
    name: str | None = None,
    template: list[nn.Parameter] = (),
) -> dict:
    """Put ``params`` into one new optimizer group and schedule it (spec §5.8); returns the group.

    Hyperparameters (lr, weight decay, betas, eps, ...) are copied from the "decay" group (or, in an
    optimizer built elsewhere, the group holding the first of ``template``, the adapter's existing
    tensors), with the group's *base* LR, so the scheduler scales it like every other group:
    ``follow`` = the global lambda; ``restart_warmup`` = its own warmup from ``birth_step`` (§4);
    ``static`` = constant 1.0, i.e. the peak LR to the end (the reference's behaviour, kept as an
    entry so ``get_last_lr()`` still has one value per group).
    """
    if new_params_lr not in NEW_PARAMS_LR:
        raise ValueError(f"new_params_lr={new_params_lr!r}; choose one of {NEW_PARAMS_LR}")
    decay = [g for g in optimizer.param_groups if g.get("name") == "decay"]
    if not decay:  # a stock Trainer's or a custom loop's optimizer: the adapter's own group
        ids = {id(p) for p in template}
        decay = [g for g in optimizer.param_groups if any(id(p) in ids for p in g["params"])][:1]
    if len(decay) != 1:
        raise ValueError(
            f"expected exactly one optimizer group named 'decay' (from method.param_groups) or one "
            f"holding the adapter's tensors, found {len(decay)}; build the optimizer from the "
            "model's trainable parameters"
        )
    index = next(i for i, g in enumerate(optimizer.param_groups) if g is decay[0])
    template = decay[0]
    group = {k: copy.deepcopy(v) for k, v in template.items() if k not in ("params", "param_names")}
    base_lr = template.get("initial_lr", template["lr"])
    group.update(params=list(params), lr=base_lr, name=name or f"grown@{birth_step}")
    # how to rebuild this group's LR lambda when a checkpoint is resumed (src.lr_schedule.group_lambda)
    group["lr_schedule"] = {"kind": new_params_lr, "birth_step": birth_step, "total_step": total_step}
    if lr_scheduler is not None:
        group["initial_lr"] = base_lr
    optimizer.add_param_group(group)
    if lr_scheduler is None:
        return optimizer.param_groups[-1]
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
    if not isinstance(scheduler, LambdaLR):
        raise TypeError(
            f"{type(scheduler).__name__} cannot schedule parameter groups added during training; "
            "use a LambdaLR (transformers' schedules are) or src.lr_schedule.GroupLambdaLR"
        )
    default = getattr(scheduler, "default_lambda", None) or scheduler.lr_lambdas[index]
    lr_schedule.add_group(scheduler, group_lambda(group["lr_schedule"], default))
    return optimizer.param_groups[-1]


def move_optimizer_rows(optimizer, pairs: list[tuple[nn.Parameter, nn.Parameter]]) -> None:
    """Swap ``old`` for ``new`` (its leading rows / columns) in the optimizer, state rows included.

    IncreLoRA uses it when a clipped last growth splits a spare: the activated rows keep their group
    (their restart schedule started at the spare's birth) and their Adam moments.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    for old, new in pairs:
        for group in optimizer.param_groups:
            for j, p in enumerate(group["params"]):
                if p is old:
                    group["params"][j] = new
        state = optimizer.state.pop(old, None)
        if state:
            index = tuple(slice(0, n) for n in new.shape)
            optimizer.state[new] = {
                key: value[index].clone() if torch.is_tensor(value) and value.shape == old.shape else value
                for key, value in state.items()
            }


def remove_from_groups(optimizer, params: list[nn.Parameter]) -> None:
    """Take ``params`` out of their optimizer groups (they have no state: a spare's E is frozen)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    ids = {id(p) for p in params}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]

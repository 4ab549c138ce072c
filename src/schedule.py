"""Learning-rate schedules that follow parameter groups added during training.

A plain ``LambdaLR`` zips its per-group lists (built at construction) with ``optimizer.param_groups``:
older torch stopped at the shorter list, so a group that a growing method adds later trained at the
optimizer's default LR forever (shared/spec/methods.md §5.8); torch 2.13 zips strictly and raises.
``GroupLambdaLR.add_group`` registers the new group with its own lambda instead.
"""

from __future__ import annotations

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


class GroupLambdaLR(LambdaLR):
    """``LambdaLR`` whose groups can grow: ``add_group`` registers the newest optimizer group."""

    def __init__(self, optimizer: Optimizer, lr_lambda: LRLambda, last_epoch: int = -1):
        self.default_lambda = lr_lambda
        super().__init__(optimizer, lr_lambda, last_epoch)

    def add_group(self, lr_lambda: LRLambda | None = None) -> None:
        """Schedule ``optimizer.param_groups[-1]``; ``None`` means the global schedule."""
        n_scheduled = len(self.base_lrs)
        if len(self.optimizer.param_groups) != n_scheduled + 1:
            raise RuntimeError(
                f"add_group expects exactly one unscheduled optimizer group, found "
                f"{len(self.optimizer.param_groups) - n_scheduled}"
            )
        group = self.optimizer.param_groups[-1]
        lr_lambda = lr_lambda or self.default_lambda
        group.setdefault("initial_lr", group["lr"])
        self.base_lrs.append(group["initial_lr"])
        self.lr_lambdas.append(lr_lambda)
        group["lr"] = group["initial_lr"] * lr_lambda(self.last_epoch)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

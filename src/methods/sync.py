"""Keeping the processes of a multi-process run identical through growth: the part any Trainer needs.

DDP averages the gradients of the parameters that were trainable when it wrapped the model. Growth
adds tensors after that (TriAdaptLoRA blocks, IncreLoRA spares and their E), and IncreLoRA scores a
gradient captured outside any parameter. Both the project's loop (src/runtime/trainer.py) and a stock
Trainer with ``RankGrowthCallback`` call these two functions around every allocator step:

- ``average_captured`` before the allocator: averages every module's captured gradient
  (``CAPTURED_GRAD_ATTR``) over the processes, so scores read the global batch's values;
- ``after_event`` after an event: checks that every process made the same decision, broadcasts the new
  tensors from rank 0, and gives every newly trainable parameter a hook that averages its gradient
  inside backward (before the Trainer clips).

On a single process both return at once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

CAPTURED_GRAD_ATTR = "grad_sum"  # a module's per-process gradient sum outside autograd (IncreLoRA)
_BOOK_ATTR = "_distributed_book"  # per-model bookkeeping, kept on the model like adapter_info


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _Book:
    """Parameters already equal on every process, and those whose gradients are already averaged.

    Created at the first optimizer step, before any growth: then every parameter was synchronised
    when DDP wrapped the model, and exactly the trainable ones are in its reducer.
    """

    def __init__(self, model: nn.Module):
        params = list(model.parameters())
        self.synced = {id(p): p for p in params}  # strong references: ids cannot be reused
        self.averaged = {id(p): p for p in params if p.requires_grad}


def _book(model: nn.Module) -> _Book:
    if _BOOK_ATTR not in model.__dict__:
        model.__dict__[_BOOK_ATTR] = _Book(model)  # __dict__: no nn.Module or peft attribute magic
    return model.__dict__[_BOOK_ATTR]


def _average_grad(param: torch.Tensor) -> None:
    dist.all_reduce(param.grad)  # SUM: gloo has no AVG
    param.grad.div_(dist.get_world_size())


def average_captured(model: nn.Module) -> None:
    """Average the gradients captured outside parameters (IncreLoRA's ∂L/∂ΔW) over the processes."""
    if world_size() == 1:
        return
    _book(model)
    captured = [g for m in model.modules() if torch.is_tensor(g := getattr(m, CAPTURED_GRAD_ATTR, None))]
    if captured:
        flat = torch.cat([g.reshape(-1) for g in captured])  # one collective, not one per module
        dist.all_reduce(flat)
        flat.div_(dist.get_world_size())
        for g, part in zip(captured, flat.split([g.numel() for g in captured]), strict=True):
            g.copy_(part.view_as(g))


def after_event(model: nn.Module, rank_pattern: dict) -> None:
    """After an allocation event: agree, broadcast new tensors, average new gradients from now on."""
    if world_size() == 1:
        return
    book = _book(model)
    fresh = [(name, p) for name, p in model.named_parameters() if id(p) not in book.synced]
    decision = {"ranks": rank_pattern, "new": [(name, list(p.shape)) for name, p in fresh]}
    decisions = [None] * dist.get_world_size()
    dist.all_gather_object(decisions, decision)
    if any(d != decisions[0] for d in decisions):
        raise RuntimeError(
            "processes made different allocation decisions; their scores were not synchronised: "
            + "; ".join(f"rank {r}: {d['ranks']}" for r, d in enumerate(decisions))
        )
    with torch.no_grad():
        for _, p in fresh:
            dist.broadcast(p.data, src=0)
            book.synced[id(p)] = p
    for p in model.parameters():
        if p.requires_grad and id(p) not in book.averaged:
            p.register_post_accumulate_grad_hook(_average_grad)
            book.averaged[id(p)] = p

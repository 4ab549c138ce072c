"""Resuming a stock ``transformers.Trainer`` run of a growing tuner (``RankGrowthCallback``).

A stock Trainer resumes in a fixed order, with no callback in between: it loads the adapter weights
into the model it was given (fresh, at the initial ranks), builds its optimizer over the model's
trainable parameters, loads the saved optimizer and scheduler states, and only then calls
``on_train_begin``. Growth breaks each step: the saved weights have the grown shapes, and the saved
optimizer has one group per allocation event that a fresh optimizer lacks. So while the callback
trains a model, each checkpoint carries what resuming needs where the Trainer reads it first:

- the adapter file holds one more tensor, ``RESUME_KEY``: the grown layout, the allocator state,
  the callback's events and the event groups by parameter name, serialised. The tuner's load hook
  takes it out and grows the fresh model to the saved layout before the weights load;
- the optimizer state is saved with each event group folded into the group a fresh optimizer puts
  those tensors in, in the model's parameter order, so it loads into the optimizer the Trainer
  builds over the regrown model;
- ``on_train_begin`` splits the event groups out again, with their moments, hyperparameters and LR
  schedules, and restores the allocator state and the events.

A ``save_pretrained`` after training has no callback attached, so a deployed adapter file holds no
extra tensor.
"""

from __future__ import annotations

import io

import torch
from torch import nn

from src.lr_schedule import group_lambda, plain_function
from src.methods.growing.injection import adapter_parameters, unwrap

RESUME_KEY = "growing_resume_state"


def pack(payload: dict) -> torch.Tensor:
    """``payload`` as one uint8 tensor: a safetensors file holds tensors only."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def unpack(tensor: torch.Tensor) -> dict:
    data = tensor.detach().cpu().numpy().tobytes()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer


def _is_event_group(group: dict) -> bool:
    return "lr_schedule" in group  # set by add_param_group, on groups born at an event only


def _split(optimizer) -> tuple[list[dict], list[dict]]:
    groups = _inner(optimizer).param_groups
    base = [g for g in groups if not _is_event_group(g)]
    if any(_is_event_group(g) for g in groups[: len(base)]):
        raise RuntimeError("an optimizer group was added after the allocator's; cannot fold the event groups")
    return base, groups[len(base) :]


def _folded(model: nn.Module, optimizer) -> list[list[nn.Parameter]]:
    """Per base group, the tensors a fresh optimizer over the grown model puts there, in its order.

    A stock Trainer groups the trainable tensors in ``named_parameters`` order; event tensors go
    where the adapter's initial tensors are (the group ``add_param_group`` copies its settings from).
    """
    order = {id(p): i for i, (_, p) in enumerate(model.named_parameters())}
    base, events = _split(optimizer)
    adapter = {id(p) for p in adapter_parameters(model)}
    target = next((i for i, g in enumerate(base) if any(id(p) in adapter for p in g["params"])), None)
    if events and target is None:
        raise RuntimeError("no optimizer group holds the adapter's tensors; cannot fold the event groups")
    folded = []
    for i, group in enumerate(base):
        params = list(group["params"])
        if i == target:
            params += [p for g in events for p in g["params"] if p.requires_grad]
        unknown = [p for p in params if id(p) not in order]
        if unknown:
            raise RuntimeError(f"{len(unknown)} optimized tensor(s) are not parameters of the model")
        folded.append(sorted(params, key=lambda p: order[id(p)]))
    return folded


def payload(model: nn.Module, optimizer, method, events: list[dict], step: int) -> dict:
    """What a resumed run needs besides the weights and the folded optimizer state."""
    names = {id(p): n for n, p in model.named_parameters()}
    _, event_groups = _split(optimizer)
    groups = [
        {
            "hyper": {k: v for k, v in g.items() if k not in ("params", "param_names")},
            "params": [names[id(p)] for p in g["params"]],
        }
        for g in event_groups
    ]
    return {
        "step": step,
        "layout": method.layout(unwrap(model)),
        "allocator": method.training_state(model),
        "events": list(events),
        "groups": groups,
        "folded": [[names[id(p)] for p in ps] for ps in _folded(model, optimizer)],
    }


def fold_state_dict(model: nn.Module, optimizer, state: dict) -> dict:
    """``optimizer.state_dict()`` with the event groups folded into the base groups (see above)."""
    groups = _inner(optimizer).param_groups
    if not any(_is_event_group(g) for g in groups):
        return state
    index, i = {}, 0
    for group in groups:  # torch numbers the tensors group by group, in order
        for p in group["params"]:
            index.setdefault(id(p), i)
            i += 1
    names = {id(p): n for n, p in model.named_parameters()}
    base_groups, new_state, k = [], {}, 0
    for saved, params in zip(state["param_groups"], _folded(model, optimizer), strict=False):
        ids = []
        for p in params:
            if index[id(p)] in state["state"]:
                new_state[k] = state["state"][index[id(p)]]
            ids.append(k)
            k += 1
        group = {**saved, "params": ids}
        if "param_names" in group:
            group["param_names"] = [names[id(p)] for p in params]
        base_groups.append(group)
    return {"state": new_state, "param_groups": base_groups}


def split_groups(model: nn.Module, optimizer, lr_scheduler, saved: dict) -> None:
    """Inverse of the fold, on the optimizer and scheduler the Trainer restored from a checkpoint."""
    inner = _inner(optimizer)
    params = dict(model.named_parameters())
    names = {id(p): n for n, p in params.items()}
    live = [[names.get(id(p), "?") for p in g["params"]] for g in inner.param_groups]
    if live != saved["folded"]:
        raise ValueError(
            "the resumed optimizer does not hold the checkpoint's tensors in the saved order "
            f"({[len(g) for g in live]} tensors per group, saved {[len(g) for g in saved['folded']]}); "
            "RankGrowthCallback resumes the optimizer a stock Trainer builds from the model's "
            "trainable parameters"
        )
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
    default = scheduler.lr_lambdas[_adapter_group(model, inner)] if scheduler is not None else None
    for spec in saved["groups"]:
        members = [params[n] for n in spec["params"]]
        ids = {id(p) for p in members}
        for group in inner.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        inner.add_param_group({**spec["hyper"], "params": members})
        if scheduler is not None:
            scheduler.lr_lambdas.append(plain_function(group_lambda(spec["hyper"]["lr_schedule"], default)))
    if scheduler is not None:
        # a stock scheduler's state restored every group's base and last LR; a fresh one, its own
        scheduler.base_lrs = [g.get("initial_lr", g["lr"]) for g in inner.param_groups]
        scheduler._last_lr = [g["lr"] for g in inner.param_groups]


def _adapter_group(model: nn.Module, inner) -> int:
    adapter = {id(p) for p in adapter_parameters(model)}
    return next(i for i, g in enumerate(inner.param_groups) if any(id(p) in adapter for p in g["params"]))

"""Injection into a model, model-level adapter state and traversal, disable / merge (spec §1.7),
the orthogonal penalty and the budget report (§1.5)."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import peft
import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from src.methods.base import find_targets
from src.methods.growing.layer import AdapterLinear, HeadWrapper, SharedAdapterStorage
from src.target_names import matches


@dataclasses.dataclass
class AdapterInfo:
    """What an adapted model carries about its adapter: enough for save, load, disable and step."""

    method: str
    config: Any
    targets: list[str]
    heads: list[str]
    state: dict = dataclasses.field(default_factory=dict)  # method-specific (allocator state, R*)
    disabled: bool = False
    last_regularizer: torch.Tensor | None = None  # detached, for logging apart from the task loss
    hooks: list = dataclasses.field(default_factory=list)  # handles that merge_and_unload removes


INFO_ATTR = "adapter_info"


def unwrap(model: nn.Module) -> nn.Module:
    """The model the adapter layers live in: a ``PeftModel``'s or tuner's wrapped model, else ``model``.

    Everything below reads module names relative to it, so a rank pattern names modules as the base
    model does whether or not peft wraps it.
    """
    if isinstance(model, peft.PeftModel):
        model = model.base_model
    if isinstance(model, BaseTuner):
        model = model.model
    return model


def tuner_of(model: nn.Module) -> BaseTuner | None:
    """The peft tuner of a ``PeftModel`` (or the tuner itself); None for a model injected directly."""
    if isinstance(model, peft.PeftModel):
        model = model.base_model
    return model if isinstance(model, BaseTuner) else None


def get_info(model: nn.Module) -> AdapterInfo:
    info = getattr(unwrap(model), INFO_ATTR, None)
    if not isinstance(info, AdapterInfo):
        raise ValueError(
            f"{type(model).__name__} carries no adapter; pass the model returned by method.apply() "
            "(unwrapped from DDP/accelerate)"
        )
    return info


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    """Adapter layers by qualified name, in module order (the order that breaks score ties)."""
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, AdapterLinear)}


def head_wrappers(model: nn.Module) -> dict[str, HeadWrapper]:
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, HeadWrapper)}


def peft_heads(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, AuxiliaryTrainingWrapper)}


def storage_modules(model: nn.Module) -> dict[str, SharedAdapterStorage]:
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, SharedAdapterStorage)}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def wrap_heads(model: nn.Module, heads: list[str]) -> list[str]:
    """Replace every module named (or suffixed) by an entry of ``heads`` with a ``HeadWrapper``."""
    wrapped = []
    for head in heads:
        names = [n for n, _ in model.named_modules() if matches(n, head)]
        names = [n for n in names if not any(n.startswith(w + ".") for w in wrapped)]
        if not names:
            raise ValueError(
                f"modules_to_save entry {head!r} matches no module of {type(model).__name__}; "
                f"its top-level modules are {[n for n, _ in model.named_children()]}"
            )
        for name in names:
            _set_submodule(model, name, HeadWrapper(model.get_submodule(name)))
        wrapped += names
    return wrapped


def prepare_model(
    model: nn.Module,
    method: str,
    config: Any,
    target_modules: list[str],
    heads: list[str],
    make_layer: Callable[[str, nn.Linear], AdapterLinear],
    regularizer: Callable[[nn.Module], torch.Tensor | None] | None = None,
    wrap: bool = True,
) -> nn.Module:
    """Freeze, inject (``make_layer(name, linear)`` per target, spec §1.1), wrap heads, attach the loss.

    ``regularizer(model)`` returns the method's extra loss (already weighted) or None; it is added to
    ``outputs.loss`` inside the forward so the training loop never has to know about it (§1.3).
    """
    if isinstance(getattr(model, INFO_ATTR, None), AdapterInfo):
        raise ValueError(f"model already carries a {model.adapter_info.method} adapter")
    heads = list(heads or [])
    targets = find_targets(
        model, list(target_modules), heads
    )  # before freezing: a bad preset leaves no trace
    freeze(model)
    for name in targets:
        _set_submodule(model, name, make_layer(name, model.get_submodule(name)))
    if wrap:  # else the caller wraps them (peft's modules_to_save); they are never targets either way
        wrap_heads(model, heads)
    info = AdapterInfo(method=method, config=config, targets=targets, heads=heads)
    setattr(model, INFO_ATTR, info)
    if regularizer is not None:
        info.hooks.append(model.register_forward_hook(_regularizer_hook(regularizer), with_kwargs=True))
    return model


def _get_loss(output):
    if isinstance(output, dict):
        return output.get("loss")
    return getattr(output, "loss", None)


def _regularizer_hook(regularizer: Callable[[nn.Module], torch.Tensor | None]):
    def hook(module: nn.Module, args, kwargs, output):
        info = get_info(module)
        loss = _get_loss(output)
        if loss is None:
            if module.training and not info.disabled:
                raise ValueError(
                    f"{info.method}: a training-mode forward returned no loss, so the adapter's "
                    "regulariser would be silently dropped; pass labels (and return_dict=True)"
                )
            return output
        if info.disabled:
            return output
        extra = regularizer(module)
        if extra is None:
            return output
        info.last_regularizer = extra.detach()
        loss = loss + extra.to(loss.dtype)
        if isinstance(output, dict):
            output["loss"] = loss  # ModelOutput keeps its attribute in sync with the key
        else:
            output.loss = loss
        return output

    return hook


# ---------------------------------------------------------------------------------------------------
# Disable and merge (spec §1.7)
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def disable_adapter(model: nn.Module) -> Iterator[None]:
    """Skip every adapter branch and use the original heads, so the model computes the base function.

    A merged model is unmerged for the duration and merged again on exit.
    """
    info = get_info(model)
    layers, heads = adapter_layers(model).values(), head_wrappers(model).values()
    merged = [layer for layer in layers if layer.merged]
    for layer in merged:
        layer.unmerge()
    for layer in layers:
        layer.disabled = True
    for head in heads:
        head.use_original = True
    info.disabled = True
    try:
        yield
    finally:
        info.disabled = False
        for head in heads:
            head.use_original = False
        for layer in layers:
            layer.disabled = False
        for layer in merged:
            layer.merge()


def merge(model: nn.Module) -> None:
    """W ← W0 + ΔW for every adapter layer; a second call warns and changes nothing."""
    layers = adapter_layers(model).values()
    if any(layer.merged for layer in layers):
        warnings.warn("model is already merged; merge() did nothing", stacklevel=2)
        return
    for layer in layers:
        layer.merge()


def unmerge(model: nn.Module) -> None:
    layers = adapter_layers(model).values()
    if not any(layer.merged for layer in layers):
        warnings.warn("model is not merged; unmerge() did nothing", stacklevel=2)
        return
    for layer in layers:
        if layer.merged:
            layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then put plain ``nn.Linear`` back and keep the trained heads: a model without adapter."""
    if not any(layer.merged for layer in adapter_layers(model).values()):
        merge(model)
    for name, layer in adapter_layers(model).items():
        _set_submodule(model, name, layer.base_layer)
    for name, head in head_wrappers(model).items():
        _set_submodule(model, name, head.trained_module)
    detach_adapter(model)
    return model


def detach_adapter(model: nn.Module) -> None:
    """Remove what injection left besides the layers: shared storage, hooks and ``adapter_info``."""
    info = get_info(model)
    for name in storage_modules(model):
        parent, _, child = name.rpartition(".")
        delattr(model.get_submodule(parent) if parent else model, child)
    for handle in info.hooks:
        handle.remove()
    delattr(model, INFO_ATTR)


def orth_penalty(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """‖A Aᵀ − I‖_F + ‖Bᵀ B − I‖_F (non-squared), A: r × d_in, B: d_out × r (AdaLoRA's convention)."""
    eye = torch.eye(A.shape[0], device=A.device, dtype=A.dtype)
    return torch.linalg.norm(A @ A.T - eye) + torch.linalg.norm(B.T @ B - eye)


def budget_report(model: nn.Module, target_total_rank: int | None) -> dict:
    """The §1.5 keys. Raises if a trainable parameter is neither adapter, spare nor head."""
    model = unwrap(model)
    layers, heads, stores = adapter_layers(model), head_wrappers(model), storage_modules(model)
    spare_ids = {id(p) for layer in layers.values() for p in layer.spare_parameters()}
    adapter = spare = head = 0
    seen = set()  # a layer may own its storage (a layer used alone): count each tensor once
    held = 0  # what self-counting stores hold beyond their active and spare values
    for store in stores.values():
        counts = getattr(store, "budget_counts", None)
        if counts is not None:  # a packed store (IncreLoRA) counts as the per-block layout did
            c = counts()
            adapter, spare = adapter + c["adapter"], spare + c["spare"]
            held += c["held"] - c["adapter"] - c["spare"]
            seen.update(id(p) for p in store.parameters())
    for module in (*layers.values(), *stores.values()):
        for name, p in module.named_parameters():
            if p.requires_grad and not name.startswith("base_layer.") and id(p) not in seen:
                seen.add(id(p))
                if id(p) in spare_ids:
                    spare += p.numel()
                else:
                    adapter += p.numel()
    for wrapper in heads.values():
        head += sum(p.numel() for p in wrapper.trained_module.parameters() if p.requires_grad)
    for wrapper in peft_heads(model).values():  # the tuners' heads: peft's modules_to_save
        head += sum(p.numel() for p in wrapper.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad) - held
    if adapter + spare + head != total:
        stray = [
            n
            for n, p in model.named_parameters()
            if p.requires_grad
            and not in_adapter(n, {**layers, **stores})
            and ".trained_module." not in f".{n}"
            and ".modules_to_save." not in f".{n}"
        ]
        raise RuntimeError(f"trainable parameters outside adapter layers and heads: {stray[:10]}")
    ranks = {name: layer.rank for name, layer in layers.items()}
    return {
        "trainable_total": total,
        "trainable_adapter": adapter,
        "trainable_spare": spare,
        "trainable_heads": head,
        "effective_adapter": sum(layer.effective_params() for layer in layers.values()),
        "total_rank": sum(ranks.values()),
        "target_total_rank": target_total_rank,
        "rank_pattern": ranks,
    }


def in_adapter(param_name: str, layers: dict[str, nn.Module]) -> bool:
    """True for a state-dict key or parameter name inside one of ``layers`` but not its base layer."""
    return any(param_name.startswith(name + ".") and ".base_layer." not in param_name for name in layers)


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter's own tensors: the layers' (not their base layers') and the shared storage's."""
    model = unwrap(model)
    layers, stores = adapter_layers(model), storage_modules(model)
    return [p for n, p in model.named_parameters() if in_adapter(n, {**layers, **stores})]

"""What the project's own adapter methods share: IncreLoRA and TriAdaptLoRA.

Both methods grow their factors during training, which peft's layers cannot do. They are peft tuners
(src/methods/peft_tuner.py: ``get_peft_model`` with their configs), whose layers and machinery live
here and work on a model injected directly as well (shared/spec/methods.md §1):

- ``AdapterLinear``: a peft ``BaseTunerLayer`` that wraps a target ``nn.Linear`` unchanged and adds a
  method-defined branch; knows how to merge itself from its ``delta_weight()``. Subclasses hold the
  factors.
- ``HeadWrapper``: trained copy + frozen original of a task head, for direct injection (the tuners
  use peft's ``ModulesToSaveWrapper``).
- ``prepare_model``: freeze, inject, wrap heads, attach the method's extra loss to the forward.
- ``disable_adapter`` / ``merge`` / ``unmerge`` / ``merge_and_unload``: the §1.7 plumbing.
- ``save_adapter`` / ``load_adapter``: the §1.6 directory format of a directly injected model,
  rebuilt shapes, strict key check (the tuners save with ``save_pretrained``).
- ``add_param_group``: one optimizer group per allocation event, scheduled per ``new_params_lr``.
- ``budget_report``: the §1.5 keys from the layers' own counts.
- ``GrowingAdapterMethod``: the harness contract (src/methods/base.py) through the tuner, wired to
  all of the above.

Per-model state (method name, config, hook handle) lives on the model as ``model.adapter_info`` so
that method objects stay stateless (src/methods/base.py); ``unwrap`` finds that model inside a
``PeftModel``.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import peft
import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from src import lr_schedule
from src.lr_schedule import group_lambda
from src.methods.base import AdapterMethod, find_targets

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
NEW_PARAMS_LR = ("follow", "restart_warmup", "static")
# where the HF loop runs the allocator (spec §1.4): on_optimizer_step, or on_pre_optimizer_step,
# where both references allocate (weights read before update t)
ALLOCATOR_TIMINGS = ("after_step", "before_step")


class ScheduleWarning(UserWarning):
    """The allocation schedule cannot reach the budget in the run (irrelevant to a loaded adapter)."""


def random_scores(seed: int | None, event: int, n: int) -> list[float]:
    """``score: random`` (spec §5.5): i.i.d. uniform scores from the run seed and the event number,
    so a resumed run draws what the uninterrupted one would have."""
    if seed is None:
        raise ValueError("score=random needs the run seed (method.seed); the training loop fills it")
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(event))
    return torch.rand(n, generator=generator, dtype=torch.float64).tolist()


# ---------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------
class AdapterLinear(nn.Module, BaseTunerLayer):
    """An ``nn.Linear`` (kept as ``base_layer``, same weight and bias tensors) plus an adapter branch.

    ``forward`` = base output + ``adapter_forward(x)`` unless the layer is merged (the branch already
    sits in the weight) or disabled (``disable_adapter``). Subclasses define the factors and the
    closed forms; everything generic (merge, dtype handling, flags) is here.

    It is also a peft ``BaseTunerLayer`` (src/methods/peft_tuner.py): one adapter per layer, so
    ``merged`` is peft's ``merged_adapters`` being non-empty and ``disabled`` is peft's
    ``disable_adapters``. The factors are not in per-adapter ``ModuleDict``s (growth appends tensors,
    and TriAdaptLoRA keeps them in one storage for the whole model), hence no ``adapter_layer_names``.
    """

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        self.merged_adapters = []  # per layer: peft's class attribute is one list shared by all
        self._disable_adapters = False
        self._active_adapter = "default"

    @property
    def disabled(self) -> bool:
        return self._disable_adapters

    @disabled.setter
    def disabled(self, value: bool) -> None:
        self._disable_adapters = bool(value)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:  # some model code reads .weight of its linears (dtype, device)
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    # -- what a subclass provides ---------------------------------------------------------------
    @abc.abstractmethod
    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter branch for input ``x`` (computed in fp32, any dtype returned)."""

    @abc.abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """The scaled update ΔW (d_out × d_in, fp32) that ``merge`` adds to the base weight."""

    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """Active rank r_i (what the budget and the rank pattern count)."""

    @abc.abstractmethod
    def block_sizes(self) -> list[int]:
        """Sizes of the growth blocks, in creation order (saved as the module's ``rank_pattern``)."""

    @abc.abstractmethod
    def restore_blocks(self, blocks: list[int]) -> None:
        """Grow a freshly injected layer to ``blocks`` (shapes only; values come from the file)."""

    @abc.abstractmethod
    def effective_params(self) -> int:
        """Adapter parameters implied by the live rank pattern (the method's closed form)."""

    def spare_parameters(self) -> list[nn.Parameter]:
        """Pre-allocated capacity that is not yet active (IncreLoRA's spare block); none by default."""
        return []

    # -- generic behaviour ------------------------------------------------------------------------
    def adapter_factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(h, Bᵀ) with adapter_forward(x) = h Bᵀ (Bᵀ: r × d_out), where the subclass can split its
        branch so; None where it cannot (then forward adds adapter_forward(x))."""
        return None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if self.merged or self.disabled:
            return out
        factored = self.adapter_factors(x)
        if factored is None:
            return out + self.adapter_forward(x).to(out.dtype)
        h, Bt = factored
        if h.dtype != out.dtype:
            return out + (h @ Bt).to(out.dtype)
        # W0 x + h Bᵀ as one addmm: one pass over the n × d_out output instead of two (product, then
        # add), in the forward and again in the backward
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1]), Bt)
        return flat.view(out.shape)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """W ← W0 + ΔW. ``safe_merge`` (peft's argument) refuses a ΔW with NaN or Inf entries."""
        if self.merged:
            warnings.warn("adapter layer is already merged; merge() did nothing", stacklevel=2)
            return
        delta = self.delta_weight()
        if safe_merge and not torch.isfinite(delta).all():
            raise ValueError("the adapter's update has NaN or Inf entries; it was not merged")
        self._add_to_weight(delta)
        self.merged_adapters = list(self.active_adapters)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("adapter layer is not merged; unmerge() did nothing", stacklevel=2)
            return
        self._add_to_weight(-self.delta_weight())
        self.merged_adapters = []

    def enable_adapters(self, enabled: bool) -> None:
        self._disable_adapters = not enabled

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) != 1:
            raise ValueError(f"a growing adapter layer holds one adapter; got {names}")
        self._active_adapter = names[0]

    @torch.no_grad()
    def _add_to_weight(self, delta: torch.Tensor) -> None:
        w = self.base_layer.weight
        # fp32 sum then cast back, so a bf16 base does not lose the (small) update to rounding twice
        w.copy_((w.float() + delta.to(w.device, torch.float32)).to(w.dtype))

    def check_not_merged(self, action: str) -> None:
        if self.merged:
            raise RuntimeError(f"cannot {action} a merged adapter layer; call unmerge() first")


class SharedAdapterStorage(nn.Module):
    """A module that holds the trained tensors of many adapter layers (TriAdaptLoRA's packed blocks).

    Its parameters count as adapter parameters in the budget, it is removed by ``merge_and_unload``,
    and it writes nothing to a state dict: each layer writes its own tensors under its own name, so
    saved adapters keep a per-module layout whatever the training-time storage (spec §5.2, D13).
    """

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        pass

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        pass


class HeadWrapper(nn.Module):
    """A task head trained with the adapter (spec §1.1): ``trained_module`` is a trainable copy,
    ``original_module`` the frozen original that ``disable_adapter`` switches back to."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original_module = original
        self.trained_module = copy.deepcopy(original)
        for p in self.original_module.parameters():
            p.requires_grad_(False)
        for p in self.trained_module.parameters():
            p.requires_grad_(True)
        self.use_original = False

    def forward(self, *args, **kwargs):
        return (self.original_module if self.use_original else self.trained_module)(*args, **kwargs)

    def __getattr__(self, name: str):
        # model code may read head attributes (e.g. DeBERTa's pooler.output_dim): serve the trained copy
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("trained_module", "original_module"):
                raise
            return getattr(super().__getattr__("trained_module"), name)


# ---------------------------------------------------------------------------------------------------
# Model-level state and traversal
# ---------------------------------------------------------------------------------------------------
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
        names = [n for n, _ in model.named_modules() if n == head or n.endswith("." + head)]
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


# ---------------------------------------------------------------------------------------------------
# Regularisation, optimizer groups, budget
# ---------------------------------------------------------------------------------------------------
def orth_penalty(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """‖A Aᵀ − I‖_F + ‖Bᵀ B − I‖_F (non-squared), A: r × d_in, B: d_out × r (AdaLoRA's convention)."""
    eye = torch.eye(A.shape[0], device=A.device, dtype=A.dtype)
    return torch.linalg.norm(A @ A.T - eye) + torch.linalg.norm(B.T @ B - eye)


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


def budget_report(model: nn.Module, target_total_rank: int | None) -> dict:
    """The §1.5 keys. Raises if a trainable parameter is neither adapter, spare nor head."""
    model = unwrap(model)
    layers, heads, stores = adapter_layers(model), head_wrappers(model), storage_modules(model)
    spare_ids = {id(p) for layer in layers.values() for p in layer.spare_parameters()}
    adapter = spare = head = 0
    seen = set()  # a layer may own its storage (a layer used alone): count each tensor once
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
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
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


# ---------------------------------------------------------------------------------------------------
# Save and load (spec §1.6)
# ---------------------------------------------------------------------------------------------------
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything the adapter adds: adapter-layer tensors (not the frozen base) and trained heads."""
    model = unwrap(model)
    layers = adapter_layers(model)
    state = {}
    for name, tensor in model.state_dict().items():
        if in_adapter(name, layers) or ".trained_module." in f".{name}":
            state[name] = tensor
    return state


def save_adapter(model: nn.Module, directory: str, extra: dict | None = None) -> None:
    """Write ``adapter_config.json`` (method, config, base model, rank pattern, ``extra``) and the
    tensors, one set per adapter layer under its own name."""
    info = get_info(model)
    if any(layer.merged for layer in adapter_layers(model).values()):
        raise RuntimeError("cannot save a merged adapter (ΔW is inside the base weights); unmerge first")
    os.makedirs(directory, exist_ok=True)
    config = getattr(model, "config", None)
    meta = {
        "method": info.method,
        "config": dataclasses.asdict(info.config),
        "base_model": {
            "name_or_path": getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None),
            "revision": getattr(config, "_commit_hash", None),
        },
        "rank_pattern": {name: layer.block_sizes() for name, layer in adapter_layers(model).items()},
        **(extra or {}),
    }
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    save_file(tensors, os.path.join(directory, WEIGHTS_FILE))


def read_adapter_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory!r}; is this an adapter directory?")
    with open(path) as f:
        return json.load(f)


def load_adapter(method, base_model: nn.Module, directory: str) -> nn.Module:
    """Inject ``method`` into ``base_model`` at init rank, grow to the saved pattern, load strictly."""
    meta = read_adapter_config(directory)
    if meta.get("method") != method.name:
        raise ValueError(f"{directory!r} holds a {meta.get('method')!r} adapter, not {method.name!r}")
    saved_base = (meta.get("base_model") or {}).get("name_or_path")
    current = getattr(getattr(base_model, "config", None), "_name_or_path", None)
    if saved_base and current and saved_base != current:
        warnings.warn(f"adapter was trained on {saved_base!r}, loading onto {current!r}", stacklevel=2)
    config = method.make_config(meta["config"])  # names unknown fields instead of a bare TypeError
    model = method.inject(base_model, config)
    restore_adapter(method, model, meta, directory)
    return model


def restore_adapter(method, model: nn.Module, meta: dict, directory: str) -> None:
    """Grow a freshly injected ``model`` to the saved pattern and load the saved tensors strictly."""
    restore_layout(method, model, meta, directory)
    load_adapter_state(model, load_file(os.path.join(directory, WEIGHTS_FILE)))


def restore_layout(method, model: nn.Module, meta: dict, source: str = "adapter_config.json") -> None:
    """Grow a freshly injected ``model`` to a saved layout (``rank_pattern`` and the method's extras)."""
    pattern = meta.get("rank_pattern")
    check_rank_pattern(pattern, adapter_layers(model))
    method.restore_blocks(model, {name: list(blocks) for name, blocks in pattern.items()}, meta)
    method.restore_extra(model, meta, source)  # e.g. IncreLoRA's spares: more shapes to rebuild


def check_rank_pattern(pattern, layers: dict[str, AdapterLinear]) -> None:
    """A saved pattern must name exactly the injected modules and extend each one's initial blocks."""
    if not isinstance(pattern, dict):
        raise ValueError(f"rank_pattern must map module names to block lists, got {type(pattern).__name__}")
    missing, unexpected = sorted(set(layers) - set(pattern)), sorted(set(pattern) - set(layers))
    if missing or unexpected:
        raise ValueError(
            f"rank_pattern does not match the injected modules: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, blocks in pattern.items():
        ok = isinstance(blocks, list) and blocks and all(isinstance(b, int) and b >= 1 for b in blocks)
        init = layers[name].block_sizes()
        if not ok or blocks[: len(init)] != init:
            raise ValueError(
                f"corrupted rank_pattern for {name!r}: {blocks!r} (expected positive block sizes "
                f"starting with the initial blocks {init})"
            )


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict load of the adapter tensors: missing, unexpected or mis-shaped keys are errors."""
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"adapter weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(
            f"adapter weight {k!r} has shape {tuple(state[k].shape)}, the model expects "
            f"{tuple(expected[k].shape)} ({len(bad)} mismatches; is the rank_pattern consistent?)"
        )
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"unexpected adapter keys: {result.unexpected_keys[:5]}")


# ---------------------------------------------------------------------------------------------------
# Contract half shared by the growing methods
# ---------------------------------------------------------------------------------------------------
class GrowingAdapterMethod(AdapterMethod):
    """``AdapterMethod`` whose budget, save/load, merge and disable come from this module.

    ``apply`` wraps the model in peft: ``get_peft_model`` with the method's ``peft_config_class``,
    whose tuner (src/methods/peft_tuner.py) calls ``inject`` and, at each optimizer step,
    ``grow_step``. Subclasses implement ``inject`` (via ``prepare_model``), ``regularizer`` and
    ``grow_step``, and keep ``target_total_rank`` in ``model.adapter_info.state`` for the budget
    report. Every method here also takes a model injected directly (``inject``), as unit tests do.
    """

    peft_config_class: type  # set by the method's module once its peft config class exists

    def restore_blocks(self, model: nn.Module, pattern: dict[str, list[int]], meta: dict) -> None:
        """Grow a freshly injected model to the saved (checked) rank pattern, shapes only."""
        layers = adapter_layers(model)
        for name, blocks in pattern.items():
            layers[name].restore_blocks(blocks)

    def restore_extra(self, model: nn.Module, meta: dict, directory: str) -> None:
        """Rebuild method-specific shapes from the saved config before the strict load (none here)."""

    @abc.abstractmethod
    def inject(self, model: nn.Module, config, heads: bool = True) -> nn.Module:
        """Freeze ``model`` and inject the layers (and storage, hooks, allocator state) in place;
        ``heads=False`` leaves the task heads to the caller (peft's ``modules_to_save``)."""

    def grow_step(self, model: nn.Module, optimizer, lr_scheduler, global_step: int) -> dict | None:
        """The allocator at optimizer step ``global_step``, on the model the layers live in."""
        return None

    def apply(self, model: nn.Module, config) -> nn.Module:
        return peft.get_peft_model(model, self.peft_config_class.from_method_config(config))

    def step(self, model, optimizer, lr_scheduler, global_step: int) -> dict | None:
        event = self.grow_step(unwrap(model), optimizer, lr_scheduler, global_step)
        tuner = tuner_of(model)
        if event is not None and tuner is not None:
            tuner.sync_config()  # the peft config's rank_pattern follows the growth
        return event

    def layout_extra(self, model: nn.Module) -> dict:
        """What a saved adapter needs besides the rank pattern to rebuild this model's shapes."""
        return {}

    def layout(self, model: nn.Module) -> dict:
        pattern = {name: layer.block_sizes() for name, layer in adapter_layers(model).items()}
        return {"rank_pattern": pattern, **self.layout_extra(model)}

    def batch(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Context in which many layers' factors are read at once (merging): one gather, not many."""
        return contextlib.nullcontext()

    def allocator_timing(self, model: nn.Module) -> str:
        return get_info(model).config.allocator_timing

    def extra_logs(self, model: nn.Module) -> dict[str, float]:
        reg = get_info(model).last_regularizer  # spec §5.7: logged apart from the task loss
        return {} if reg is None else {"orth_reg": float(reg)}

    def budget(self, model: nn.Module) -> dict:
        return budget_report(model, get_info(model).state.get("target_total_rank"))

    # -- persistence: peft's format through the tuner; this module's own for a directly injected model
    def save(self, model: nn.Module, directory: str) -> None:
        if tuner_of(model) is None:
            save_adapter(model, directory, extra=self.layout_extra(model))
        else:
            model.save_pretrained(directory)

    def load(self, base_model: nn.Module, directory: str) -> nn.Module:
        meta = read_adapter_config(directory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ScheduleWarning)  # a loaded adapter is used, not trained
            if "peft_type" not in meta:  # written by save_adapter (a directly injected model)
                return load_adapter(self, base_model, directory)
            expected = self.peft_config_class.__name__
            config = peft.PeftConfig.from_pretrained(directory)
            if type(config) is not self.peft_config_class:
                raise ValueError(f"{directory!r} holds a {meta['peft_type']} adapter, not a {expected}")
            return peft.PeftModel.from_pretrained(base_model, directory, config=config)

    def load_checkpoint(self, model: nn.Module, directory: str) -> None:
        tuner = tuner_of(model)
        if tuner is None:
            restore_adapter(self, model, read_adapter_config(directory), directory)
        else:
            restore_layout(self, unwrap(model), read_adapter_config(directory), directory)
            tuner.sync_config()
            path = os.path.join(directory, WEIGHTS_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{directory!r} has no {WEIGHTS_FILE}; it is not a training checkpoint"
                )
            result = peft.set_peft_model_state_dict(model, load_file(path))
            if result.unexpected_keys:
                raise ValueError(
                    f"checkpoint {directory!r} has keys the model lacks: {result.unexpected_keys[:3]}"
                )
        self._load_training_state_file(model, directory)

    def merge(self, model: nn.Module) -> None:
        tuner = tuner_of(model)
        if tuner is not None:
            tuner.merge_adapter()
            return
        with self.batch(model):
            merge(model)

    def unmerge(self, model: nn.Module) -> None:
        tuner = tuner_of(model)
        if tuner is not None:
            tuner.unmerge_adapter()
            return
        with self.batch(model):
            unmerge(model)

    def merge_and_unload(self, model: nn.Module) -> nn.Module:
        if tuner_of(model) is not None:
            return model.merge_and_unload()
        with self.batch(model):
            merge(model)
        return merge_and_unload(model)

    def disable_adapter(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        if isinstance(model, peft.PeftModel):
            return model.disable_adapter()
        return disable_adapter(model)

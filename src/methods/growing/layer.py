"""The growing methods' adapter layer (a peft ``BaseTunerLayer``), shared storage base and head wrapper."""

from __future__ import annotations

import abc
import copy
import warnings

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


class AdapterLinear(nn.Module, BaseTunerLayer):
    """An ``nn.Linear`` (kept as ``base_layer``, same weight and bias tensors) plus an adapter branch.

    ``forward`` = base output + ``adapter_forward(x)`` unless the layer is merged (the branch already
    sits in the weight) or disabled (``disable_adapter``). Subclasses define the factors and the
    closed forms; everything generic (merge, dtype handling, flags) is here.

    It is also a peft ``BaseTunerLayer`` (src/methods/growing/tuner.py): one adapter per layer, so
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

    # -- the packed store of the factors ------------------------------------------------------------
    def join_store(self, store: nn.Module, own: bool, init_rank: int) -> None:
        """Take a slot of ``init_rank`` in ``store``: this layer's own (built alone, a submodule whose
        tensors are the layer's parameters) or the one the model's layers share (the model owns it)."""
        if own:
            self.blocks = store
        else:
            self.__dict__["store_ref"] = store
        self.slot = store.add_layer(self, init_rank)
        if own:
            store.commit()

    @property
    def store(self) -> nn.Module:
        shared = self.__dict__.get("store_ref")
        return shared if shared is not None else self.blocks

    # -- the state dict: per-block tensors under this layer's name, whatever the storage ------------
    def _state_entries(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) of every factor, as saved: views into a shared store, written back on load."""
        return []

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, tensor in self._state_entries():
            destination[prefix + name] = tensor if keep_vars else tensor.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        mine = set()
        for name, target in self._state_entries():
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing.append(key)
                continue
            mine.add(key)
            value = state_dict[key]
            if value.shape != target.shape:
                errors.append(f"size mismatch for {key}: {tuple(value.shape)} vs {tuple(target.shape)}")
                continue
            with torch.no_grad():
                target.copy_(value)
        rest = {k: v for k, v in state_dict.items() if k not in mine}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing, unexpected, errors)

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

"""The parts of the contract that every peft-backed method (LoRA, AdaLoRA) shares.

peft already does injection, heads (``modules_to_save``), save/load, merge and disable; these thin
methods only translate the contract's calls and compute the budget from the live model.
"""

from __future__ import annotations

import os

import peft
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from src.methods.base import TRAINING_STATE_FILE, AdapterMethod, find_targets

CHECKPOINT_WEIGHTS = "trainable.safetensors"


class PeftMethod(AdapterMethod):
    """Subclasses set ``config_class`` and implement ``peft_config(config)`` and ``live_ranks(model)``."""

    def peft_config(self, config) -> peft.PeftConfig:
        raise TypeError(f"{type(self).__name__} must define peft_config()")

    def apply(self, model: nn.Module, config) -> nn.Module:
        # Validate the targets with the project's own matching rule first: peft's error for zero
        # matches does not say which names the backbone has.
        find_targets(model, list(config.target_modules), list(config.modules_to_save))
        adapted = peft.get_peft_model(model, self.peft_config(config))
        adapted.method_config = config
        return adapted

    # -- budget --------------------------------------------------------------------------------
    def adapted_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        return {
            name.removeprefix("base_model.model."): module
            for name, module in model.named_modules()
            if isinstance(module, peft.tuners.lora.LoraLayer)
        }

    def live_ranks(self, model: nn.Module) -> dict[str, int]:
        return {name: layer.r["default"] for name, layer in self.adapted_layers(model).items()}

    def effective_params(self, layer: nn.Module, rank: int) -> int:
        base = layer.get_base_layer()
        return rank * (base.in_features + base.out_features)

    def target_total_rank(self, model: nn.Module) -> int | None:
        return None

    def budget(self, model: nn.Module) -> dict:
        adapter = heads = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if "lora_" in name:
                adapter += p.numel()
            else:
                heads += p.numel()
        layers = self.adapted_layers(model)
        ranks = self.live_ranks(model)
        return {
            "trainable_total": adapter + heads,
            "trainable_adapter": adapter,
            "trainable_spare": 0,
            "trainable_heads": heads,
            "effective_adapter": sum(self.effective_params(layers[n], r) for n, r in ranks.items()),
            "total_rank": sum(ranks.values()),
            "target_total_rank": self.target_total_rank(model),
            "rank_pattern": ranks,
        }

    # -- persistence and deployment ------------------------------------------------------------
    def save(self, model: nn.Module, directory: str) -> None:
        model.save_pretrained(directory)

    def save_checkpoint(self, model: nn.Module, directory: str) -> None:
        # peft's save_pretrained may shrink AdaLoRA tensors to the rank pattern; a checkpoint keeps
        # the full trainable tensors so the resumed optimizer state matches them one to one.
        os.makedirs(directory, exist_ok=True)
        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, os.path.join(directory, CHECKPOINT_WEIGHTS))
        torch.save(self.training_state(model), os.path.join(directory, TRAINING_STATE_FILE))

    def load_checkpoint(self, model: nn.Module, directory: str) -> None:
        path = os.path.join(directory, CHECKPOINT_WEIGHTS)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{directory!r} has no {CHECKPOINT_WEIGHTS}; it is not a training checkpoint"
            )
        state = load_file(path)
        params = dict(model.named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        if set(state) != expected or any(params[n].shape != t.shape for n, t in state.items()):
            raise ValueError(
                f"checkpoint {directory!r} does not match the model: it was written with another "
                "method config or backbone (missing "
                f"{sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]})"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)
        self._load_training_state_file(model, directory)

    def load(self, base_model: nn.Module, directory: str) -> nn.Module:
        loaded = peft.PeftModel.from_pretrained(base_model, directory)
        loaded.method_config = None
        return loaded

    def merge(self, model: nn.Module) -> None:
        model.merge_adapter()

    def unmerge(self, model: nn.Module) -> None:
        model.unmerge_adapter()

    def merge_and_unload(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()

    def disable_adapter(self, model: nn.Module):
        return model.disable_adapter()

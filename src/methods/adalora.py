"""AdaLoRA (Zhang et al., ICLR 2023) from peft, with the schedule driven by our step hook (spec §3).

``transformers.Trainer`` never calls ``update_and_allocate``; without ``step`` below AdaLoRA would
silently be a fixed-rank SVD-form LoRA (peft #1327). Masking zeroes λ but never shrinks tensors
(peft #1801), so the effective budget is computed from the live rank pattern, not from numel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import peft
from torch import nn

from src.methods.base import register
from src.methods.peft_base import PeftMethod


@dataclass
class AdaLoRAMethodConfig:
    init_r: int = 12
    target_r: int = 8
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.1
    total_step: int | None = None
    lora_alpha: float = 32
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not 1 <= self.target_r <= self.init_r:
            raise ValueError(
                f"AdaLoRA needs 1 <= target_r <= init_r, got target_r={self.target_r}, init_r={self.init_r}"
            )
        if self.total_step is None or self.total_step < 1:
            raise ValueError("AdaLoRA needs total_step (optimizer steps T); the training loop fills it")
        for name in ("tinit", "tfinal"):
            if getattr(self, name) < 0:
                raise ValueError(f"method.{name} must be >= 0, got {getattr(self, name)}")
        if self.tinit + self.tfinal >= self.total_step:
            raise ValueError(
                f"AdaLoRA schedule leaves no budgeting phase: tinit ({self.tinit}) + tfinal ({self.tfinal}) "
                f">= total_step ({self.total_step}); lower method.tinit/method.tfinal or train longer"
            )
        if self.deltaT < 1:
            raise ValueError(f"method.deltaT must be >= 1, got {self.deltaT}")
        if self.orth_reg_weight < 0:
            raise ValueError(f"method.orth_reg_weight must be >= 0, got {self.orth_reg_weight}")


@register("adalora")
class AdaLoRA(PeftMethod):
    config_class = AdaLoRAMethodConfig

    def peft_config(self, config: AdaLoRAMethodConfig) -> peft.AdaLoraConfig:
        return peft.AdaLoraConfig(
            init_r=config.init_r,
            target_r=config.target_r,
            tinit=config.tinit,
            tfinal=config.tfinal,
            deltaT=config.deltaT,
            beta1=config.beta1,
            beta2=config.beta2,
            orth_reg_weight=config.orth_reg_weight,
            total_step=config.total_step,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            modules_to_save=list(config.modules_to_save),
        )

    def step(self, model, optimizer, lr_scheduler, global_step: int) -> dict | None:
        before = model.peft_config["default"].rank_pattern
        model.base_model.update_and_allocate(global_step)
        after = model.peft_config["default"].rank_pattern
        if after is not None and after is not before:
            return {"step": global_step, "total_rank": sum(self.live_ranks(model).values())}
        return None

    def training_state(self, model: nn.Module) -> dict:
        """peft's RankAllocator EMAs and the rank pattern it has fixed so far (None before tfinal)."""
        allocator = model.base_model.rankallocator
        return {
            "ipt": dict(allocator.ipt),
            "exp_avg_ipt": dict(allocator.exp_avg_ipt),
            "exp_avg_unc": dict(allocator.exp_avg_unc),
            "rank_pattern": model.peft_config["default"].rank_pattern,
        }

    def load_training_state(self, model: nn.Module, state: dict) -> None:
        allocator = model.base_model.rankallocator
        allocator.ipt, allocator.exp_avg_ipt = dict(state["ipt"]), dict(state["exp_avg_ipt"])
        allocator.exp_avg_unc = dict(state["exp_avg_unc"])
        model.peft_config["default"].rank_pattern = state["rank_pattern"]

    def live_ranks(self, model: nn.Module) -> dict[str, int]:
        """Live rank per module: True entries of peft's ``rank_pattern`` (init_r before the first mask)."""
        pattern = model.peft_config["default"].rank_pattern
        # peft keys the pattern by the lora_E parameter name ("<module>.lora_E.default"), without
        # the PeftModel prefix after a save/load round trip.
        live = {
            k.split(".lora_E")[0].removeprefix("base_model.model."): v for k, v in (pattern or {}).items()
        }
        return {
            name: int(sum(live[name])) if name in live else layer.r["default"]
            for name, layer in self.adapted_layers(model).items()
        }

    def effective_params(self, layer: nn.Module, rank: int) -> int:
        base = layer.get_base_layer()
        return rank * (base.in_features + base.out_features + 1)  # + λ

    def target_total_rank(self, model: nn.Module) -> int:
        return model.peft_config["default"].target_r * len(self.adapted_layers(model))

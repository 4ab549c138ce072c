"""LoRA (Hu et al., 2021) straight from peft: fixed rank r in every target, scaling α/r (spec §2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import peft

from src.methods.base import register
from src.methods.peft_builtin import PeftMethod


@dataclass
class LoRAMethodConfig:
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"method.r must be >= 1, got {self.r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"method.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.target_modules:
            raise ValueError("method.target_modules is empty; the backbone config lists them")


@register("lora")
class LoRA(PeftMethod):
    config_class = LoRAMethodConfig

    def peft_config(self, config: LoRAMethodConfig) -> peft.LoraConfig:
        return peft.LoraConfig(
            r=config.r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            modules_to_save=list(config.modules_to_save),
        )

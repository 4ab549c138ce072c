"""AdaLoRA (Zhang et al., ICLR 2023) from peft, with the schedule driven by our step hook (spec §3).

``transformers.Trainer`` never calls ``update_and_allocate``; without ``step`` below AdaLoRA would
silently be a fixed-rank SVD-form LoRA (peft #1327). Masking zeroes λ but never shrinks tensors
(peft #1801), so the effective budget is computed from the live rank pattern, not from numel.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import peft
import torch
from torch import nn

from src.methods.base import register
from src.methods.peft_builtin import PeftMethod


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
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"method.lora_dropout must be in [0, 1), got {self.lora_dropout}")


def _forward_through_tuner(self, *args, **kwargs):
    """``PeftModel.forward`` with ``self.base_model`` (the AdaLoraModel) in place of the bare
    transformers model, so that peft's own AdaLoraModel.forward adds the orthogonal regulariser."""
    with self._enable_peft_forward_hooks(*args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in self.special_peft_forward_args}
        return self.base_model(*args, **kwargs)


@register("adalora")
class AdaLoRA(PeftMethod):
    config_class = AdaLoRAMethodConfig

    def apply(self, model: nn.Module, config: AdaLoRAMethodConfig) -> nn.Module:
        adapted = super().apply(model, config)
        # A PeftModel built without a task_type forwards straight to the transformers model and skips
        # AdaLoraModel.forward, where peft adds γ·R_orth to the loss: the penalty would silently never
        # apply (spec §3 pitfall 4; the regulariser test in tests/test_methods.py fails without this).
        adapted.forward = types.MethodType(_forward_through_tuner, adapted)
        return adapted

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

    @torch.no_grad()
    def extra_logs(self, model: nn.Module) -> dict[str, float]:
        """The orthogonal regulariser peft adds to the training loss without reporting it (γ times the
        mean over lora_A and lora_B of ‖P Pᵀ − I‖_F, as in ``AdaLoraModel.forward``), recomputed at
        logging steps so that the task loss can be read apart, as for IncreLoRA and TriAdaptLoRA."""
        tuner = model.base_model
        name = tuner.trainable_adapter_name
        norms = []
        for param_name, p in tuner.model.named_parameters():
            if ("lora_A" in param_name or "lora_B" in param_name) and name in param_name:
                cov = p @ p.T if "lora_A" in param_name else p.T @ p
                norms.append(
                    torch.linalg.norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device))
                )
        if not norms:
            return {}
        return {"orth_reg": tuner.peft_config[name].orth_reg_weight * float(torch.stack(norms).mean())}

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

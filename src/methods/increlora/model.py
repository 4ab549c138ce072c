"""IncreLoRA's model: the §1.3 contract (``IncreLoRA``) and the peft tuner (``IncreLoraModel``)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from src.methods import growing
from src.methods.growing.allocator import growth_sizes, select_modules
from src.methods.growing.tuner import GrowingTuner
from src.methods.increlora.allocator import schedule_capacity
from src.methods.increlora.config import IncreLoRAConfig, IncreLoraConfig
from src.methods.increlora.layer import IncreLoRALinear


class IncreLoRA(growing.GrowingAdapterMethod):
    config_class = IncreLoRAConfig
    peft_config_class = IncreLoraConfig

    # -- injection -------------------------------------------------------------------------------
    def inject(self, model: nn.Module, config: IncreLoRAConfig, heads: bool = True) -> nn.Module:
        model = growing.prepare_model(
            model,
            self.name,
            config,
            list(config.target_modules),
            list(config.modules_to_save),
            make_layer=lambda name, linear: IncreLoRALinear(linear, config),
            regularizer=self.regularizer,
            wrap=heads,
        )
        layers = self.layers(model)
        target_total = config.target_rank * len(layers)
        info = growing.get_info(model)
        info.state["target_total_rank"] = target_total
        start = sum(layer.rank for layer in layers.values())
        if start < target_total:
            for layer in layers.values():
                layer.growing = True
                if config.advance_learning:
                    layer.set_spare(config.k)
            capacity = schedule_capacity(config, len(layers))
            if capacity < target_total - start:
                warnings.warn(
                    f"IncreLoRA can add at most {capacity} ranks before total_step={config.total_step} "
                    f"but needs {target_total - start} to reach R*={target_total}; the run will end below "
                    f"budget (raise top_h or lower init_warmup / incre_interval)",
                    growing.ScheduleWarning,
                    stacklevel=2,
                )
        return model

    @staticmethod
    def layers(model: nn.Module) -> dict[str, IncreLoRALinear]:
        return {n: m for n, m in growing.adapter_layers(model).items() if isinstance(m, IncreLoRALinear)}

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        groups = super().param_groups(model, lr, weight_decay)
        # The spares' E are frozen, so the default (requires_grad) collection misses them; the spec
        # puts them in the initial groups so that activation only flips requires_grad.
        held = {id(p) for g in groups for p in g["params"]}
        decay = next(g for g in groups if g["name"] == "decay")
        for layer in self.layers(model).values():
            decay["params"] += [p for p in layer.spare_parameters() if id(p) not in held]
        return groups

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        """γ / (2M) · Σ_i (‖A_i A_iᵀ − I‖_F + ‖B_iᵀ B_i − I‖_F), live spare per orth_include_spare."""
        config = growing.get_info(model).config
        if config.orth_reg_weight == 0:
            return None
        layers = self.layers(model).values()
        total = sum(layer.orth_terms(config.orth_include_spare) for layer in layers)
        return config.orth_reg_weight * total / (2 * len(layers))

    # -- schedule --------------------------------------------------------------------------------
    def growing(self, model: nn.Module) -> bool:
        """Growth phase: set at injection while R < R*, cleared by the event that reaches R*."""
        return any(layer.growing for layer in self.layers(model).values())

    def importance(self, model: nn.Module) -> dict[str, float]:
        """Ī·Ū per module (tests replace this to inject scores)."""
        return {name: layer.score for name, layer in self.layers(model).items()}

    def grow_step(self, model, optimizer, lr_scheduler, global_step: int) -> dict | None:
        if not self.growing(model):
            return None
        config = growing.get_info(model).config
        layers = self.layers(model)
        for layer in layers.values():
            layer.check_not_merged("grow")
        for layer in layers.values():  # every step while R < R*, warmup included
            layer.update_importance(config.beta1, config.beta2, config.score_norm)
        if global_step <= config.init_warmup or global_step % config.incre_interval != 0:
            return None
        if config.score == "random":  # the control of spec §5.5: same schedule, modules at random
            draws = growing.random_scores(config.seed, global_step, len(layers))
            scores = dict(zip(layers, draws, strict=True))
        else:
            scores = self.importance(model)
        return self.allocate(model, optimizer, lr_scheduler, global_step, scores)

    @torch.no_grad()
    def allocate(self, model, optimizer, lr_scheduler, global_step: int, scores: dict[str, float]) -> dict:
        """One allocation event: grow the top_h modules by (−score, module order) by g ranks each."""
        info = growing.get_info(model)
        config, target_total = info.config, info.state["target_total_rank"]
        layers = self.layers(model)
        total = sum(layer.rank for layer in layers.values())
        # released code, unclipped: min(top_h, R* - R) modules, k each, so R may pass R*
        n = config.top_h if config.clip_to_budget else min(config.top_h, target_total - total)
        names = list(layers)
        selected = [names[i] for i in select_modules([scores[name] for name in names], n)]
        sizes = growth_sizes(len(selected), total, target_total, config.k, config.clip_to_budget)
        plan = list(zip(selected, sizes, strict=False))
        total += sum(sizes)
        done = total >= target_total
        new_params, split, activated = [], [], []
        for name, g in plan:
            layer = layers[name]
            if config.advance_learning:
                split += layer.activate_spare(g)
                activated.append(layer.lora_E[-1])
                if not done or config.spares_after_growth == "keep":
                    new_params += layer.set_spare(config.k)
            else:
                triplets = layer.new_triplets(g, e_value=0.0, e_trainable=True)
                layer.append_block(*triplets)
                new_params += triplets
        if optimizer is not None:
            growing.move_optimizer_rows(optimizer, split)
            if config.activated_group == "new" and activated:
                # the activated E leave their spares' groups and start in this event's group
                growing.remove_from_groups(optimizer, activated)
                new_params = activated + new_params
            elif activated:
                # an optimizer built from the trainable tensors alone (a stock Trainer's) never held
                # the frozen spare E: without a group of their own they would not train
                held = {
                    id(p)
                    for g in getattr(optimizer, "optimizer", optimizer).param_groups
                    for p in g["params"]
                }
                new_params = [e for e in activated if id(e) not in held] + new_params
            if new_params:
                self._check_warmup(config, lr_scheduler)
                growing.add_param_group(
                    optimizer,
                    lr_scheduler,
                    new_params,
                    config.new_params_lr,
                    birth_step=global_step,
                    total_step=config.total_step,
                    name=f"increlora@{global_step}",
                    template=growing.adapter_parameters(model),
                )
        if done:
            for layer in layers.values():
                layer.end_growth()
        return {
            "step": global_step,
            "grown": dict(plan),
            "total_rank": total,
            "target_total_rank": target_total,
            "growth_done": done,
            "new_params": sum(p.numel() for p in new_params),
        }

    @staticmethod
    def _check_warmup(config: IncreLoRAConfig, lr_scheduler) -> None:
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
        known = getattr(getattr(scheduler, "default_lambda", None), "warmup_steps", None)
        if config.new_params_lr == "restart_warmup" and None not in (known, config.warmup_steps):
            if known != config.warmup_steps:
                raise ValueError(
                    f"method.warmup_steps={config.warmup_steps} but the LR scheduler warms up over "
                    f"{known} steps; restart_warmup would use the scheduler's value"
                )

    # -- persistence (budget, merge and disable come from GrowingAdapterMethod) ------------------
    def layout_extra(self, model: nn.Module) -> dict:
        return {
            "spare_pattern": {name: layer.spare_size for name, layer in self.layers(model).items()},
            "growth_done": not self.growing(model),
        }

    def training_state(self, model: nn.Module) -> dict:
        """Per module: the sensitivity EMAs Ī, Ū, the gradient sum G and the growth flag."""
        return {
            name: {
                "exp_avg_ipt": layer.exp_avg_ipt,
                "exp_avg_unc": layer.exp_avg_unc,
                "grad_sum": layer.grad_sum,
                "growing": layer.growing,
            }
            for name, layer in self.layers(model).items()
        }

    def load_training_state(self, model: nn.Module, state: dict) -> None:
        layers = self.layers(model)
        if set(state) != set(layers):
            raise ValueError("increlora checkpoint: allocator state names other modules than the model's")
        for name, layer in layers.items():
            saved = state[name]
            layer.exp_avg_ipt, layer.exp_avg_unc = saved["exp_avg_ipt"], saved["exp_avg_unc"]
            layer.grad_sum, layer.growing = saved["grad_sum"], bool(saved["growing"])

    def restore_extra(self, model: nn.Module, meta: dict, directory: str) -> None:
        """The spares' sizes and the end of growth, which the rank pattern alone does not say."""
        layers = self.layers(model)
        spares = meta.get("spare_pattern")
        if (
            not isinstance(spares, dict)
            or set(spares) != set(layers)
            or not all(isinstance(v, int) and v >= 0 for v in spares.values())
        ):
            raise ValueError(f"corrupted spare_pattern in {directory!r}: {spares!r}")
        for name, layer in layers.items():
            if spares[name] != layer.spare_size:
                layer.set_spare(spares[name])
        if meta.get("growth_done"):
            for layer in layers.values():
                layer.end_growth()


class IncreLoraModel(GrowingTuner):
    """The peft tuner model: this module's layers, grown by ``update_and_allocate`` (or
    ``src.methods.RankGrowthCallback`` in a Trainer)."""

    prefix = "increlora_"

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
from src.methods.increlora.storage import IncreLoRABlocks

STORE_NAME = "increlora_blocks"  # the model's IncreLoRABlocks submodule


class IncreLoRA(growing.GrowingAdapterMethod):
    config_class = IncreLoRAConfig
    peft_config_class = IncreLoraConfig

    # -- injection -------------------------------------------------------------------------------
    def inject(self, model: nn.Module, config: IncreLoRAConfig, heads: bool = True) -> nn.Module:
        store = IncreLoRABlocks()
        store.include_spare = config.orth_include_spare
        store.penalised = config.orth_reg_weight > 0 and config.orth_include_spare
        # after growth a spare trains only inside the regulariser (keep); otherwise it is frozen
        store.spares_train_after_growth = (
            config.spares_after_growth == "keep" and config.orth_include_spare and config.orth_reg_weight > 0
        )
        model = growing.prepare_model(
            model,
            self.name,
            config,
            list(config.target_modules),
            list(config.modules_to_save),
            make_layer=lambda name, linear: IncreLoRALinear(linear, config, store=store),
            regularizer=self.regularizer,
            wrap=heads,
        )
        layers = self.layers(model)
        target_total = config.target_rank * len(layers)
        info = growing.get_info(model)
        info.state["target_total_rank"] = target_total
        start = config.init_rank * len(layers)  # the initial blocks wait in the store until commit
        if start < target_total:
            for layer in layers.values():
                layer.growing = True
                if config.advance_learning:
                    store.add_spare(layer.slot, config.k)
            capacity = schedule_capacity(config, len(layers))
            if capacity < target_total - start:
                warnings.warn(
                    f"IncreLoRA can add at most {capacity} ranks before total_step={config.total_step} "
                    f"but needs {target_total - start} to reach R*={target_total}; the run will end below "
                    f"budget (raise top_h or lower init_warmup / incre_interval)",
                    growing.ScheduleWarning,
                    stacklevel=2,
                )
        store.commit()
        model.add_module(STORE_NAME, store)
        info.hooks += store.hook(model)  # after the regulariser's: it reads this forward's factors
        return model

    @staticmethod
    def store(model: nn.Module) -> IncreLoRABlocks:
        return growing.unwrap(model).get_submodule(STORE_NAME)

    def batch(self, model: nn.Module):
        return self.store(model).session()

    @staticmethod
    def layers(model: nn.Module) -> dict[str, IncreLoRALinear]:
        return {n: m for n, m in growing.adapter_layers(model).items() if isinstance(m, IncreLoRALinear)}

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        """γ / (2M) · Σ_i (‖A_i A_iᵀ − I‖_F + ‖B_iᵀ B_i − I‖_F), live spare per orth_include_spare."""
        config = growing.get_info(model).config
        if config.orth_reg_weight == 0:
            return None
        store = self.store(model)
        return store.orth_penalty_sum() * (config.orth_reg_weight / (2 * len(store.layers)))

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
        with self.store(model).session():  # every step while R < R*, warmup included: one gather
            for layer in layers.values():
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
        store = self.store(model)
        if config.advance_learning:
            fresh = not done or config.spares_after_growth == "keep"
            new_params, birth, count = self._activate(store, layers, plan, config, fresh)
        else:
            items = [(layers[name].slot, "block", layers[name].new_values(g, 0.0)) for name, g in plan]
            event = store.new_event(items) if items else None
            new_params, birth = [] if event is None else [event], {}
            count = sum(g * (layers[n].in_features + layers[n].out_features + 1) for n, g in plan)
        if optimizer is not None:
            new_params += self._join_birth_groups(model, optimizer, store, birth)
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
            "new_params": count,  # as the per-block layout counted: fresh triplets, activated E (new)
        }

    @staticmethod
    def _activate(store, layers, plan, config, fresh: bool) -> tuple[list, dict, int]:
        """Advance learning: activate the selected spares and make fresh ones (``fresh``).

        Returns this event's tensor (fresh spares' A and Bᵀ and, with ``activated_group = new``, the
        activated E), the E tensors per spare birth event (``birth``) and the per-block count of
        what the event's new group holds.
        """
        activated = []
        for name, g in plan:
            slot = layers[name].slot
            birth_event = store.spares[slot].a.event
            activated.append((slot, birth_event, store.activate(slot, g)))
        items, count = [], 0
        if fresh:  # drawn in selection order, as the per-block layout drew them
            items = [
                (layers[n].slot, "spare", layers[n].new_values(config.k, layers[n].spare_lambda))
                for n, _ in plan
            ]
            count = sum(config.k * (layers[n].in_features + layers[n].out_features + 1) for n, _ in plan)
        by_birth: dict[int, list] = {}
        if config.activated_group == "new":
            items += [(slot, "e", {"e": e}) for slot, _, e in activated]
            count += sum(e.numel() for _, _, e in activated)
        else:
            for slot, b, e in activated:
                by_birth.setdefault(b, []).append((slot, "e", {"e": e}))
        event = store.new_event(items) if items else None
        for (slot, role, _), rows in zip(items, store.placed if items else [], strict=True):
            if role == "e":
                store.place_e(slot, rows)
        birth = {}
        for b, e_items in by_birth.items():
            birth[b] = store.new_event(e_items)
            for (slot, _, _), rows in zip(e_items, store.placed, strict=True):
                store.place_e(slot, rows)
        return ([] if event is None else [event]), birth, count

    @staticmethod
    def _join_birth_groups(model, optimizer, store, birth: dict) -> list:
        """``activated_group = birth``: the E activated from spares born at event b join b's group,
        as the per-block E stayed in its spare's; returns those whose group the optimizer lacks."""
        inner = getattr(optimizer, "optimizer", optimizer)
        names = {id(p): n for n, p in growing.unwrap(model).named_parameters()}
        orphans = []
        for b, tensor in birth.items():
            home = getattr(store, f"event_{b}")
            group = next((g for g in inner.param_groups if any(p is home for p in g["params"])), None)
            if group is None:
                orphans.append(tensor)
                continue
            group["params"].append(tensor)
            if "param_names" in group:
                group["param_names"].append(names[id(tensor)])
        return orphans

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
            # where each triplet lives: a resumed run rebuilds the same event tensors, so the saved
            # optimizer state (one entry per event tensor) loads onto the right values
            "store_layout": self.store(model).layout(),
        }

    def restore_blocks(self, model: nn.Module, pattern: dict[str, list[int]], meta: dict) -> None:
        """The saved store layout where there is one; adapters saved before it get one event per
        block (the layout does not matter for a loaded adapter; only a resumed optimizer needs it)."""
        layout = meta.get("store_layout")
        if layout is None:
            return super().restore_blocks(model, pattern, meta)
        layers = self.layers(model)
        sizes = [[t[-1] for t in blocks] for blocks in layout.get("blocks", [])]
        if sizes != [pattern.get(name) for name in layers]:
            raise ValueError(
                "the block shapes in store_layout do not match rank_pattern; adapter_config.json is corrupted"
            )
        self.store(model).restore(layout)

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
        self.store(model).changed()  # the growth flags decide which rows the gather reads

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

"""TriAdaptLoRA's model: the §1.3 contract (``TriAdaptLoRA``) and the peft tuner (``TriAdaptLoraModel``)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from src.methods import growing
from src.methods.base import find_targets
from src.methods.growing.allocator import growth_sizes, last_allocator_step, select_modules
from src.methods.growing.tuner import GrowingTuner
from src.methods.triadapt.allocator import allocation_size, dry_run_schedule, is_event_step, progress
from src.methods.triadapt.config import TriAdaptConfig, TriAdaptLoraConfig
from src.methods.triadapt.layer import TriAdaptLinear
from src.methods.triadapt.storage import TriAdaptBlocks

STORE_NAME = "triadapt_blocks"  # the model's TriAdaptBlocks submodule


class TriAdaptLoRA(growing.GrowingAdapterMethod):
    """The §1.3 contract for TriAdaptLoRA; state lives on the model (``model.adapter_info.state``)."""

    config_class = TriAdaptConfig
    peft_config_class = TriAdaptLoraConfig

    def inject(self, model: nn.Module, config: TriAdaptConfig, heads: bool = True) -> nn.Module:
        if isinstance(config, dict):
            config = TriAdaptConfig(**config)
        num_modules = len(find_targets(model, config.target_modules, config.modules_to_save))
        target_total = config.target_total_rank or config.reference_rank * num_modules
        if target_total < config.init_rank * num_modules:
            raise ValueError(
                f"triadapt: target_total_rank={target_total} is below init_rank·M = "
                f"{config.init_rank}·{num_modules}; nothing could ever be allocated"
            )

        store = TriAdaptBlocks()
        store.penalised = config.orth_reg_weight > 0

        def make_layer(name: str, linear: nn.Linear) -> TriAdaptLinear:
            return TriAdaptLinear(
                linear,
                init_rank=config.init_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                scaling=config.scaling,
                reference_rank=config.reference_rank,
                init=config.init,
                init_std=config.init_std,
                store=store,
            )

        model = growing.prepare_model(
            model,
            self.name,
            config,
            config.target_modules,
            config.modules_to_save,
            make_layer,
            self.regularizer,
            wrap=heads,
        )
        store.commit()
        model.add_module(STORE_NAME, store)
        layers = growing.adapter_layers(model)
        info = growing.get_info(model)
        info.hooks += store.hook(model)  # after the regulariser's: it reads this forward's factors
        info.state.update(
            target_total_rank=target_total,
            norm_prev=dict(zip(layers, store.norms(config.norm_divisor), strict=True)),
            events=0,
        )
        events = dry_run_schedule(
            len(layers),
            config.init_rank,
            target_total,
            config.incre_rank_num,
            config.total_step,
            config.init_warmup,
            config.incre_interval,
            config.schedule,
            config.top_h,
            config.clip_to_budget,
            last_step=last_allocator_step(config.total_step, config.allocator_timing),
        )
        reached = events[-1]["total_rank"] if events else config.init_rank * len(layers)
        if reached < target_total:
            warnings.warn(
                f"triadapt: the schedule reaches total rank {reached} of {target_total} by step "
                f"{config.total_step} ({len(events)} events); lower init_warmup/incre_interval, raise "
                "incre_rank_num or train longer",
                growing.ScheduleWarning,
                stacklevel=2,
            )
        return model

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        """γ · R_orth over the concatenated A and B of every module (spec §5.7), never over T."""
        config = growing.get_info(model).config
        if config.orth_reg_weight == 0:
            return None
        store = self.store(model)
        n = len(store.layers)
        denom = 2 * n if config.orth_reduction == "per_factor" else n
        return store.orth_penalty_sum() * (config.orth_reg_weight / denom)

    def importance(self, model: nn.Module) -> list[float]:
        """S_i per module in module order (spec §5.5); updates N_prev for every module."""
        info = growing.get_info(model)
        config, prev = info.config, info.state["norm_prev"]
        layers = growing.adapter_layers(model)
        norms = self.store(model).norms(config.norm_divisor)
        scores = []
        for name, current in zip(layers, norms, strict=True):
            scores.append(current - prev[name] if config.score == "increment" else current)
            prev[name] = current
        if config.score == "random":  # the control of spec §5.5: same schedule, modules at random
            return growing.random_scores(config.seed, info.state["events"], len(scores))
        return scores

    def grow_step(self, model, optimizer, lr_scheduler, global_step: int) -> dict | None:
        """Allocation hook (spec §5.10 step 5). Returns a log record on events, else None."""
        info = growing.get_info(model)
        config, target_total = info.config, info.state["target_total_rank"]
        layers = growing.adapter_layers(model)
        total = sum(layer.rank for layer in layers.values())
        if total >= target_total or not is_event_step(global_step, config.init_warmup, config.incre_interval):
            return None
        if any(layer.merged for layer in layers.values()):
            raise RuntimeError("triadapt: cannot grow a merged model; unmerge() before training on")
        scores = self.importance(model)
        k = allocation_size(
            config.schedule,
            target_total - total,
            global_step,
            config.init_warmup,
            config.total_step,
            config.top_h,
            len(layers),
        )
        names = list(layers)
        selected = [names[i] for i in select_modules(scores, k, config.selection)]
        sizes = growth_sizes(len(selected), total, target_total, config.incre_rank_num, config.clip_to_budget)
        grown = dict(zip(selected, sizes, strict=False))
        new_params = self.store(model).grow([(layers[name].slot, g) for name, g in grown.items()])
        if optimizer is not None:
            growing.add_param_group(
                optimizer,
                lr_scheduler,
                new_params,
                config.new_params_lr,
                global_step,
                config.total_step,
                name=f"triadapt@{global_step}",
                template=growing.adapter_parameters(model),
            )
        info.state["events"] += 1
        return {
            "step": global_step,
            "p": progress(global_step, config.init_warmup, config.total_step),
            "K": k,
            "selected": selected,
            "grown": grown,
            "total_rank": total + sum(sizes),
            "target_total_rank": target_total,
            "new_params": sum(p.numel() for p in new_params),
        }

    @staticmethod
    def store(model: nn.Module) -> TriAdaptBlocks:
        return growing.unwrap(model).get_submodule(STORE_NAME)

    def layout_extra(self, model: nn.Module) -> dict:
        # which event made each block: a resumed run rebuilds the same event tensors, so the saved
        # optimizer state (one entry per event tensor) loads onto the right values
        store, layers = self.store(model), growing.adapter_layers(model)
        return {
            "block_events": {
                name: [b.event for b in store.blocks[layer.slot]] for name, layer in layers.items()
            }
        }

    def batch(self, model: nn.Module):
        return self.store(model).session()

    def restore_blocks(self, model: nn.Module, pattern: dict[str, list[int]], meta: dict) -> None:
        """Rebuild the event tensors of the saved run: blocks born at one event share one tensor.

        Adapters saved before block_events existed get one event per block index (the layout does
        not matter for a loaded adapter; only a resumed optimizer needs the original one).
        """
        store, layers = self.store(model), growing.adapter_layers(model)
        events = meta.get("block_events") or {n: list(range(len(b))) for n, b in pattern.items()}
        if set(events) != set(pattern) or any(len(events[n]) != len(pattern[n]) for n in pattern):
            raise ValueError("block_events does not match rank_pattern; the adapter_config.json is corrupted")
        born: dict[int, list[tuple[int, int]]] = {}
        for name, blocks in pattern.items():
            layer = layers[name]
            have = len(layer.block_sizes())
            if blocks[:have] != layer.block_sizes():
                raise ValueError(
                    f"block pattern {blocks} does not extend {name}'s blocks {layer.block_sizes()}"
                )
            for k, e in zip(blocks[have:], events[name][have:], strict=True):
                born.setdefault(e, []).append((layer.slot, k))
        for e in sorted(born):
            store.grow(born[e], init=False)

    def training_state(self, model: nn.Module) -> dict:
        state = growing.get_info(model).state
        return {"norm_prev": dict(state["norm_prev"]), "events": state["events"]}

    def load_training_state(self, model: nn.Module, state: dict) -> None:
        info = growing.get_info(model)
        if set(state["norm_prev"]) != set(info.state["norm_prev"]):
            raise ValueError("triadapt checkpoint: norm_prev names other modules than the model's")
        info.state.update(norm_prev=dict(state["norm_prev"]), events=int(state["events"]))


class TriAdaptLoraModel(GrowingTuner):
    """The peft tuner model: this module's layers and ``TriAdaptBlocks`` storage, grown by
    ``update_and_allocate`` (or ``src.methods.RankGrowthCallback`` in a Trainer)."""

    prefix = "triadapt_"

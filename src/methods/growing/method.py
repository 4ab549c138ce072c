"""``GrowingAdapterMethod``: the harness contract (src/methods/base.py) for the growing methods."""

from __future__ import annotations

import abc
import contextlib
import os
import warnings

import peft
from safetensors.torch import load_file
from torch import nn

from src.methods.base import AdapterMethod
from src.methods.growing.allocator import ScheduleWarning, last_allocator_step
from src.methods.growing.injection import (
    adapter_layers,
    budget_report,
    disable_adapter,
    get_info,
    merge,
    merge_and_unload,
    tuner_of,
    unmerge,
    unwrap,
)
from src.methods.growing.persistence import (
    WEIGHTS_FILE,
    load_adapter,
    read_adapter_config,
    restore_adapter,
    restore_layout,
    save_adapter,
)


class GrowingAdapterMethod(AdapterMethod):
    """``AdapterMethod`` whose budget, save/load, merge and disable come from this module.

    ``apply`` wraps the model in peft: ``get_peft_model`` with the method's ``peft_config_class``,
    whose tuner (src/methods/growing/tuner.py) calls ``inject`` and, at each optimizer step,
    ``grow_step``. Subclasses implement ``inject`` (via ``prepare_model``), ``regularizer`` and
    ``grow_step``, and keep ``target_total_rank`` in ``model.adapter_info.state`` for the budget
    report. Every method here also takes a model injected directly (``inject``), as unit tests do.
    """

    peft_config_class: type  # the method's PeftConfig subclass

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
        """``global_step`` is t, the optimizer step being taken (1-based), at either timing.

        The allocator is given the count of updates already done: t after ``optimizer.step()``
        (``after_step``), t − 1 before it (``before_step``), the released code's 0-based
        ``global_step`` (spec §1.4); so an event at step s has always seen s updates.
        """
        done = last_allocator_step(global_step, self.allocator_timing(model))
        event = self.grow_step(unwrap(model), optimizer, lr_scheduler, done)
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

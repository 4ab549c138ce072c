"""The growing methods as peft tuners: config, layer and model, registered with peft by name.

peft has no rank-growth method, and its tuners build their layers once. Here the layer is this
codebase's ``AdapterLinear`` (a peft ``BaseTunerLayer``), the model is ``GrowingTuner`` (a peft
``BaseTuner``) that injects a method's layers and storage exactly as ``src.train`` does, and the
config is a ``PeftConfig`` that also carries the grown shapes (``rank_pattern`` plus what each method
needs to rebuild its layout), so ``save_pretrained`` / ``PeftModel.from_pretrained`` round-trip a
grown adapter. Importing ``src.methods`` registers ``triadaptlora`` and ``increlora`` with peft.

Growth needs the optimizer: ``GrowingTuner.update_and_allocate(step, optimizer, lr_scheduler)`` in a
custom loop, or ``RankGrowthCallback`` in a ``transformers.Trainer`` (it calls the former at the
spec's point of the HF loop, §1.4).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any, ClassVar

from aenum import extend_enum
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType
from peft.utils.other import AuxiliaryTrainingWrapper, set_additional_trainable_modules
from peft.utils.peft_types import register_peft_method
from torch import nn

from src.methods.base import METHODS
from src.methods.base import register as register_method
from src.methods.growing import resume
from src.methods.growing.allocator import ScheduleWarning
from src.methods.growing.injection import (
    INFO_ATTR,
    adapter_layers,
    adapter_parameters,
    detach_adapter,
    get_info,
    in_adapter,
)
from src.methods.growing.layer import AdapterLinear
from src.methods.growing.method import GrowingAdapterMethod
from src.methods.growing.persistence import restore_layout
from src.target_names import matches


class GrowingPeftConfig:
    """What the two methods' ``PeftConfig`` classes share (mixed in before the method's dataclass).

    Every field of the method's own config (``method_config_class``) is a field here, plus
    ``rank_pattern`` (module -> block sizes, in creation order) and the method's layout fields
    (``layout_fields``); those are None for a fresh adapter and kept current by the tuner.
    """

    method_config_class: ClassVar[type]
    layout_fields: ClassVar[tuple[str, ...]] = ()

    def method_config(self):
        """The harness's config dataclass with this config's values (validated again)."""
        names = [f.name for f in dataclasses.fields(self.method_config_class)]
        return self.method_config_class(**{n: getattr(self, n) for n in names})

    @classmethod
    def from_method_config(cls, config, **fields: Any):
        """The peft config of a harness config dataclass (``src.train``'s path into the tuner)."""
        return cls(**dataclasses.asdict(config), **fields)

    def layout(self) -> dict:
        return {"rank_pattern": self.rank_pattern, **{f: getattr(self, f) for f in self.layout_fields}}

    @classmethod
    def registered_peft_type(cls) -> PeftType:
        """The peft type this class is registered under (``register_growing_method``)."""
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        for peft_type, config_cls in PEFT_TYPE_TO_CONFIG_MAPPING.items():
            if config_cls is cls:
                return peft_type
        raise ValueError(f"{cls.__name__} is not registered with peft; import src.methods first")


def register_growing_method(
    name: str, peft_name: str, method_cls: type, config_cls: type, model_cls: type
) -> None:
    """The one place a growing method's names are tied to its classes: ``method=<name>`` in Hydra
    (the registry of src/methods/base.py; run records and run ids carry it) and ``peft_name`` for
    peft (``PeftType[peft_name.upper()]``, the ``peft_type`` of a saved adapter_config.json). Both
    are fixed by saved work, so TriAdaptLoRA keeps two spellings (``triadapt``, ``triadaptlora``).
    Everything else finds one from the other through the two registries (``method_for``,
    ``GrowingPeftConfig.registered_peft_type``)."""
    if method_cls.peft_config_class is not config_cls:
        raise TypeError(f"{method_cls.__name__}.peft_config_class is not {config_cls.__name__}")
    register_method(name)(method_cls)
    register(peft_name, config_cls, model_cls)


def method_for(config_cls: type) -> GrowingAdapterMethod:
    """The registered method whose peft config class is ``config_cls``."""
    for cls in METHODS.values():
        if getattr(cls, "peft_config_class", None) is config_cls:
            return cls()
    raise ValueError(f"no registered method uses {config_cls.__name__}; import src.methods first")


def register(name: str, config_cls: type, model_cls: type) -> None:
    """Register a method with peft; idempotent. ``PeftType`` lists peft's own methods only, so the
    name is added to it first (aenum's ``extend_enum``; the stdlib enum cannot grow)."""
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )

    key = name.upper()
    if key not in PeftType.__members__:
        extend_enum(PeftType, key, key)
    peft_type = PeftType[key]
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:  # a re-import: point peft at the current classes
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
        PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = model_cls.prefix
        return
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=model_cls.prefix)


class GrowingTuner(BaseTuner):
    """A peft tuner model around one of this codebase's growing methods (the one its config's
    class belongs to, ``method_for``).

    One adapter per model: the allocator's state and TriAdaptLoRA's storage are per model. The
    method's own machinery does the work (src/methods/growing/ and the method's package), on the
    wrapped model ``self.model``, so the rank pattern names modules as the base model does.
    """

    tuner_layer_cls = AdapterLinear
    target_module_mapping: ClassVar[dict] = {}
    uses_shared_state = True  # TriAdaptLoRA's storage; peft's inject_adapter_in_model refuses such tuners

    @property
    def method(self) -> GrowingAdapterMethod:
        return method_for(type(self.adapter_config))

    @property
    def adapter_config(self) -> GrowingPeftConfig:
        # not ``config``: a PeftModel forwards .config through its tuner to the model's own config,
        # which transformers code reads (is_encoder_decoder, ...)
        return self.peft_config[self.active_adapters[0]]

    # -- injection --------------------------------------------------------------------------------
    def _prepare_adapter_config(self, peft_config, model_config):
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config, key: str) -> bool:
        return any(matches(key, t) for t in peft_config.target_modules)

    def _create_and_replace(self, *args, **kwargs):
        # peft's per-module injection hook; these tuners inject every layer at once, with one storage
        raise RuntimeError(f"{type(self).__name__} injects all its layers in inject_adapter, not one by one")

    def inject_adapter(
        self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True, **kwargs
    ) -> None:
        if len(self.peft_config) > 1 or hasattr(model, INFO_ATTR):
            raise ValueError(
                f"{type(self).__name__} holds one adapter per model; load the second one into a fresh "
                "copy of the base model"
            )
        config = self.peft_config[adapter_name]
        method = method_for(type(config))
        loading = config.rank_pattern is not None  # a saved adapter: grow to its shapes, then load
        with warnings.catch_warnings():
            if loading:  # its schedule is history: whether it could reach the budget is moot
                warnings.simplefilter("ignore", ScheduleWarning)
            method.inject(model, config.method_config(), heads=False)  # heads: peft's modules_to_save
        if loading:
            restore_layout(method, model, config.layout())
        info = get_info(model)
        self.targeted_module_names = list(info.targets)
        if config.inference_mode:
            for p in adapter_parameters(model):
                p.requires_grad_(False)
        set_additional_trainable_modules(
            model=model,
            peft_config=config,
            model_config=BaseTuner.get_model_config(self),
            adapter_name=adapter_name,
            activate_adapter=True,
        )
        self.sync_config()

    # -- a stock Trainer's resume (resume.py) --------------------------------------------------------
    growth_callback = None  # the RankGrowthCallback training this model: checkpoints carry its state
    resume_state = None  # the resume state of the checkpoint loaded last, until the callback applies it

    def restore_layout_for_resume(self, saved: dict) -> None:
        """Grow a fresh model to a training checkpoint's layout, and keep the rest for the callback."""
        current = _as_json(self.method.layout(self.model))
        if current != _as_json(saved["layout"]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ScheduleWarning)
                try:
                    restore_layout(self.method, self.model, saved["layout"], "the checkpoint")
                except ValueError as e:
                    raise ValueError(
                        f"cannot load a grown training checkpoint into this model ({e}); resume into a "
                        f"model fresh from get_peft_model (its layout is {current[:80]}...)"
                    ) from e
            self.sync_config()
        self.resume_state = saved

    def sync_config(self) -> None:
        """Write the live shapes into the config, so ``save_pretrained`` saves what is trained."""
        for key, value in self.method.layout(self.model).items():
            setattr(self.adapter_config, key, value)

    # -- growth -----------------------------------------------------------------------------------
    @property
    def allocator_timing(self) -> str:
        """ "after_step" or "before_step": where in an optimizer step the allocator runs (spec §1.4)."""
        return self.adapter_config.allocator_timing

    def update_and_allocate(self, global_step: int, optimizer=None, lr_scheduler=None) -> dict | None:
        """Run the allocator for optimizer step ``global_step`` (1-based: the step being taken).

        Call it once per optimizer step, with gradients still in place: after ``optimizer.step()``
        (``allocator_timing`` "after_step", the default) or just before it ("before_step"; the
        allocator then counts t − 1 updates done, as the released code does, spec §1.4). On an
        allocation event it adds the new tensors to ``optimizer`` as one new param group and
        registers that group with ``lr_scheduler`` (a ``LambdaLR``, e.g. transformers' linear
        schedule), and returns a record of the event; otherwise None. Without an optimizer the new
        tensors are created but nothing trains them.
        """
        return self.method.step(self, optimizer, lr_scheduler, global_step)  # grows, then sync_config()

    def budget(self) -> dict:
        """Trainable counts, effective parameters, total rank and rank pattern (spec §1.5)."""
        return self.method.budget(self.model)

    # -- enable, merge, unload --------------------------------------------------------------------
    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        info = get_info(self.model)
        with self.method.batch(self.model):
            for module in self.model.modules():
                if isinstance(module, AdapterLinear) and not enabled and module.merged:
                    module.unmerge()  # a disabled layer computes the base function
                if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
                    module.enable_adapters(enabled)
        info.disabled = not enabled

    def merge_adapter(self, adapter_names=None, safe_merge: bool = False) -> None:
        with self.method.batch(self.model):
            super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        with self.method.batch(self.model):
            super().unmerge_adapter()

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs) -> nn.Module:
        # already merged (merge_adapter): unload only, a second merge would add ΔW twice
        merge = merge and not any(layer.merged for layer in adapter_layers(self.model).values())
        with self.method.batch(self.model):
            model = super()._unload_and_optionally_merge(merge=merge, **kwargs)
        detach_adapter(model)
        return model

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        # unloading puts back a layer's own base layer or a head's trained copy: modules already on
        # their device with their weights (peft's version copies .weight, which a pooler lacks)
        setattr(parent, child_name, new_module)

    def delete_adapter(self, adapter_name: str) -> None:
        raise ValueError(f"{type(self).__name__} holds one adapter; use unload() to remove it")

    # -- state dict: the layers write per-block keys under their own names, without adapter names --
    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        layers = _layers_by_key(model)
        adapter = {k: v for k, v in state_dict.items() if in_adapter(k, layers)}
        callback = growing_tuner(model).growth_callback  # set while a Trainer trains the model
        if callback is not None:  # a checkpoint: what a resumed stock Trainer needs (resume.py)
            adapter[resume.RESUME_KEY] = resume.pack(callback.resume_payload(model))
        return adapter

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return key

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """Identity, after a strict check: a file whose adapter tensors are not exactly the model's
        would otherwise load partly and leave the rest at their initial values.

        A training checkpoint's file also holds the resume state (resume.py): the model grows to its
        layout first, and the rest waits on the tuner for ``RankGrowthCallback.on_train_begin``."""
        if resume.RESUME_KEY in state_dict:
            state_dict = dict(state_dict)
            saved = resume.unpack(state_dict.pop(resume.RESUME_KEY))
            growing_tuner(model).restore_layout_for_resume(saved)
        layers = _layers_by_key(model)
        expected = {k for k in model.state_dict() if in_adapter(k, layers)}
        if not expected:
            raise ValueError(f"{type(model).__name__} has no growing adapter layers to load weights into")
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(k for k in state_dict if k not in expected and in_adapter(k, layers))
        if missing or unexpected:
            raise ValueError(
                f"the adapter weights do not match the model's adapter: missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}; is adapter_config.json's rank_pattern the one saved with them?"
            )
        return state_dict


def _as_json(value) -> str:
    return json.dumps(value, sort_keys=True, default=list)


def _layers_by_key(model: nn.Module) -> dict[str, AdapterLinear]:
    """Adapter layers named as ``model``'s state dict names them (a PeftModel's keys are prefixed)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def growing_tuner(model: nn.Module) -> GrowingTuner:
    """The ``GrowingTuner`` inside ``model`` (a ``PeftModel``, or the tuner itself)."""
    for candidate in (model, getattr(model, "base_model", None), getattr(model, "module", None)):
        if isinstance(candidate, GrowingTuner):
            return candidate
        inner = getattr(candidate, "base_model", None)
        if isinstance(inner, GrowingTuner):
            return inner
    raise ValueError(
        f"{type(model).__name__} holds no growing adapter; build it with "
        "peft.get_peft_model(model, TriAdaptLoraConfig(...)) or IncreLoraConfig(...)"
    )

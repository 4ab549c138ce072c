"""What the project's own adapter methods share: IncreLoRA and TriAdaptLoRA (src/methods/increlora/,
src/methods/triadapt/).

Both methods grow their factors during training, which peft's layers cannot do. They are peft tuners
(``tuner.py``: ``get_peft_model`` with their configs), whose layers and machinery live here and work
on a model injected directly as well (shared/spec/methods.md §1):

- ``layer.py``: ``AdapterLinear``, a peft ``BaseTunerLayer`` that wraps a target ``nn.Linear``
  unchanged and adds a method-defined branch, and merges itself from its ``delta_weight()``
  (subclasses hold the factors); ``SharedAdapterStorage``, the base of a store that holds many
  layers' tensors; ``HeadWrapper``, trained copy + frozen original of a task head, for direct
  injection (the tuners use peft's ``ModulesToSaveWrapper``).
- ``injection.py``: ``prepare_model`` (freeze, inject, wrap heads, attach the method's extra loss to
  the forward), the §1.7 plumbing (``disable_adapter`` / ``merge`` / ``unmerge`` /
  ``merge_and_unload``), the orthogonal penalty and ``budget_report`` (the §1.5 keys).
- ``persistence.py``: ``save_adapter`` / ``load_adapter``, the §1.6 directory format of a directly
  injected model, rebuilt shapes, strict key check (the tuners save with ``save_pretrained``).
- ``optim.py``: ``add_param_group``, one optimizer group per allocation event, scheduled per
  ``new_params_lr``; moving or removing tensors in an optimizer (IncreLoRA's spare activation).
- ``allocator.py``: what both allocators share (timings, random scores, the schedule warning).
- ``method.py``: ``GrowingAdapterMethod``, the harness contract (src/methods/base.py) through the
  tuner, wired to all of the above.
- ``tuner.py`` / ``callback.py``: the peft glue (``GrowingPeftConfig``, ``GrowingTuner``, peft
  registration) and ``RankGrowthCallback`` for a ``transformers.Trainer``.

Per-model state (method name, config, hook handle) lives on the model as ``model.adapter_info`` so
that method objects stay stateless (src/methods/base.py); ``unwrap`` finds that model inside a
``PeftModel``. This package re-exports the names the methods use, so they read ``growing.<name>``.
"""

from src.methods.growing.allocator import ALLOCATOR_TIMINGS, ScheduleWarning, random_scores
from src.methods.growing.injection import (
    INFO_ATTR,
    AdapterInfo,
    adapter_layers,
    adapter_parameters,
    budget_report,
    detach_adapter,
    disable_adapter,
    freeze,
    get_info,
    head_wrappers,
    in_adapter,
    merge,
    merge_and_unload,
    orth_penalty,
    peft_heads,
    prepare_model,
    storage_modules,
    tuner_of,
    unmerge,
    unwrap,
    wrap_heads,
)
from src.methods.growing.layer import AdapterLinear, HeadWrapper, SharedAdapterStorage
from src.methods.growing.method import GrowingAdapterMethod
from src.methods.growing.optim import (
    NEW_PARAMS_LR,
    add_param_group,
    move_optimizer_rows,
    remove_from_groups,
)
from src.methods.growing.persistence import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    adapter_state_dict,
    check_rank_pattern,
    load_adapter,
    load_adapter_state,
    read_adapter_config,
    restore_adapter,
    restore_layout,
    save_adapter,
)

__all__ = [
    "ALLOCATOR_TIMINGS",
    "CONFIG_FILE",
    "INFO_ATTR",
    "NEW_PARAMS_LR",
    "WEIGHTS_FILE",
    "AdapterInfo",
    "AdapterLinear",
    "GrowingAdapterMethod",
    "HeadWrapper",
    "ScheduleWarning",
    "SharedAdapterStorage",
    "adapter_layers",
    "adapter_parameters",
    "adapter_state_dict",
    "add_param_group",
    "budget_report",
    "check_rank_pattern",
    "detach_adapter",
    "disable_adapter",
    "freeze",
    "get_info",
    "head_wrappers",
    "in_adapter",
    "load_adapter",
    "load_adapter_state",
    "merge",
    "merge_and_unload",
    "move_optimizer_rows",
    "orth_penalty",
    "peft_heads",
    "prepare_model",
    "random_scores",
    "read_adapter_config",
    "remove_from_groups",
    "restore_adapter",
    "restore_layout",
    "save_adapter",
    "storage_modules",
    "tuner_of",
    "unmerge",
    "unwrap",
    "wrap_heads",
]

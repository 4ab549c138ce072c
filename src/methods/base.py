"""The adapter-method contract (shared/spec/methods.md §1.3) and the method registry.

A method is a stateless object; everything it learns or allocates lives on the model it adapts, so
the same method object can save, load, merge or resume any model it produced. The training loop
talks to methods only through this surface and never learns their names.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
from typing import Any, ClassVar

import torch
from torch import nn

from src.registry import ENTRIES
from src.target_names import matches

METHODS: dict[str, type[AdapterMethod]] = {}
# Keys of a method's YAML that select things (the method, the paper protocol of spec §6) rather than
# configure it; they never reach the config dataclass.
SELECTOR_KEYS = ("name", "protocol")
TRAINING_STATE_FILE = "method_state.pt"  # allocator state in a training checkpoint


def register(name: str):
    """Class decorator: make a method available as ``method=<name>``; its entry in src/registry.py
    (label, colour, default options) must exist, so tables and figures can show its runs."""
    if name not in ENTRIES:
        raise ValueError(f"method {name!r} has no entry in src/registry.py; add its label and colour there")

    def wrap(cls: type[AdapterMethod]) -> type[AdapterMethod]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


class AdapterMethod(abc.ABC):
    """Base class with the defaults most methods share; subclasses override what differs."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    # False makes the loop refuse WORLD_SIZE > 1. Every method here supports it: parameters grown
    # after DDP has wrapped the model are synchronised by src/runtime/distributed.py.
    supports_distributed: ClassVar[bool] = True

    # -- configuration -------------------------------------------------------------------------
    def make_config(self, fields: dict[str, Any], **runtime: Any):
        """Build the validated config dataclass from the Hydra node (minus ``SELECTOR_KEYS``).

        ``runtime`` carries facts known only once the data is loaded (``total_step`` T in optimizer
        steps, ``warmup_steps``); each fills the field of that name if the method has one and the
        YAML left it null. Methods without such a field ignore it.
        """
        fields = {k: v for k, v in fields.items() if k not in SELECTOR_KEYS}
        names = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ValueError(f"method={self.name} has no option(s) {unknown}; valid options: {sorted(names)}")
        for key, value in runtime.items():
            if key in names and fields.get(key) is None:
                fields[key] = value
        return self.config_class(**fields)

    # -- injection and training ----------------------------------------------------------------
    @abc.abstractmethod
    def apply(self, model: nn.Module, config) -> nn.Module: ...

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """'decay' (adapter factors, head weights) and 'no_decay' (biases, norms) groups."""
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if is_no_decay(name) else decay).append(p)
        return [
            {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
        ]

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def extra_logs(self, model: nn.Module) -> dict[str, float]:
        """Values worth logging beside the loss at each logging step (e.g. the regulariser)."""
        return {}

    def step(self, model, optimizer, lr_scheduler, global_step: int) -> dict | None:
        """Per-optimizer-step hook (spec §1.4); returns a log record on allocation events."""
        return None

    def allocator_timing(self, model: nn.Module) -> str:
        """Where the loop calls ``step``: "after_step" (after ``optimizer.step()``, the default) or
        "before_step" (after clipping, before ``optimizer.step()``; spec §1.4)."""
        return "after_step"

    @abc.abstractmethod
    def budget(self, model: nn.Module) -> dict: ...

    # -- resumable training (trainer.resume) -----------------------------------------------------
    def training_state(self, model: nn.Module) -> dict:
        """Allocator state that the weights do not carry (scores, EMAs, previous norms): tensors,
        numbers, strings, lists and dicts only, so a checkpoint loads with ``weights_only=True``."""
        return {}

    def load_training_state(self, model: nn.Module, state: dict) -> None:
        """Inverse of ``training_state``, on a model already restored by ``load_checkpoint``."""
        if state:
            raise ValueError(
                f"method={self.name} keeps no allocator state, but the checkpoint has {sorted(state)}"
            )

    def save_checkpoint(self, model: nn.Module, directory: str) -> None:
        """Everything needed to continue training ``model``: its adapter and the allocator state."""
        self.save(model, directory)
        torch.save(self.training_state(model), os.path.join(directory, TRAINING_STATE_FILE))

    @abc.abstractmethod
    def load_checkpoint(self, model: nn.Module, directory: str) -> None:
        """Restore a ``save_checkpoint`` directory *into* ``model`` (fresh from ``apply`` with the same
        config) in place: grown shapes, weights and allocator state, so the optimizer built next
        sees exactly the parameters of the saved run."""

    def _load_training_state_file(self, model: nn.Module, directory: str) -> None:
        path = os.path.join(directory, TRAINING_STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{directory!r} has no {TRAINING_STATE_FILE}; it is not a training checkpoint"
            )
        self.load_training_state(model, torch.load(path, map_location="cpu", weights_only=True))

    # -- persistence and deployment ------------------------------------------------------------
    @abc.abstractmethod
    def save(self, model: nn.Module, directory: str) -> None: ...

    @abc.abstractmethod
    def load(self, base_model: nn.Module, directory: str) -> nn.Module: ...

    @abc.abstractmethod
    def merge(self, model: nn.Module) -> None: ...

    @abc.abstractmethod
    def unmerge(self, model: nn.Module) -> None: ...

    @abc.abstractmethod
    def merge_and_unload(self, model: nn.Module) -> nn.Module: ...

    @abc.abstractmethod
    def disable_adapter(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        """Context manager: adapter branches skipped, heads use their original copies."""


def is_no_decay(param_name: str) -> bool:
    lowered = param_name.lower()
    return lowered.endswith("bias") or "layernorm" in lowered or "layer_norm" in lowered or ".norm" in lowered


def in_heads(name: str, heads: list[str]) -> bool:
    """True when module ``name`` is a head or sits inside one (``pooler.dense`` is inside ``pooler``)."""
    return any(f".{h}." in f".{name}." for h in heads)


def find_targets(model: nn.Module, target_modules: list[str], heads: list[str] = ()) -> list[str]:
    """Qualified names of the modules to adapt (spec §1.1): suffix match, ``nn.Linear`` only, not in a head.

    Raises one actionable error when a match is not ``nn.Linear`` or nothing matches at all.
    """
    matched = []
    for name, module in model.named_modules():
        if not any(matches(name, t) for t in target_modules):
            continue
        if in_heads(name, list(heads)):
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"target {name!r} is a {type(module).__name__}, but only nn.Linear can be adapted; "
                f"narrow target_modules (got {list(target_modules)})"
            )
        matched.append(name)
    if not matched:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"no module of {type(model).__name__} matches target_modules {list(target_modules)}; "
            f"its nn.Linear leaf names are {linear}; set backbone.target_modules to some of them"
        )
    return matched

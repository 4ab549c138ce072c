"""Every method's entry: how tables and figures show it. Pure data, so reporting reads it without
importing torch.

Adding a method takes its module under ``src/methods/`` (registered by name there), its YAML under
``configs/method/`` and its entry here; ``src.methods.base.register`` refuses a name without one. The
order of the entries is the order of table rows and legends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class MethodEntry:
    label: str
    colour: str
    # The main tables compare each method at these values of its options; a record at another value
    # is an ablation and appears only in the ablation tables. A key missing from a record's config
    # counts as the default (records written before the option existed).
    default_axes: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


ENTRIES: dict[str, MethodEntry] = {
    "lora": MethodEntry("LoRA", "#4c72b0"),
    "adalora": MethodEntry("AdaLoRA", "#dd8452"),
    "increlora": MethodEntry(
        "IncreLoRA",
        "#55a868",
        MappingProxyType({"score": "sensitivity"}),  # score=random is the allocation control
    ),
    "triadapt": MethodEntry(
        "TriAdaptLoRA",
        "#c44e52",
        MappingProxyType(
            {
                "schedule": "linear",
                "score": "increment",
                "init": "identity",
                "scaling": "rank",
                "new_params_lr": "follow",
            }
        ),
    ),
}

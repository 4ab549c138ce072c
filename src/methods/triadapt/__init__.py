"""TriAdaptLoRA (arXiv 2501.08008): LoRA with a triangular-split transform and threshold-driven growth.

h = W0 x + s · B (L + U) A · dropout(x), with T = L + U stored as block strips so that growing the
rank appends tensors and never reallocates one (shared/spec/methods.md §5). Ranks grow at allocation
events chosen by a dynamic threshold on the change of each module's normalised ‖T‖_F.

Follows the authors' reference implementation (DiverValue-Bench ``triadaptlora.py``); every place
where we differ is an option, listed in the spec's decision table (D1–D12).
"""

from src.methods.growing.tuner import register_growing_method
from src.methods.triadapt.allocator import (
    allocation_size,
    dry_run_schedule,
    growth_sizes,
    is_event_step,
    progress,
    select_modules,
)
from src.methods.triadapt.config import TriAdaptConfig, TriAdaptLoraConfig
from src.methods.triadapt.layer import TriAdaptLinear
from src.methods.triadapt.model import STORE_NAME, TriAdaptLoRA, TriAdaptLoraModel
from src.methods.triadapt.storage import TriAdaptBlocks

# method=<Hydra name> and peft type <PEFT NAME>: both fixed by saved runs and adapters
register_growing_method("triadapt", "triadaptlora", TriAdaptLoRA, TriAdaptLoraConfig, TriAdaptLoraModel)

__all__ = [
    "STORE_NAME",
    "TriAdaptBlocks",
    "TriAdaptConfig",
    "TriAdaptLinear",
    "TriAdaptLoRA",
    "TriAdaptLoraConfig",
    "TriAdaptLoraModel",
    "allocation_size",
    "dry_run_schedule",
    "growth_sizes",
    "is_event_step",
    "progress",
    "select_modules",
]

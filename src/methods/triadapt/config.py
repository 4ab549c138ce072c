"""TriAdaptLoRA's config (spec §5.1) and its peft config."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from peft import PeftConfig

from src.methods import growing
from src.methods.growing.tuner import GrowingPeftConfig

SCHEDULES = ("linear", "exponential", "fixed")
INITS = ("identity", "gaussian")
SCALINGS = ("rank", "constant")
SCORES = ("increment", "level", "random")
NORM_DIVISORS = ("rank", "blocks")
SELECTIONS = ("top_k", "threshold")
ORTH_REDUCTIONS = ("per_factor", "per_module")


@dataclasses.dataclass
class TriAdaptConfig:
    """Spec §5.1. Plain fields so the class doubles as a Hydra structured config."""

    target_modules: list[str] = dataclasses.field(default_factory=list)  # preset §1.2, never a default
    modules_to_save: list[str] = dataclasses.field(default_factory=list)
    reference_rank: int = 8  # r̄: R* = r̄·M unless target_total_rank is given
    init_rank: int = 1  # r0
    incre_rank_num: int = 1  # k (D3: reference uses r̄/2)
    target_total_rank: int | None = None  # R*
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    scaling: str = "rank"  # D1: s = α/r_current; "constant": α/r̄
    init: str = "identity"  # D2: function-preserving; "gaussian": reference rank-1 backup
    init_std: float = 0.02
    score: str = "increment"  # "level": S_i = N_i
    norm_divisor: str = "rank"  # D4
    schedule: str = "linear"  # D10
    top_h: int = 1  # K for schedule=fixed only
    selection: str = "top_k"  # D5
    clip_to_budget: bool = True  # D6
    init_warmup: int = 50  # T_w; short-run default, paper-scale values in configs/task_backbone/
    incre_interval: int = 10  # Δ
    total_step: int | None = None  # T, filled by the loop
    orth_reg_weight: float = 0.1  # γ (D7: reference 0.5)
    orth_reduction: str = "per_factor"
    new_params_lr: str = "follow"  # D8
    allocator_timing: str = "after_step"  # D12: before_step is where the reference allocates (§1.4)
    seed: int | None = None  # the run seed, filled by the loop: score=random draws from it

    def __post_init__(self):
        self.target_modules = [str(t) for t in self.target_modules]
        self.modules_to_save = [str(h) for h in self.modules_to_save]
        for field, choices in (
            ("scaling", SCALINGS),
            ("init", INITS),
            ("score", SCORES),
            ("norm_divisor", NORM_DIVISORS),
            ("schedule", SCHEDULES),
            ("selection", SELECTIONS),
            ("orth_reduction", ORTH_REDUCTIONS),
            ("new_params_lr", growing.NEW_PARAMS_LR),
            ("allocator_timing", growing.ALLOCATOR_TIMINGS),
        ):
            if getattr(self, field) not in choices:
                raise ValueError(f"triadapt: {field}={getattr(self, field)!r}; choose one of {list(choices)}")
        if self.total_step is None:
            raise ValueError("triadapt: total_step (optimizer steps T) must be set; the loop fills it")
        if self.total_step <= self.init_warmup:
            raise ValueError(
                f"triadapt: total_step={self.total_step} must exceed init_warmup={self.init_warmup}, "
                "otherwise no rank is ever allocated; lower method.init_warmup or train longer "
                "(trainer.max_steps / trainer.num_train_epochs)"
            )
        for field, low in (
            ("init_rank", 1),
            ("incre_rank_num", 1),
            ("incre_interval", 1),
            ("init_warmup", 0),
        ):
            if getattr(self, field) < low:
                raise ValueError(f"triadapt: {field}={getattr(self, field)} must be >= {low}")
        if self.reference_rank < self.init_rank:
            raise ValueError(
                f"triadapt: reference_rank={self.reference_rank} must be >= init_rank={self.init_rank}"
            )
        if self.target_total_rank is not None and self.target_total_rank < 1:
            raise ValueError(f"triadapt: target_total_rank={self.target_total_rank} must be >= 1 or null")
        if self.schedule == "fixed" and self.top_h < 1:
            raise ValueError(f"triadapt: schedule=fixed needs top_h >= 1, got {self.top_h}")
        if self.orth_reg_weight < 0:
            raise ValueError(f"triadapt: orth_reg_weight={self.orth_reg_weight} must be >= 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"triadapt: lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.init_std <= 0:
            raise ValueError(f"triadapt: init_std={self.init_std} must be > 0 (A = 0 would never train)")


@dataclasses.dataclass
class TriAdaptLoraConfig(GrowingPeftConfig, PeftConfig, TriAdaptConfig):
    """TriAdaptLoRA as a peft config: every field of ``TriAdaptConfig`` plus the grown layout.

    Set ``target_modules``, ``total_step`` (the optimizer steps T of the run, as for peft's AdaLoRA)
    and ``modules_to_save`` for a task head. ``rank_pattern`` (module -> block sizes) and
    ``block_events`` (module -> the allocation event of each block) are filled by the tuner as the
    adapter grows and written by ``save_pretrained``; leave them None for a new adapter.
    """

    rank_pattern: dict | None = None
    block_events: dict | None = None

    method_config_class: ClassVar[type] = TriAdaptConfig
    layout_fields: ClassVar[tuple[str, ...]] = ("block_events",)

    def __post_init__(self):
        PeftConfig.__post_init__(self)
        self.peft_type = self.registered_peft_type()
        TriAdaptConfig.__post_init__(self)

"""IncreLoRA's config (spec §4) and its peft config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from peft import PeftConfig

from src.methods import growing
from src.methods.growing.tuner import GrowingPeftConfig

DEFAULT_INCRE_RANK = {2: 1, 4: 2, 6: 3, 8: 4}  # the released code's k = r̄ / 2 table
SCORE_NORMS = ("sqrt_numel", "numel")
NEW_PARAMS_LR = ("restart_warmup", "follow", "static")
ACTIVATED_GROUPS = ("new", "birth")
SPARES_AFTER_GROWTH = ("keep", "freeze")
SCORES = ("sensitivity", "random")


@dataclass
class IncreLoRAConfig:
    target_rank: int  # r̄: average rank the budget R* = r̄·M is sized for
    top_h: int  # modules grown per allocation event
    init_rank: int = 1
    incre_rank_num: int | None = None  # k; None → {2:1, 4:2, 6:3, 8:4}[target_rank]
    # Short-run values (configs/method/increlora.yaml); the released scripts use ν = 100–3000 for both
    init_warmup: int = 50  # no allocation at t <= init_warmup
    incre_interval: int = 10  # ν: allocate when t mod ν == 0
    total_step: int | None = None  # T, optimizer steps; filled by the loop
    # Global LR warmup W, filled by the loop. restart_warmup reads W from the scheduler's own lambda
    # (growing.add_param_group); this copy is checked against it so a mismatch fails loudly.
    warmup_steps: int | None = None
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    beta1: float = 0.85
    beta2: float = 0.85
    score_norm: str = "sqrt_numel"  # released code; "numel" is the paper's Eq. 5
    advance_learning: bool = True
    spare_lambda: float = 1e-5  # frozen E of the spare block
    new_params_lr: str = "restart_warmup"
    orth_reg_weight: float = 0.1
    orth_include_spare: bool = True
    clip_to_budget: bool = True
    init_std: float = 0.02
    activated_group: str = "new"  # released: an activated E restarts in the event's new group
    spares_after_growth: str = "keep"  # released: spare a, b train on (E = 0) after growth
    score: str = "sensitivity"  # random: the allocation control (spec §5.5)
    allocator_timing: str = "after_step"  # spec §1.4; before_step: where the released code allocates
    seed: int | None = None  # the run seed, filled by the loop: score=random draws from it
    target_modules: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.incre_rank_num is None:
            if self.target_rank not in DEFAULT_INCRE_RANK:
                raise ValueError(
                    f"method.incre_rank_num (k) has no default for target_rank={self.target_rank} "
                    f"(defaults exist for {sorted(DEFAULT_INCRE_RANK)}); set it explicitly"
                )
            self.incre_rank_num = DEFAULT_INCRE_RANK[self.target_rank]
        if self.init_rank < 1:
            raise ValueError(f"method.init_rank must be >= 1, got {self.init_rank}")
        if self.target_rank < self.init_rank:
            raise ValueError(
                f"method.target_rank ({self.target_rank}) must be >= init_rank ({self.init_rank})"
            )
        if self.incre_rank_num < 1:
            raise ValueError(f"method.incre_rank_num (k) must be >= 1, got {self.incre_rank_num}")
        if self.top_h < 1:
            raise ValueError(f"method.top_h must be >= 1, got {self.top_h}")
        if self.incre_interval < 1:
            raise ValueError(f"method.incre_interval must be >= 1, got {self.incre_interval}")
        if self.init_warmup < 0:
            raise ValueError(f"method.init_warmup must be >= 0, got {self.init_warmup}")
        if self.total_step is None:
            raise ValueError("IncreLoRA needs total_step (optimizer steps T); the training loop fills it")
        if self.total_step <= self.init_warmup:
            raise ValueError(
                f"total_step ({self.total_step}) must exceed init_warmup ({self.init_warmup}), "
                "otherwise no rank is ever allocated; lower method.init_warmup or train longer "
                "(trainer.max_steps / trainer.num_train_epochs)"
            )
        if self.score_norm not in SCORE_NORMS:
            raise ValueError(f"method.score_norm must be one of {SCORE_NORMS}, got {self.score_norm!r}")
        if self.new_params_lr not in NEW_PARAMS_LR:
            raise ValueError(
                f"method.new_params_lr must be one of {NEW_PARAMS_LR}, got {self.new_params_lr!r}"
            )
        for name, choices in (
            ("activated_group", ACTIVATED_GROUPS),
            ("spares_after_growth", SPARES_AFTER_GROWTH),
            ("score", SCORES),
            ("allocator_timing", growing.ALLOCATOR_TIMINGS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"method.{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"method.warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("beta1", "beta2"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"method.{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"method.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.spare_lambda <= 0:
            # a zero spare E gives its a and b zero gradient: advance learning would learn nothing
            raise ValueError(f"method.spare_lambda must be > 0, got {self.spare_lambda}")
        if self.orth_reg_weight < 0:
            raise ValueError(f"method.orth_reg_weight must be >= 0, got {self.orth_reg_weight}")
        if self.init_std <= 0:
            raise ValueError(f"method.init_std must be > 0, got {self.init_std}")
        if not self.target_modules:
            raise ValueError("method.target_modules is empty; the backbone config lists them")

    @property
    def k(self) -> int:
        return int(self.incre_rank_num)


@dataclass
class IncreLoraConfig(GrowingPeftConfig, PeftConfig, IncreLoRAConfig):
    """IncreLoRA as a peft config: every field of ``IncreLoRAConfig`` plus the grown layout.

    Set ``target_modules``, ``total_step`` (optimizer steps T) and ``modules_to_save`` for a task
    head. ``rank_pattern`` (module -> block sizes), ``spare_pattern`` (module -> spare size) and
    ``growth_done`` are filled by the tuner as the adapter grows, with ``store_layout`` (where each
    triplet lives in the packed storage, so that a resumed optimizer finds its tensors); leave them
    unset for a new one. Adapters saved without ``store_layout`` still load.
    """

    rank_pattern: dict | None = None
    spare_pattern: dict | None = None
    growth_done: bool | None = None
    store_layout: dict | None = None

    method_config_class: ClassVar[type] = IncreLoRAConfig
    layout_fields: ClassVar[tuple[str, ...]] = ("spare_pattern", "growth_done", "store_layout")

    def __post_init__(self):
        PeftConfig.__post_init__(self)
        self.peft_type = self.registered_peft_type()
        IncreLoRAConfig.__post_init__(self)

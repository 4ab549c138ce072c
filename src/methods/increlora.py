"""IncreLoRA (Zhang et al., arXiv 2308.12043): ranks grow from 1 towards an average r̄ (spec §4).

Faithful to the released code (FeiyuZhang98/IncreLoRA, ``loralib/loralib/increlora.py``):

- every target holds triplet blocks (A_j, E_j, B_j); ΔW = (α / r) · B diag(E) A over their
  concatenations, r counting active triplets only; the first block is AdaLoRA's init (E = 0);
- while the budget is not spent the forward builds ΔW explicitly and a tensor hook captures
  G = ∂L/∂ΔW; the sensitivity Σ|ΔW ⊙ G| / √numel is smoothed into Ī (EMA) and Ū (uncertainty);
- every ν steps after the warmup the ``top_h`` modules by Ī·Ū gain k ranks; with advance learning
  each module trains a spare block (E frozen at 1e-5) ahead of time and growth activates it;
- new tensors go into a new optimizer group on a restarted warmup (``new_params_lr``).

Released behaviour is the default; each difference is an option (spec §4):

- ``activated_group: new`` (released): an activated spare's E joins the event's new optimizer group,
  so under restart warmup its LR restarts from 0; ``birth`` keeps it in its spare's group.
- ``spares_after_growth: keep`` (released): fresh spares are made at the last event too, and after
  growth every spare's a and b stay trainable and inside the regulariser with E = 0; ``freeze``
  makes none at the last event and freezes them.
- ``allocator_timing``: ``after_step`` (default, spec D12) runs the hook after ``optimizer.step``, so
  ΔW in the score already includes update t; ``before_step`` runs it where the released code does.
- ``clip_to_budget: false`` (released): min(top_h, R* − R) modules grow by k each and R may pass R*.
- ``score: random``: the allocation control of spec §5.5.

Other departures, all deliberate: the reference overwrites the captured gradient per micro-batch, we
sum it (gradient accumulation gives the same G as one large batch); the reference's scaling is
α / (r + 1e-5), ours α / r. The orthogonal penalty is over each module's concatenated factors, as
the released GLUE trainer computes it. A clipped last growth (g < k) activates part of a spare: those
rows become new tensors that take over the spare's optimizer slot and Adam moments (the reference
has 1-row blocks).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from peft import PeftConfig
from peft.utils import PeftType
from torch import nn

from src.methods import growing, peft_tuner
from src.methods.base import register

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


class IncreLoRALinear(growing.AdapterLinear):
    """A frozen ``nn.Linear`` plus growing triplet blocks and, while growing, one spare block.

    Active blocks live in ``lora_A/E/B`` (ParameterLists, one entry per block), so growth appends and
    never reallocates: existing tensors keep their identity and optimizer state. The spare lives in
    ``spare_A/E/B``; its E is frozen at ``spare_lambda``, so its a and b get a small but non-zero
    gradient and train ahead of activation while it moves the output by only ~1e-5.
    """

    def __init__(self, base_layer: nn.Linear, config: IncreLoRAConfig):
        super().__init__(base_layer)
        self.lora_alpha = float(config.lora_alpha)
        self.init_std = float(config.init_std)
        self.spare_lambda = float(config.spare_lambda)
        self.keep_spares = config.spares_after_growth == "keep"
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterList()
        self.lora_E = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        for name in ("spare_A", "spare_E", "spare_B"):
            self.register_parameter(name, None)
        self.growing = False  # growth phase: ΔW built explicitly, G captured, spare in the forward
        self.grad_sum: torch.Tensor | None = None  # Σ over micro-batches of ∂L/∂ΔW
        self.exp_avg_ipt: torch.Tensor | float = 0.0  # Ī
        self.exp_avg_unc: torch.Tensor | float = 0.0  # Ū
        # AdaLoRA's layer init, inherited by the reference: A, B Gaussian, E = 0, so ΔW = 0 at start
        self.append_block(*self.new_triplets(config.init_rank, e_value=0.0, e_trainable=True))

    # -- structure -------------------------------------------------------------------------------
    def new_triplets(self, g: int, e_value: float, e_trainable: bool) -> tuple[nn.Parameter, ...]:
        """g fresh triplets in fp32: a (g×d_in), b (d_out×g) ~ N(0, σ²), E = e_value."""
        device = self.base_layer.weight.device
        a = torch.empty(g, self.in_features, device=device).normal_(0.0, self.init_std)
        b = torch.empty(self.out_features, g, device=device).normal_(0.0, self.init_std)
        e = torch.full((g,), float(e_value), device=device)
        return nn.Parameter(a), nn.Parameter(e, requires_grad=e_trainable), nn.Parameter(b)

    def append_block(self, a: nn.Parameter, e: nn.Parameter, b: nn.Parameter) -> None:
        self.lora_A.append(a)
        self.lora_E.append(e)
        self.lora_B.append(b)

    def set_spare(self, size: int) -> list[nn.Parameter]:
        """Replace the spare by ``size`` fresh triplets (E frozen at spare_lambda); 0 removes it."""
        if size == 0:
            self.spare_A = self.spare_E = self.spare_B = None
            return []
        self.spare_A, self.spare_E, self.spare_B = self.new_triplets(
            size, self.spare_lambda, e_trainable=False
        )
        return self.spare_parameters()

    def block_sizes(self) -> list[int]:
        return [a.shape[0] for a in self.lora_A]

    def restore_blocks(self, blocks: list[int]) -> None:
        for size in blocks[len(self.lora_A) :]:
            self.append_block(*self.new_triplets(size, e_value=0.0, e_trainable=True))

    @property
    def rank(self) -> int:
        return sum(self.block_sizes())

    @property
    def spare_size(self) -> int:
        return 0 if self.spare_A is None else self.spare_A.shape[0]

    @property
    def spare_live(self) -> bool:
        """The spare takes part in the forward only while growing; afterwards its E is 0 anyway."""
        return self.growing and self.spare_A is not None

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.rank

    def effective_params(self) -> int:
        return self.rank * (self.in_features + self.out_features + 1)

    def spare_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.spare_A, self.spare_E, self.spare_B) if p is not None]

    def factors(self, include_spare: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Concatenated A (r×d_in), E (r), B (d_out×r); the spare, when included, comes last."""
        a, e, b = list(self.lora_A), list(self.lora_E), list(self.lora_B)
        if include_spare and self.spare_A is not None:
            a, e, b = a + [self.spare_A], e + [self.spare_E], b + [self.spare_B]
        if len(a) == 1:  # a one-tensor cat still launches a copy kernel, per module and pass
            return a[0], e[0], b[0]
        return torch.cat(a, 0), torch.cat(e, 0), torch.cat(b, 1)

    def delta_weight(self) -> torch.Tensor:
        """(α / r) · B diag(E) A in fp32, the live spare included (what the forward adds)."""
        a, e, b = self.factors(self.spare_live)
        return (b * e) @ a * self.scaling

    # -- forward ---------------------------------------------------------------------------------
    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lora_dropout(x)
        if not torch.is_autocast_enabled(x.device.type):  # under autocast the matmuls pick the dtype
            x = x.to(torch.float32)
        return x

    def _explicit(self) -> bool:
        # ΔW is built explicitly only so that a tensor hook can see G = ∂L/∂ΔW (spec §4)
        return self.growing and torch.is_grad_enabled()

    def adapter_factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(x Aᵀ · diag(E) · α/r, Bᵀ) once growth is over: the factored path at O(n·r·(d_in + d_out)),
        with the scaling folded into the r-vector E."""
        if self._explicit():
            return None
        a, e, b = self.factors(self.spare_live)
        return (self._input(x) @ a.T) * (e * self.scaling), b.T

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._explicit():
            delta = self.delta_weight()
            if delta.requires_grad:
                delta.register_hook(self._capture_grad)
            return F.linear(self._input(x), delta)
        h, bt = self.adapter_factors(x)
        return h @ bt

    def _capture_grad(self, grad: torch.Tensor) -> None:
        grad = grad.detach().to(torch.float32)
        if self.grad_sum is None:
            self.grad_sum = grad.clone()
        else:
            self.grad_sum.add_(grad)

    # -- importance ------------------------------------------------------------------------------
    @torch.no_grad()
    def update_importance(self, beta1: float, beta2: float, score_norm: str) -> torch.Tensor:
        """One EMA step on s = Σ|ΔW ⊙ G| / √numel (or / numel), then reset G for the next step."""
        numel = self.out_features * self.in_features
        if self.grad_sum is None:  # no backward through this layer since the last step
            sensitivity = torch.zeros((), device=self.base_layer.weight.device)
        else:
            sensitivity = (self.delta_weight() * self.grad_sum).abs().sum()
            sensitivity = sensitivity / (math.sqrt(numel) if score_norm == "sqrt_numel" else numel)
            self.grad_sum.zero_()
        self.exp_avg_ipt = beta1 * self.exp_avg_ipt + (1 - beta1) * sensitivity
        self.exp_avg_unc = beta2 * self.exp_avg_unc + (1 - beta2) * (sensitivity - self.exp_avg_ipt).abs()
        return sensitivity

    @property
    def score(self) -> float:
        return float(self.exp_avg_ipt * self.exp_avg_unc)

    # -- growth ----------------------------------------------------------------------------------
    @torch.no_grad()
    def activate_spare(self, g: int) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """Make the first g spare triplets active; returns (old, new) pairs for tensors that were split.

        A whole spare moves into the active lists as is (same tensors, same optimizer state; E becomes
        trainable at its current 1e-5). Only a clipped last growth (g < spare size, which also ends the
        growth phase) splits it: the first g rows become new tensors, the rest stays as the spare.
        """
        if not 1 <= g <= self.spare_size:
            raise ValueError(f"cannot activate {g} triplets from a spare of {self.spare_size}")
        a, e, b = self.spare_A, self.spare_E, self.spare_B
        if g == self.spare_size:
            e.requires_grad_(True)
            self.append_block(a, e, b)
            self.spare_A = self.spare_E = self.spare_B = None
            return []
        new = nn.Parameter(a[:g].clone()), nn.Parameter(e[:g].clone()), nn.Parameter(b[:, :g].clone())
        self.append_block(*new)
        self.spare_A, self.spare_B = nn.Parameter(a[g:].clone()), nn.Parameter(b[:, g:].clone())
        self.spare_E = nn.Parameter(e[g:].clone(), requires_grad=False)
        return list(zip((a, e, b), new, strict=True))

    @torch.no_grad()
    def end_growth(self) -> None:
        """Budget spent: stop capturing, free G and the EMA state, zero the spare's E; its a and b
        train on inside the regulariser (``keep``) or are frozen (``freeze``)."""
        self.growing = False
        self.grad_sum = None
        self.exp_avg_ipt = self.exp_avg_unc = 0.0
        if self.spare_E is not None:
            self.spare_E.zero_()
        for p in self.spare_parameters():
            p.requires_grad_(self.keep_spares and p is not self.spare_E)

    def orth_terms(self, include_spare: bool) -> torch.Tensor:
        spare_in = self.spare_A is not None and (self.growing or self.keep_spares)
        a, _, b = self.factors(include_spare and spare_in)
        return growing.orth_penalty(a, b)


def _move_optimizer_rows(optimizer, pairs: list[tuple[nn.Parameter, nn.Parameter]]) -> None:
    """Swap ``old`` for ``new`` (its leading rows / columns) in the optimizer, state rows included.

    Used only by a clipped last growth that splits a spare: the activated rows keep their group
    (their restart schedule started at the spare's birth) and their Adam moments.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    for old, new in pairs:
        for group in optimizer.param_groups:
            for j, p in enumerate(group["params"]):
                if p is old:
                    group["params"][j] = new
        state = optimizer.state.pop(old, None)
        if state:
            index = tuple(slice(0, n) for n in new.shape)
            optimizer.state[new] = {
                key: value[index].clone() if torch.is_tensor(value) and value.shape == old.shape else value
                for key, value in state.items()
            }


def _remove_from_groups(optimizer, params: list[nn.Parameter]) -> None:
    """Take ``params`` out of their optimizer groups (they have no state: a spare's E is frozen)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    ids = {id(p) for p in params}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]


def schedule_capacity(config: IncreLoRAConfig, n_modules: int) -> int:
    """Most ranks the schedule can add before T: events × min(top_h, M) × k (counts only)."""
    events = config.total_step // config.incre_interval - config.init_warmup // config.incre_interval
    return max(0, events) * min(config.top_h, n_modules) * config.k


@register("increlora")
class IncreLoRA(growing.GrowingAdapterMethod):
    config_class = IncreLoRAConfig

    # -- injection -------------------------------------------------------------------------------
    def inject(self, model: nn.Module, config: IncreLoRAConfig, heads: bool = True) -> nn.Module:
        model = growing.prepare_model(
            model,
            self.name,
            config,
            list(config.target_modules),
            list(config.modules_to_save),
            make_layer=lambda name, linear: IncreLoRALinear(linear, config),
            regularizer=self.regularizer,
            wrap=heads,
        )
        layers = self.layers(model)
        target_total = config.target_rank * len(layers)
        info = growing.get_info(model)
        info.state["target_total_rank"] = target_total
        start = sum(layer.rank for layer in layers.values())
        if start < target_total:
            for layer in layers.values():
                layer.growing = True
                if config.advance_learning:
                    layer.set_spare(config.k)
            capacity = schedule_capacity(config, len(layers))
            if capacity < target_total - start:
                warnings.warn(
                    f"IncreLoRA can add at most {capacity} ranks before total_step={config.total_step} "
                    f"but needs {target_total - start} to reach R*={target_total}; the run will end below "
                    f"budget (raise top_h or lower init_warmup / incre_interval)",
                    growing.ScheduleWarning,
                    stacklevel=2,
                )
        return model

    @staticmethod
    def layers(model: nn.Module) -> dict[str, IncreLoRALinear]:
        return {n: m for n, m in growing.adapter_layers(model).items() if isinstance(m, IncreLoRALinear)}

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        groups = super().param_groups(model, lr, weight_decay)
        # The spares' E are frozen, so the default (requires_grad) collection misses them; the spec
        # puts them in the initial groups so that activation only flips requires_grad.
        held = {id(p) for g in groups for p in g["params"]}
        decay = next(g for g in groups if g["name"] == "decay")
        for layer in self.layers(model).values():
            decay["params"] += [p for p in layer.spare_parameters() if id(p) not in held]
        return groups

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        """γ / (2M) · Σ_i (‖A_i A_iᵀ − I‖_F + ‖B_iᵀ B_i − I‖_F), live spare per orth_include_spare."""
        config = growing.get_info(model).config
        if config.orth_reg_weight == 0:
            return None
        layers = self.layers(model).values()
        total = sum(layer.orth_terms(config.orth_include_spare) for layer in layers)
        return config.orth_reg_weight * total / (2 * len(layers))

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
        for layer in layers.values():  # every step while R < R*, warmup included
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
        order = list(layers)
        ranked = sorted(order, key=lambda name: (-scores[name], order.index(name)))
        total = sum(layer.rank for layer in layers.values())
        plan = []
        if config.clip_to_budget:
            for name in ranked[: config.top_h]:
                if total >= target_total:
                    break
                g = min(config.k, target_total - total)
                plan.append((name, g))
                total += g
        else:  # released code: min(top_h, R* - R) modules, k each, so R may pass R*
            plan = [(name, config.k) for name in ranked[: min(config.top_h, target_total - total)]]
            total += config.k * len(plan)
        done = total >= target_total
        new_params, split, activated = [], [], []
        for name, g in plan:
            layer = layers[name]
            if config.advance_learning:
                split += layer.activate_spare(g)
                activated.append(layer.lora_E[-1])
                if not done or config.spares_after_growth == "keep":
                    new_params += layer.set_spare(config.k)
            else:
                triplets = layer.new_triplets(g, e_value=0.0, e_trainable=True)
                layer.append_block(*triplets)
                new_params += triplets
        if optimizer is not None:
            _move_optimizer_rows(optimizer, split)
            if config.activated_group == "new" and activated:
                # the activated E leave their spares' groups and start in this event's group
                _remove_from_groups(optimizer, activated)
                new_params = activated + new_params
            elif activated:
                # an optimizer built from the trainable tensors alone (a stock Trainer's) never held
                # the frozen spare E: without a group of their own they would not train
                held = {
                    id(p)
                    for g in getattr(optimizer, "optimizer", optimizer).param_groups
                    for p in g["params"]
                }
                new_params = [e for e in activated if id(e) not in held] + new_params
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
            "new_params": sum(p.numel() for p in new_params),
        }

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
        }

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


# ---------------------------------------------------------------------------------------------------
# peft tuner (src/methods/peft_tuner.py): get_peft_model(model, IncreLoraConfig(...))
# ---------------------------------------------------------------------------------------------------
@dataclass
class IncreLoraConfig(peft_tuner.GrowingPeftConfig, PeftConfig, IncreLoRAConfig):
    """IncreLoRA as a peft config: every field of ``IncreLoRAConfig`` plus the grown layout.

    Set ``target_modules``, ``total_step`` (optimizer steps T) and ``modules_to_save`` for a task
    head. ``rank_pattern`` (module -> block sizes), ``spare_pattern`` (module -> spare size) and
    ``growth_done`` are filled by the tuner as the adapter grows; leave them unset for a new one.
    """

    rank_pattern: dict | None = None
    spare_pattern: dict | None = None
    growth_done: bool | None = None

    method_config_class: ClassVar[type] = IncreLoRAConfig
    layout_fields: ClassVar[tuple[str, ...]] = ("spare_pattern", "growth_done")

    def __post_init__(self):
        PeftConfig.__post_init__(self)
        self.peft_type = PeftType.INCRELORA
        IncreLoRAConfig.__post_init__(self)


class IncreLoraModel(peft_tuner.GrowingTuner):
    """The peft tuner model: this module's layers, grown by ``update_and_allocate`` (or
    ``src.methods.RankGrowthCallback`` in a Trainer)."""

    prefix = "increlora_"
    method_name = "increlora"


IncreLoRA.peft_config_class = IncreLoraConfig
peft_tuner.register("increlora", IncreLoraConfig, IncreLoraModel)

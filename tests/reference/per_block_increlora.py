"""The per-block IncreLoRA layout, kept as the reference the packed storage is tested against.

A frozen copy of src/methods/increlora/layer.py and model.py (commit 7d17287) before storage D13
(shared/spec/methods.md §4, §5.2): every block owns its own A, E, B tensors, the spare owns three
more, and the optimizer holds each of them. It is not registered as a method;
tests/test_storage_equivalence_increlora.py runs it beside ``method=increlora`` and requires the same
losses, rank history, AdamW step counts and (in float64) weights. Two changes from the copy, made
in the live layer too: ``_input`` casts to the factors' dtype, not to fp32, and ``new_triplets``
casts its fp32 draws to it, so a model cast to float64 runs and grows in float64 (identical in fp32).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from src.methods import growing
from src.methods.growing.allocator import growth_sizes, select_modules
from src.methods.increlora.allocator import schedule_capacity
from src.methods.increlora.config import IncreLoRAConfig


class PerBlockIncreLoRALinear(growing.AdapterLinear):
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
        dtype = self.lora_A[0].dtype if len(self.lora_A) else torch.float32  # the model's, if cast
        a = torch.empty(g, self.in_features, device=device).normal_(0.0, self.init_std).to(dtype)
        b = torch.empty(self.out_features, g, device=device).normal_(0.0, self.init_std).to(dtype)
        e = torch.full((g,), float(e_value), device=device, dtype=dtype)
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
            # the factors' dtype: fp32, unless the whole model was cast after injection (float64 tests)
            x = x.to(self.lora_A[0].dtype)
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


class PerBlockIncreLoRA(growing.GrowingAdapterMethod):
    config_class = IncreLoRAConfig
    name = "increlora"

    def apply(self, model: nn.Module, config: IncreLoRAConfig) -> nn.Module:
        return self.inject(model, config)  # the reference injects directly, never through peft

    # -- injection -------------------------------------------------------------------------------
    def inject(self, model: nn.Module, config: IncreLoRAConfig, heads: bool = True) -> nn.Module:
        model = growing.prepare_model(
            model,
            self.name,
            config,
            list(config.target_modules),
            list(config.modules_to_save),
            make_layer=lambda name, linear: PerBlockIncreLoRALinear(linear, config),
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
    def layers(model: nn.Module) -> dict[str, PerBlockIncreLoRALinear]:
        return {
            n: m for n, m in growing.adapter_layers(model).items() if isinstance(m, PerBlockIncreLoRALinear)
        }

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
        total = sum(layer.rank for layer in layers.values())
        # released code, unclipped: min(top_h, R* - R) modules, k each, so R may pass R*
        n = config.top_h if config.clip_to_budget else min(config.top_h, target_total - total)
        names = list(layers)
        selected = [names[i] for i in select_modules([scores[name] for name in names], n)]
        sizes = growth_sizes(len(selected), total, target_total, config.k, config.clip_to_budget)
        plan = list(zip(selected, sizes, strict=False))
        total += sum(sizes)
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
            growing.move_optimizer_rows(optimizer, split)
            if config.activated_group == "new" and activated:
                # the activated E leave their spares' groups and start in this event's group
                growing.remove_from_groups(optimizer, activated)
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

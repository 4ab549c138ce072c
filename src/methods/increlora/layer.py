"""``IncreLoRALinear``: a frozen linear plus growing triplet blocks and, while growing, one spare."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.methods import growing
from src.methods.increlora.config import IncreLoRAConfig


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

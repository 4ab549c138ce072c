"""``IncreLoRALinear``: a frozen linear plus growing triplet blocks and, while growing, one spare."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.methods import growing
from src.methods.increlora.config import IncreLoRAConfig
from src.methods.increlora.storage import IncreLoRABlocks


class IncreLoRALinear(growing.AdapterLinear):
    """A frozen ``nn.Linear`` plus growing triplet blocks and, while growing, one spare block.

    The triplets live in an ``IncreLoRABlocks`` that the model's layers share (one tensor per
    allocation event); ``lora_A`` / ``lora_E`` / ``lora_B`` and ``spare_A`` / ``spare_E`` /
    ``spare_B`` are views into it, and the state dict holds them under those per-block names, as
    before the packed storage. The spare's E is frozen at ``spare_lambda``, so its a and b get a
    small but non-zero gradient and train ahead of activation while it moves the output by ~1e-5.
    """

    def __init__(self, base_layer: nn.Linear, config: IncreLoRAConfig, store: IncreLoRABlocks | None = None):
        super().__init__(base_layer)
        self.lora_alpha = float(config.lora_alpha)
        self.init_std = float(config.init_std)
        self.spare_lambda = float(config.spare_lambda)
        self.keep_spares = config.spares_after_growth == "keep"
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.growing = False  # growth phase: ΔW built explicitly, G captured, spare in the forward
        self.grad_sum: torch.Tensor | None = None  # Σ over micro-batches of ∂L/∂ΔW
        self.exp_avg_ipt: torch.Tensor | float = 0.0  # Ī
        self.exp_avg_unc: torch.Tensor | float = 0.0  # Ū
        # AdaLoRA's layer init, inherited by the reference: A, B Gaussian, E = 0, so ΔW = 0 at start
        self.join_store(
            IncreLoRABlocks() if store is None else store, own=store is None, init_rank=config.init_rank
        )

    # -- structure -------------------------------------------------------------------------------
    def new_values(self, g: int, e_value: float) -> dict[str, torch.Tensor]:
        """g fresh triplets in fp32: a (g×d_in), b (d_out×g) ~ N(0, σ²), E = e_value, drawn in the
        per-block layout's order (a, then b) so that a seeded run draws the same numbers."""
        device = self.base_layer.weight.device
        a = torch.empty(g, self.in_features, device=device).normal_(0.0, self.init_std)
        b = torch.empty(self.out_features, g, device=device).normal_(0.0, self.init_std)
        return {"a": a, "bt": b.t(), "e": torch.full((g,), float(e_value), device=device)}

    def zero_values(self, g: int) -> dict[str, torch.Tensor]:
        """Shapes for a load: the values come from the file."""
        device = self.base_layer.weight.device
        return {
            "a": torch.zeros(g, self.in_features, device=device),
            "bt": torch.zeros(g, self.out_features, device=device),
            "e": torch.zeros(g, device=device),
        }

    def _triplets(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return [self.store.triplet_tensors(self.slot, t) for t in self.store.blocks[self.slot]]

    def _spare(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        spare = self.store.spares[self.slot]
        return None if spare is None else self.store.triplet_tensors(self.slot, spare)

    # Per-block views into the store (writes go through), in block order.
    @property
    def lora_A(self) -> list[torch.Tensor]:
        return [a for a, _, _ in self._triplets()]

    @property
    def lora_E(self) -> list[torch.Tensor]:
        return [e for _, e, _ in self._triplets()]

    @property
    def lora_B(self) -> list[torch.Tensor]:
        return [bt.t() for _, _, bt in self._triplets()]

    @property
    def spare_A(self) -> torch.Tensor | None:
        spare = self._spare()
        return None if spare is None else spare[0]

    @property
    def spare_E(self) -> torch.Tensor | None:
        spare = self._spare()
        return None if spare is None else spare[1]

    @property
    def spare_B(self) -> torch.Tensor | None:
        spare = self._spare()
        return None if spare is None else spare[2].t()

    def block_sizes(self) -> list[int]:
        return [t.k for t in self.store.blocks[self.slot]]

    def restore_blocks(self, blocks: list[int]) -> None:
        """Shapes only, one event per added block (an adapter saved without a store layout)."""
        for size in blocks[len(self.block_sizes()) :]:
            self.store.new_event([(self.slot, "block", self.zero_values(size))])

    def set_spare(self, size: int) -> None:
        """Replace the spare by ``size`` zeros (shapes for a load; E in ``frozen``); 0 removes it."""
        self.store.spares[self.slot] = None
        if size:
            self.store.new_event([(self.slot, "spare", self.zero_values(size))])
        self.store.changed()

    @property
    def rank(self) -> int:
        return self.store.rank(self.slot)

    @property
    def spare_size(self) -> int:
        spare = self.store.spares[self.slot]
        return 0 if spare is None else spare.k

    @property
    def spare_live(self) -> bool:
        """The spare takes part in the forward only while growing; afterwards its E is 0 anyway."""
        return self.growing and self.store.spares[self.slot] is not None

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.rank

    def effective_params(self) -> int:
        return self.rank * (self.in_features + self.out_features + 1)

    def delta_weight(self) -> torch.Tensor:
        """(α / r) · B diag(E) A, the live spare included (what the forward adds)."""
        factors = self.store.current()
        return factors.Bt[self.slot].t() @ factors.M[self.slot]

    # -- forward ---------------------------------------------------------------------------------
    def _input(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = self.lora_dropout(x)
        if not torch.is_autocast_enabled(x.device.type):  # under autocast the matmuls pick the dtype
            # the factors' dtype: fp32, unless the whole model was cast after injection (float64 tests)
            x = x.to(dtype)
        return x

    def _explicit(self) -> bool:
        # ΔW is built explicitly only so that a tensor hook can see G = ∂L/∂ΔW (spec §4)
        return self.growing and torch.is_grad_enabled()

    def adapter_factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(dropout(x) (diag(s·E) A)ᵀ, Bᵀ) once growth is over: the factored path at
        O(n·r·(d_in + d_out)), the scaling folded into the gathered factors."""
        if self._explicit():
            return None
        factors = self.store.current()
        M = factors.M[self.slot]
        return F.linear(self._input(x, M.dtype), M), factors.Bt[self.slot]

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._explicit():
            delta = self.delta_weight()
            if delta.requires_grad:
                delta.register_hook(self._capture_grad)
            return F.linear(self._input(x, delta.dtype), delta)
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

    @torch.no_grad()
    def end_growth(self) -> None:
        """Budget spent: stop capturing, free G and the EMA state, zero the spare's E; its a and b
        train on inside the regulariser (``keep``) or are frozen (``freeze``)."""
        self.growing = False
        self.grad_sum = None
        self.exp_avg_ipt = self.exp_avg_unc = 0.0
        self.store.end_growth(self.slot)

    # -- the state dict: per-block tensors under this layer's name, whatever the storage ------------
    def _state_entries(self) -> list[tuple[str, torch.Tensor]]:
        entries = []
        for j, (a, e, bt) in enumerate(self._triplets()):
            entries += [(f"lora_A.{j}", a), (f"lora_E.{j}", e), (f"lora_B.{j}", bt.t())]
        spare = self._spare()
        if spare is not None:
            entries += [("spare_A", spare[0]), ("spare_E", spare[1]), ("spare_B", spare[2].t())]
        return entries

    def extra_repr(self) -> str:
        return f"blocks={self.block_sizes()}, spare={self.spare_size}, scale={self.scaling:.4g}"

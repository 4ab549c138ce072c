"""``TriAdaptLinear``: a frozen linear plus s·B (L + U) A, its factors in a ``TriAdaptBlocks``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.methods import growing
from src.methods.triadapt.storage import TriAdaptBlocks


class TriAdaptLinear(growing.AdapterLinear):
    """Frozen linear + s·B (L + U) A (spec §5.2–5.4), its factors kept in a ``TriAdaptBlocks``.

    Block j (size k_j, cumulative rank s_j) has A rows (k_j × d_in), B columns (d_out × k_j), the
    row strip L_j (k_j × s_j, rows [s_{j-1}, s_j) of L) and the column strip U_j (s_j × k_j,
    columns [s_{j-1}, s_j) of U). Growth appends a block and touches nothing that exists.

    A layer built alone owns its storage (a submodule); ``method=triadapt`` passes one storage
    shared by every layer of the model. The state dict holds per-block tensors ``L.j``, ``U.j``,
    ``A.j``, ``B.j`` under the layer's own name, whatever the storage.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        init_rank: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        scaling: str = "rank",
        reference_rank: int = 8,
        init: str = "identity",
        init_std: float = 0.02,
        store: TriAdaptBlocks | None = None,
    ):
        super().__init__(base_layer)
        self.lora_alpha = lora_alpha
        self.scaling_mode = scaling
        self.reference_rank = reference_rank
        self.init = init
        self.init_std = init_std
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.join_store(TriAdaptBlocks() if store is None else store, own=store is None, init_rank=init_rank)

    @property
    def rank(self) -> int:
        return self.store.ranks[self.slot]

    @property
    def scale(self) -> float:
        return self.lora_alpha / (self.rank if self.scaling_mode == "rank" else self.reference_rank)

    def block_sizes(self) -> list[int]:
        return [b.k for b in self.store.blocks[self.slot]]

    # Per-block views into the storage (writes go through), in block order: L_j, U_j, A_j, B_j.
    @property
    def L(self) -> list[torch.Tensor]:
        return [t[0] for t in self.store.block_tensors(self.slot)]

    @property
    def U(self) -> list[torch.Tensor]:
        return [t[1] for t in self.store.block_tensors(self.slot)]

    @property
    def A(self) -> list[torch.Tensor]:
        return [t[2] for t in self.store.block_tensors(self.slot)]

    @property
    def B(self) -> list[torch.Tensor]:
        return [t[3].t() for t in self.store.block_tensors(self.slot)]

    def init_values(self, k: int, r: int) -> dict[str, torch.Tensor]:
        """A new block of size k on top of rank r (spec §5.4), drawn in the per-block layout's order."""
        s, w = r + k, self.base_layer.weight
        kw = {"device": w.device, "dtype": torch.float32}
        A = torch.randn(k, self.in_features, **kw) * self.init_std
        if self.init == "identity":
            # T becomes diag(T_old, I_k) and the new B columns are 0, so B T A is exactly unchanged
            B = torch.zeros(self.out_features, k, **kw)
            L, U = torch.zeros(k, s, **kw), torch.zeros(s, k, **kw)
            L[:, r:] = torch.eye(k, **kw) / 2
            U[r:, :] = torch.eye(k, **kw) / 2
        else:
            B = (
                torch.zeros(self.out_features, k, **kw)
                if r == 0
                else torch.randn(self.out_features, k, **kw) * self.init_std
            )
            L, U = torch.randn(k, s, **kw) * self.init_std, torch.randn(s, k, **kw) * self.init_std
        return {"L": L, "U": U, "A": A, "Bt": B.t()}

    def grow(self, k: int) -> list[nn.Parameter]:
        """Append one block of size ``k`` to this layer alone (one event); returns the new tensor."""
        return self.store.grow([(self.slot, k)])

    def restore_blocks(self, blocks: list[int]) -> None:
        current = self.block_sizes()
        if blocks[: len(current)] != current:
            raise ValueError(f"block pattern {blocks} does not extend the layer's blocks {current}")
        for k in blocks[len(current) :]:
            self.store.grow([(self.slot, k)], init=False)

    def transform(self) -> torch.Tensor:
        """T = L + U (r × r): diagonal blocks receive one entry from L and one from U."""
        return self.store.factor(self.slot, "T")

    def factor_A(self) -> torch.Tensor:
        return self.store.factor(self.slot, "A")

    def factor_B(self) -> torch.Tensor:
        return self.store.factor(self.slot, "Bt").t()

    def adapter_factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dropout(x) (s·T·A)ᵀ, Bᵀ): O(n·r·(d_in + d_out)); the d_out × d_in update is never built."""
        factors = self.store.current()
        M, Bt = factors.M[self.slot], factors.Bt[self.slot]
        # fp32 unless the whole model was cast after injection; follow it rather than fail
        return F.linear(self.dropout(x.to(M.dtype)), M), Bt

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        h, Bt = self.adapter_factors(x)
        return h @ Bt

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.factor_B() @ self.transform() @ self.factor_A()).float()

    def effective_params(self) -> int:
        """§5.9: r (d_in + d_out) + Σ_j 2 k_j s_j."""
        total, cum = self.rank * (self.in_features + self.out_features), 0
        for k in self.block_sizes():
            cum += k
            total += 2 * k * cum
        return total

    # -- the state dict: per-block tensors under this layer's name, whatever the storage ------------
    def _state_entries(self) -> list[tuple[str, torch.Tensor]]:
        entries = []
        for j, (L, U, A, Bt) in enumerate(self.store.block_tensors(self.slot)):
            entries += [(f"L.{j}", L), (f"U.{j}", U), (f"A.{j}", A), (f"B.{j}", Bt.t())]
        return entries

    def extra_repr(self) -> str:
        return f"blocks={self.block_sizes()}, scale={self.scale:.4g}, init={self.init}"

"""TriAdaptLoRA's packed storage (spec §5.2, D13): every factor of a model in one tensor per event."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn

from src.methods.growing.store import PackedStore

if TYPE_CHECKING:
    from src.methods.triadapt.layer import TriAdaptLinear


class Block(NamedTuple):
    """Where one growth block of one layer lives: event tensor, offset in it, size k, first row."""

    event: int
    offset: int
    k: int
    start: int  # s_{j-1}: the block's first row of A (and of its L strip) in the layer


class Factors(NamedTuple):
    """One materialisation of every layer's factors (``TriAdaptBlocks.materialise``).

    ``M[i]`` = s_i·T_i·A_i (r_i × d_in) and ``Bt[i]`` = B_iᵀ (r_i × d_out) are what layer i's forward
    multiplies by; ``A_groups`` / ``Bt_groups`` are the zero-padded batches the regulariser reads.
    """

    M: list[torch.Tensor]
    Bt: list[torch.Tensor]
    A_groups: list[torch.Tensor]
    Bt_groups: list[torch.Tensor]
    T_groups: list[torch.Tensor]  # unscaled T = L + U per A group, padded
    penalty: torch.Tensor | None  # Σ_i ‖A_i A_iᵀ − I‖_F + ‖B_iᵀ B_i − I‖_F, where the store computes it


class TriAdaptBlocks(PackedStore):
    """Every TriAdaptLoRA factor of a model, in one flat tensor per allocation event (spec §5.2, D13).

    The per-block layout this storage replaced (every growth block its own four tensors; a frozen
    copy is tests/reference/per_block_triadapt.py) made TriAdaptLoRA 2.4× LoRA's step time. Here an
    event's blocks, across all modules it grows, live in one tensor (``PackedStore`` says why that is
    exact):

    - ``event_0`` holds every module's initial block, ``event_e`` the blocks born at allocation event
      e (one per ``grow``), module by module; a block is [L strip (k×s) | U strip (s×k) | A rows
      (k×d_in) | Bᵀ rows (k×d_out)], row-major. Bᵀ, not B, so every block is one contiguous range.
    - Once per model forward (a pre-hook) one gather builds every layer's A and Bᵀ as zero-padded
      batches grouped by d_in / d_out, and T's two strip contributions (the entries: every L entry of
      every padded T, then every U entry); then per A group one ``bmm`` gives M = s·T·A, so each
      layer runs one matmul and one ``addmm`` (peft's LoRA runs two matmuls, a scaling and an add).
      The regulariser is formed in the same gather, from the same batches.
    - Memory: the gathered batches and their gradients are two copies of the adapter that LoRA does
      not hold (2.6 MB at r̄ 8 on MiniLM-L6); the gather's index is one entry per row, not per value.
    - Outside a model forward (a layer called alone, ``delta_weight``, scores) the same gather runs
      on demand, once per ``session``.
    """

    def __init__(self):
        super().__init__()
        self.blocks: list[list[Block]] = []
        self.ranks: list[int] = []
        self._pending: list[tuple[int, int, dict]] = []  # initial blocks until commit()

    # -- structure ---------------------------------------------------------------------------------
    def add_layer(self, layer: TriAdaptLinear, k: int) -> int:
        """Register ``layer`` with an initial block of size k (values drawn now, stored at commit)."""
        slot = len(self.layers)
        self.layers.append(layer)
        self.blocks.append([])
        self.ranks.append(0)
        self._pending.append((slot, k, layer.init_values(k, 0)))
        self.ranks[slot] = k
        return slot

    def commit(self) -> nn.Parameter | None:
        """Store the initial blocks of every layer added so far as one tensor (event 0)."""
        pending, self._pending = self._pending, []
        return self._new_event(pending) if pending else None

    def grow(self, sizes: list[tuple[int, int]], init: bool = True) -> list[nn.Parameter]:
        """One allocation event: layer ``slot`` grows by ``k`` for each (slot, k), one new tensor.

        Values are drawn in the given (selection) order, the order the per-block layout drew them
        in, so a seeded run draws the same numbers; ``init=False`` leaves zeros (a load fills them).
        """
        if not sizes:
            return []
        items = []
        for slot, k in sizes:
            self.layers[slot].check_not_merged("grow")
            r = self.ranks[slot]
            items.append((slot, k, self.layers[slot].init_values(k, r) if init else None))
            self.ranks[slot] = r + k
        param = self._new_event(items)
        self.plan()  # now, so that the event, not the next step, pays for it
        return [param]

    def _new_event(self, items: list[tuple[int, int, dict | None]]) -> nn.Parameter:
        e, offset, parts, placed = self.n_events, 0, [], []
        for slot, k, values in sorted(items, key=lambda item: item[0]):
            layer = self.layers[slot]
            start = sum(b.k for b in self.blocks[slot])
            s = start + k
            size = 2 * k * s + k * (layer.in_features + layer.out_features)
            if values is not None:
                parts += [values[n].reshape(-1) for n in ("L", "U", "A", "Bt")]
            placed.append((slot, Block(e, offset, k, start)))
            offset += size
        device = self.layers[items[0][0]].base_layer.weight.device
        dtype = self.dtype()
        flat = torch.cat(parts).to(dtype) if parts else torch.zeros(offset, device=device, dtype=dtype)
        for slot, block in placed:
            self.blocks[slot].append(block)
        return self.add_event(flat)

    def block_tensors(self, slot: int) -> list[tuple[torch.Tensor, ...]]:
        """(L_j, U_j, A_j, B_jᵀ) of every block of layer ``slot``: views into the event tensors."""
        layer, events, out = self.layers[slot], self.events(), []
        for b in self.blocks[slot]:
            s, d_in, d_out = b.start + b.k, layer.in_features, layer.out_features
            sizes = [b.k * s, s * b.k, b.k * d_in, b.k * d_out]
            flat = events[b.event][b.offset : b.offset + sum(sizes)]
            L, U, A, Bt = flat.split(sizes)
            out.append((L.view(b.k, s), U.view(s, b.k), A.view(b.k, d_in), Bt.view(b.k, d_out)))
        return out

    # -- where the gather reads (``PackedStore.plan``) ---------------------------------------------
    def row_positions(self, slot: int, kind: str, starts: np.ndarray) -> np.ndarray:
        layer, out = self.layers[slot], []
        d = layer.in_features if kind == "A" else layer.out_features
        for b in self.blocks[slot]:  # block: [L | U | A (k×d_in) | Bᵀ (k×d_out)]
            pos = int(starts[b.event]) + b.offset + 2 * b.k * (b.start + b.k)
            pos += 0 if kind == "A" else b.k * layer.in_features
            out.append(pos + d * np.arange(b.k))
        return np.concatenate(out)

    def penalised_rows(self, slot: int) -> int:
        return self.ranks[slot]

    def entry_index(self, a_groups, a_shapes, starts, zero: int) -> np.ndarray:
        """Positions of T's strip entries: the L entries of every padded T, then the U entries."""
        TL_idx = [np.full((n, r, r), zero, dtype=np.int64) for n, r, _ in a_shapes]
        TU_idx = [np.full((n, r, r), zero, dtype=np.int64) for n, r, _ in a_shapes]
        for g, slots in enumerate(a_groups):
            for j, slot in enumerate(slots):
                for b in self.blocks[slot]:
                    base, k, s = int(starts[b.event]) + b.offset, b.k, b.start + b.k
                    TL_idx[g][j, b.start : s, :s] = base + np.arange(k * s).reshape(k, s)
                    TU_idx[g][j, :s, b.start : s] = base + k * s + np.arange(s * k).reshape(s, k)
        return np.concatenate([a.reshape(-1) for a in (*TL_idx, *TU_idx)])

    def plan_extra(self, a_groups, a_shapes, device, dtype) -> dict:
        scale = np.concatenate(
            [
                np.repeat([self.layers[s].scale for s in slots], r * r)
                for slots, (_, r, _) in zip(a_groups, a_shapes, strict=True)
            ]
        )
        return {"scale": torch.from_numpy(scale).to(device, dtype)}  # per entry of T: s_i of its layer

    # -- materialisation ---------------------------------------------------------------------------
    def materialise(self) -> Factors:
        plan = self.plan()
        A, Bt, t, penalty = self.gather()
        T = t.view(2, -1).sum(0)  # L + U: diagonal blocks get both strips, the rest one
        t_shapes = [(n, r, r) for n, r, _ in plan.a_shapes]
        sizes = [math.prod(shape) for shape in t_shapes]
        T_groups = [part.view(shape) for part, shape in zip(T.split(sizes), t_shapes, strict=True)]
        sT = (T * plan.extra["scale"]).split(sizes)
        M_groups = [
            torch.bmm(t.view(shape), a) for t, shape, a in zip(sT, t_shapes, A, strict=True)
        ]  # s·T·A per layer, batched: each layer then multiplies its input once by it
        M_rows = [m.unbind(0) for m in M_groups]
        Bt_rows = [b.unbind(0) for b in Bt]
        M, B = [], []
        for slot, r in enumerate(self.ranks):
            (ga, ja), (gb, jb) = plan.a_slot[slot], plan.b_slot[slot]
            m, b = M_rows[ga][ja], Bt_rows[gb][jb]
            M.append(m if m.shape[0] == r else m[:r])
            B.append(b if b.shape[0] == r else b[:r])
        return Factors(M, B, A, Bt, T_groups, penalty if self.penalised else None)

    # -- what the method reads -----------------------------------------------------------------------
    def factor(self, slot: int, which: str) -> torch.Tensor:
        """A_i (r × d_in), B_iᵀ (r × d_out) or the unscaled T_i (r × r) of one layer, contiguous."""
        factors, plan, r = self.current(), self.plan(), self.ranks[slot]
        if which == "Bt":
            g, j = plan.b_slot[slot]
            return factors.Bt_groups[g][j, :r]
        g, j = plan.a_slot[slot]
        if which == "A":
            return factors.A_groups[g][j, :r]
        return factors.T_groups[g][j, :r, :r].contiguous()

    def orth_penalty_sum(self) -> torch.Tensor:
        """Σ_i ‖A_i A_iᵀ − I‖_F + ‖B_iᵀ B_i − I‖_F (spec §5.7) over the padded batches of this forward.

        Zero padding leaves each Gram matrix's live block unchanged and adds zeros elsewhere, and the
        padded identity is zero there too, so the padded norm is the module's norm. ``penalised``
        stores have it from the gather; others compute it here, with autograd's own backward.
        """
        factors, plan = self.current(), self.plan()
        if factors.penalty is not None:
            return factors.penalty
        batches = [
            *zip(factors.A_groups, plan.a_part, strict=True),
            *zip(factors.Bt_groups, plan.b_part, strict=True),
        ]
        with torch.autocast(batches[0][0].device.type, enabled=False):
            return sum(
                torch.linalg.vector_norm(torch.baddbmm(plan.masks[p], P, P.transpose(1, 2)), dim=(1, 2)).sum()
                for P, p in batches
            )

    @torch.no_grad()
    def norms(self, divisor: str) -> list[float]:
        """N_i = ‖T_i‖_F / r_i (or / blocks) per layer, fp32, as the per-block layout computed it."""
        with self.session():
            values = [
                torch.linalg.norm(self.factor(slot, "T").float())
                / (self.ranks[slot] if divisor == "rank" else len(self.blocks[slot]))
                for slot in range(len(self.layers))
            ]
        return torch.stack(values).tolist()  # one device sync for all modules

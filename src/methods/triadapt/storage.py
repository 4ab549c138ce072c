"""TriAdaptLoRA's packed storage (spec §5.2, D13): every factor of a model in one tensor per event."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn

from src.methods import growing

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


class _Plan(NamedTuple):
    """Where every gathered value comes from, rebuilt after each event (``TriAdaptBlocks.plan``).

    A and Bᵀ are gathered row by row: ``rows[w]`` holds, for each gathered row of width w (the A
    groups of that width, then its Bᵀ groups), the row's first position in cat(events, tail);
    padding rows start in the zero tail. T's strip entries are gathered entry by entry.
    """

    widths: list[int]
    rows: list[torch.Tensor]  # per width: int64 row starts
    row_split: list[list[int]]  # per width: rows per group, in the order of ``rows``
    # per row part: (width, positions of its real rows or None if all are, their starts)
    writes: list[tuple[int, torch.Tensor | None, torch.Tensor]]
    t_index: torch.Tensor  # L entries of every padded T, then U entries; padding reads the tail
    tail: torch.Tensor  # max(width) zeros appended to the events: what padding reads
    a_part: list[int]  # per A group: its position among the gathered parts
    b_part: list[int]
    a_shapes: list[tuple[int, int, int]]
    b_shapes: list[tuple[int, int, int]]
    t_shapes: list[tuple[int, int, int]]
    scale: torch.Tensor  # per entry of T: s_i of the entry's layer
    masks: list[torch.Tensor]  # per row part: −I_{r_i} padded, the regulariser's identity, negated
    a_slot: list[tuple[int, int]]  # per slot: (A group, position in it)
    b_slot: list[tuple[int, int]]


class _Gather(torch.autograd.Function):
    """cat(events) → every layer's A and Bᵀ rows (padded batches), T's strip entries and, if asked,
    the orthogonality penalty Σ over batches P (n × r × d) and modules of ‖P Pᵀ − I‖_F (§5.7).

    Rows are read through ``unfold(0, w, 1)``, the overlapping view whose row p is the w values
    from position p, so one index per row (576 at r̄ 8) replaces one per value (336,384 int32,
    1.3 MB, as large as the adapter itself). The backward writes each real row's gradient back with
    ``index_copy_`` on the same view: every real row is one distinct, non-overlapping range of one
    block, so no two writes touch one value and no accumulation is needed; padding rows are skipped.
    Only T's entries use ``index_add_`` (padded entries add into the discarded tail).

    The penalty lives here so that its gradient, 2 (G / ‖G‖_F) P for the symmetric G = P Pᵀ − I
    (one ``bmm`` per batch), is formed one batch at a time at the end of the backward, instead of
    for every batch at its start, where it would sit through the whole backward at the peak.
    """

    @staticmethod
    def forward(ctx, plan: _Plan, penalised: bool, *events: torch.Tensor):
        flat = torch.cat([*events, plan.tail])
        rows = [flat.unfold(0, w, 1).index_select(0, r) for w, r in zip(plan.widths, plan.rows, strict=True)]
        parts = [part for r, split in zip(rows, plan.row_split, strict=True) for part in r.split(split)]
        grams, norms, penalty = [], [], flat.new_zeros(())
        if penalised:  # in the factors' own dtype (fp32) under autocast too, as the backward's products
            with torch.autocast(flat.device.type, enabled=False):
                for P, mask, (w, _, _) in zip(parts, plan.masks, plan.writes, strict=True):
                    P = P.view(mask.shape[0], -1, w)
                    grams.append(torch.baddbmm(mask, P, P.transpose(1, 2)))  # P Pᵀ − I in one call
                    norms.append(torch.linalg.vector_norm(grams[-1], dim=(1, 2)))
                # summed A groups first, then Bᵀ groups: the order the per-group layout summed them in
                penalty = torch.cat([norms[p] for p in (*plan.a_part, *plan.b_part)]).sum()
        ctx.save_for_backward(*rows, *grams, *norms)
        ctx.plan, ctx.penalised = plan, penalised
        ctx.sizes, ctx.numel = [e.numel() for e in events], flat.numel()
        ctx.set_materialize_grads(False)
        return (*parts, flat.index_select(0, plan.t_index), penalty)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        plan, saved, n = ctx.plan, ctx.saved_tensors, len(ctx.plan.writes)
        *part_grads, t_grad, p_grad = grads
        rows, grams, norms = saved[: len(plan.widths)], saved[len(plan.widths) :][:n], saved[-n:]
        parts = [part for r, split in zip(rows, plan.row_split, strict=True) for part in r.split(split)]
        orth = ctx.penalised and p_grad is not None
        grad = None
        for p, (g, (w, live, starts)) in enumerate(zip(part_grads, plan.writes, strict=True)):
            if orth:
                P, G = parts[p].view(grams[p].shape[0], -1, w), grams[p]
                d_orth = torch.bmm(G, P).mul_((2 * p_grad / norms[p].clamp_min(1e-30))[:, None, None])
                g = d_orth.view(-1, w) if g is None else d_orth.view(-1, w).add_(g)  # 0 where G = 0
            if g is None:
                continue
            if grad is None:
                grad = g.new_zeros(ctx.numel)
            grad.unfold(0, w, 1).index_copy_(0, starts, g if live is None else g.index_select(0, live))
        if t_grad is not None:
            grad = t_grad.new_zeros(ctx.numel) if grad is None else grad
            grad.index_add_(0, plan.t_index, t_grad)
        if grad is None:
            return (None, None) + (None,) * len(ctx.sizes)
        return (None, None, *grad[: sum(ctx.sizes)].split(ctx.sizes))


class TriAdaptBlocks(growing.SharedAdapterStorage):
    """Every TriAdaptLoRA factor of a model, in one flat tensor per allocation event (spec §5.2, D13).

    Why: each tensor the optimizer holds costs a few operator calls per step (gradient accumulation,
    clipping, AdamW), and where a step is dispatch-bound (a GPU at BERT-base size, or a small batch)
    the per-block layout this storage replaced (every growth block its own tensors; a frozen copy is
    tests/reference/per_block_triadapt.py) made TriAdaptLoRA 2.4× LoRA's step time. Here an event's
    blocks, across all modules it grows, live in one tensor:

    - ``event_0`` holds every module's initial block, ``event_e`` the blocks born at allocation event
      e (one per ``grow``), module by module; a block is [L strip (k×s) | U strip (s×k) | A rows
      (k×d_in) | Bᵀ rows (k×d_out)], row-major. Bᵀ, not B, so every block is one contiguous range.
    - This is exact (D13): the values are those of the per-block layout; growth only appends a tensor;
      and the blocks of one event already shared one param group and one AdamW step count (§5.8),
      while AdamW is elementwise, so one tensor per event keeps each block's optimizer semantics.
    - Once per model forward (a pre-hook) one gather (``_Gather``: an ``index_select`` of rows per
      row width, one of T's strip entries) builds every layer's A and Bᵀ as zero-padded batches
      grouped by d_in / d_out, and T's two strip contributions; then per A group one ``bmm`` gives
      M = s·T·A, so each layer runs one matmul and one ``addmm`` (peft's LoRA runs two matmuls, a
      scaling and an add). The regulariser is formed in the same gather, from the same batches.
    - Memory: the gathered batches and their gradients are two copies of the adapter that LoRA does
      not hold (2.6 MB at r̄ 8 on MiniLM-L6); the gather's index is one entry per row, not per value.
    - Outside a model forward (a layer called alone, ``delta_weight``, scores) the same gather runs
      on demand, once per ``session``.
    """

    def __init__(self):
        super().__init__()
        self.__dict__["layers"] = []  # TriAdaptLinear by slot, in module order; not submodules
        self.blocks: list[list[Block]] = []
        self.ranks: list[int] = []
        self.n_events = 0
        self._pending: list[tuple[int, int, dict]] = []  # initial blocks until commit()
        self._plan: _Plan | None = None
        self._plan_key = None
        self._active: Factors | None = None  # set for the duration of one model forward
        self._recompute: Factors | None = None  # the last forward's, for checkpointed recomputation
        self._depth = 0  # nesting of hooked forwards (a model's forward calls its encoder's)
        self.penalised = False  # every gather also forms the regulariser (γ > 0)

    # -- structure ---------------------------------------------------------------------------------
    def events(self) -> list[nn.Parameter]:
        return [getattr(self, f"event_{e}") for e in range(self.n_events)]

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
        dtype = self.events()[0].dtype if self.n_events else torch.float32
        flat = torch.cat(parts).to(dtype) if parts else torch.zeros(offset, device=device, dtype=dtype)
        param = nn.Parameter(flat)
        self.register_parameter(f"event_{e}", param)
        self.n_events += 1
        for slot, block in placed:
            self.blocks[slot].append(block)
        self._plan = None
        self._recompute = None
        return param

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

    # -- the gather plan (rebuilt after growth) ----------------------------------------------------
    def _groups(self, dim: str) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for slot, layer in enumerate(self.layers):
            groups.setdefault(getattr(layer, dim), []).append(slot)
        return groups

    def plan(self) -> _Plan:
        """Gather positions for the current blocks; rebuilt (in numpy, once) after every event."""
        events = self.events()
        key = (self.n_events, events[0].device, events[0].dtype)
        if self._plan is not None and self._plan_key == key:
            return self._plan
        starts = np.cumsum([0] + [p.numel() for p in events])
        zero = int(starts[-1])  # the tail: every padded position reads it
        a_groups = [
            (slots, self.layers[slots[0]].in_features) for slots in self._groups("in_features").values()
        ]
        b_groups = [
            (slots, self.layers[slots[0]].out_features) for slots in self._groups("out_features").values()
        ]
        rmax = lambda slots: max(self.ranks[s] for s in slots)  # noqa: E731
        a_shapes = [(len(slots), rmax(slots), d) for slots, d in a_groups]
        b_shapes = [(len(slots), rmax(slots), d) for slots, d in b_groups]
        t_shapes = [(n, r, r) for n, r, _ in a_shapes]

        def first_row(slot: int, b: Block, kind: str) -> int:  # block: [L | U | A (k×d_in) | Bᵀ (k×d_out)]
            pos = int(starts[b.event]) + b.offset + 2 * b.k * (b.start + b.k)
            return pos if kind == "A" else pos + b.k * self.layers[slot].in_features

        def row_starts(slots: list[int], r: int, d: int, kind: str) -> np.ndarray:
            out = np.full((len(slots), r), zero, dtype=np.int64)
            for j, slot in enumerate(slots):
                for b in self.blocks[slot]:
                    out[j, b.start : b.start + b.k] = first_row(slot, b, kind) + d * np.arange(b.k)
            return out.reshape(-1)

        groups = [(d, slots, r, "A") for (slots, d), (_, r, _) in zip(a_groups, a_shapes, strict=True)]
        groups += [(d, slots, r, "Bt") for (slots, d), (_, r, _) in zip(b_groups, b_shapes, strict=True)]
        widths = sorted({d for d, *_ in groups})
        rows, row_split, writes, part_of, parts = [], [], [], {}, []
        for w in widths:
            mine = [(g, item) for g, item in enumerate(groups) if item[0] == w]
            arrays = [row_starts(slots, r, w, kind) for _, (_, slots, r, kind) in mine]
            rows.append(np.concatenate(arrays))
            row_split.append([len(a) for a in arrays])
            for (g, item), arr in zip(mine, arrays, strict=True):
                part_of[g] = len(writes)
                parts.append(item)
                live = np.flatnonzero(arr != zero)
                writes.append((w, None if len(live) == len(arr) else live, arr[live]))
        t_index, a_slot = self._t_index(a_groups, t_shapes, starts, zero)
        b_slot = [None] * len(self.layers)
        for g, (slots, _) in enumerate(b_groups):
            for j, slot in enumerate(slots):
                b_slot[slot] = (g, j)
        scale = np.concatenate(
            [
                np.repeat([self.layers[s].scale for s in slots], r * r)
                for (slots, _), (_, r, _) in zip(a_groups, a_shapes, strict=True)
            ]
        )
        device, dtype = events[0].device, events[0].dtype
        index = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        na = len(a_groups)
        self._plan = _Plan(
            widths=widths,
            rows=[index(r) for r in rows],
            row_split=row_split,
            writes=[(w, None if live is None else index(live), index(st)) for w, live, st in writes],
            t_index=index(t_index),
            tail=torch.zeros(max(widths), device=device, dtype=dtype),
            a_part=[part_of[g] for g in range(na)],
            b_part=[part_of[na + g] for g in range(len(b_groups))],
            a_shapes=a_shapes,
            b_shapes=b_shapes,
            t_shapes=t_shapes,
            scale=torch.from_numpy(scale).to(device, dtype),
            masks=[torch.from_numpy(-self._eye(slots, r)).to(device, dtype) for _, slots, r, _ in parts],
            a_slot=a_slot,
            b_slot=b_slot,
        )
        self._plan_key = key
        return self._plan

    def _t_index(self, a_groups, t_shapes, starts, zero: int) -> tuple[np.ndarray, list]:
        """Positions of T's strip entries (the L entries of every padded T, then the U entries; padding
        reads the tail at ``zero``) and, per slot, its (A group, position in it)."""
        TL_idx = [np.full(shape, zero, dtype=np.int64) for shape in t_shapes]
        TU_idx = [np.full(shape, zero, dtype=np.int64) for shape in t_shapes]
        a_slot = [None] * len(self.layers)
        for g, (slots, _) in enumerate(a_groups):
            for j, slot in enumerate(slots):
                a_slot[slot] = (g, j)
                for b in self.blocks[slot]:
                    base, k, s = int(starts[b.event]) + b.offset, b.k, b.start + b.k
                    TL_idx[g][j, b.start : s, :s] = base + np.arange(k * s).reshape(k, s)
                    TU_idx[g][j, :s, b.start : s] = base + k * s + np.arange(s * k).reshape(s, k)
        return np.concatenate([a.reshape(-1) for a in (*TL_idx, *TU_idx)]), a_slot

    def _eye(self, slots: list[int], rmax: int) -> np.ndarray:
        """I_{r_i} in the top-left corner of each module's rmax × rmax block, zero elsewhere."""
        ranks = np.array([self.ranks[s] for s in slots])
        return (np.arange(rmax) < ranks[:, None])[:, :, None] * np.eye(rmax)

    # -- materialisation ---------------------------------------------------------------------------
    def materialise(self) -> Factors:
        plan = self.plan()
        *parts, t, penalty = _Gather.apply(plan, self.penalised, *self.events())
        A = [parts[p].view(shape) for p, shape in zip(plan.a_part, plan.a_shapes, strict=True)]
        Bt = [parts[p].view(shape) for p, shape in zip(plan.b_part, plan.b_shapes, strict=True)]
        T = t.view(2, -1).sum(0)  # L + U: diagonal blocks get both strips, the rest one
        sizes = [math.prod(shape) for shape in plan.t_shapes]
        T_groups = [part.view(shape) for part, shape in zip(T.split(sizes), plan.t_shapes, strict=True)]
        sT = (T * plan.scale).split(sizes)
        M_groups = [
            torch.bmm(t.view(shape), a) for t, shape, a in zip(sT, plan.t_shapes, A, strict=True)
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

    def current(self) -> Factors:
        """The factors of the forward (or ``session``) under way; outside one, a fresh gather.

        Non-reentrant gradient checkpointing reruns a layer's forward inside backward, after the
        model's forward has ended. It must read that forward's factors (its parameters have not
        changed since, and checkpoint checks that the rerun saves the same tensors), not a new gather.
        """
        if self._active is not None:
            return self._active
        if self._recompute is not None and torch._C._current_graph_task_id() != -1:  # inside backward
            return self._recompute
        return self.materialise()

    # The values change in place (the optimizer), so a gather is valid for one forward only: it is
    # made when the outermost hooked module starts and dropped when it ends. Hooks sit on the model
    # and on its encoder and decoder, which generate() calls on their own.
    def begin_forward(self, module: nn.Module | None = None, args=None, force: bool = False) -> None:
        self._depth += 1
        live = force or any(not (layer.merged or layer.disabled) for layer in self.layers)
        if self._depth == 1:
            self._recompute = None
        if self._depth == 1 and live:
            self._active = self.materialise()

    def end_forward(self, module: nn.Module | None = None, args=None, output=None) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._recompute, self._active = self._active, None

    @contextlib.contextmanager
    def session(self):
        """One gather shared by everything inside (scores, merging): not one per layer."""
        self.begin_forward(force=True)
        try:
            yield
        finally:
            self.end_forward()

    def hook(self, model: nn.Module) -> list:
        """Register the begin/end hooks on ``model`` and its encoder and decoder; returns the handles."""
        modules = [model]
        for getter in ("get_encoder", "get_decoder"):
            part = getattr(model, getter, lambda: None)()
            if isinstance(part, nn.Module) and part is not model:
                modules.append(part)
        handles = []
        for module in modules:
            handles.append(module.register_forward_pre_hook(self.begin_forward))
            handles.append(module.register_forward_hook(self.end_forward, always_call=True))
        return handles

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

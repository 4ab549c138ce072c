"""TriAdaptLoRA (arXiv 2501.08008): LoRA with a triangular-split transform and threshold-driven growth.

h = W0 x + s · B (L + U) A · dropout(x), with T = L + U stored as block strips so that growing the
rank appends tensors and never reallocates one (shared/spec/methods.md §5). Ranks grow at allocation
events chosen by a dynamic threshold on the change of each module's normalised ‖T‖_F.

Follows the authors' reference implementation (DiverValue-Bench ``triadaptlora.py``); every place
where we differ is an option, listed in the spec's decision table (D1–D12).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftConfig
from peft.utils import PeftType
from torch import nn

from src.methods import growing, peft_tuner
from src.methods.base import find_targets, register

STORE_NAME = "triadapt_blocks"  # the model's TriAdaptBlocks submodule
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


# ---------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------
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
    the old layout (four tensors per growth block per module, 1,152 tensors at r̄ 8) made TriAdaptLoRA
    2.4× LoRA's step time. Here an event's blocks, across all modules it grows, live in one tensor:

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
        TL_idx = [np.full(shape, zero, dtype=np.int64) for shape in t_shapes]
        TU_idx = [np.full(shape, zero, dtype=np.int64) for shape in t_shapes]
        a_slot, b_slot = [None] * len(self.layers), [None] * len(self.layers)
        for g, (slots, _) in enumerate(a_groups):
            for j, slot in enumerate(slots):
                a_slot[slot] = (g, j)
                for b in self.blocks[slot]:
                    base, k, s = int(starts[b.event]) + b.offset, b.k, b.start + b.k
                    TL_idx[g][j, b.start : s, :s] = base + np.arange(k * s).reshape(k, s)
                    TU_idx[g][j, :s, b.start : s] = base + k * s + np.arange(s * k).reshape(s, k)
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
            t_index=index(np.concatenate([a.reshape(-1) for a in (*TL_idx, *TU_idx)])),
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
        """The factors of the forward (or ``session``) under way; outside one, a fresh gather."""
        return self._active if self._active is not None else self.materialise()

    # The values change in place (the optimizer), so a gather is valid for one forward only: it is
    # made when the outermost hooked module starts and dropped when it ends. Hooks sit on the model
    # and on its encoder and decoder, which generate() calls on their own.
    def begin_forward(self, module: nn.Module | None = None, args=None, force: bool = False) -> None:
        self._depth += 1
        live = force or any(not (layer.merged or layer.disabled) for layer in self.layers)
        if self._depth == 1 and live:
            self._active = self.materialise()

    def end_forward(self, module: nn.Module | None = None, args=None, output=None) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._active = None

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


# ---------------------------------------------------------------------------------------------------
# Layer
# ---------------------------------------------------------------------------------------------------
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
        own = store is None
        store = TriAdaptBlocks() if own else store
        if own:
            self.blocks = store  # a submodule: its tensors are this layer's parameters
        else:
            self.__dict__["store_ref"] = store  # shared: the model owns it, not each layer
        self.slot = store.add_layer(self, init_rank)
        if own:
            store.commit()

    @property
    def store(self) -> TriAdaptBlocks:
        shared = self.__dict__.get("store_ref")
        return shared if shared is not None else self.blocks

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
    def _block_entries(self) -> list[tuple[str, torch.Tensor]]:
        entries = []
        for j, (L, U, A, Bt) in enumerate(self.store.block_tensors(self.slot)):
            entries += [(f"L.{j}", L), (f"U.{j}", U), (f"A.{j}", A), (f"B.{j}", Bt.t())]
        return entries

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, tensor in self._block_entries():
            destination[prefix + name] = tensor if keep_vars else tensor.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        mine = set()
        for name, target in self._block_entries():
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing.append(key)
                continue
            mine.add(key)
            value = state_dict[key]
            if value.shape != target.shape:
                errors.append(f"size mismatch for {key}: {tuple(value.shape)} vs {tuple(target.shape)}")
                continue
            with torch.no_grad():
                target.copy_(value)
        rest = {k: v for k, v in state_dict.items() if k not in mine}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self) -> str:
        return f"blocks={self.block_sizes()}, scale={self.scale:.4g}, init={self.init}"


# ---------------------------------------------------------------------------------------------------
# Allocator (pure functions, spec §5.5–5.6)
# ---------------------------------------------------------------------------------------------------
def is_event_step(t: int, init_warmup: int, incre_interval: int) -> bool:
    return t > init_warmup and t % incre_interval == 0


def progress(t: int, init_warmup: int, total_step: int) -> float:
    return (t - init_warmup) / (total_step - init_warmup)


def allocation_size(
    schedule: str, remaining: int, t: int, init_warmup: int, total_step: int, top_h: int, num_modules: int
) -> int:
    """K = floor(R_rem·p) | floor(R_rem^p) | top_h, clipped to [1, M]."""
    if schedule == "linear":
        k = remaining * (t - init_warmup) // (total_step - init_warmup)  # exact, no float rounding
    elif schedule == "exponential":
        k = math.floor(remaining ** progress(t, init_warmup, total_step))
    elif schedule == "fixed":
        k = top_h
    else:
        raise ValueError(f"schedule={schedule!r}; choose one of {list(SCHEDULES)}")
    return min(max(k, 1), num_modules)


def select_modules(scores: list[float], k: int, selection: str = "top_k") -> list[int]:
    """Indices of the modules to grow, best first; ties broken by module order (stable)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if selection == "top_k":
        return order[:k]
    tau = scores[order[k - 1]]  # threshold (reference): every module reaching the K-th score
    return [i for i in order if scores[i] >= tau]


def growth_sizes(n_selected: int, total_rank: int, target_total_rank: int, k: int, clip: bool) -> list[int]:
    """Ranks given to each selected module in order: clipped, the last growth stops R at R*;
    unclipped (``clip_to_budget: false``, the reference), every selected module grows by k and R
    may pass R* (spec §5.6)."""
    if not clip:
        return [k] * n_selected
    sizes = []
    for _ in range(n_selected):
        if total_rank >= target_total_rank:
            break
        g = min(k, target_total_rank - total_rank) if clip else k
        sizes.append(g)
        total_rank += g
    return sizes


def dry_run_schedule(
    num_modules: int,
    init_rank: int,
    target_total_rank: int,
    incre_rank_num: int,
    total_step: int,
    init_warmup: int,
    incre_interval: int,
    schedule: str = "linear",
    top_h: int = 1,
    clip_to_budget: bool = True,
) -> list[dict]:
    """Counts-only simulation of the schedule (no ties assumed): one record per allocation event."""
    events, total = [], init_rank * num_modules
    first = (init_warmup // incre_interval + 1) * incre_interval
    for t in range(first, total_step + 1, incre_interval):
        if total >= target_total_rank:
            break
        remaining = target_total_rank - total
        k = allocation_size(schedule, remaining, t, init_warmup, total_step, top_h, num_modules)
        grown = growth_sizes(k, total, target_total_rank, incre_rank_num, clip_to_budget)
        total += sum(grown)
        events.append({"step": t, "K": k, "grown": len(grown), "total_rank": total})
    return events


# ---------------------------------------------------------------------------------------------------
# Method
# ---------------------------------------------------------------------------------------------------
@register("triadapt")
class TriAdaptLoRA(growing.GrowingAdapterMethod):
    """The §1.3 contract for TriAdaptLoRA; state lives on the model (``model.adapter_info.state``)."""

    config_class = TriAdaptConfig

    def inject(self, model: nn.Module, config: TriAdaptConfig, heads: bool = True) -> nn.Module:
        if isinstance(config, dict):
            config = TriAdaptConfig(**config)
        num_modules = len(find_targets(model, config.target_modules, config.modules_to_save))
        target_total = config.target_total_rank or config.reference_rank * num_modules
        if target_total < config.init_rank * num_modules:
            raise ValueError(
                f"triadapt: target_total_rank={target_total} is below init_rank·M = "
                f"{config.init_rank}·{num_modules}; nothing could ever be allocated"
            )

        store = TriAdaptBlocks()
        store.penalised = config.orth_reg_weight > 0

        def make_layer(name: str, linear: nn.Linear) -> TriAdaptLinear:
            return TriAdaptLinear(
                linear,
                init_rank=config.init_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                scaling=config.scaling,
                reference_rank=config.reference_rank,
                init=config.init,
                init_std=config.init_std,
                store=store,
            )

        model = growing.prepare_model(
            model,
            self.name,
            config,
            config.target_modules,
            config.modules_to_save,
            make_layer,
            self.regularizer,
            wrap=heads,
        )
        store.commit()
        model.add_module(STORE_NAME, store)
        layers = growing.adapter_layers(model)
        info = growing.get_info(model)
        info.hooks += store.hook(model)  # after the regulariser's: it reads this forward's factors
        info.state.update(
            target_total_rank=target_total,
            norm_prev=dict(zip(layers, store.norms(config.norm_divisor), strict=True)),
            events=0,
        )
        events = dry_run_schedule(
            len(layers),
            config.init_rank,
            target_total,
            config.incre_rank_num,
            config.total_step,
            config.init_warmup,
            config.incre_interval,
            config.schedule,
            config.top_h,
            config.clip_to_budget,
        )
        reached = events[-1]["total_rank"] if events else config.init_rank * len(layers)
        if reached < target_total:
            warnings.warn(
                f"triadapt: the schedule reaches total rank {reached} of {target_total} by step "
                f"{config.total_step} ({len(events)} events); lower init_warmup/incre_interval, raise "
                "incre_rank_num or train longer",
                growing.ScheduleWarning,
                stacklevel=2,
            )
        return model

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        """γ · R_orth over the concatenated A and B of every module (spec §5.7), never over T."""
        config = growing.get_info(model).config
        if config.orth_reg_weight == 0:
            return None
        store = self.store(model)
        n = len(store.layers)
        denom = 2 * n if config.orth_reduction == "per_factor" else n
        return store.orth_penalty_sum() * (config.orth_reg_weight / denom)

    def importance(self, model: nn.Module) -> list[float]:
        """S_i per module in module order (spec §5.5); updates N_prev for every module."""
        info = growing.get_info(model)
        config, prev = info.config, info.state["norm_prev"]
        layers = growing.adapter_layers(model)
        norms = self.store(model).norms(config.norm_divisor)
        scores = []
        for name, current in zip(layers, norms, strict=True):
            scores.append(current - prev[name] if config.score == "increment" else current)
            prev[name] = current
        if config.score == "random":  # the control of spec §5.5: same schedule, modules at random
            return growing.random_scores(config.seed, info.state["events"], len(scores))
        return scores

    def grow_step(self, model, optimizer, lr_scheduler, global_step: int) -> dict | None:
        """Allocation hook (spec §5.10 step 5). Returns a log record on events, else None."""
        info = growing.get_info(model)
        config, target_total = info.config, info.state["target_total_rank"]
        layers = growing.adapter_layers(model)
        total = sum(layer.rank for layer in layers.values())
        if total >= target_total or not is_event_step(global_step, config.init_warmup, config.incre_interval):
            return None
        if any(layer.merged for layer in layers.values()):
            raise RuntimeError("triadapt: cannot grow a merged model; unmerge() before training on")
        scores = self.importance(model)
        k = allocation_size(
            config.schedule,
            target_total - total,
            global_step,
            config.init_warmup,
            config.total_step,
            config.top_h,
            len(layers),
        )
        names = list(layers)
        selected = [names[i] for i in select_modules(scores, k, config.selection)]
        sizes = growth_sizes(len(selected), total, target_total, config.incre_rank_num, config.clip_to_budget)
        grown = dict(zip(selected, sizes, strict=False))
        new_params = self.store(model).grow([(layers[name].slot, g) for name, g in grown.items()])
        if optimizer is not None:
            growing.add_param_group(
                optimizer,
                lr_scheduler,
                new_params,
                config.new_params_lr,
                global_step,
                config.total_step,
                name=f"triadapt@{global_step}",
                template=growing.adapter_parameters(model),
            )
        info.state["events"] += 1
        return {
            "step": global_step,
            "p": progress(global_step, config.init_warmup, config.total_step),
            "K": k,
            "selected": selected,
            "grown": grown,
            "total_rank": total + sum(sizes),
            "target_total_rank": target_total,
            "new_params": sum(p.numel() for p in new_params),
        }

    @staticmethod
    def store(model: nn.Module) -> TriAdaptBlocks:
        return growing.unwrap(model).get_submodule(STORE_NAME)

    def layout_extra(self, model: nn.Module) -> dict:
        # which event made each block: a resumed run rebuilds the same event tensors, so the saved
        # optimizer state (one entry per event tensor) loads onto the right values
        store, layers = self.store(model), growing.adapter_layers(model)
        return {
            "block_events": {
                name: [b.event for b in store.blocks[layer.slot]] for name, layer in layers.items()
            }
        }

    def batch(self, model: nn.Module):
        return self.store(model).session()

    def restore_blocks(self, model: nn.Module, pattern: dict[str, list[int]], meta: dict) -> None:
        """Rebuild the event tensors of the saved run: blocks born at one event share one tensor.

        Adapters saved before block_events existed get one event per block index (the layout does
        not matter for a loaded adapter; only a resumed optimizer needs the original one).
        """
        store, layers = self.store(model), growing.adapter_layers(model)
        events = meta.get("block_events") or {n: list(range(len(b))) for n, b in pattern.items()}
        if set(events) != set(pattern) or any(len(events[n]) != len(pattern[n]) for n in pattern):
            raise ValueError("block_events does not match rank_pattern; the adapter_config.json is corrupted")
        born: dict[int, list[tuple[int, int]]] = {}
        for name, blocks in pattern.items():
            layer = layers[name]
            have = len(layer.block_sizes())
            if blocks[:have] != layer.block_sizes():
                raise ValueError(
                    f"block pattern {blocks} does not extend {name}'s blocks {layer.block_sizes()}"
                )
            for k, e in zip(blocks[have:], events[name][have:], strict=True):
                born.setdefault(e, []).append((layer.slot, k))
        for e in sorted(born):
            store.grow(born[e], init=False)

    def training_state(self, model: nn.Module) -> dict:
        state = growing.get_info(model).state
        return {"norm_prev": dict(state["norm_prev"]), "events": state["events"]}

    def load_training_state(self, model: nn.Module, state: dict) -> None:
        info = growing.get_info(model)
        if set(state["norm_prev"]) != set(info.state["norm_prev"]):
            raise ValueError("triadapt checkpoint: norm_prev names other modules than the model's")
        info.state.update(norm_prev=dict(state["norm_prev"]), events=int(state["events"]))


# ---------------------------------------------------------------------------------------------------
# peft tuner (src/methods/peft_tuner.py): get_peft_model(model, TriAdaptLoraConfig(...))
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TriAdaptLoraConfig(peft_tuner.GrowingPeftConfig, PeftConfig, TriAdaptConfig):
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
        self.peft_type = PeftType.TRIADAPTLORA
        TriAdaptConfig.__post_init__(self)


class TriAdaptLoraModel(peft_tuner.GrowingTuner):
    """The peft tuner model: this module's layers and ``TriAdaptBlocks`` storage, grown by
    ``update_and_allocate`` (or ``src.methods.RankGrowthCallback`` in a Trainer)."""

    prefix = "triadapt_"
    method_name = "triadapt"


TriAdaptLoRA.peft_config_class = TriAdaptLoraConfig
peft_tuner.register("triadaptlora", TriAdaptLoraConfig, TriAdaptLoraModel)

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


class _Plan(NamedTuple):
    index: torch.Tensor  # positions in cat(events, [0]) of every gathered value
    sizes: list[int]  # split of the gathered vector: A groups, Bᵀ groups, then the T part
    a_shapes: list[tuple[int, int, int]]
    b_shapes: list[tuple[int, int, int]]
    t_shapes: list[tuple[int, int, int]]
    scale: torch.Tensor  # per entry of the T part: s_i of the entry's layer
    a_masks: list[torch.Tensor]  # −I_{r_i} padded, per A group: the regulariser's identity, negated
    b_masks: list[torch.Tensor]
    a_slot: list[tuple[int, int]]  # per slot: (A group, position in it)
    b_slot: list[tuple[int, int]]


class _OrthPenalty(torch.autograd.Function):
    """Σ over batches P (n × r × d) and modules of ‖P Pᵀ − I‖_F, with its closed-form gradient.

    d‖G‖_F/dP = 2 (G / ‖G‖_F) P for the symmetric G = P Pᵀ − I: one ``bmm`` per batch backward,
    where autograd would chain through the norm, the subtraction and both sides of the product.
    """

    @staticmethod
    def forward(ctx, neg_eyes: list[torch.Tensor], *batches: torch.Tensor) -> torch.Tensor:
        grams, norms = [], []
        # in the factors' own dtype (fp32) under autocast too: the backward's products must match it
        with torch.autocast(batches[0].device.type, enabled=False):
            for P, neg_eye in zip(batches, neg_eyes, strict=True):
                G = torch.baddbmm(neg_eye, P, P.transpose(1, 2))  # P Pᵀ − I in one call
                grams.append(G)
                norms.append(torch.linalg.vector_norm(G, dim=(1, 2)))
        ctx.save_for_backward(*batches, *grams, *norms)
        return torch.cat(norms).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        saved, n = ctx.saved_tensors, len(ctx.saved_tensors) // 3
        batches, grams, norms = saved[:n], saved[n : 2 * n], saved[2 * n :]
        grads = [
            torch.bmm(G, P).mul_((2 * grad / norm.clamp_min(1e-30))[:, None, None])  # 0 where G = 0
            for P, G, norm in zip(batches, grams, norms, strict=True)
        ]
        return (None, *grads)


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
    - Once per model forward (a pre-hook) one ``index_select`` gathers every layer's A, Bᵀ and the
      two strip contributions to T into zero-padded batches grouped by d_in / d_out; then per A
      group one ``bmm`` gives M = s·T·A, so each layer runs one matmul and one ``addmm`` (peft's LoRA
      runs two matmuls, a scaling and an add), and the regulariser is a few batched operations.
    - Outside a model forward (a layer called alone, ``delta_weight``, scores) the same gather runs
      on demand; without autograd its result is cached until a parameter changes.
    """

    def __init__(self):
        super().__init__()
        self.__dict__["layers"] = []  # TriAdaptLinear by slot, in module order; not submodules
        self.blocks: list[list[Block]] = []
        self.ranks: list[int] = []
        self.n_events = 0
        self._pending: list[tuple[int, int, dict]] = []  # initial blocks until commit()
        self.register_buffer("zero", torch.zeros(1), persistent=False)  # target of padded positions
        self._plan: _Plan | None = None
        self._plan_key = None
        self._active: Factors | None = None  # set for the duration of one model forward
        self._depth = 0  # nesting of hooked forwards (a model's forward calls its encoder's)

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
        zero = int(starts[-1])  # the appended 0: every padded position reads it
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
        # one int32 array filled in place, no concatenated copies: the event's peak memory stays low
        shapes = [*a_shapes, *b_shapes, *t_shapes, *t_shapes]
        sizes = [math.prod(shape) for shape in shapes]
        flat = np.full(sum(sizes), zero, dtype=np.int32 if zero < 2**31 else np.int64)
        offsets = np.cumsum([0, *sizes])
        views = [flat[o : o + n].reshape(shape) for o, n, shape in zip(offsets, sizes, shapes, strict=False)]
        na, nb = len(a_shapes), len(b_shapes)
        A_idx, B_idx = views[:na], views[na : na + nb]
        TL_idx, TU_idx = views[na + nb : 2 * na + nb], views[2 * na + nb :]
        a_slot, b_slot = [None] * len(self.layers), [None] * len(self.layers)
        for g, (slots, d) in enumerate(a_groups):
            A, TL, TU = A_idx[g], TL_idx[g], TU_idx[g]
            for j, slot in enumerate(slots):
                a_slot[slot] = (g, j)
                for b in self.blocks[slot]:
                    base, k, s = int(starts[b.event]) + b.offset, b.k, b.start + b.k
                    TL[j, b.start : s, :s] = base + np.arange(k * s).reshape(k, s)
                    TU[j, :s, b.start : s] = base + k * s + np.arange(s * k).reshape(s, k)
                    A[j, b.start : s] = base + 2 * k * s + np.arange(k * d).reshape(k, d)
        for g, (slots, d) in enumerate(b_groups):
            Bt = B_idx[g]
            for j, slot in enumerate(slots):
                b_slot[slot] = (g, j)
                d_in = self.layers[slot].in_features
                for b in self.blocks[slot]:
                    k, s = b.k, b.start + b.k
                    base = int(starts[b.event]) + b.offset + 2 * k * s + k * d_in
                    Bt[j, b.start : s] = base + np.arange(k * d).reshape(k, d)
        scale = np.concatenate(
            [
                np.repeat([self.layers[s].scale for s in slots], r * r)
                for (slots, _), (_, r, _) in zip(a_groups, a_shapes, strict=True)
            ]
        )
        device, dtype = events[0].device, events[0].dtype
        self._plan = _Plan(
            index=torch.from_numpy(flat).to(device),
            sizes=[*sizes[: na + nb], 2 * sum(sizes[na + nb : 2 * na + nb])],
            a_shapes=a_shapes,
            b_shapes=b_shapes,
            t_shapes=t_shapes,
            scale=torch.from_numpy(scale).to(device, dtype),
            a_masks=[
                torch.from_numpy(-self._eye(slots, r)).to(device, dtype)
                for (slots, _), (_, r, _) in zip(a_groups, a_shapes, strict=True)
            ],
            b_masks=[
                torch.from_numpy(-self._eye(slots, r)).to(device, dtype)
                for (slots, _), (_, r, _) in zip(b_groups, b_shapes, strict=True)
            ],
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
        plan, events = self.plan(), self.events()
        flat = torch.cat([*events, self.zero.to(events[0].dtype)])
        gathered = torch.index_select(flat, 0, plan.index).split(plan.sizes)
        na, nb = len(plan.a_shapes), len(plan.b_shapes)
        A = [part.view(shape) for part, shape in zip(gathered[:na], plan.a_shapes, strict=True)]
        Bt = [part.view(shape) for part, shape in zip(gathered[na : na + nb], plan.b_shapes, strict=True)]
        T = gathered[-1].view(2, -1).sum(0)  # L + U: diagonal blocks get both strips, the rest one
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
        return Factors(M, B, A, Bt, T_groups)

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
        padded identity is zero there too, so the padded norm is the module's norm.
        """
        factors, plan = self.current(), self.plan()
        return _OrthPenalty.apply([*plan.a_masks, *plan.b_masks], *factors.A_groups, *factors.Bt_groups)

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

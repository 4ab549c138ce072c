"""Packed storage that both growing methods share (spec §5.2, D13; §4 "Storage (D13) is free here too").

Every factor of a model lives in one flat tensor per allocation event. Why: each tensor the optimizer
holds costs a few operator calls per step (gradient accumulation, clipping, AdamW), and where a step
is dispatch-bound (a GPU at BERT-base size, or a small batch) per-block tensors made TriAdaptLoRA
2.4× and IncreLoRA 1.8× LoRA's step time. The blocks born at one event already share one param group
and one AdamW step count (§5.8) and AdamW is elementwise, so one tensor per event keeps each block's
optimizer semantics, as long as every value in it takes the same steps: a value that must not move
(IncreLoRA's frozen spare E) lives in ``frozen``, a buffer no optimizer holds, which the gather reads
like the events.

A method's store (``TriAdaptBlocks``, ``IncreLoRABlocks``) says where each layer's rows of A and Bᵀ
and its per-rank entries (TriAdaptLoRA's strip entries of T, IncreLoRA's E) sit; this module turns
that into one gather per model forward and owns the forward hooks that scope it.
"""

from __future__ import annotations

import abc
import contextlib
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from src.methods.growing.layer import SharedAdapterStorage


class Plan(NamedTuple):
    """Where every gathered value comes from, rebuilt after each change of layout (``PackedStore.plan``).

    A and Bᵀ are gathered row by row: ``rows[w]`` holds, for each gathered row of width w (the A
    groups of that width, then its Bᵀ groups), the row's first position in cat(events, constant);
    padding rows start in the zero tail. The method's per-rank entries are gathered entry by entry.
    """

    widths: list[int]
    rows: list[torch.Tensor]  # per width: int64 row starts
    row_split: list[list[int]]  # per width: rows per group, in the order of ``rows``
    # per row part: (width, positions of its real rows or None if all are, their starts)
    writes: list[tuple[int, torch.Tensor | None, torch.Tensor]]
    entries: torch.Tensor  # the method's per-rank values, padding reading the zero tail
    tail: torch.Tensor  # max(width) zeros appended after ``frozen``: what padding reads
    a_part: list[int]  # per A group: its position among the gathered parts
    b_part: list[int]
    a_shapes: list[tuple[int, int, int]]  # (modules, padded rows, d_in)
    b_shapes: list[tuple[int, int, int]]
    masks: list[torch.Tensor]  # per row part: −I padded over the penalised rows, the identity negated
    a_slot: list[tuple[int, int]]  # per slot: (A group, position in it)
    b_slot: list[tuple[int, int]]
    extra: dict  # what the method adds (TriAdaptLoRA: the per-entry scale)


class Gather(torch.autograd.Function):
    """cat(events, constant) → every layer's A and Bᵀ rows (padded batches), the method's entries and,
    if asked, the orthogonality penalty Σ over batches P (n × r × d) and modules of ‖P Pᵀ − I‖_F.

    Rows are read through ``unfold(0, w, 1)``, the overlapping view whose row p is the w values
    from position p, so one index per row replaces one per value (at r̄ 8, 576 against 336,384). The
    backward writes each real row's gradient back with ``index_copy_`` on the same view: every real
    row is one distinct, non-overlapping range, so no two writes touch one value; padding rows are
    skipped. Only the entries use ``index_add_`` (padded entries add into the discarded tail). Only
    the events get a gradient: ``constant`` (frozen values, then the zero tail) is no parameter.

    The penalty lives here so that its gradient, 2 (G / ‖G‖_F) P for the symmetric G = P Pᵀ − I
    (one ``bmm`` per batch), is formed one batch at a time at the end of the backward, instead of
    for every batch at its start, where it would sit through the whole backward at the peak.
    """

    @staticmethod
    def forward(ctx, plan: Plan, penalised: bool, constant: torch.Tensor, *events: torch.Tensor):
        flat = torch.cat([*events, constant])
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
        return (*parts, flat.index_select(0, plan.entries), penalty)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        plan, saved, n = ctx.plan, ctx.saved_tensors, len(ctx.plan.writes)
        *part_grads, entry_grad, p_grad = grads
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
        if entry_grad is not None:
            grad = entry_grad.new_zeros(ctx.numel) if grad is None else grad
            grad.index_add_(0, plan.entries, entry_grad)
        if grad is None:
            return (None, None, None) + (None,) * len(ctx.sizes)
        return (None, None, None, *grad[: sum(ctx.sizes)].split(ctx.sizes))


class PackedStore(SharedAdapterStorage):
    """Many layers' factors in one flat tensor per event (``event_<e>``), gathered once per forward.

    A subclass says where things are: ``row_positions`` (each gathered row of a layer's A or Bᵀ),
    ``entry_index`` (its per-rank values), ``penalised_rows`` (rows inside the regulariser's
    identity) and ``materialise`` (what the layers multiply by). This class builds the gather plan
    (in numpy, once per layout), runs the gather and scopes it to one model forward.
    """

    def __init__(self):
        super().__init__()
        self.__dict__["layers"] = []  # the layers by slot, in module order; not submodules
        self.n_events = 0
        self.layout_version = 0  # bumped whenever a layer's gathered rows change without a new event
        self.register_buffer("frozen", torch.zeros(0), persistent=False)  # values no optimizer holds
        self._plan: Plan | None = None
        self._plan_key = None
        self._active = None  # the gathered factors for the duration of one model forward
        self._recompute = None  # the last forward's, for checkpointed recomputation
        self._depth = 0  # nesting of hooked forwards (a model's forward calls its encoder's)
        self.penalised = False  # every gather also forms the regulariser (γ > 0)

    # -- events --------------------------------------------------------------------------------------
    def events(self) -> list[nn.Parameter]:
        return [getattr(self, f"event_{e}") for e in range(self.n_events)]

    def add_event(self, flat: torch.Tensor) -> nn.Parameter:
        """Register ``flat`` as the next event's tensor; the plan is rebuilt on its next use."""
        param = nn.Parameter(flat)
        self.register_parameter(f"event_{self.n_events}", param)
        self.n_events += 1
        self.changed()
        return param

    def changed(self) -> None:
        """The layout moved (an event, a spare activated or frozen): the plan and last gather are stale."""
        self.layout_version += 1
        self._plan = None
        self._recompute = None

    def dtype(self, default: torch.dtype = torch.float32) -> torch.dtype:
        """The events' dtype (the model may have been cast after injection), else ``default``."""
        return self.event_0.dtype if self.n_events else default

    # -- what a method's store provides --------------------------------------------------------------
    @abc.abstractmethod
    def row_positions(self, slot: int, kind: str, starts: np.ndarray) -> np.ndarray:
        """First positions, in cat(events, frozen), of layer ``slot``'s gathered rows of ``kind``
        ("A": width d_in, "Bt": width d_out), in row order; ``starts`` = each event's first position,
        then ``frozen``'s."""

    @abc.abstractmethod
    def entry_index(
        self, a_groups: list[list[int]], a_shapes: list, starts: np.ndarray, zero: int
    ) -> np.ndarray:
        """Positions of the method's per-rank entries, per A group (its slots, padded shape); padding
        reads ``zero``, the tail."""

    @abc.abstractmethod
    def penalised_rows(self, slot: int) -> int:
        """Leading gathered rows of layer ``slot`` inside the regulariser's identity."""

    def plan_extra(self, a_groups: list[list[int]], a_shapes: list, device, dtype) -> dict:
        return {}

    @abc.abstractmethod
    def materialise(self):
        """One gather (``self.gather()``) turned into what the layers read."""

    # -- the gather plan -----------------------------------------------------------------------------
    def _groups(self, dim: str) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for slot, layer in enumerate(self.layers):
            groups.setdefault(getattr(layer, dim), []).append(slot)
        return list(groups.values())

    def plan(self) -> Plan:
        """Gather positions for the current layout; rebuilt (in numpy, once) after every change."""
        events = self.events()
        key = (self.layout_version, events[0].device, events[0].dtype)
        if self._plan is not None and self._plan_key == key:
            return self._plan
        starts = np.cumsum([0] + [p.numel() for p in events] + [self.frozen.numel()])
        zero = int(starts[-1])  # the tail: every padded position reads it
        a_groups, b_groups = self._groups("in_features"), self._groups("out_features")
        positions = {
            (slot, kind): self.row_positions(slot, kind, starts)
            for slot in range(len(self.layers))
            for kind in ("A", "Bt")
        }
        dims = {"A": "in_features", "Bt": "out_features"}
        groups = [(slots, "A") for slots in a_groups] + [(slots, "Bt") for slots in b_groups]
        shapes = [
            (
                len(slots),
                max(len(positions[s, kind]) for s in slots),
                getattr(self.layers[slots[0]], dims[kind]),
            )
            for slots, kind in groups
        ]
        widths = sorted({d for *_, d in shapes})
        rows, row_split, writes, part_of, parts = [], [], [], {}, []
        for w in widths:
            mine = [g for g, shape in enumerate(shapes) if shape[2] == w]
            arrays = []
            for g in mine:
                (slots, kind), (n, r, _) = groups[g], shapes[g]
                out = np.full((n, r), zero, dtype=np.int64)
                for j, slot in enumerate(slots):
                    pos = positions[slot, kind]
                    out[j, : len(pos)] = pos
                arrays.append(out.reshape(-1))
            rows.append(np.concatenate(arrays))
            row_split.append([len(a) for a in arrays])
            for g, arr in zip(mine, arrays, strict=True):
                part_of[g] = len(writes)
                parts.append(g)
                live = np.flatnonzero(arr != zero)
                writes.append((w, None if len(live) == len(arr) else live, arr[live]))
        na = len(a_groups)
        a_shapes, b_shapes = shapes[:na], shapes[na:]
        slot_of = lambda gs: [(g, j) for g, slots in enumerate(gs) for j, _ in enumerate(slots)]  # noqa: E731
        order = lambda gs: [s for slots in gs for s in slots]  # noqa: E731
        a_slot = [pos for _, pos in sorted(zip(order(a_groups), slot_of(a_groups), strict=True))]
        b_slot = [pos for _, pos in sorted(zip(order(b_groups), slot_of(b_groups), strict=True))]
        device, dtype = events[0].device, events[0].dtype
        index = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        self._plan = Plan(
            widths=widths,
            rows=[index(r) for r in rows],
            row_split=row_split,
            writes=[(w, None if live is None else index(live), index(st)) for w, live, st in writes],
            entries=index(self.entry_index(a_groups, a_shapes, starts, zero)),
            tail=torch.zeros(max(widths), device=device, dtype=dtype),
            a_part=[part_of[g] for g in range(na)],
            b_part=[part_of[na + g] for g in range(len(b_groups))],
            a_shapes=a_shapes,
            b_shapes=b_shapes,
            masks=[torch.from_numpy(-self._eye(groups[g][0], shapes[g][1])).to(device, dtype) for g in parts],
            a_slot=a_slot,
            b_slot=b_slot,
            extra=self.plan_extra(a_groups, a_shapes, device, dtype),
        )
        self._plan_key = key
        return self._plan

    def _eye(self, slots: list[int], rmax: int) -> np.ndarray:
        """I over each module's penalised rows in the top-left corner of its rmax × rmax block."""
        ranks = np.array([self.penalised_rows(s) for s in slots])
        return (np.arange(rmax) < ranks[:, None])[:, :, None] * np.eye(rmax)

    def gather(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(A batches, Bᵀ batches, entries, penalty) of the current values, autograd-tracked."""
        plan = self.plan()
        constant = (
            plan.tail if not self.frozen.numel() else torch.cat([self.frozen.to(plan.tail.dtype), plan.tail])
        )
        *parts, entries, penalty = Gather.apply(plan, self.penalised, constant, *self.events())
        A = [parts[p].view(shape) for p, shape in zip(plan.a_part, plan.a_shapes, strict=True)]
        Bt = [parts[p].view(shape) for p, shape in zip(plan.b_part, plan.b_shapes, strict=True)]
        return A, Bt, entries, penalty

    # -- scoping one gather to one forward -----------------------------------------------------------
    def current(self):
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

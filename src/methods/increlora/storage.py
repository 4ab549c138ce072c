"""IncreLoRA's packed storage (spec §4 "Storage (D13) is free here too", §5.2): every triplet of a
model in one tensor per allocation event, the frozen values apart."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn

from src.methods.growing.injection import orth_penalty
from src.methods.growing.store import PackedStore

if TYPE_CHECKING:
    from src.methods.increlora.layer import IncreLoRALinear

FROZEN = -1  # ``Rows.event`` of values kept in the store's ``frozen`` buffer


class Rows(NamedTuple):
    """k consecutive rows (k·d values) or k entries, from ``offset`` of event tensor ``event``."""

    event: int
    offset: int


class Triplets(NamedTuple):
    """k triplets of one layer: A rows (k × d_in), Bᵀ rows (k × d_out) and E (k), each contiguous."""

    k: int
    a: Rows
    bt: Rows
    e: Rows

    def split(self, g: int, d_in: int, d_out: int) -> tuple[Triplets, Triplets | None]:
        """The first g triplets and the rest (None if g = k): the same values, nothing moved."""
        if g == self.k:
            return self, None
        rest = Triplets(
            self.k - g,
            Rows(self.a.event, self.a.offset + g * d_in),
            Rows(self.bt.event, self.bt.offset + g * d_out),
            Rows(self.e.event, self.e.offset + g),
        )
        return self._replace(k=g), rest


class Factors(NamedTuple):
    """One materialisation: per layer M = diag(s·E) A over its gathered rows and Bᵀ, and the padded
    batches the regulariser reads (``penalty`` where the gather formed it)."""

    M: list[torch.Tensor]
    Bt: list[torch.Tensor]
    A_groups: list[torch.Tensor]
    Bt_groups: list[torch.Tensor]
    penalty: torch.Tensor | None


class IncreLoRABlocks(PackedStore):
    """Every IncreLoRA triplet of a model, in one flat tensor per allocation event (``PackedStore``).

    The per-block layout this replaced (A, E, B tensors per block and three more per spare; a frozen
    copy is tests/reference/per_block_increlora.py) made IncreLoRA 1.8× LoRA's step time. Each block
    keeps the optimizer semantics of a tensor of its own (§4):

    - ``event_0`` holds the initial blocks ([A | Bᵀ | E]) and the initial spares' A and Bᵀ; ``event_e``
      the fresh spares (or, without advance learning, the new triplets) of allocation event e and,
      with ``activated_group = new``, the E of the spares it activated. Each is born and first
      updated at one step, in one group, so it shares one AdamW step count, as its tensors did.
    - A spare's E is frozen at 1e-5: it lives in ``frozen``, which no optimizer holds (in a flat
      trainable tensor a zero gradient would not keep it: weight decay and momentum move it).
      Activation copies it into a trainable tensor, fresh, as the per-block E started fresh; its A
      and Bᵀ rows stay where they are, with their moments and step count.
    - ``activated_group = birth``: the E activated at one event from spares born at event b form one
      tensor put into b's group.
    - A spare that takes no gradient after growth (``freeze``, or no regulariser over it) is copied
      into ``frozen`` when growth ends: a per-block tensor without gradient is skipped by AdamW, a row
      of a flat tensor is not. Its old rows stay in the event tensor, read by nothing.
    """

    def __init__(self):
        super().__init__()
        self.blocks: list[list[Triplets]] = []
        self.spares: list[Triplets | None] = []
        self.spares_train_after_growth = True  # keep, and the regulariser reaches them
        self.include_spare = True  # orth_include_spare
        self.placed: list = []  # where the last ``new_event`` put each item
        self._pending: list[tuple[int, str, dict]] = []  # event 0's values until commit()

    # -- structure ---------------------------------------------------------------------------------
    def add_layer(self, layer: IncreLoRALinear, k: int) -> int:
        """Register ``layer`` with k initial triplets (drawn now, AdaLoRA's init: E = 0)."""
        slot = len(self.layers)
        self.layers.append(layer)
        self.blocks.append([])
        self.spares.append(None)
        self._pending.append((slot, "block", layer.new_values(k, 0.0)))
        return slot

    def add_spare(self, slot: int, k: int) -> None:
        """The initial spare of layer ``slot`` (drawn now, after every initial block, stored at commit)."""
        layer = self.layers[slot]
        self._pending.append((slot, "spare", layer.new_values(k, layer.spare_lambda)))

    def commit(self) -> nn.Parameter | None:
        """Store the initial blocks and spares of every layer added so far as event 0."""
        pending, self._pending = self._pending, []
        return self.new_event(pending) if pending else None

    def new_event(self, items: list[tuple[int, str, dict]]) -> nn.Parameter | None:
        """One tensor for ``items`` (slot, role, values): role ``block`` ([A | Bᵀ | E], trainable),
        ``spare`` ([A | Bᵀ]; E into ``frozen``) or ``e`` (activated E, placed by the caller).

        Returns the tensor (None if nothing trainable); the places are in ``self.placed``, per item.
        """
        device = self.layers[items[0][0]].base_layer.weight.device
        dtype = self.dtype()
        parts, frozen, offset, base, placed = [], [], 0, self.frozen.numel(), []

        def put(value: torch.Tensor, freeze: bool = False) -> Rows:
            nonlocal offset, base
            if freeze:
                frozen.append(value.reshape(-1))
                base += value.numel()
                return Rows(FROZEN, base - value.numel())
            parts.append(value.reshape(-1))
            offset += value.numel()
            return Rows(self.n_events, offset - value.numel())

        for _, role, values in items:
            if role == "e":
                placed.append(put(values["e"]))
                continue
            k = values["a"].shape[0]
            a, bt, e = put(values["a"]), put(values["bt"]), put(values["e"], freeze=role == "spare")
            placed.append(Triplets(k, a, bt, e))
        self.placed = placed
        if frozen:
            self.frozen = torch.cat([self.frozen.to(device, dtype), *(f.to(dtype) for f in frozen)])
        for (slot, role, _), place in zip(items, placed, strict=True):
            if role == "block":
                self.blocks[slot].append(place)
            elif role == "spare":
                self.spares[slot] = place
        if not parts:
            self.changed()
            return None
        return self.add_event(torch.cat(parts).to(device, dtype))

    def view(self, rows: Rows, shape: tuple[int, ...]) -> torch.Tensor:
        """The values at ``rows`` (a view: writes go through)."""
        flat = self.frozen if rows.event == FROZEN else getattr(self, f"event_{rows.event}")
        n = int(np.prod(shape))
        return flat[rows.offset : rows.offset + n].view(shape)

    def triplet_tensors(self, slot: int, t: Triplets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        layer = self.layers[slot]
        return (
            self.view(t.a, (t.k, layer.in_features)),
            self.view(t.e, (t.k,)),
            self.view(t.bt, (t.k, layer.out_features)),
        )

    def activate(self, slot: int, g: int) -> torch.Tensor:
        """The first g spare triplets become a block, A and Bᵀ rows where they are (with their
        optimizer state); returns their E values, which the caller places (``place_e``). The rest of
        a split spare (a clipped last growth) stays the spare."""
        layer, spare = self.layers[slot], self.spares[slot]
        e = self.view(spare.e, (spare.k,))[:g].detach().clone()
        active, rest = spare.split(g, layer.in_features, layer.out_features)
        self.blocks[slot].append(active)
        self.spares[slot] = rest
        self.changed()
        return e

    def place_e(self, slot: int, rows: Rows) -> None:
        """Where the E of layer ``slot``'s newest block now lives (out of ``frozen``, trainable)."""
        self.blocks[slot][-1] = self.blocks[slot][-1]._replace(e=rows)
        self.changed()

    @torch.no_grad()
    def end_growth(self, slot: int) -> None:
        """Growth is over for layer ``slot``: its spare's E becomes 0 and, if the spare takes no more
        gradient, its A and Bᵀ move into ``frozen`` (see the class docstring)."""
        spare = self.spares[slot]
        if spare is None:
            return
        a, e, bt = self.triplet_tensors(slot, spare)
        e.zero_()
        if not self.spares_train_after_growth and spare.a.event != FROZEN:
            start, n_a = self.frozen.numel(), a.numel()
            self.frozen = torch.cat([self.frozen, a.detach().reshape(-1), bt.detach().reshape(-1)])
            self.spares[slot] = spare._replace(a=Rows(FROZEN, start), bt=Rows(FROZEN, start + n_a))
        self.changed()

    # -- where the gather reads ----------------------------------------------------------------------
    def gathered(self, slot: int) -> list[Triplets]:
        """The layer's triplets in the gather: its blocks, then the spare while it is in the forward
        (growing) or trains in the regulariser."""
        spare, layer = self.spares[slot], self.layers[slot]
        in_gather = spare is not None and (layer.growing or self.spares_train_after_growth)
        return self.blocks[slot] + ([spare] if in_gather else [])

    def rank(self, slot: int) -> int:
        return sum(t.k for t in self.blocks[slot])

    def _base(self, rows: Rows, starts: np.ndarray) -> int:
        return int(starts[self.n_events if rows.event == FROZEN else rows.event]) + rows.offset

    def row_positions(self, slot: int, kind: str, starts: np.ndarray) -> np.ndarray:
        layer = self.layers[slot]
        d = layer.in_features if kind == "A" else layer.out_features
        out = [
            self._base(t.a if kind == "A" else t.bt, starts) + d * np.arange(t.k) for t in self.gathered(slot)
        ]
        return np.concatenate(out)

    def penalised_rows(self, slot: int) -> int:
        rows = sum(t.k for t in self.gathered(slot))
        return rows if self.include_spare else self.rank(slot)

    def entry_index(self, a_groups, a_shapes, starts, zero: int) -> np.ndarray:
        """E of every gathered triplet; the spare's E only while it is in the forward (after growth
        its E is 0: the tail, so the spare's rows add nothing and get no gradient from the forward)."""
        out = [np.full((n, r), zero, dtype=np.int64) for n, r, _ in a_shapes]
        for g, slots in enumerate(a_groups):
            for j, slot in enumerate(slots):
                live = self.blocks[slot] + ([self.spares[slot]] if self.layers[slot].spare_live else [])
                pos = np.concatenate([self._base(t.e, starts) + np.arange(t.k) for t in live])
                out[g][j, : len(pos)] = pos
        return np.concatenate([o.reshape(-1) for o in out])

    def plan_extra(self, a_groups, a_shapes, device, dtype) -> dict:
        scale = [np.zeros((n, r)) for n, r, _ in a_shapes]
        for g, slots in enumerate(a_groups):
            for j, slot in enumerate(slots):
                scale[g][j, :] = self.layers[slot].scaling
        flat = np.concatenate([s.reshape(-1) for s in scale])
        return {"scale": torch.from_numpy(flat).to(device, dtype)}  # α / r_i per entry of layer i

    # -- materialisation ---------------------------------------------------------------------------
    def materialise(self) -> Factors:
        plan = self.plan()
        A, Bt, e, penalty = self.gather()
        sizes = [n * r for n, r, _ in plan.a_shapes]
        es = (e * plan.extra["scale"]).split(sizes)
        # M = diag(s·E) A per layer, batched: each layer then multiplies its input once by it
        M_groups = [a * s.view(n, r, 1) for a, s, (n, r, _) in zip(A, es, plan.a_shapes, strict=True)]
        M_rows = [m.unbind(0) for m in M_groups]
        Bt_rows = [b.unbind(0) for b in Bt]
        M, B = [], []
        for slot in range(len(self.layers)):
            r = sum(t.k for t in self.gathered(slot))
            (ga, ja), (gb, jb) = plan.a_slot[slot], plan.b_slot[slot]
            m, b = M_rows[ga][ja], Bt_rows[gb][jb]
            M.append(m if m.shape[0] == r else m[:r])
            B.append(b if b.shape[0] == r else b[:r])
        return Factors(M, B, A, Bt, penalty if self.penalised else None)

    def orth_penalty_sum(self) -> torch.Tensor:
        """Σ_i ‖A_i A_iᵀ − I‖_F + ‖B_iᵀ B_i − I‖_F over each layer's penalised rows (§4)."""
        factors, plan = self.current(), self.plan()
        if factors.penalty is not None:
            return factors.penalty
        total = 0
        for slot in range(len(self.layers)):  # spare in the forward but not penalised: per layer
            r = self.penalised_rows(slot)
            (ga, ja), (gb, jb) = plan.a_slot[slot], plan.b_slot[slot]
            total = total + orth_penalty(factors.A_groups[ga][ja, :r], factors.Bt_groups[gb][jb, :r].T)
        return total

    # -- budget and layout ---------------------------------------------------------------------------
    def budget_counts(self) -> dict[str, int]:
        """The per-block layout's counts (§1.5): active triplets, trainable spares (a and b; E never),
        and what the event tensors hold (rows left behind by frozen spares included)."""
        adapter = spare = 0
        if not any(p.requires_grad for p in self.events()):  # loaded for inference: nothing trains
            return {"adapter": 0, "spare": 0, "held": 0}
        for slot, layer in enumerate(self.layers):
            adapter += self.rank(slot) * (layer.in_features + layer.out_features + 1)
            if self.spares[slot] is not None and (layer.growing or layer.keep_spares):
                spare += self.spares[slot].k * (layer.in_features + layer.out_features)
        return {"adapter": adapter, "spare": spare, "held": sum(p.numel() for p in self.events())}

    def layout(self) -> dict:
        """Where every triplet lives: a resumed run rebuilds the same event tensors from it."""
        entry = lambda t: [list(t.a), list(t.bt), list(t.e), t.k]  # noqa: E731
        return {
            "events": [p.numel() for p in self.events()],
            "frozen": self.frozen.numel(),
            "blocks": [[entry(t) for t in blocks] for blocks in self.blocks],
            "spares": [None if t is None else entry(t) for t in self.spares],
        }

    def restore(self, layout: dict) -> None:
        """Rebuild the tensors of ``layout`` (zeros: the weights load next) in place of the current ones."""
        device, dtype = self.layers[0].base_layer.weight.device, self.dtype()
        for e in range(self.n_events):
            delattr(self, f"event_{e}")
        self.n_events = 0
        for numel in layout["events"]:
            self.add_event(torch.zeros(numel, device=device, dtype=dtype))
        self.frozen = torch.zeros(layout["frozen"], device=device, dtype=dtype)

        def triplets(entry) -> Triplets:
            a, bt, e, k = entry
            return Triplets(k, Rows(*a), Rows(*bt), Rows(*e))

        self.blocks = [[triplets(t) for t in blocks] for blocks in layout["blocks"]]
        self.spares = [None if t is None else triplets(t) for t in layout["spares"]]
        self.changed()

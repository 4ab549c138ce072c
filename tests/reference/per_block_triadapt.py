"""The per-block TriAdaptLoRA layout, kept as the reference the packed storage is tested against.

A frozen copy of src/methods/triadapt.py (now src/methods/triadapt/) before storage D13 (shared/spec/methods.md §5.2): every
growth block owns four tensors (L, U, A, B strips) and the optimizer holds each of them. It is not
registered as a method; tests/test_storage_equivalence.py runs it beside ``method=triadapt`` and
requires the same losses, rank history, AdamW step counts and (in float64) weights.
"""

from __future__ import annotations

import itertools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from src.methods import growing
from src.methods.base import find_targets
from src.methods.triadapt import (
    TriAdaptConfig,
    allocation_size,
    dry_run_schedule,
    growth_sizes,
    is_event_step,
    progress,
    select_modules,
)


class PerBlockTriAdaptLinear(growing.AdapterLinear):
    """Frozen linear + s·B (L + U) A, stored as per-block strips (spec §5.2).

    Block j (size k_j, cumulative rank s_j) owns ``A[j]`` (k_j × d_in), ``B[j]`` (d_out × k_j), the
    row strip ``L[j]`` (k_j × s_j, rows [s_{j-1}, s_j) of L) and the column strip ``U[j]``
    (s_j × k_j, columns [s_{j-1}, s_j) of U). Growth appends a block; existing tensors are never
    touched, so they keep their identity and their optimizer state.
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
    ):
        super().__init__(base_layer)
        self.lora_alpha = lora_alpha
        self.scaling_mode = scaling
        self.reference_rank = reference_rank
        self.init = init
        self.init_std = init_std
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        self.L = nn.ParameterList()
        self.U = nn.ParameterList()
        self._blocks: list[int] = []
        self.grow(init_rank)

    @property
    def rank(self) -> int:
        return sum(self._blocks)

    @property
    def scale(self) -> float:
        return self.lora_alpha / (self.rank if self.scaling_mode == "rank" else self.reference_rank)

    def block_sizes(self) -> list[int]:
        return list(self._blocks)

    def grow(self, k: int) -> list[nn.Parameter]:
        """Append one block of size ``k`` (spec §5.4 init) and return its four new parameters."""
        self.check_not_merged("grow")
        r, s = self.rank, self.rank + k
        w = self.base_layer.weight
        kw = {"device": w.device, "dtype": torch.float32}
        first = not self._blocks
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
                if first
                else torch.randn(self.out_features, k, **kw) * self.init_std
            )
            L, U = torch.randn(k, s, **kw) * self.init_std, torch.randn(s, k, **kw) * self.init_std
        dtype = self.A[0].dtype if len(self.A) else torch.float32  # a model cast whole stays so
        new = [nn.Parameter(t.to(dtype)) for t in (L, U, A, B)]
        for plist, p in zip((self.L, self.U, self.A, self.B), new, strict=True):
            plist.append(p)
        self._blocks.append(k)
        return new

    def restore_blocks(self, blocks: list[int]) -> None:
        current = self.block_sizes()
        if blocks[: len(current)] != current:
            raise ValueError(f"block pattern {blocks} does not extend the layer's blocks {current}")
        for k in blocks[len(current) :]:
            self.grow(k)

    def _strip_index(self, device: torch.device) -> torch.Tensor:
        """Flat positions in T (row-major, r × r) of every strip entry, in ``_strip_values`` order.

        Rebuilt only when the block structure or device changes (i.e. after growth), so assembling T
        costs one concatenation and one ``index_add`` per forward instead of 2·blocks pads and cats.
        """
        key = (tuple(self._blocks), device)
        if getattr(self, "_index_key", None) != key:
            r, pos = self.rank, torch.arange(self.rank)
            ends = list(itertools.accumulate(self._blocks))
            bounds = list(zip([0, *ends[:-1]], ends, strict=True))
            rows = [(pos[a:b, None] * r + pos[None, :b]).reshape(-1) for a, b in bounds]  # L_j: k_j × s_j
            cols = [(pos[:b, None] * r + pos[None, a:b]).reshape(-1) for a, b in bounds]  # U_j: s_j × k_j
            self._index = torch.cat(rows + cols).to(device)
            self._index_key = key
        return self._index

    def _strip_values(self) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in (*self.L, *self.U)])

    def transform(self) -> torch.Tensor:
        """T = L + U (r × r), assembled from the strips by a precomputed scatter (autograd-safe).

        Diagonal blocks receive one entry from L and one from U; ``index_add`` sums them.
        """
        r = self.rank
        values = self._strip_values()
        flat = values.new_zeros(r * r).index_add(0, self._strip_index(values.device), values)
        return flat.view(r, r)

    def factor_A(self) -> torch.Tensor:
        return self.A[0] if len(self.A) == 1 else torch.cat(list(self.A), dim=0)

    def factor_B(self) -> torch.Tensor:
        return self.B[0] if len(self.B) == 1 else torch.cat(list(self.B), dim=1)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of the current forward when one just ran in training, else freshly concatenated.

        The regulariser runs right after the model's forward; reusing the forward's concatenations
        (popped, so never stale) saves two copies per module per step.
        """
        cached = self.__dict__.pop("_forward_factors", None)
        return cached if cached is not None else (self.factor_A(), self.factor_B())

    def adapter_factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dropout(x) Aᵀ (s·T)ᵀ, Bᵀ): s is folded into the r × r transform, so scaling costs r²
        multiplications instead of a pass over the n × d_out output."""
        # factored (D11): O(n·r·(d_in + d_out + r)); the d_out × d_in update is never built here.
        # A is fp32 unless the whole model was cast after injection; follow it rather than fail.
        A, B = self.factor_A(), self.factor_B()
        if self.training and torch.is_grad_enabled():
            self.__dict__["_forward_factors"] = (A, B)
        h = F.linear(self.dropout(x.to(A.dtype)), A)
        return F.linear(h, self.transform() * self.scale), B.t()

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        h, Bt = self.adapter_factors(x)
        return h @ Bt

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.factor_B() @ self.transform() @ self.factor_A()).float()

    def effective_params(self) -> int:
        """§5.9: r (d_in + d_out) + Σ_j 2 k_j s_j."""
        total, cum = self.rank * (self.in_features + self.out_features), 0
        for k in self._blocks:
            cum += k
            total += 2 * k * cum
        return total

    @torch.no_grad()
    def norm_tensor(self, divisor: str) -> torch.Tensor:
        """N_i = ‖L + U‖_F / r_i (or / number of blocks), fp32, as a 0-d tensor on the layer's device."""
        value = torch.linalg.norm(self.transform().float())
        return value / (self.rank if divisor == "rank" else len(self._blocks))

    def norm(self, divisor: str) -> float:
        return self.norm_tensor(divisor).item()

    def extra_repr(self) -> str:
        return f"blocks={self._blocks}, scale={self.scale:.4g}, init={self.init}"


class PerBlockTriAdaptLoRA(growing.GrowingAdapterMethod):
    """The §1.3 contract for TriAdaptLoRA; state lives on the model (``model.adapter_info.state``)."""

    config_class = TriAdaptConfig
    name = "triadapt"

    def inject(self, model: nn.Module, config: TriAdaptConfig, heads: bool = True) -> nn.Module:
        return self.apply(model, config)  # the reference injects directly, never through peft

    def apply(self, model: nn.Module, config: TriAdaptConfig) -> nn.Module:
        if isinstance(config, dict):
            config = TriAdaptConfig(**config)
        num_modules = len(find_targets(model, config.target_modules, config.modules_to_save))
        target_total = config.target_total_rank or config.reference_rank * num_modules
        if target_total < config.init_rank * num_modules:
            raise ValueError(
                f"triadapt: target_total_rank={target_total} is below init_rank·M = "
                f"{config.init_rank}·{num_modules}; nothing could ever be allocated"
            )

        def make_layer(name: str, linear: nn.Linear) -> PerBlockTriAdaptLinear:
            return PerBlockTriAdaptLinear(
                linear,
                init_rank=config.init_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                scaling=config.scaling,
                reference_rank=config.reference_rank,
                init=config.init,
                init_std=config.init_std,
            )

        model = growing.prepare_model(
            model,
            self.name,
            config,
            config.target_modules,
            config.modules_to_save,
            make_layer,
            self.regularizer,
        )
        layers = growing.adapter_layers(model)
        info = growing.get_info(model)
        info.state.update(
            target_total_rank=target_total,
            norm_prev={name: layer.norm(config.norm_divisor) for name, layer in layers.items()},
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
                stacklevel=2,
            )
        return model

    def regularizer(self, model: nn.Module) -> torch.Tensor | None:
        """γ · R_orth over the concatenated A and B of every module (spec §5.7), never over T."""
        config = growing.get_info(model).config
        if config.orth_reg_weight == 0:
            return None
        layers = list(growing.adapter_layers(model).values())
        total = sum(growing.orth_penalty(*layer.factors()) for layer in layers)
        denom = 2 * len(layers) if config.orth_reduction == "per_factor" else len(layers)
        return config.orth_reg_weight * total / denom

    def importance(self, model: nn.Module) -> list[float]:
        """S_i per module in module order (spec §5.5); updates N_prev for every module."""
        info = growing.get_info(model)
        config, prev = info.config, info.state["norm_prev"]
        layers = growing.adapter_layers(model)
        # one device sync for all modules instead of one per module (.item() each)
        norms = torch.stack([layer.norm_tensor(config.norm_divisor) for layer in layers.values()]).tolist()
        scores = []
        for name, current in zip(layers, norms, strict=True):
            scores.append(current - prev[name] if config.score == "increment" else current)
            prev[name] = current
        return scores

    def step(self, model, optimizer, lr_scheduler, global_step: int) -> dict | None:
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
        new_params, grown = [], {}
        for name, g in zip(selected, sizes, strict=False):
            new_params += layers[name].grow(g)
            grown[name] = g
        if optimizer is not None:
            growing.add_param_group(
                optimizer,
                lr_scheduler,
                new_params,
                config.new_params_lr,
                global_step,
                config.total_step,
                name=f"triadapt@{global_step}",
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

    def training_state(self, model: nn.Module) -> dict:
        state = growing.get_info(model).state
        return {"norm_prev": dict(state["norm_prev"]), "events": state["events"]}

    def load_training_state(self, model: nn.Module, state: dict) -> None:
        info = growing.get_info(model)
        if set(state["norm_prev"]) != set(info.state["norm_prev"]):
            raise ValueError("triadapt checkpoint: norm_prev names other modules than the model's")
        info.state.update(norm_prev=dict(state["norm_prev"]), events=int(state["events"]))

    def load(self, base_model: nn.Module, directory: str) -> nn.Module:
        with warnings.catch_warnings():
            # a loaded adapter is used, not trained on: the schedule's dry-run warning would be noise
            warnings.filterwarnings("ignore", message="triadapt: the schedule")
            return growing.load_adapter(self, base_model, directory)

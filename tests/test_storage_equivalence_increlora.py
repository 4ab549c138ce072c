"""IncreLoRA's live implementation trains exactly what the frozen per-block layout does.

Spec §4 ("Storage (D13) is free here too") and §5.2: storage may change as long as the function, the
values through growth and spare activation, each block's optimizer semantics (its own AdamW step
count from its birth, in the group ``activated_group`` names) and the frozen values (a spare's E,
the spares under ``spares_after_growth = freeze``) are unchanged. tests/reference/per_block_increlora.py
is the per-block layout (A, E, B tensors per block and per spare); both run the same seeded loop on
tiny-deberta, stepped as the Trainer steps (forward, backward, clipping over the optimizer's tensors,
AdamW, the method's hook, the scheduler), through 4 allocation events, a clipped last growth that
splits a spare (k = 5, 6 ranks left) and 8 steps after growth ends.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from src.lr_schedule import GroupLambdaLR, linear_warmup_decay
from src.methods import growing
from src.methods.increlora import IncreLoRA
from src.methods.increlora.storage import FROZEN
from src.runtime.backbones import load_model
from tests.reference.per_block_increlora import PerBlockIncreLoRA

pytestmark = pytest.mark.heavy  # 24 runs of 28 steps: `make test-slow`, as the TriAdaptLoRA twin
HEADS = ["classifier", "pooler"]
STEPS = 28
WARMUP = 4  # LR warmup = init_warmup = ν, as the released scripts set them

# (advance_learning, activated_group, spares_after_growth, orth_reg_weight): the released defaults,
# each other value once, and keep with γ = 0, where spares get no gradient at all after growth (a
# per-block spare is then skipped by AdamW: no weight decay, no momentum; a packed one must not move)
CASES = [
    (True, "new", "keep", 0.1),
    (True, "birth", "keep", 0.1),
    (True, "new", "freeze", 0.1),
    (True, "birth", "freeze", 0.1),
    (True, "new", "keep", 0.0),
    (False, "new", "keep", 0.1),
]
IDS = ["released", "birth-keep", "new-freeze", "birth-freeze", "keep-no-orth", "no-advance"]


def run(method, tiny_backbone, dtype, advance, activated, spares, gamma):
    base = load_model(tiny_backbone, "seq_cls", 2, seed=0)
    config = method.make_config(
        {
            "target_modules": list(tiny_backbone.target_modules),
            "modules_to_save": HEADS,
            "target_rank": 4,
            "incre_rank_num": 5,  # 12 modules, R* = 48: +10 at steps 8, 12, 16, then 5 + 1 (a split)
            "top_h": 2,
            "init_warmup": WARMUP,
            "incre_interval": WARMUP,
            "warmup_steps": WARMUP,
            "advance_learning": advance,
            "activated_group": activated,
            "spares_after_growth": spares,
            "orth_reg_weight": gamma,
            "lora_dropout": 0.1,  # the layers draw dropout masks: both layouts must draw the same
            "lora_alpha": 8,
        },
        total_step=STEPS,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the schedule warning: R* is reached, growth ends
        model = method.apply(base, config).to(dtype)
    model.train()
    opt = torch.optim.AdamW(method.param_groups(model, 3e-3, 0.01), lr=3e-3)
    sched = GroupLambdaLR(opt, linear_warmup_decay(WARMUP, STEPS))
    g = torch.Generator().manual_seed(1)
    losses, ranks = [], []
    for t in range(1, STEPS + 1):
        batch = {"input_ids": torch.randint(5, 1000, (8, 12), generator=g), "labels": torch.arange(8) % 2}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], 1.0)
        opt.step()
        method.step(model, opt, sched, global_step=t)
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        ranks.append(method.budget(model)["rank_pattern"])
    return model, opt, losses, ranks


def step_of(opt, tensor) -> int | None:
    """AdamW's step count for ``tensor``; None if it never took one (no state yet)."""
    state = opt.state.get(tensor)
    return None if not state else int(state["step"])


def group_of(opt, tensor) -> int | None:
    return next((i for i, g in enumerate(opt.param_groups) if any(p is tensor for p in g["params"])), None)


def block_optim(model, opt, spares_train_after_growth: bool) -> dict[str, list]:
    """Per layer, per block then the spare: (step, group) of its A, E and B where they train, None
    where they are frozen: a spare's E, and a spare after growth unless the regulariser trains it
    (keep, γ > 0; a per-block spare without gradient keeps its last step count, a packed one has none)."""
    out = {}
    for name, layer in growing.adapter_layers(model).items():
        store = getattr(layer, "store", None)
        if store is not None:  # packed: a value's step and group are those of the tensor holding it
            triplets = store.blocks[layer.slot] + [s for s in [store.spares[layer.slot]] if s is not None]
            out[name] = [
                tuple(
                    None if rows.event == FROZEN else (step_of(opt, t), group_of(opt, t))
                    for rows in (trip.a, trip.e, trip.bt)
                    for t in [getattr(store, f"event_{rows.event}", None)]
                )
                for trip in triplets
            ]
            continue
        triplets = list(zip(layer.lora_A, layer.lora_E, layer.lora_B, strict=True))
        spare = [] if layer.spare_A is None else [(layer.spare_A, layer.spare_E, layer.spare_B)]
        dead = not layer.growing and not spares_train_after_growth
        out[name] = [
            tuple(
                None if not p.requires_grad or (is_spare and dead) else (step_of(opt, p), group_of(opt, p))
                for p in triplet
            )
            for triplet, is_spare in [(t, False) for t in triplets] + [(t, True) for t in spare]
        ]
    return out


def method_budget(model) -> dict:
    return growing.budget_report(model, None)


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    """Adapter and trained-head tensors under one naming: peft's heads (the tuner's) as the
    reference's ``HeadWrapper`` names them."""
    tensors = dict(growing.adapter_state_dict(model))
    for name, wrapper in growing.peft_heads(model).items():
        for key, value in wrapper.modules_to_save[wrapper.active_adapters[0]].state_dict().items():
            tensors[f"{name}.trained_module.{key}"] = value
    return {k: v.detach().clone() for k, v in tensors.items()}


@pytest.mark.parametrize("advance,activated,spares,gamma", CASES, ids=IDS)
def test_float32_same_losses_rank_history_and_optimizer_semantics(
    tiny_backbone, advance, activated, spares, gamma
):
    args = (tiny_backbone, torch.float32, advance, activated, spares, gamma)
    ref_model, ref_opt, ref_losses, ref_ranks = run(PerBlockIncreLoRA(), *args)
    model, opt, losses, ranks = run(IncreLoRA(), *args)
    events = [t + 1 for t in range(1, STEPS) if ref_ranks[t] != ref_ranks[t - 1]]  # ranks[t]: after t + 1
    assert events == [8, 12, 16, 20], events
    assert sum(ref_ranks[-1].values()) == 48
    assert ranks == ref_ranks
    trains = spares == "keep" and gamma > 0
    assert block_optim(model, opt, trains) == block_optim(ref_model, ref_opt, trains)
    assert method_budget(model) == method_budget(ref_model)  # §1.5 counts as the per-block layout's
    assert len(opt.param_groups) == len(ref_opt.param_groups)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=0)


@pytest.mark.parametrize("advance,activated,spares,gamma", CASES, ids=IDS)
def test_float64_same_final_weights(tiny_backbone, advance, activated, spares, gamma):
    args = (tiny_backbone, torch.float64, advance, activated, spares, gamma)
    ref_model, _, _, ref_ranks = run(PerBlockIncreLoRA(), *args)
    model, _, _, ranks = run(IncreLoRA(), *args)
    assert ranks == ref_ranks
    ours, ref = adapter_tensors(model), adapter_tensors(ref_model)
    assert ours.keys() == ref.keys()  # saved adapters keep the per-block, per-module keys
    for key in ref:
        assert ours[key].dtype == torch.float64
        torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=1e-9, msg=key)

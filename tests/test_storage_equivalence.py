"""The packed storage (one tensor per allocation event) trains exactly what the per-block layout does.

Spec §5.2, decision D13: storage is free as long as the function, the values through growth and
each block's optimizer semantics are unchanged. tests/reference/per_block_triadapt.py is the old
layout (four tensors per block per module); both run the same seeded loop on tiny-deberta, stepped
as the Trainer steps (forward, backward, clipping over the optimizer's tensors, fused AdamW, the
method's hook, the scheduler), through ≥ 5 allocation events.
"""

from __future__ import annotations

import pytest
import torch

from src.lr_schedule import GroupLambdaLR, linear_warmup_decay
from src.methods import growing
from src.methods.triadapt import TriAdaptLoRA
from src.runtime.backbones import load_model
from tests.reference.per_block_triadapt import PerBlockTriAdaptLoRA

# 8 runs of 150 steps: in `make test-slow` (CI runs it), so that `make test` stays short
pytestmark = pytest.mark.heavy
HEADS = ["classifier", "pooler"]
STEPS = 150


def run(method, tiny_backbone, dtype, init, new_params_lr):
    base = load_model(tiny_backbone, "seq_cls", 2, seed=0)
    config = method.make_config(
        {
            "target_modules": list(tiny_backbone.target_modules),
            "modules_to_save": HEADS,
            "reference_rank": 4,
            "init_warmup": 10,
            "incre_interval": 10,
            "init": init,
            "new_params_lr": new_params_lr,
            "lora_dropout": 0.1,  # the layers draw dropout masks: both layouts must draw the same
        },
        total_step=STEPS,
    )
    torch.manual_seed(0)
    model = method.apply(base, config).to(dtype)
    model.train()
    opt = torch.optim.AdamW(method.param_groups(model, 3e-3, 0.01), lr=3e-3, fused=True)
    sched = GroupLambdaLR(opt, linear_warmup_decay(15, STEPS))
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


def block_steps(model, opt) -> dict[str, list[int]]:
    """Each block's AdamW step count: the step of the tensor(s) that hold it."""
    steps = {}
    for name, layer in growing.adapter_layers(model).items():
        if hasattr(layer, "store"):  # packed: a block's step is its event tensor's
            events = layer.store.events()
            steps[name] = [int(opt.state[events[b.event]]["step"]) for b in layer.store.blocks[layer.slot]]
        else:
            per_tensor = [
                [int(opt.state[p]["step"]) for p in ps]
                for ps in zip(layer.L, layer.U, layer.A, layer.B, strict=True)
            ]
            assert all(len(set(s)) == 1 for s in per_tensor)  # a block's four tensors share one count
            steps[name] = [s[0] for s in per_tensor]
    return steps


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    """Adapter and trained-head tensors under one naming: peft's heads (the tuner's) as the
    reference's ``HeadWrapper`` names them."""
    tensors = dict(growing.adapter_state_dict(model))
    for name, wrapper in growing.peft_heads(model).items():
        for key, value in wrapper.modules_to_save[wrapper.active_adapters[0]].state_dict().items():
            tensors[f"{name}.trained_module.{key}"] = value
    return {k: v.detach().clone() for k, v in tensors.items()}


CASES = [("identity", "follow"), ("gaussian", "restart_warmup")]


@pytest.mark.parametrize("init,new_params_lr", CASES)
def test_float32_same_losses_rank_history_and_step_counts(tiny_backbone, init, new_params_lr):
    ref_model, ref_opt, ref_losses, ref_ranks = run(
        PerBlockTriAdaptLoRA(), tiny_backbone, torch.float32, init, new_params_lr
    )
    model, opt, losses, ranks = run(TriAdaptLoRA(), tiny_backbone, torch.float32, init, new_params_lr)
    events = [t for t in range(1, STEPS) if ref_ranks[t] != ref_ranks[t - 1]]
    assert len(events) >= 5, f"only {len(events)} growth events"
    assert ranks == ref_ranks
    assert block_steps(model, opt) == block_steps(ref_model, ref_opt)
    assert len(opt.param_groups) == len(ref_opt.param_groups)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=0)
    # the optimizer holds one tensor per event instead of four per block per module
    n_tensors = sum(len(g["params"]) for g in opt.param_groups)
    assert n_tensors < sum(len(g["params"]) for g in ref_opt.param_groups) / 4


@pytest.mark.parametrize("init,new_params_lr", CASES)
def test_float64_same_final_weights(tiny_backbone, init, new_params_lr):
    ref_model, _, _, ref_ranks = run(
        PerBlockTriAdaptLoRA(), tiny_backbone, torch.float64, init, new_params_lr
    )
    model, _, _, ranks = run(TriAdaptLoRA(), tiny_backbone, torch.float64, init, new_params_lr)
    assert ranks == ref_ranks
    ours, ref = adapter_tensors(model), adapter_tensors(ref_model)
    assert ours.keys() == ref.keys()  # saved adapters keep the per-block, per-module keys
    for key in ref:
        assert ours[key].dtype == torch.float64
        torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=1e-9, msg=key)

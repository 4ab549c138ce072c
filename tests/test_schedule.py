"""The project's scheduler follows parameter groups that appear during training."""

import pytest
import torch

from src.lr_schedule import GroupLambdaLR, linear_warmup_decay, restart_warmup


def make(total=10, warmup=2, lr=1.0):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": lr, "name": "decay"}], lr=lr)
    return opt, GroupLambdaLR(opt, linear_warmup_decay(warmup, total))


def test_linear_warmup_then_decay_to_zero():
    f = linear_warmup_decay(2, 10)
    assert [f(t) for t in (0, 1, 2, 6, 10, 11)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_added_group_follows_global_schedule():
    opt, sched = make()
    for _ in range(4):
        opt.step()
        sched.step()
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0})
    sched.add_group()
    assert len(sched.get_last_lr()) == 2
    for _ in range(6):
        opt.step()
        sched.step()
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[0] == pytest.approx(lrs[1])
    assert lrs == [0.0, 0.0]


def test_a_plain_lambdalr_cannot_schedule_a_late_group():
    """Why GroupLambdaLR exists: LambdaLR's per-group lists are fixed at construction."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_decay(0, 10))
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0})
    with pytest.raises(ValueError, match="zip"):  # torch 2.13 zips strictly; older ones skipped the group
        sched.step()


def test_restart_warmup_starts_at_zero_and_ends_at_zero():
    f = restart_warmup(birth_step=4, warmup_steps=2, total_steps=10)
    assert f(4) == 0.0 and f(5) == 0.5 and f(6) == 1.0 and f(10) == 0.0


def test_add_group_requires_exactly_one_new_group():
    opt, sched = make()
    with pytest.raises(RuntimeError, match="exactly one"):
        sched.add_group()


def test_restart_warmup_group_born_near_the_end_still_reaches_zero_at_T():
    f = restart_warmup(birth_step=9, warmup_steps=5, total_steps=10)
    assert f(9) == 0.0 and f(10) == 0.0
    assert restart_warmup(birth_step=6, warmup_steps=5, total_steps=10)(8) == pytest.approx(0.4)


@pytest.mark.parametrize("optim,fused", [("adamw_torch_fused", True), ("adamw_torch", None)])
def test_trainer_builds_the_configured_adamw(tmp_path, optim, fused):
    from omegaconf import OmegaConf

    from src.runtime.trainer import make_adamw, training_arguments

    tr = OmegaConf.load("configs/trainer/default.yaml")
    tr.optim = optim
    args = training_arguments(tr, str(tmp_path), total=10, per_epoch=10, seed=0)
    p = torch.nn.Parameter(torch.ones(3))
    opt = make_adamw([{"params": [p], "weight_decay": 0.0}], args)
    assert opt.defaults["fused"] is fused
    assert opt.defaults["lr"] == tr.learning_rate


def test_fused_and_loop_adamw_make_the_same_update():
    torch.manual_seed(0)
    start = [torch.randn(5, 7), torch.randn(3)]
    results = []
    for fused in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01, fused=fused)
        for step in range(5):
            for p in params:
                p.grad = torch.sin(p.detach() * (step + 1))
            opt.step()
        results.append(params)
    loop, fused = results
    assert not torch.equal(loop[0].detach(), start[0])  # the steps did move the weights
    for a, b in zip(loop, fused, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

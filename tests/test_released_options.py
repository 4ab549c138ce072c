"""The baselines' released behaviour as options (spec §1.4, §4, §5.5, §5.6): clip_to_budget=false,
IncreLoRA's activated_group and spares_after_growth, allocator_timing, and the score=random control."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from src.lr_schedule import GroupLambdaLR, linear_warmup_decay
from src.methods import growing
from src.methods.increlora import IncreLoRA
from src.methods.triadapt import TriAdaptLoRA, growth_sizes
from src.records import config_hash
from src.runtime.trainer import MethodCallback
from tests.conftest import ToyMLP
from tests.test_increlora import deberta, deberta_batch, deberta_config, make_optim, toy_config, train
from tests.test_triadapt import deberta_config as tri_deberta_config


def increlora(kind="toy", **kw):
    method, base = IncreLoRA(), ToyMLP(0) if kind == "toy" else deberta(0)
    config = toy_config(**kw) if kind == "toy" else deberta_config(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return method, method.apply(base, config)


def triadapt(**kw):
    method = TriAdaptLoRA()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return method, method.apply(deberta(0), tri_deberta_config(**kw))


# ---------------------------------------------------------------------------------------------------
# clip_to_budget: false (spec §5.6 and §4)
# ---------------------------------------------------------------------------------------------------
def test_unclipped_growth_sizes_give_every_selected_module_k():
    assert growth_sizes(3, total_rank=10, target_total_rank=11, k=2, clip=False) == [2, 2, 2]
    assert growth_sizes(3, total_rank=10, target_total_rank=11, k=2, clip=True) == [1]


@pytest.mark.parametrize("clip,expected_total", [(True, 24), (False, 48)])
def test_triadapt_unclipped_threshold_ties_all_grow_and_pass_R_star(clip, expected_total):
    # 12 modules, R* = 24, k = 3; every score tied, selection=threshold takes all K-th-tied modules
    method, model = triadapt(
        incre_rank_num=3, selection="threshold", clip_to_budget=clip, schedule="fixed", top_h=1
    )
    method.importance = lambda model: [0.5] * 12
    event = method.step(model, None, None, global_step=4)
    assert event["total_rank"] == expected_total
    grown = event["grown"]
    # K = 1 and every module ties the first score, so all 12 are selected
    if clip:  # 12 + 3 + 3 + 3 + 3 = R*: four modules grow, then R stops at R*
        assert list(grown.values()) == [3, 3, 3, 3]
    else:  # the reference: every selected module grows by k, R = 12 + 12 * 3 passes R* = 24
        assert len(grown) == 12 and set(grown.values()) == {3}
    assert method.step(model, None, None, global_step=6) is None  # R >= R*: no later events


@pytest.mark.parametrize("clip,expected", [(True, [4, 4, 4]), (False, [4, 4, 4, 4, 4])])
def test_increlora_unclipped_grows_min_top_h_remaining_modules_by_k(clip, expected):
    # 12 modules at rank 1, R* = 24: R* - R = 12 >= top_h = 5, so unclipped grows 5 modules by k = 4
    method, model = increlora(
        "deberta", top_h=5, incre_rank_num=4, clip_to_budget=clip, advance_learning=False
    )
    scores = {name: float(-i) for i, name in enumerate(method.layers(model))}
    event = method.allocate(model, None, None, 4, scores)
    assert list(event["grown"].values()) == expected
    assert event["total_rank"] == 12 + sum(expected) and event["growth_done"]


def test_increlora_unclipped_takes_at_most_the_remaining_ranks_in_modules():
    method, model = increlora(
        "deberta", top_h=12, incre_rank_num=4, clip_to_budget=False, advance_learning=False
    )
    layers = list(method.layers(model).values())
    for layer in layers[:10]:  # R = 12 + 10 = 22: two ranks remain, so two modules grow by k
        layer.store.new_event([(layer.slot, "block", layer.new_values(1, 0.0))])
    event = method.allocate(model, None, None, 4, {n: 0.0 for n in method.layers(model)})
    assert list(event["grown"].values()) == [4, 4] and event["total_rank"] == 30


# ---------------------------------------------------------------------------------------------------
# IncreLoRA's released defaults: activated_group=new, spares_after_growth=keep (spec §4)
# ---------------------------------------------------------------------------------------------------
def first_event(**kw):
    method, model = increlora(new_params_lr="restart_warmup", **kw)
    optimizer, scheduler = make_optim(method, model)
    events = train(method, model, optimizer, scheduler, steps=4)
    assert [e["step"] for e in events] == [4]
    [grown] = events[0]["grown"]
    return method, model, optimizer, method.layers(model)[grown]


def e_holder(layer) -> torch.Tensor:
    """The store tensor that holds the E of ``layer``'s newest block."""
    return getattr(layer.store, f"event_{layer.store.blocks[layer.slot][-1].e.event}")


def groups_holding(optimizer, param) -> list[int]:
    return [i for i, g in enumerate(optimizer.param_groups) if any(p is param for p in g["params"])]


def test_activated_E_joins_the_event_group_and_restarts_its_warmup():
    method, model, optimizer, layer = first_event(activated_group="new")
    activated = e_holder(layer)
    assert activated.requires_grad and layer.lora_E[-1].requires_grad
    assert groups_holding(optimizer, activated) == [len(optimizer.param_groups) - 1]
    assert optimizer.param_groups[-1]["lr"] == 0.0  # restart warmup: λ = 0 at the birth step


def test_activated_group_birth_keeps_E_in_its_spare_group():
    method, model, optimizer, layer = first_event(activated_group="birth")
    decay = next(i for i, g in enumerate(optimizer.param_groups) if g["name"] == "decay")
    assert groups_holding(optimizer, e_holder(layer)) == [decay]
    assert optimizer.param_groups[decay]["lr"] > 0


def orth_value(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(a.shape[0])
    return torch.linalg.norm(a @ a.T - eye) + torch.linalg.norm(b.T @ b - eye)


def test_spares_after_growth_keep_trains_fresh_spares_inside_the_regulariser():
    # both modules grow at the first event (top_h 2), which spends the budget (R* = 4)
    method, model = increlora(top_h=2, spares_after_growth="keep")
    optimizer, scheduler = make_optim(method, model)
    events = train(method, model, optimizer, scheduler, steps=4)
    assert events[-1]["growth_done"] and not method.growing(model)
    layers = method.layers(model).values()
    for layer in layers:  # fresh spares were made at the last event, E = 0 and frozen, a and b train
        assert layer.spare_size == 1 and torch.count_nonzero(layer.spare_E) == 0  # k = 1 at r̄ 2
        assert not layer.spare_E.requires_grad and layer.spare_A.requires_grad and layer.spare_B.requires_grad
    expected = sum(
        orth_value(torch.cat([*layer.lora_A, layer.spare_A]), torch.cat([*layer.lora_B, layer.spare_B], 1))
        for layer in layers
    ) * (0.1 / (2 * len(layers)))
    torch.testing.assert_close(method.regularizer(model), expected)
    before = [layer.spare_A.detach().clone() for layer in layers]
    train(method, model, optimizer, scheduler, steps=2, start=5)
    assert all(not torch.equal(b, layer.spare_A) for b, layer in zip(before, layers, strict=True))
    assert method.budget(model)["trainable_spare"] == sum(
        layer.in_features + layer.out_features
        for layer in layers  # k = 1
    )


def test_spares_after_growth_freeze_makes_none_at_the_last_event_and_freezes_the_rest():
    method, model = increlora(top_h=2, spares_after_growth="freeze")
    optimizer, scheduler = make_optim(method, model)
    train(method, model, optimizer, scheduler, steps=4)
    assert all(layer.spare_A is None for layer in method.layers(model).values())
    assert method.budget(model)["trainable_spare"] == 0


def test_increlora_defaults_are_the_released_code():
    config = toy_config()
    defaults = IncreLoRA.config_class(
        target_rank=2, top_h=1, total_step=20, init_warmup=2, target_modules=["x"]
    )
    assert (defaults.activated_group, defaults.spares_after_growth) == ("new", "keep")
    assert (defaults.allocator_timing, defaults.score) == ("after_step", "sensitivity")
    assert (config.activated_group, config.spares_after_growth) == (
        "birth",
        "freeze",
    )  # pinned by the old tests


# ---------------------------------------------------------------------------------------------------
# score: random (spec §5.5)
# ---------------------------------------------------------------------------------------------------
def test_triadapt_random_scores_come_from_the_run_seed():
    draws = {}
    for seed in (7, 7, 8):
        method, model = triadapt(score="random", seed=seed)
        draws.setdefault(seed, []).append(method.importance(model))
    assert draws[7][0] == draws[7][1] == growing.random_scores(7, 0, 12)
    assert draws[7][0] != draws[8][0] and all(0 <= s < 1 for s in draws[8][0])


def test_increlora_random_scores_pick_the_modules_and_keep_the_schedule():
    def run(**kw):
        method, model = increlora("deberta", **kw)
        optimizer, scheduler = make_optim(method, model, total=12)
        return method, train(method, model, optimizer, scheduler, steps=6, batch=deberta_batch)

    method, events = run(score="random", seed=3)
    _, again = run(score="random", seed=3)
    _, sensitivity = run()
    assert [e["grown"] for e in events] == [e["grown"] for e in again]
    assert [(e["step"], len(e["grown"])) for e in events] == [
        (e["step"], len(e["grown"])) for e in sensitivity
    ]
    names = list(method.layers(increlora("deberta")[1]))
    draws = growing.random_scores(3, 4, len(names))
    top = sorted(range(len(names)), key=lambda i: (-draws[i], i))[:3]
    assert list(events[0]["grown"]) == [names[i] for i in top]


def test_score_random_without_a_seed_is_refused():
    method, model = triadapt(score="random")
    with pytest.raises(ValueError, match="needs the run seed"):
        method.importance(model)


# ---------------------------------------------------------------------------------------------------
# allocator_timing (spec §1.4): the generic callback calls the hook at the method's point
# ---------------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self, timing):
        self.timing, self.calls = timing, []

    def allocator_timing(self, model):
        return self.timing

    def step(self, model, optimizer, lr_scheduler, global_step):
        self.calls.append(global_step)


@pytest.mark.parametrize("timing", ["after_step", "before_step"])
def test_callback_runs_the_hook_once_at_the_methods_point(timing):
    method = Recorder(timing)
    callback = MethodCallback(method, tracker=None)
    args, state = SimpleNamespace(world_size=1), SimpleNamespace(global_step=6)
    callback.on_pre_optimizer_step(args, state, None, model=None)
    assert method.calls == ([7] if timing == "before_step" else [])
    callback.on_optimizer_step(args, state, None, model=None)
    assert method.calls == [7]


def test_before_step_reads_weights_before_the_update_and_new_tensors_skip_it():
    """HF order with the hook before optimizer.step(): the event's tensors have no gradient at t."""
    method, model = triadapt(allocator_timing="before_step", schedule="fixed", top_h=12)
    assert method.allocator_timing(model) == "before_step"
    optimizer = torch.optim.AdamW(method.param_groups(model, 1e-2, 0.0), lr=1e-2)
    scheduler = GroupLambdaLR(optimizer, linear_warmup_decay(0, 100))
    model.train()
    for t in range(1, 6):
        model(**deberta_batch(t)).loss.backward()
        event = method.step(model, optimizer, scheduler, t)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    # the first event (step 4 = init_warmup + interval) comes at t = 5, after 4 updates, as in the
    # released code, whose 0-based step counts the updates done (spec §1.4)
    assert event is not None and event["step"] == 4
    [new] = optimizer.param_groups[-1]["params"]
    assert new not in optimizer.state  # born before optimizer.step(), without a gradient: no update yet


# ---------------------------------------------------------------------------------------------------
# run identity: options at the value old records computed stay out of it
# ---------------------------------------------------------------------------------------------------
def test_new_options_at_their_old_behaviour_keep_the_run_identity():
    old = {"seed": 1, "method": {"name": "triadapt", "score": "increment"}}
    same = {"seed": 1, "method": {**old["method"], "allocator_timing": "after_step", "seed": None}}
    assert config_hash(same) == config_hash(old)
    assert config_hash(
        {**same, "method": {**same["method"], "allocator_timing": "before_step"}}
    ) != config_hash(old)
    inc = {"seed": 1, "method": {"name": "increlora"}}
    inc_old = {
        **inc,
        "method": {**inc["method"], "activated_group": "birth", "spares_after_growth": "freeze"},
    }
    inc_new = {**inc, "method": {**inc["method"], "activated_group": "new", "spares_after_growth": "keep"}}
    assert config_hash(inc_old) == config_hash(inc) != config_hash(inc_new)

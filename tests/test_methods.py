"""The method contract on tiny-deberta, one parameterised table for every method (spec §7)."""

from __future__ import annotations

import copy

import pytest
import torch

from src.lr_schedule import GroupLambdaLR, linear_warmup_decay
from src.methods import get_method, growing
from src.runtime.backbones import load_model

HEADS = ["classifier", "pooler"]
T = 12
# name -> (config fields, merge tolerance). AdaLoRA's 1e-2 is peft's own tolerance for it (spec §7.6).
METHOD_TABLE = {
    "lora": ({"r": 2}, 1e-4),
    "adalora": ({"init_r": 4, "target_r": 2, "tinit": 2, "tfinal": 3, "deltaT": 1}, 1e-2),
    "increlora": ({"target_rank": 2, "top_h": 4, "init_warmup": 2, "incre_interval": 2}, 1e-4),
    "triadapt": ({"reference_rank": 2, "init_warmup": 2, "incre_interval": 2}, 1e-4),
}


def build(name, tiny_backbone, seed=0, **overrides):
    method = get_method(name)
    fields = {**METHOD_TABLE[name][0], **overrides}
    fields.update(target_modules=list(tiny_backbone.target_modules), modules_to_save=HEADS)
    base = load_model(tiny_backbone, "seq_cls", 2, seed)
    reference = copy.deepcopy(base).eval()
    config = method.make_config(fields, total_step=T, warmup_steps=0)
    return method, method.apply(base, config), reference


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 1000, (8, 16), generator=g), "labels": torch.arange(8) % 2}


def train_steps(method, model, steps, lr=1e-2):
    model.train()
    opt = torch.optim.AdamW(method.param_groups(model, lr, 0.0))
    sched = GroupLambdaLR(opt, linear_warmup_decay(0, T))
    events = []
    for t in range(1, steps + 1):
        out = model(**batch(t))
        out.loss.backward()
        opt.step()
        events.append(method.step(model, opt, sched, global_step=t))
        sched.step()
        opt.zero_grad(set_to_none=True)
    return events


def logits(model, seed=99):
    model.eval()
    with torch.no_grad():
        x = batch(seed)
        x.pop("labels")
        return model(**x).logits


def adapter_or_head(param: str, modules: list[str]) -> bool:
    name = param.removeprefix("base_model.model.")
    return any(name.startswith(m + ".") for m in modules) or any(f".{h}." in f".{name}" for h in HEADS)


@pytest.mark.parametrize("name", METHOD_TABLE)
def test_only_adapter_and_head_parameters_change(name, tiny_backbone):
    method, model, _ = build(name, tiny_backbone)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}
    train_steps(method, model, 3)
    # adapter layers, and the storage that holds the factors of many (TriAdaptLoRA's packed blocks)
    modules = list(method.budget(model)["rank_pattern"]) + list(growing.storage_modules(model))
    for n, p in model.named_parameters():
        if n not in before:
            continue  # born in an allocation event
        if n in trainable_before:
            assert not torch.equal(before[n], p.detach()), f"trainable {n} did not move in 3 steps"
            assert adapter_or_head(n, modules), f"{n} is trainable but neither adapter nor head"
        else:
            assert torch.equal(before[n], p.detach()), f"frozen {n} moved"
    assert trainable_before


@pytest.mark.parametrize("name", METHOD_TABLE)
def test_save_then_load_gives_identical_logits(name, tiny_backbone, tmp_path):
    method, model, _ = build(name, tiny_backbone)
    train_steps(method, model, T)
    expected = logits(model)
    method.save(model, str(tmp_path / "adapter"))
    torch.manual_seed(1234)  # a different global seed: nothing may depend on it
    loaded = method.load(load_model(tiny_backbone, "seq_cls", 2, 0), str(tmp_path / "adapter"))
    torch.testing.assert_close(logits(loaded), expected, atol=1e-5, rtol=0)
    assert method.budget(loaded)["rank_pattern"] == method.budget(model)["rank_pattern"]


@pytest.mark.parametrize("name", METHOD_TABLE)
def test_merge_gives_the_same_logits_and_unmerge_restores(name, tiny_backbone):
    method, model, reference = build(name, tiny_backbone)
    train_steps(method, model, T)
    unmerged = logits(model)
    assert not torch.allclose(unmerged, logits(reference), atol=1e-4), "training must move the output"
    tol = METHOD_TABLE[name][1]
    method.merge(model)
    torch.testing.assert_close(logits(model), unmerged, atol=tol, rtol=0)
    method.unmerge(model)
    torch.testing.assert_close(logits(model), unmerged, atol=1e-5, rtol=0)
    merged = method.merge_and_unload(copy.deepcopy(model))
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in reference.parameters())
    torch.testing.assert_close(logits(merged), unmerged, atol=tol, rtol=0)


@pytest.mark.parametrize("name", METHOD_TABLE)
def test_disabled_adapter_equals_base_model(name, tiny_backbone):
    method, model, reference = build(name, tiny_backbone)
    train_steps(method, model, 4)
    trained = logits(model)
    with method.disable_adapter(model):
        torch.testing.assert_close(logits(model), logits(reference), atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model), trained, atol=0, rtol=0)


@pytest.mark.parametrize("name", METHOD_TABLE)
def test_budget_split_sums_and_pattern_totals(name, tiny_backbone):
    method, model, _ = build(name, tiny_backbone)
    b = method.budget(model)
    assert b["trainable_adapter"] + b["trainable_spare"] + b["trainable_heads"] == b["trainable_total"]
    assert b["trainable_total"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert b["total_rank"] == sum(b["rank_pattern"].values())
    assert len(b["rank_pattern"]) == 12  # 6 maps x 2 layers


def test_lora_effective_budget_closed_form(tiny_backbone):
    method, model, _ = build("lora", tiny_backbone)
    # tiny-deberta: 4 maps 64->64, intermediate 64->128, output 128->64; r = 2, two layers
    per_layer = 2 * (4 * (64 + 64) + (64 + 128) + (128 + 64))
    assert method.budget(model)["effective_adapter"] == 2 * per_layer


def test_adalora_allocates_and_effective_budget_reflects_masking(tiny_backbone):
    method, model, _ = build("adalora", tiny_backbone)
    start = method.budget(model)
    assert start["total_rank"] == 4 * 12 and start["target_total_rank"] == 2 * 12
    events = train_steps(method, model, T)
    end = method.budget(model)
    assert any(events), "update_and_allocate never masked: the step hook is not wired"
    assert end["total_rank"] == end["target_total_rank"] == 24
    assert len(set(end["rank_pattern"].values())) > 1, "masking left a uniform pattern"
    assert end["effective_adapter"] < start["effective_adapter"]
    assert end["trainable_adapter"] == start["trainable_adapter"]  # masking zeroes λ, never shrinks tensors


def test_adalora_reports_the_regulariser_peft_adds_to_the_loss(tiny_backbone):
    method, model, _ = build("adalora", tiny_backbone)
    train_steps(method, model, 3)  # A and B away from their init
    model.train()
    config = model.peft_config["default"]
    with torch.no_grad():  # the same dropout masks in both forwards
        torch.manual_seed(0)
        with_reg = model(**batch(7)).loss
        weight, config.orth_reg_weight = config.orth_reg_weight, 0.0
        torch.manual_seed(0)
        without = model(**batch(7)).loss
        config.orth_reg_weight = weight
    logged = method.extra_logs(model)["orth_reg"]
    assert logged > 0
    assert logged == pytest.approx(float(with_reg - without), rel=1e-4)


def test_adalora_rejects_schedule_without_budgeting_phase(tiny_backbone):
    with pytest.raises(ValueError, match="no budgeting phase"):
        get_method("adalora").make_config({"tinit": 6, "tfinal": 6}, total_step=12)


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match="choose one of: .*adalora.*lora"):
        get_method("dora")


def test_unknown_method_option_is_named(tiny_backbone):
    with pytest.raises(ValueError, match="no option.*'rank'"):
        get_method("lora").make_config({"rank": 4})


@pytest.mark.parametrize("name", METHOD_TABLE)
def test_dropout_outside_zero_one_is_refused_by_every_method(name, tiny_backbone):
    method = get_method(name)
    fields = {**METHOD_TABLE[name][0], "lora_dropout": 1.5}
    fields.update(target_modules=list(tiny_backbone.target_modules), modules_to_save=HEADS)
    with pytest.raises(ValueError, match="lora_dropout"):
        method.make_config(fields, total_step=T, warmup_steps=0)


def test_target_names_pick_the_name_or_a_dotted_suffix():
    from src.target_names import longest_match, matches

    assert matches("encoder.layer.0.output.dense", "output.dense")
    assert matches("classifier", "classifier")
    assert not matches("encoder.layer.0.output.dense", "put.dense")  # a suffix of names, not of text
    targets = ["dense", "output.dense", "attention.output.dense"]
    assert longest_match("encoder.layer.0.attention.output.dense", targets) == "attention.output.dense"
    assert longest_match("encoder.layer.0.intermediate.dense", targets) == "dense"
    assert longest_match("encoder.layer.0.query", targets) is None

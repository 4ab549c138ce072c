"""TriAdaptLoRA against the properties of shared/spec/methods.md §7 (toy MLP and tiny DeBERTa, CPU).

The toy MLP (Linear 10→20, ReLU, Linear 20→2) takes ``labels`` and returns ``.loss``/``.logits``
like a transformers model, so the regulariser hook and the loop order are exercised as in training.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from src.lr_schedule import GroupLambdaLR, linear_warmup_decay
from src.methods import get_method, growing
from src.methods.triadapt import (
    STORE_NAME,
    TriAdaptBlocks,
    TriAdaptConfig,
    TriAdaptLinear,
    TriAdaptLoRA,
    allocation_size,
    dry_run_schedule,
    select_modules,
)
from tests.conftest import ToyMLP as MLP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "backbone", "tiny-deberta.yaml")


# ---------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class Stack(nn.Module):
    """Six same-shape linears: enough modules for selection and schedule tests."""

    def __init__(self, n: int = 6):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(n))

    def forward(self, x, labels=None):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return Output(logits=x, loss=x.pow(2).mean() if labels is not None else None)


def mlp_config(**kw) -> TriAdaptConfig:
    """lin0 adapted, lin1 trained as the head (what modules_to_save does for a classifier)."""
    base = dict(
        target_modules=["lin0"], modules_to_save=["lin1"], total_step=100, init_warmup=2, incre_interval=2
    )
    return TriAdaptConfig(**{**base, **kw})


def stack_config(**kw) -> TriAdaptConfig:
    base = dict(
        target_modules=["layers.0", "layers.1", "layers.2", "layers.3", "layers.4", "layers.5"],
        reference_rank=3,
        total_step=40,
        init_warmup=4,
        incre_interval=2,
    )
    return TriAdaptConfig(**{**base, **kw})


_DEBERTA = {}


def deberta(seed: int = 0) -> nn.Module:
    from src.runtime.backbones import load_model

    if seed not in _DEBERTA:
        _DEBERTA[seed] = load_model(OmegaConf.load(TINY), "seq_cls", 2, seed)
    return copy.deepcopy(_DEBERTA[seed])


def deberta_config(**kw) -> TriAdaptConfig:
    b = OmegaConf.load(TINY)
    base = dict(
        target_modules=list(b.target_modules),
        modules_to_save=list(b.heads.seq_cls),
        reference_rank=2,
        total_step=100,
        init_warmup=2,
        incre_interval=2,
    )
    return TriAdaptConfig(**{**base, **kw})


def mlp_batch():
    g = torch.Generator().manual_seed(7)
    return {"x": torch.randn(16, 10, generator=g), "labels": torch.randint(0, 2, (16,), generator=g)}


def deberta_batch():
    g = torch.Generator().manual_seed(7)
    return {
        "input_ids": torch.randint(1, 1000, (4, 12), generator=g),
        "labels": torch.randint(0, 2, (4,), generator=g),
    }


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return out


def adapt(base, config, seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short test schedules trip the dry-run warning on purpose
        return TriAdaptLoRA().inject(base, config)  # the layers and allocator, without peft's wrapper


def train(method, model, batch, steps, lr=1e-2, wd=0.0, start=1, grow=True):
    """HF order: backward, optimizer.step, method.step (scheduler still at t-1), scheduler.step."""
    opt = torch.optim.AdamW(method.param_groups(model, lr, wd))
    sched = GroupLambdaLR(opt, lambda _: 1.0)
    model.train()
    for t in range(start, start + steps):
        model(**batch).loss.backward()
        opt.step()
        if grow:
            method.step(model, opt, sched, t)
        sched.step()
        opt.zero_grad(set_to_none=True)
    return opt, sched


def force_growth(model, sizes: dict[str, list[int]]):
    for name, blocks in sizes.items():
        for k in blocks:
            growing.adapter_layers(model)[name].grow(k)


def randomize(layer: TriAdaptLinear, seed=0, std=0.3):
    """Trained-looking factors of order 1 (fp32 tolerances are absolute)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            if p is not layer.base_layer.weight and p is not layer.base_layer.bias:
                p.copy_(torch.randn(p.shape, generator=g) * std)


# ---------------------------------------------------------------------------------------------------
# 1. Identity at init
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["identity", "gaussian"])
@pytest.mark.parametrize("kind", ["mlp", "deberta"])
def test_identity_at_init(kind, init):
    if kind == "mlp":
        base, batch, config = MLP(), mlp_batch(), mlp_config(init=init)
    else:
        base, batch, config = deberta(), deberta_batch(), deberta_config(init=init)
    expected = logits(copy.deepcopy(base), batch)
    model = adapt(base, config)
    assert (logits(model, batch) - expected).abs().max() < 1e-6


# ---------------------------------------------------------------------------------------------------
# 2. Growth preservation
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_growth_preserves_BTA_and_output(k):
    x = torch.randn(5, 10)
    for scaling in ("constant", "rank"):
        torch.manual_seed(0)
        layer = TriAdaptLinear(
            nn.Linear(10, 20), init_rank=2, lora_alpha=4, scaling=scaling, reference_rank=4
        )
        randomize(layer)
        bta = layer.factor_B() @ layer.transform() @ layer.factor_A()
        base_out, before = layer.base_layer(x), layer(x)
        r = layer.rank
        layer.grow(k)
        after_bta = layer.factor_B() @ layer.transform() @ layer.factor_A()
        assert (after_bta - bta).abs().max() < 1e-6
        if scaling == "constant":
            assert (layer(x) - before).abs().max() < 1e-6
        else:
            expected = (before - base_out) * r / (r + k)
            assert (layer(x) - base_out - expected).abs().max() < 1e-6


def test_growth_keeps_tensor_identity_and_optimizer_state():
    method, model, batch = (
        TriAdaptLoRA(),
        adapt(MLP(), mlp_config(init_warmup=2, incre_interval=3)),
        mlp_batch(),
    )
    opt, sched = train(method, model, batch, steps=2, grow=False)
    old = [p for p in model.parameters() if p.requires_grad]
    ids = [id(p) for p in old]
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in old}
    n_groups = len(opt.param_groups)
    record = method.step(model, opt, sched, 3)
    assert record is not None and record["grown"]
    now = [p for p in model.parameters() if p.requires_grad]
    assert [id(p) for p in now if id(p) in state] == ids  # same tensors, same order
    for p in old:
        for key, value in state[id(p)].items():
            assert torch.equal(opt.state[p][key], value)
    assert len(opt.param_groups) == n_groups + 1
    new = [p for p in now if id(p) not in state]
    assert {id(p) for p in opt.param_groups[-1]["params"]} == {id(p) for p in new}


# ---------------------------------------------------------------------------------------------------
# 3. Structure
# ---------------------------------------------------------------------------------------------------
def test_strip_pattern_three_blocks_of_two():
    layer = TriAdaptLinear(nn.Linear(7, 5), init_rank=2, lora_alpha=1)
    layer.grow(2)
    layer.grow(2)
    assert [tuple(s.shape) for s in layer.L] == [(2, 2), (2, 4), (2, 6)]
    assert [tuple(s.shape) for s in layer.U] == [(2, 2), (4, 2), (6, 2)]
    with torch.no_grad():
        for strip in [*layer.L, *layer.U]:
            strip.fill_(1.0)
    expected = torch.tensor(
        [
            [2, 2, 1, 1, 1, 1],
            [2, 2, 1, 1, 1, 1],
            [1, 1, 2, 2, 1, 1],
            [1, 1, 2, 2, 1, 1],
            [1, 1, 1, 1, 2, 2],
            [1, 1, 1, 1, 2, 2],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(layer.transform(), expected)
    with torch.no_grad():  # rank-1 blocks: L is an ordinary lower-triangular matrix, diagonal included
        single = TriAdaptLinear(nn.Linear(7, 5), init_rank=1, lora_alpha=1)
        for _ in range(3):
            single.grow(1)
        for strip in single.L:
            strip.fill_(1.0)
        for strip in single.U:
            strip.zero_()
    assert torch.equal(single.transform(), torch.tril(torch.ones(4, 4)))


def test_identity_init_makes_T_identity_and_B_zero():
    layer = TriAdaptLinear(nn.Linear(7, 5), init_rank=2, lora_alpha=1)
    layer.grow(1)
    assert torch.equal(layer.transform(), torch.eye(3))
    assert torch.count_nonzero(layer.factor_B()) == 0


def test_factored_forward_equals_explicit_update():
    torch.manual_seed(0)
    layer = TriAdaptLinear(nn.Linear(10, 20), init_rank=1, lora_alpha=8)
    layer.grow(2)
    layer.grow(1)
    randomize(layer)
    x = torch.randn(3, 4, 10)
    W0, b = layer.base_layer.weight, layer.base_layer.bias
    s = 8 / 4
    explicit = x @ W0.T + b + s * x @ (layer.factor_B() @ layer.transform() @ layer.factor_A()).T
    assert (layer(x) - explicit).abs().max() < 1e-5
    assert (
        layer.delta_weight() - s * layer.factor_B() @ layer.transform() @ layer.factor_A()
    ).abs().max() < 1e-6


def shared_store(dtype=torch.float64):
    """Three layers in one storage, two widths on each side, uneven ranks: padded rows and T entries."""
    torch.manual_seed(0)
    store = TriAdaptBlocks()
    shapes = [(5, 3, 1), (5, 7, 2), (3, 5, 1)]  # (d_in, d_out, r0)
    layers = [TriAdaptLinear(nn.Linear(i, o), r0, 1.0, store=store) for i, o, r0 in shapes]
    store.commit()
    store.grow([(1, 2), (2, 1)])
    store.grow([(2, 2)])
    store.to(dtype)
    with torch.no_grad():
        for event in store.events():
            event.copy_(torch.randn_like(event))
    return store, layers


def test_shared_storage_gathers_each_layer_blocks_exactly():
    store, layers = shared_store()
    assert store.ranks == [1, 4, 4]
    with store.session():
        for slot in range(len(layers)):
            blocks = store.block_tensors(slot)
            A = torch.cat([a for _, _, a, _ in blocks])
            Bt = torch.cat([bt for _, _, _, bt in blocks])
            assert torch.equal(store.factor(slot, "A"), A)
            assert torch.equal(store.factor(slot, "Bt"), Bt)
            T = torch.zeros(store.ranks[slot], store.ranks[slot], dtype=A.dtype)
            for (L, U, _, _), b in zip(blocks, store.blocks[slot], strict=True):
                T[b.start : b.start + b.k, : b.start + b.k] += L
                T[: b.start + b.k, b.start : b.start + b.k] += U
            assert torch.equal(store.factor(slot, "T"), T)


@pytest.mark.parametrize("penalised", [False, True])
def test_shared_storage_gradient_is_exact_through_padding(penalised):
    """The gather's hand-written backward (row writes, skipped padding, the regulariser's closed
    form) against finite differences, in float64."""
    from src.methods.growing.store import Gather

    store, _ = shared_store()
    plan = store.plan()
    assert any(live is not None for _, live, _ in plan.writes)  # padding rows between real ones
    events = [e.detach().clone().requires_grad_() for e in store.events()]
    g = torch.Generator().manual_seed(1)
    weights = [
        torch.randn(out.shape, generator=g, dtype=torch.float64)
        for out in Gather.apply(plan, penalised, plan.tail, *events)
    ]

    def weighted(*inputs):
        outputs = Gather.apply(plan, penalised, plan.tail, *inputs)
        return sum((out * w).sum() for out, w in zip(outputs, weights, strict=True))

    assert torch.autograd.gradcheck(weighted, events)


def test_gathered_penalty_equals_the_explicit_one():
    store, layers = shared_store()
    store.penalised = True
    with store.session():
        gathered = store.orth_penalty_sum()
    explicit = sum(
        torch.linalg.norm(layer.factor_A() @ layer.factor_A().T - torch.eye(layer.rank, dtype=torch.float64))
        + torch.linalg.norm(
            layer.factor_B().T @ layer.factor_B() - torch.eye(layer.rank, dtype=torch.float64)
        )
        for layer in layers
    )
    store.penalised = False  # the same sum with autograd's backward
    with store.session():
        fallback = store.orth_penalty_sum()
    assert torch.allclose(gathered, explicit, rtol=1e-12) and torch.allclose(fallback, explicit, rtol=1e-12)


def test_dropout_acts_on_the_adapter_input_only():
    torch.manual_seed(0)
    layer = TriAdaptLinear(nn.Linear(10, 20), init_rank=2, lora_alpha=2, lora_dropout=0.5)
    randomize(layer)
    x = torch.randn(64, 10)
    base = layer.base_layer(x)
    layer.eval()
    clean = layer(x) - base
    layer.train()
    torch.manual_seed(1)
    noisy = layer(x) - base
    torch.manual_seed(1)
    mask_x = nn.functional.dropout(x, 0.5, training=True)
    assert (noisy - clean).abs().max() > 1e-3
    assert (noisy - mask_x @ layer.delta_weight().T).abs().max() < 1e-5


def closed_form(d_in, d_out, blocks):
    r, cum, strips = sum(blocks), 0, 0
    for k in blocks:
        cum += k
        strips += 2 * k * cum
    return r * (d_in + d_out) + strips


def test_parameter_counts_match_closed_form():
    layer = TriAdaptLinear(nn.Linear(10, 20), init_rank=2, lora_alpha=1)
    for k in (1, 3, 2):
        layer.grow(k)
    adapter = sum(p.numel() for n, p in layer.named_parameters() if not n.startswith("base_layer."))
    assert adapter == layer.effective_params() == closed_form(10, 20, [2, 1, 3, 2])
    rank1 = TriAdaptLinear(nn.Linear(10, 20), init_rank=1, lora_alpha=1)
    for _ in range(4):
        rank1.grow(1)
    assert rank1.effective_params() == 5 * 30 + 5 * 6  # r(d_in + d_out) + r(r + 1)

    method, model = TriAdaptLoRA(), adapt(deberta(), deberta_config())
    force_growth(
        model,
        {
            "deberta.encoder.layer.0.intermediate.dense": [1, 2],
            "deberta.encoder.layer.1.attention.self.key_proj": [1],
        },
    )
    budget = method.budget(model)
    layers = growing.adapter_layers(model)
    expected = sum(closed_form(m.in_features, m.out_features, m.block_sizes()) for m in layers.values())
    heads = sum(p.numel() for n in ("classifier", "pooler") for p in deberta().get_submodule(n).parameters())
    assert budget["trainable_adapter"] == budget["effective_adapter"] == expected
    assert budget["trainable_heads"] == heads and budget["trainable_spare"] == 0
    assert budget["trainable_adapter"] + budget["trainable_heads"] == budget["trainable_total"]
    assert budget["total_rank"] == sum(budget["rank_pattern"].values()) == 12 + 4
    assert budget["target_total_rank"] == 2 * 12


# ---------------------------------------------------------------------------------------------------
# 4. Gradients
# ---------------------------------------------------------------------------------------------------
def test_only_adapter_and_head_parameters_train():
    method, base = TriAdaptLoRA(), deberta()
    model = adapt(base, deberta_config(total_step=100, init_warmup=50))
    force_growth(model, {"deberta.encoder.layer.0.attention.self.query_proj": [1]})
    batch = deberta_batch()
    model.train()
    model(**batch).loss.backward()
    # the packed storage: event 0 (every initial block) and event 1 (the forced growth)
    trainable = {n for n, _ in model.named_parameters() if n.startswith(f"{STORE_NAME}.event_")}
    assert len(trainable) == 2
    trainable |= {n for n, _ in model.named_parameters() if ".trained_module." in n}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable and trainable
    assert all(p.requires_grad == (n in trainable) for n, p in model.named_parameters())
    model.zero_grad(set_to_none=True)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(method, model, batch, steps=3, lr=5e-2, grow=False)
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), f"{n} did not train"
        else:
            assert torch.equal(p, before[n]), f"frozen {n} changed"


# ---------------------------------------------------------------------------------------------------
# 5. Regulariser
# ---------------------------------------------------------------------------------------------------
def frob(m):
    return math.sqrt(float((m.detach().double() ** 2).sum()))


@pytest.mark.parametrize("reduction", ["per_factor", "per_module"])
def test_regulariser_is_added_inside_forward(reduction):
    model = adapt(deberta(), deberta_config(orth_reg_weight=0.0, orth_reduction=reduction, init="gaussian"))
    force_growth(
        model,
        {
            "deberta.encoder.layer.1.output.dense": [1, 1],
            "deberta.encoder.layer.0.attention.self.value_proj": [2],
        },
    )
    batch = deberta_batch()
    model.eval()
    with torch.no_grad():
        plain = model(**batch).loss.item()
        growing.get_info(model).config.orth_reg_weight = 0.3
        regular = model(**batch).loss.item()
    layers = growing.adapter_layers(model).values()
    total = 0.0
    for m in layers:
        A, B = m.factor_A(), m.factor_B()
        total += frob(A @ A.T - torch.eye(m.rank)) + frob(B.T @ B - torch.eye(m.rank))
    r_orth = total / (2 * len(layers) if reduction == "per_factor" else len(layers))
    assert abs((regular - plain) - 0.3 * r_orth) < 1e-6 * max(1.0, r_orth)
    assert abs(growing.get_info(model).last_regularizer.item() - 0.3 * r_orth) < 1e-5


def test_training_forward_without_labels_raises():
    model = adapt(MLP(), mlp_config())
    model.train()
    with pytest.raises(ValueError, match="labels"):
        model(mlp_batch()["x"])
    model.eval()
    assert model(mlp_batch()["x"]).loss is None


# ---------------------------------------------------------------------------------------------------
# 6-7. Merge and disable
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "deberta"])
def test_merge_unmerge_unload(kind):
    if kind == "mlp":
        base, batch, config = MLP(), mlp_batch(), mlp_config(init_warmup=1, incre_interval=1)
    else:
        base, batch, config = deberta(), deberta_batch(), deberta_config(init_warmup=1, incre_interval=1)
    base_out = logits(copy.deepcopy(base), batch)
    method, model = TriAdaptLoRA(), adapt(base, config)
    train(method, model, batch, steps=3, lr=2e-2)
    assert method.budget(model)["total_rank"] > len(growing.adapter_layers(model))  # grown before merging
    unmerged = logits(model, batch)
    assert (unmerged - base_out).abs().max() > 1e-3
    w0 = {n: m.base_layer.weight.detach().clone() for n, m in growing.adapter_layers(model).items()}

    method.merge(model)
    assert (logits(model, batch) - unmerged).abs().max() < 1e-4
    merged_w = {n: m.base_layer.weight.detach().clone() for n, m in growing.adapter_layers(model).items()}
    with pytest.warns(UserWarning, match="already merged"):
        method.merge(model)
    assert all(
        torch.equal(m.base_layer.weight, merged_w[n]) for n, m in growing.adapter_layers(model).items()
    )
    with pytest.raises(RuntimeError, match="merged"):
        method.step(model, None, None, 4)
    with pytest.raises(RuntimeError, match="merged"):
        next(iter(growing.adapter_layers(model).values())).grow(1)

    method.unmerge(model)
    assert all(
        (m.base_layer.weight - w0[n]).abs().max() < 1e-5 for n, m in growing.adapter_layers(model).items()
    )
    assert (logits(model, batch) - unmerged).abs().max() < 1e-5

    plain = method.merge_and_unload(model)
    assert not any(isinstance(m, (TriAdaptLinear, growing.HeadWrapper)) for m in plain.modules())
    assert not hasattr(plain, growing.INFO_ATTR)
    assert (logits(plain, batch) - unmerged).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["mlp", "deberta"])
def test_disable_adapter_gives_base_model(kind):
    if kind == "mlp":
        base, batch, config = MLP(), mlp_batch(), mlp_config(init_warmup=1, incre_interval=1)
    else:
        base, batch, config = deberta(), deberta_batch(), deberta_config(init_warmup=1, incre_interval=1)
    base_out = logits(copy.deepcopy(base), batch)
    with torch.no_grad():
        base_loss = copy.deepcopy(base).eval()(**batch).loss.item()
    method, model = TriAdaptLoRA(), adapt(base, config)
    train(method, model, batch, steps=3, lr=2e-2)
    trained = logits(model, batch)
    assert (trained - base_out).abs().max() > 1e-3
    with method.disable_adapter(model):
        assert (logits(model, batch) - base_out).abs().max() < 1e-6
        with torch.no_grad():  # the regulariser belongs to the adapter: the base loss comes back too
            assert abs(model(**batch).loss.item() - base_loss) < 1e-6
    assert torch.equal(logits(model, batch), trained)
    method.merge(model)
    with method.disable_adapter(model):
        assert (logits(model, batch) - base_out).abs().max() < 1e-5
    assert (logits(model, batch) - trained).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------------
# 8. Save and load (fresh process, different seed)
# ---------------------------------------------------------------------------------------------------
LOADER = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[2])
from test_triadapt import MLP, deberta
from src.methods import get_method
cases = json.load(open(sys.argv[1]))
out = {}
for case in cases:
    base = MLP() if case["kind"] == "mlp" else deberta()
    torch.manual_seed(1234)  # adapter init differs from the saving process; the file must overwrite it
    model = get_method("triadapt").load(base, case["dir"])
    batch = torch.load(case["batch"])
    model.eval()
    with torch.no_grad():
        out[case["dir"]] = {"logits": model(**{k: v for k, v in batch.items() if k != "labels"}).logits,
                            "keys": sorted(model.state_dict())}
torch.save(out, sys.argv[3])
"""


def test_save_load_in_fresh_process(tmp_path):
    cases, expected = [], {}
    for kind in ("mlp", "deberta"):
        for trained in (False, True):
            if kind == "mlp":
                base, batch, config = (
                    MLP(),
                    mlp_batch(),
                    mlp_config(init_warmup=1, incre_interval=1, lora_dropout=0.1),
                )
            else:
                base, batch, config = (
                    deberta(),
                    deberta_batch(),
                    deberta_config(init_warmup=1, incre_interval=1),
                )
            method, model = TriAdaptLoRA(), adapt(base, config, seed=5)
            if trained:
                train(method, model, batch, steps=3, lr=2e-2)
                assert any(len(m.block_sizes()) > 1 for m in growing.adapter_layers(model).values())
            directory = str(tmp_path / f"{kind}-{trained}")
            method.save(model, directory)
            torch.save(batch, directory + ".pt")
            cases.append({"kind": kind, "dir": directory, "batch": directory + ".pt"})
            expected[directory] = (
                logits(model, batch),
                sorted(model.state_dict()),
                1e-4 if trained else 1e-5,
            )
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": ROOT,
    }
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "cases.json"),
            os.path.join(ROOT, "tests"),
            str(tmp_path / "out.pt"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt")
    for directory, (want, keys, tol) in expected.items():
        assert loaded[directory]["keys"] == keys
        assert (loaded[directory]["logits"] - want).abs().max() < tol, directory


def test_load_rejects_corrupted_rank_pattern_and_weights(tmp_path):
    method = TriAdaptLoRA()
    model = adapt(MLP(), mlp_config())
    force_growth(model, {"lin0": [2, 1]})
    method.save(model, str(tmp_path / "ok"))
    meta = json.loads((tmp_path / "ok" / "adapter_config.json").read_text())
    assert meta["method"] == "triadapt" and meta["rank_pattern"] == {"lin0": [1, 2, 1]}
    assert meta["config"]["total_step"] == 100 and "new_params_lr" in meta["config"]
    assert sorted(method.load(MLP(), str(tmp_path / "ok")).state_dict()) == sorted(model.state_dict())

    for bad_pattern, match in (
        ({"lin0": [1, 3, 1]}, "shape"),
        ({"lin0": [1, 2]}, "unexpected|block_events does not match"),
        ({"lin0": [1, 0]}, "corrupted"),
        ({"lin0": [2, 2]}, "corrupted"),
        ({"lin9": [1]}, "missing"),
        ([1, 2], "map"),
    ):
        bad = tmp_path / "bad"
        os.makedirs(bad, exist_ok=True)
        (bad / "adapter_config.json").write_text(json.dumps({**meta, "rank_pattern": bad_pattern}))
        (bad / "adapter_model.safetensors").write_bytes(
            (tmp_path / "ok" / "adapter_model.safetensors").read_bytes()
        )
        with pytest.raises(ValueError, match=match):
            method.load(MLP(), str(bad))

    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "ok" / "adapter_model.safetensors"))
    state.pop("lin0.U.2")
    save_file(state, str(tmp_path / "ok" / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        method.load(MLP(), str(tmp_path / "ok"))


# ---------------------------------------------------------------------------------------------------
# 9. Schedule
# ---------------------------------------------------------------------------------------------------
def run_schedule(config, scores=None, seed=0):
    """Call step at every t = 1..T on the six-linear stack; scores injected when given."""
    method = TriAdaptLoRA()
    model = adapt(Stack(), config, seed=seed)
    if scores is not None:
        method.importance = lambda m: list(scores)
    events, totals = {}, []
    for t in range(1, config.total_step + 1):
        record = method.step(model, None, None, t)
        if record is not None:
            events[t] = record
        totals.append(sum(m.rank for m in growing.adapter_layers(model).values()))
    return method, model, events, totals


def test_events_only_after_warmup_on_interval_until_budget():
    config = stack_config(reference_rank=4, total_step=60, init_warmup=5, incre_interval=3)
    _, _, events, totals = run_schedule(config, scores=[0.0] * 6)
    r_star = 4 * 6
    assert all(t > 5 and t % 3 == 0 for t in events)
    full_at = next(t for t in range(1, 61) if totals[t - 1] == r_star)
    # an event at every remaining interval step while R < R*
    assert set(events) == {t for t in range(6, full_at + 1) if t % 3 == 0}
    assert max(totals) == r_star and totals[-1] == r_star
    assert not any(t > full_at for t in events)


@pytest.mark.parametrize("schedule", ["linear", "exponential", "fixed"])
def test_allocation_size_formulas(schedule):
    config = stack_config(
        schedule=schedule, top_h=2, reference_rank=5, total_step=50, init_warmup=4, incre_interval=2
    )
    scores = [0.3, 0.9, 0.3, 0.9, 0.1, 0.3]
    _, _, events, _ = run_schedule(config, scores=scores)
    total = 6
    for t, record in sorted(events.items()):
        remaining, p = 30 - total, (t - 4) / (50 - 4)
        raw = {
            "linear": math.floor(remaining * p + 1e-12),
            "exponential": math.floor(remaining**p + 1e-12),
            "fixed": 2,
        }[schedule]
        k = min(max(raw, 1), 6)
        assert record["K"] == k
        order = [1, 3, 0, 2, 5, 4]  # -score, ties by module order
        assert record["selected"] == [f"layers.{i}" for i in order[:k]]
        total += sum(record["grown"].values())
        assert record["total_rank"] == total


def test_threshold_selection_takes_ties():
    assert select_modules([0.3, 0.9, 0.3, 0.9, 0.1, 0.3], 3, "top_k") == [1, 3, 0]
    assert select_modules([0.3, 0.9, 0.3, 0.9, 0.1, 0.3], 3, "threshold") == [1, 3, 0, 2, 5]
    assert select_modules([0.0] * 4, 2) == [0, 1]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_budget_never_exceeded_and_reached_when_dry_run_predicts(k):
    config = stack_config(incre_rank_num=k, reference_rank=4, total_step=30, init_warmup=2, incre_interval=2)
    method, model, events, totals = run_schedule(config, scores=[0.5, 0.1, 0.4, 0.2, 0.3, 0.0])
    dry = dry_run_schedule(6, 1, 24, k, 30, 2, 2)
    assert [(r["step"], r["K"], r["total_rank"]) for r in events.values()] == [
        (d["step"], d["K"], d["total_rank"]) for d in dry
    ]
    assert max(totals) <= 24
    assert dry[-1]["total_rank"] == 24 and totals[-1] == 24
    budget = method.budget(model)
    assert budget["total_rank"] == sum(budget["rank_pattern"].values()) == 24
    assert (
        budget["trainable_adapter"] + budget["trainable_heads"] + budget["trainable_spare"]
        == budget["trainable_total"]
    )


def test_clip_to_budget_false_can_overshoot():
    config = stack_config(incre_rank_num=4, reference_rank=2, clip_to_budget=False, total_step=30)
    _, _, _, totals = run_schedule(config, scores=[0.0] * 6)
    assert totals[-1] > 12 and (totals[-1] - 6) % 4 == 0


def test_spec_dry_run_counts():
    mnli = dict(
        num_modules=72,
        init_rank=1,
        target_total_rank=144,
        incre_rank_num=1,
        total_step=110_000,
        init_warmup=1000,
        incre_interval=1000,
    )
    rte = dict(
        num_modules=72,
        init_rank=1,
        target_total_rank=576,
        incre_rank_num=1,
        total_step=3900,
        init_warmup=100,
        incre_interval=100,
    )
    assert len(dry_run_schedule(**mnli, schedule="linear")) == 31
    assert len(dry_run_schedule(**mnli, schedule="exponential")) == 47
    assert len(dry_run_schedule(**rte, schedule="linear")) == 21
    assert len(dry_run_schedule(**rte, schedule="exponential")) == 35


def test_linear_fills_faster_than_exponential():
    scores = [0.5, 0.1, 0.4, 0.2, 0.3, 0.0]
    config = dict(reference_rank=8, total_step=200, init_warmup=10, incre_interval=5)
    _, _, linear, _ = run_schedule(stack_config(schedule="linear", **config), scores=scores)
    _, _, expo, _ = run_schedule(stack_config(schedule="exponential", **config), scores=scores)
    assert linear and expo and max(linear) < max(expo)
    assert len(linear) < len(expo)


def test_real_scores_follow_norm_increments():
    method = TriAdaptLoRA()
    model = adapt(
        Stack(),
        stack_config(score="increment", reference_rank=2, total_step=20, init_warmup=1, incre_interval=1),
    )
    layers = list(growing.adapter_layers(model).values())
    with torch.no_grad():  # T of module 4 grows most, then module 1; the others stay at N = 1
        layers[4].L[0].mul_(3.0)
        layers[1].L[0].mul_(2.0)
    record = method.step(model, None, None, 2)
    assert record["K"] == 1 and record["selected"] == ["layers.4"]  # K = floor(6 * 1/19) -> 1
    prev = growing.get_info(model).state["norm_prev"]
    assert prev["layers.4"] == pytest.approx(2.0) and prev["layers.1"] == pytest.approx(1.5)
    # the grown module is now compared with its pre-growth norm: T = diag(2, 1) gives N = sqrt(5)/2
    assert method.importance(model)[4] == pytest.approx(math.sqrt(5) / 2 - 2.0)


def test_same_seed_same_pattern_and_outputs():
    results = []
    for _ in range(2):
        method, base = TriAdaptLoRA(), deberta()
        model = adapt(base, deberta_config(init_warmup=1, incre_interval=1, total_step=8), seed=11)
        torch.manual_seed(11)
        train(method, model, deberta_batch(), steps=6, lr=2e-2)
        results.append((method.budget(model)["rank_pattern"], logits(model, deberta_batch())))
    assert results[0][0] == results[1][0] and sum(results[0][0].values()) > 12
    assert torch.equal(results[0][1], results[1][1])


# ---------------------------------------------------------------------------------------------------
# 10. Optimizer and scheduler integration
# ---------------------------------------------------------------------------------------------------
def integration_run(policy, hook_after_scheduler=False, total=20, warmup=4, lr=1e-2, wd=0.1, fused=False):
    """Loop with warmup + decay; one growth event at t = 6 (budget M + 1 with M = 1)."""
    method = TriAdaptLoRA()
    model = adapt(
        MLP(),
        mlp_config(
            new_params_lr=policy, total_step=total, init_warmup=5, incre_interval=6, target_total_rank=2
        ),
    )
    opt = torch.optim.AdamW(method.param_groups(model, lr, wd), betas=(0.8, 0.95), eps=1e-7, fused=fused)
    sched = GroupLambdaLR(opt, linear_warmup_decay(warmup, total))
    batch, trace, new = mlp_batch(), [], None
    model.train()
    for t in range(1, total + 1):
        lrs_used = [g["lr"] for g in opt.param_groups]
        snapshot = [p.detach().clone() for p in new] if new else None
        model(**batch).loss.backward()
        if new:
            assert all(p.grad is not None for p in new)
        opt.step()
        if hook_after_scheduler:
            sched.step()
            record = method.step(model, opt, sched, t)
        else:
            record = method.step(model, opt, sched, t)
            sched.step()
        if record is not None:
            new = list(opt.param_groups[-1]["params"])
        trace.append(
            {
                "t": t,
                "lrs": lrs_used,
                "changed": snapshot and [not torch.equal(a, b) for a, b in zip(snapshot, new, strict=True)],
                "record": record,
                "n_groups": len(opt.param_groups),
                "last_lr": sched.get_last_lr(),
            }
        )
        opt.zero_grad(set_to_none=True)
    return opt, sched, trace, new


@pytest.mark.parametrize("hook_after_scheduler,fused", [(False, False), (True, False), (False, True)])
def test_new_group_follows_global_schedule(hook_after_scheduler, fused):
    opt, sched, trace, new = integration_run("follow", hook_after_scheduler, fused=fused)
    births = [e["t"] for e in trace if e["record"]]
    assert births == [6]
    assert len(opt.param_groups) == 3
    group, decay = opt.param_groups[-1], opt.param_groups[0]
    assert decay["name"] == "decay"
    for key in ("weight_decay", "betas", "eps", "amsgrad", "initial_lr", "fused"):
        assert group[key] == decay[key], key
    ids = [id(p) for p in new]
    assert sum(id(p) in ids for g in opt.param_groups for p in g["params"]) == len(ids) == 1  # one per event
    assert all(len(e["last_lr"]) == e["n_groups"] for e in trace)
    after = [e for e in trace if e["t"] > 6]
    assert all(after[0]["changed"])  # the very next optimizer step updates every new tensor
    for e in after:
        assert e["lrs"][-1] == pytest.approx(e["lrs"][0]) and e["lrs"][0] > 0
    assert all(lr == 0 for lr in sched.get_last_lr())


def test_restart_warmup_starts_at_zero():
    opt, sched, trace, _ = integration_run("restart_warmup")
    after = [e for e in trace if e["t"] > 6]
    assert after[0]["lrs"][-1] == 0 and after[0]["lrs"][0] > 0
    assert all(e["lrs"][-1] > 0 for e in after[1:-1])
    assert all(lr == 0 for lr in sched.get_last_lr())


def test_static_keeps_default_lr():
    opt, sched, trace, _ = integration_run("static", lr=3e-3)
    after = [e for e in trace if e["t"] > 6]
    assert all(e["lrs"][-1] == 3e-3 for e in after)
    assert len(sched.get_last_lr()) == len(opt.param_groups) == 3
    assert sched.get_last_lr()[:2] == [0.0, 0.0]


def test_lambda_schedulers_get_new_groups_and_others_are_rejected():
    method = TriAdaptLoRA()
    model = adapt(MLP(), mlp_config(init_warmup=1, incre_interval=1))
    opt = torch.optim.AdamW(method.param_groups(model, 1e-3, 0.0))
    plain = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    method.step(model, opt, plain, 2)  # any LambdaLR (transformers' schedules) gets the new group
    assert len(plain.lr_lambdas) == len(plain.base_lrs) == len(opt.param_groups) == 3
    unscheduled = torch.optim.lr_scheduler.StepLR(opt, 10)
    with pytest.raises(TypeError, match="LambdaLR"):
        method.step(model, opt, unscheduled, 3)


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields, match",
    [
        ({"total_step": None}, "total_step"),
        ({"total_step": 100, "init_warmup": 100}, "must exceed init_warmup"),
        ({"reference_rank": 1, "init_rank": 2}, "reference_rank"),
        ({"schedule": "cosine"}, "linear"),
        ({"init": "zeros"}, "identity"),
        ({"scaling": "rslora"}, "constant"),
        ({"score": "grad"}, "increment"),
        ({"norm_divisor": "numel"}, "blocks"),
        ({"selection": "all"}, "top_k"),
        ({"new_params_lr": "warm"}, "restart_warmup"),
        ({"orth_reduction": "sum"}, "per_module"),
        ({"schedule": "fixed", "top_h": 0}, "top_h"),
        ({"incre_rank_num": 0}, "incre_rank_num"),
        ({"incre_interval": 0}, "incre_interval"),
        ({"orth_reg_weight": -1.0}, "orth_reg_weight"),
    ],
)
def test_config_validation(fields, match):
    with pytest.raises(ValueError, match=match):
        TriAdaptConfig(**{"total_step": 1000, **fields})


def test_injection_checks_budget_and_warns_on_unreachable_schedule():
    with pytest.raises(ValueError, match="init_rank"):
        TriAdaptLoRA().apply(Stack(), stack_config(init_rank=2, target_total_rank=11))
    with pytest.warns(UserWarning, match="reaches total rank"):
        TriAdaptLoRA().apply(
            Stack(), stack_config(reference_rank=8, total_step=8, init_warmup=6, incre_interval=2)
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TriAdaptLoRA().apply(Stack(), stack_config(reference_rank=2, total_step=40))


def test_yaml_composes_into_the_dataclass():
    from tests.conftest import compose_config

    node = compose_config("method=triadapt", "backbone=tiny-deberta", "budget=r8", "paths.output_dir=unused")
    fields = OmegaConf.to_container(node.method, resolve=True)
    assert fields["name"] == "triadapt" and fields["total_step"] is None
    config = get_method("triadapt").make_config(fields, total_step=500)
    defaults = TriAdaptConfig(total_step=500)
    for f in dataclasses.fields(TriAdaptConfig):
        if f.name not in ("target_modules", "modules_to_save", "total_step"):
            assert getattr(config, f.name) == getattr(defaults, f.name), f.name
    assert config.modules_to_save == ["classifier", "pooler"] and len(config.target_modules) == 6
    assert allocation_size("linear", 10, 5, 0, 10, 1, 100) == 5

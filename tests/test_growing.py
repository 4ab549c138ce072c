"""The shared infrastructure of the growing methods (src/methods/growing/), with a minimal adapter.

``BlockLinear`` is the smallest honest ``AdapterLinear``: ΔW = B A in growable blocks. It checks that
nothing in src/methods/growing/ depends on TriAdaptLoRA; the method-level properties live in test_triadapt.py.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from torch import nn

from src.lr_schedule import GroupLambdaLR, linear_warmup_decay
from src.methods import growing


class BlockLinear(growing.AdapterLinear):
    def __init__(self, base_layer: nn.Linear, rank: int = 1):
        super().__init__(base_layer)
        self.A, self.B = nn.ParameterList(), nn.ParameterList()
        self.grow(rank)

    def grow(self, k: int) -> list[nn.Parameter]:
        self.check_not_merged("grow")
        new = [
            nn.Parameter(torch.randn(k, self.in_features) * 0.1),
            nn.Parameter(torch.randn(self.out_features, k) * 0.1),
        ]
        self.A.append(new[0])
        self.B.append(new[1])
        return new

    @property
    def rank(self) -> int:
        return sum(a.shape[0] for a in self.A)

    def block_sizes(self) -> list[int]:
        return [a.shape[0] for a in self.A]

    def restore_blocks(self, blocks: list[int]) -> None:
        for k in blocks[len(self.A) :]:
            self.grow(k)

    def adapter_forward(self, x):
        return x @ torch.cat(list(self.A)).T @ torch.cat(list(self.B), dim=1).T

    def delta_weight(self):
        return torch.cat(list(self.B), dim=1) @ torch.cat(list(self.A))

    def effective_params(self) -> int:
        return self.rank * (self.in_features + self.out_features)


@dataclasses.dataclass
class BlockConfig:
    rank: int = 1
    gamma: float = 0.0


class Block(growing.GrowingAdapterMethod):
    name = "block"
    config_class = BlockConfig

    def inject(self, model, config, heads=True):
        def reg(m):
            return (
                None
                if config.gamma == 0
                else config.gamma
                * sum(torch.cat(list(layer.A)).pow(2).sum() for layer in growing.adapter_layers(m).values())
            )

        model = growing.prepare_model(
            model, self.name, config, ["body"], ["head"], lambda n, lin: BlockLinear(lin, config.rank), reg
        )
        growing.get_info(model).state["target_total_rank"] = 4
        return model


class Net(nn.Module):
    def __init__(self, as_tuple: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = nn.Linear(6, 6), nn.Sequential(nn.Linear(6, 3))
        self.head.output_dim = 3
        self.as_tuple = as_tuple

    def forward(self, x, labels=None):
        logits = self.head(torch.relu(self.body(x)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return (logits,) if self.as_tuple else {"logits": logits, "loss": loss}


def test_injection_freezes_wraps_and_reports_budget():
    model = Block().inject(Net(), BlockConfig(rank=2))
    assert isinstance(model.body, BlockLinear) and isinstance(model.head, growing.HeadWrapper)
    assert model.head.output_dim == 3  # attribute reads reach the trained copy
    assert model.body.weight is model.body.base_layer.weight
    budget = Block().budget(model)
    assert budget["trainable_adapter"] == budget["effective_adapter"] == 2 * 12
    assert budget["trainable_heads"] == 21 and budget["trainable_total"] == 45
    model.body.base_layer.bias.requires_grad_(True)
    with pytest.raises(RuntimeError, match="body.base_layer.bias"):
        Block().budget(model)


def test_bad_targets_leave_the_model_untouched_and_double_apply_raises():
    net = Net()
    with pytest.raises(ValueError, match="no module"):
        growing.prepare_model(net, "block", BlockConfig(), ["nothing"], [], lambda n, lin: BlockLinear(lin))
    assert all(p.requires_grad for p in net.parameters())
    model = Block().inject(net, BlockConfig())
    with pytest.raises(ValueError, match="already"):
        Block().inject(model, BlockConfig())
    with pytest.raises(ValueError, match="matches no module"):
        growing.wrap_heads(Net(), ["classifier"])


def test_regulariser_hook_on_dict_and_tuple_outputs():
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    model = Block().inject(Net(), BlockConfig(gamma=0.5))
    model.train()
    loss = model(x, labels=y)["loss"]
    with growing.disable_adapter(model):
        plain = model(x, labels=y)["loss"]  # disabled: neither the branch nor its loss
    delta = 0.5 * torch.cat(list(model.body.A)).pow(2).sum()
    branch_free = Net()(x, labels=y)["loss"]
    assert torch.allclose(plain, branch_free)
    assert torch.allclose(growing.get_info(model).last_regularizer, delta.detach())
    model.eval()
    task_loss = nn.functional.cross_entropy(model(x)["logits"], y)
    assert torch.allclose(loss - task_loss, delta, atol=1e-6)
    tuple_model = Block().inject(Net(as_tuple=True), BlockConfig(gamma=0.5))
    tuple_model.train()
    with pytest.raises(ValueError, match="return_dict"):
        tuple_model(x, labels=y)


def test_merge_save_load_roundtrip(tmp_path):
    x = torch.randn(4, 6)
    model = Block().inject(Net(), BlockConfig()).eval()
    model.body.grow(2)
    expected = model(x)["logits"]
    Block().save(model, str(tmp_path))
    loaded = Block().load(Net(), str(tmp_path)).eval()
    assert loaded.body.block_sizes() == [1, 2]
    assert torch.allclose(loaded(x)["logits"], expected, atol=1e-6)
    Block().merge(loaded)
    with pytest.raises(RuntimeError, match="merged"):
        Block().save(loaded, str(tmp_path / "merged"))
    with pytest.warns(UserWarning):
        Block().unmerge(Block().inject(Net(), BlockConfig()))
    plain = Block().merge_and_unload(loaded)
    assert type(plain.body) is nn.Linear and type(plain.head) is nn.Sequential
    assert torch.allclose(plain(x)["logits"], expected, atol=1e-6)


@pytest.mark.parametrize("policy", ["follow", "restart_warmup", "static"])
def test_add_param_group_copies_decay_and_schedules(policy):
    model = Block().inject(Net(), BlockConfig())
    opt = torch.optim.AdamW(Block().param_groups(model, 1e-2, 0.05), betas=(0.7, 0.9))
    sched = GroupLambdaLR(opt, linear_warmup_decay(4, 20))
    for _ in range(6):
        opt.step()
        sched.step()
    group = growing.add_param_group(opt, sched, model.body.grow(1), policy, birth_step=6, total_step=20)
    assert group is opt.param_groups[-1] and group["name"] == "grown@6"
    assert group["betas"] == (0.7, 0.9) and group["weight_decay"] == 0.05 and group["initial_lr"] == 1e-2
    expected = {"follow": opt.param_groups[0]["lr"], "restart_warmup": 0.0, "static": 1e-2}[policy]
    assert group["lr"] == pytest.approx(expected)
    assert len(sched.get_last_lr()) == len(opt.param_groups)


def test_add_param_group_errors():
    model = Block().inject(Net(), BlockConfig())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(ValueError, match="decay"):
        growing.add_param_group(opt, None, model.body.grow(1), "follow", 1, 10)
    opt = torch.optim.AdamW(Block().param_groups(model, 1e-3, 0.0))
    with pytest.raises(ValueError, match="linear_warmup_decay"):
        growing.add_param_group(
            opt, GroupLambdaLR(opt, lambda s: 1.0), model.body.grow(1), "restart_warmup", 1, 10
        )
    with pytest.raises(ValueError, match="choose one of"):
        growing.add_param_group(opt, None, model.body.grow(1), "later", 1, 10)


def test_disable_adapter_is_a_context_manager_that_restores_state():
    model = Block().inject(Net(), BlockConfig())
    ctx = Block().disable_adapter(model)
    assert isinstance(ctx, contextlib.AbstractContextManager)
    with pytest.raises(KeyError), ctx:
        assert model.body.disabled and model.head.use_original
        raise KeyError
    assert not model.body.disabled and not model.head.use_original
    assert not growing.get_info(model).disabled

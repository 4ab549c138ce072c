"""The per-task paper hyperparameters compose to exactly the spec's tables (§3 Table 8, §4 scripts).

The expected values are transcribed here independently of configs/task_backbone/ so that a typo in
either place fails.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config

TASKS = ["mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb"]
# AdaLoRA Table 8 (+ scripts): lr, epochs, gamma, t_i, deltaT, t_f, alpha, max len, warmup, cls drop, wd
ADALORA = {
    "mnli": (5e-4, 7, 0.1, 8000, 100, 50000, 16, 256, 1000, 0.15, 0.0),
    "rte": (1.2e-3, 50, 0.3, 600, 1, 1800, 32, 320, 200, 0.20, 0.01),
    "qnli": (1.2e-3, 5, 0.1, 2000, 100, 8000, 32, 512, 500, 0.10, 0.01),
    "mrpc": (1e-3, 30, 0.1, 600, 1, 1800, 32, 320, 0.1, 0.0, 0.01),
    "qqp": (5e-4, 5, 0.1, 8000, 100, 25000, 16, 320, 2000, 0.15, 0.01),
    "sst2": (8e-4, 24, 0.1, 6000, 100, 22000, 16, 128, 1000, 0.0, 0.01),
    "cola": (5e-4, 25, 0.5, 800, 10, 3500, 32, 64, 100, 0.10, 0.0),
    "stsb": (2.2e-3, 25, 0.1, 800, 10, 2000, 32, 128, 100, 0.20, 0.1),
}
# IncreLoRA scripts, per budget: lr, epochs, max len, nu, top_h, alpha, lora drop, cls drop, wd, gamma, k
INCRELORA = {
    ("mnli", "r2"): (3.5e-4, 9, 256, 1000, 2, 16, 0.2, 0.15, 0.0, 0.1, 1),
    ("mnli", "r8"): (5e-4, 7, 256, 1000, 18, 16, 0.0, 0.15, 0.0, 0.1, 1),
    ("sst2", "r2"): (8e-4, 24, 128, 1000, 5, 16, 0.1, 0.0, 0.01, 0.1, 1),
    ("sst2", "r8"): (8e-4, 24, 128, 1000, 6, 16, 0.3, 0.0, 0.01, 0.1, 4),
    ("cola", "r2"): (8e-4, 25, 64, 100, 3, 32, 0.0, 0.10, 0.0, 0.1, 1),
    ("cola", "r8"): (1e-3, 25, 64, 100, 3, 32, 0.0, 0.10, 0.0, 0.1, 4),
    ("qqp", "r2"): (4e-4, 7, 320, 1000, 3, 16, 0.0, 0.15, 0.01, 0.1, 1),
    ("qqp", "r8"): (6e-4, 7, 320, 1000, 3, 16, 0.0, 0.15, 0.01, 0.1, 4),
    ("qnli", "r2"): (7e-4, 5, 512, 500, 12, 32, 0.0, 0.10, 0.01, 0.1, 1),
    ("qnli", "r8"): (9e-4, 5, 512, 500, 22, 32, 0.0, 0.10, 0.01, 0.1, 4),
    ("rte", "r2"): (1.2e-3, 50, 320, 100, 5, 32, 0.0, 0.20, 0.01, 0.3, 1),
    ("rte", "r8"): (1.2e-3, 50, 320, 100, 9, 32, 0.0, 0.20, 0.01, 0.3, 4),
    ("mrpc", "r2"): (1e-3, 30, 320, 100, 6, 32, 0.3, 0.0, 0.01, 0.1, 1),
    ("mrpc", "r8"): (1e-3, 30, 320, 100, 10, 32, 0.3, 0.0, 0.01, 0.1, 4),
    ("stsb", "r2"): (2.2e-3, 25, 128, 100, 4, 32, 0.0, 0.20, 0.1, 0.3, 1),
    ("stsb", "r8"): (2.2e-3, 25, 128, 100, 4, 32, 0.0, 0.20, 0.1, 0.3, 4),
}
RANKS = {"r2": (2, 4), "r8": (8, 12)}  # avg rank, AdaLoRA init_r


def composed(method: str, task: str, budget: str) -> dict:
    cfg = compose_config(
        f"method={method}",
        f"task={task}",
        f"budget={budget}",
        "backbone=deberta-v3-base",
        "paths.output_dir=unused",
    )
    return OmegaConf.to_container(cfg, resolve=True)


def shared_values(c: dict) -> tuple:
    return (
        c["task"]["max_length"],
        c["backbone"]["config_overrides"]["cls_dropout"],
        c["trainer"]["weight_decay"],
    )


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("budget", ["r2", "r8"])
def test_adalora_composes_table8(task, budget):
    lr, ep, gamma, ti, dt, tf, alpha, max_len, warmup, cls, wd = ADALORA[task]
    c = composed("adalora", task, budget)
    m, tr = c["method"], c["trainer"]
    assert (tr["learning_rate"], tr["num_train_epochs"], tr["warmup"]) == (lr, ep, warmup)
    assert (m["orth_reg_weight"], m["tinit"], m["deltaT"], m["tfinal"], m["lora_alpha"]) == (
        gamma,
        ti,
        dt,
        tf,
        alpha,
    )
    assert (m["target_r"], m["init_r"]) == RANKS[budget]
    assert shared_values(c) == (max_len, cls, wd) and tr["per_device_train_batch_size"] == 32


@pytest.mark.parametrize("task,budget", list(INCRELORA))
def test_lora_composes_increlora_protocol(task, budget):
    lr, ep, max_len, nu, _top_h, alpha, drop, cls, wd, _gamma, _k = INCRELORA[(task, budget)]
    c = composed("lora", task, budget)
    assert (c["trainer"]["learning_rate"], c["trainer"]["num_train_epochs"], c["trainer"]["warmup"]) == (
        lr,
        ep,
        nu,
    )
    assert (c["method"]["r"], c["method"]["lora_alpha"], c["method"]["lora_dropout"]) == (
        RANKS[budget][0],
        alpha,
        drop,
    )
    assert shared_values(c) == (max_len, cls, wd)


def test_without_a_task_backbone_file_the_defaults_apply():
    c = composed("adalora", "rte", "r8")
    plain = OmegaConf.to_container(
        compose_config("method=adalora", "task=rte", "backbone=minilm-l6", "paths.output_dir=unused"),
        resolve=True,
    )
    assert "paper" in c and "paper" not in plain
    assert plain["trainer"]["learning_rate"] == 5e-4 and plain["method"]["tinit"] == 0


@pytest.mark.parametrize("task,budget", list(INCRELORA))
def test_increlora_composes_its_released_scripts(task, budget):
    lr, ep, max_len, nu, top_h, alpha, drop, cls, wd, gamma, k = INCRELORA[(task, budget)]
    c = composed("increlora", task, budget)
    m, tr = c["method"], c["trainer"]
    assert (tr["learning_rate"], tr["num_train_epochs"], tr["warmup"]) == (lr, ep, nu)
    assert (m["init_warmup"], m["incre_interval"], m["top_h"], m["incre_rank_num"]) == (nu, nu, top_h, k)
    assert (m["lora_alpha"], m["lora_dropout"], m["orth_reg_weight"]) == (alpha, drop, gamma)
    assert m["target_rank"] == RANKS[budget][0] and m["init_rank"] == 1
    assert shared_values(c) == (max_len, cls, wd)


@pytest.mark.parametrize("task,budget", list(INCRELORA))
def test_triadapt_follows_the_increlora_protocol_with_k_1(task, budget):
    lr, ep, max_len, nu, _top_h, alpha, drop, cls, wd, gamma, _k = INCRELORA[(task, budget)]
    c = composed("triadapt", task, budget)
    m, tr = c["method"], c["trainer"]
    assert (tr["learning_rate"], tr["num_train_epochs"], tr["warmup"]) == (lr, ep, nu)
    assert (m["init_warmup"], m["incre_interval"], m["incre_rank_num"], m["schedule"]) == (
        nu,
        nu,
        1,
        "linear",
    )
    assert (m["lora_alpha"], m["lora_dropout"], m["orth_reg_weight"]) == (alpha, drop, gamma)
    assert m["reference_rank"] == RANKS[budget][0] and m["init_rank"] == 1
    assert shared_values(c) == (max_len, cls, wd)

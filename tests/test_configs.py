"""Every config option composes, resolves and instantiates; every experiment runs one step."""

from __future__ import annotations

import time

import pytest
from omegaconf import OmegaConf

from src.hub import HubUnavailableError
from src.methods import get_method
from src.runtime.backbones import load_model, load_tokenizer
from src.runtime.config_schema import check_config
from src.tasks import prepare_task
from src.tasks.sources import DataError
from src.train import train
from tests.conftest import CONFIG_DIR


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


GROUPS = ["backbone", "task", "method", "trainer", "logger", "paths", "budget"]
OFFLINE_BACKBONES = ["tiny-deberta", "minilm-l6"]
LOCAL_GLUE = ["cola", "sst2", "mrpc", "stsb", "rte"]  # train + validation in ../shared/data/glue


def resolved_and_checked(cfg) -> dict:
    """The resolved config, after the schema check, which must leave it as it is (run identities)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert check_config(cfg) == resolved
    return resolved


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_resolves_and_passes_the_schema(cfg_factory, group, option):
    resolved = resolved_and_checked(cfg_factory(f"{group}={option}"))
    assert resolved[group] is not None
    assert resolved["method"]["target_modules"] == resolved["backbone"]["target_modules"]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_passes_the_schema(cfg_factory, experiment):
    resolved_and_checked(cfg_factory(f"experiment={experiment}"))


SCHEMA_CASES = (
    [[f"backbone={b}", f"task={t}"] for b in options("backbone") for t in ("squad", "xsum")]  # the non-GLUE families
    + [["+sweep=glue", f"task={t}", f"method={m}"] for t in ("rte", "mnli") for m in ("adalora", "increlora")]
    + [["+sweep=glue_cpu", "budget=r2"]]
    + [["+sweep=cpu_repro", f"task={t}", "method=adalora"] for t in ("rte", "mrpc", "stsb", "cola", "sst2")]
)  # fmt: skip
NO_QA_HEAD = {"llama", "smollm2-135m", "tiny-llama"}  # decoder backbones: no heads.qa (README)


@pytest.mark.parametrize("overrides", SCHEMA_CASES, ids=[" ".join(c) for c in SCHEMA_CASES])
def test_every_family_backbone_pair_and_sweep_passes_the_schema(cfg_factory, overrides):
    cfg = cfg_factory(*overrides)
    backbone, task = cfg.backbone.name, cfg.task.name
    if backbone in NO_QA_HEAD and cfg.task.family == "question_answering":
        with pytest.raises(ValueError, match=rf"backbone={backbone} has no 'qa' head for task={task}"):
            check_config(cfg)
        return
    resolved_and_checked(cfg)


@pytest.mark.parametrize("method", options("method"))
def test_every_method_config_instantiates(cfg_factory, method):
    cfg = cfg_factory(f"method={method}", "backbone=tiny-deberta")
    fields = OmegaConf.to_container(cfg.method, resolve=True)
    config = get_method(method).make_config(fields, total_step=1000, warmup_steps=60)
    assert get_method(method).name == cfg.method.name == method
    assert list(config.target_modules) == list(cfg.backbone.target_modules)


@pytest.mark.parametrize("backbone", OFFLINE_BACKBONES)
def test_offline_backbones_instantiate(cfg_factory, backbone):
    cfg = cfg_factory(f"backbone={backbone}")
    tok = load_tokenizer(cfg.backbone)
    model = load_model(cfg.backbone, "seq_cls", 3, seed=0)
    out = model(**tok(["a short sentence"], return_tensors="pt"))
    assert out.logits.shape == (1, 3)


def test_hub_backbone_offline_fails_fast_with_the_override(cfg_factory):
    cfg = cfg_factory("backbone=deberta-v3-base")
    start = time.time()
    with pytest.raises(HubUnavailableError, match=r"microsoft/deberta-v3-base.*backbone\.tokenizer="):
        load_tokenizer(cfg.backbone)
    assert time.time() - start < 15


@pytest.mark.parametrize("task", LOCAL_GLUE)
def test_glue_tasks_load_from_local_data(cfg_factory, shared_data, tiny_backbone, task):
    cfg = cfg_factory(
        f"task={task}",
        f"task.data_dir={shared_data}/glue/{task}",
        "task.max_train_samples=32",
        "task.max_eval_samples=16",
    )
    prepared = prepare_task(cfg.task, load_tokenizer(tiny_backbone), seed=0)
    assert len(prepared.train) == 32 and len(prepared.evals["validation"]) == 16
    assert set(prepared.train.column_names) >= {"input_ids", "labels"}
    label = prepared.train[0]["labels"]
    assert isinstance(label, float) if cfg.task.num_labels == 1 else label in range(cfg.task.num_labels)


def test_tweets_task_is_a_fixed_binary_split(cfg_factory, tiny_backbone):
    cfg = cfg_factory("task=tweets")
    a = prepare_task(cfg.task, load_tokenizer(tiny_backbone), seed=0)
    b = prepare_task(cfg.task, load_tokenizer(tiny_backbone), seed=1)
    assert len(a.train) + len(a.evals["validation"]) == 23140  # 16,186 negative + 6,954 positive tweets
    assert a.evals["validation"]["input_ids"][:5] == b.evals["validation"]["input_ids"][:5]


def test_missing_split_names_the_files_present(cfg_factory, shared_data, tiny_backbone):
    cfg = cfg_factory("task=qnli", f"task.data_dir={shared_data}/glue/qnli")  # validation only
    with pytest.raises(DataError, match=r"no file for split 'train'.*validation\.jsonl"):
        prepare_task(cfg.task, load_tokenizer(tiny_backbone), seed=0)


def test_hub_task_offline_names_the_data_dir_override(cfg_factory, tiny_backbone):
    cfg = cfg_factory("task=mnli")
    with pytest.raises(HubUnavailableError, match=r"nyu-mll/glue/mnli.*task\.data_dir="):
        prepare_task(cfg.task, load_tokenizer(tiny_backbone), seed=0)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_smoke_runs_one_step_on_tiny_deberta(cfg_factory, experiment):
    cfg = cfg_factory(
        f"experiment={experiment}",
        "backbone=tiny-deberta",
        "logger=none",
        "trainer.max_steps=1",
        "trainer.eval_steps=1",
        "task.max_train_samples=64",
        "task.max_eval_samples=16",
    )
    if "init_warmup" in cfg.method:  # growing methods reject T <= T_w; one step needs T_w = 0
        cfg.method.init_warmup = 0
    record = train(cfg)
    assert record["status"] == "ok" and record["total_steps"] == 1


def test_pair_separator_joins_sentence_pairs_before_tokenising(cfg_factory, shared_data, tiny_backbone):
    cfg = cfg_factory("task=rte", f"task.data_dir={shared_data}/glue/rte", "task.max_train_samples=4")
    tok = load_tokenizer(tiny_backbone)
    joined = OmegaConf.merge(tiny_backbone, {"pair_separator": " | "})
    plain = prepare_task(cfg.task, tok, seed=0, backbone=tiny_backbone).train[0]["input_ids"]
    glued = prepare_task(cfg.task, tok, seed=0, backbone=joined).train[0]["input_ids"]
    assert plain.count(tok.sep_token_id) == 2  # the tokenizer's own pair template: [CLS] a [SEP] b [SEP]
    assert glued.count(tok.sep_token_id) == 1 and tok.convert_tokens_to_ids("|") in glued  # one text

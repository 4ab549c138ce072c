"""The schema of a run's config: every group typed and checked before any model or data is loaded.

``check_config(cfg)`` resolves the composed config and checks each group against its dataclass
(``src/schema.py`` says how): ``trainer``, ``backbone``, ``budget``, ``logger``, ``paths`` and the
top-level keys here, ``task`` against its family's schema (``src/tasks``). A wrong type, an unknown
key, a value out of range or an interpolation that does not resolve raises ``ConfigError`` with one
line, ``<what was wrong>; <what to do>``, before anything is loaded or written. Method configs are
checked by the methods' own dataclasses (``src/methods``), once the data has fixed T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from transformers import TrainingArguments

from src.runtime.backbones import HEAD_CLASSES
from src.runtime.trainer import OPTIMIZERS
from src.schema import ConfigError, problems, raise_problems, setting, value_problems
from src.tasks import task_problems

ARCHITECTURES = ["encoder", "encoder_decoder", "decoder"]
# the samplers this transformers version offers (random, sequential, group_by_length, ...)
SAMPLING_STRATEGIES = TrainingArguments.__dataclass_fields__["train_sampling_strategy"].metadata["choices"]


@dataclass(kw_only=True)
class TrainerConfig:
    """``configs/trainer/*.yaml``: what ``src.runtime.trainer.training_arguments`` reads."""

    learning_rate: float = setting(gt=0)
    num_train_epochs: float = setting(gt=0)
    max_steps: int  # > 0 overrides epochs; -1 trains for num_train_epochs
    per_device_train_batch_size: int = setting(ge=1)
    per_device_eval_batch_size: int = setting(ge=1)
    gradient_accumulation_steps: int = setting(ge=1)
    warmup: float = setting(ge=0)  # < 1: a fraction of the steps; >= 1: steps
    weight_decay: float = setting(ge=0)
    max_grad_norm: float = setting(ge=0)  # 0: no clipping
    optim: str = setting(choices=OPTIMIZERS)
    eval_steps: int | None = setting(ge=1)
    max_evals: int | None = setting(None, ge=1)  # caps the default cadence (eval_steps null) only
    logging_steps: int = setting(ge=1)
    bf16: bool
    fp16: bool
    dataloader_num_workers: int = setting(ge=0)
    train_sampling_strategy: str = setting(choices=SAMPLING_STRATEGIES)
    checkpoint: bool
    save_steps: int | None = setting(ge=1)
    resume: bool
    keep_checkpoints: bool
    fit_schedule: bool = True  # false: a run too short for its method's schedule fails (spec §3-§5)

    @classmethod
    def relations(cls, tr: dict, path: str) -> list[str]:
        found = []
        if tr["max_steps"] == 0 or tr["max_steps"] < -1:
            found.append(
                f"{path}.max_steps={tr['max_steps']} is out of range; set it to an integer >= 1, or -1 to "
                f"train for {path}.num_train_epochs"
            )
        if tr["warmup"] >= 1 and tr["warmup"] != int(tr["warmup"]):
            found.append(
                f"{path}.warmup={tr['warmup']} is neither a fraction (< 1) nor a whole number of steps; "
                "set it to a fraction of the run or to a step count"
            )
        if tr["bf16"] and tr["fp16"]:
            found.append(f"{path}.bf16 and {path}.fp16 are both true; set one of them to false")
        return found


@dataclass(kw_only=True)
class BackboneConfig:
    """``configs/backbone/*.yaml``: weights, tokenizer and what the methods adapt and train."""

    name: str
    architecture: str = setting(choices=ARCHITECTURES)
    pretrained: str | None  # hub name, local folder or pkg:<package>/<subdir>; null: random_config
    tokenizer: str | None
    revision: str | None
    gguf_file: str | None = None
    config_overrides: dict[str, Any]  # passed to the model config (e.g. cls_dropout)
    source_prefix: str | None = None
    random_config: dict[str, Any] | None
    pair_separator: str | None = None
    target_modules: list[str]
    heads: dict[str, list[str]]  # head kind -> modules trained in full

    @classmethod
    def relations(cls, bb: dict, path: str) -> list[str]:
        found = []
        if not bb["pretrained"] and not bb["random_config"]:
            found.append(
                f"backbone {bb['name']!r} has neither weights nor a random config; set {path}.pretrained"
            )
        if not bb["pretrained"] and not bb["tokenizer"]:
            found.append(
                f"backbone {bb['name']!r} has no tokenizer; set {path}.tokenizer (or {path}.pretrained)"
            )
        if not bb["target_modules"]:
            found.append(f"{path}.target_modules is empty; name the linear layers to adapt")
        for head in bb["heads"]:
            found += value_problems(head, str, f"{path}.heads key", {"choices": list(HEAD_CLASSES)})
        for group in ("config_overrides", "random_config"):
            for key, value in (bb[group] or {}).items():
                if "dropout" in key:  # probabilities: HF configs take anything and fail, or not, later
                    found += value_problems(value, float | None, f"{path}.{group}.{key}", {"ge": 0, "lt": 1})
        return found


@dataclass(kw_only=True)
class BudgetConfig:
    """``configs/budget/*.yaml``: the average rank every method is matched to (spec §6)."""

    name: str
    avg_rank: int = setting(ge=1)
    adalora_init_r: int = setting(ge=1)
    incre_rank_num: int = setting(ge=1)


@dataclass(kw_only=True)
class LoggerConfig:
    """``configs/logger/*.yaml``: the W&B mirror of the run record, or none."""

    backend: str = setting(choices=["none", "wandb"])
    project: str | None = None
    entity: str | None = None
    mode: str | None = setting(None, choices=["online", "offline", "disabled"])
    tags: list[str] | None = None

    @classmethod
    def relations(cls, lg: dict, path: str) -> list[str]:
        if lg["backend"] == "wandb" and not (lg.get("project") and lg.get("mode")):
            return [
                f"{path}.backend=wandb needs {path}.project and {path}.mode; set them, or use logger=none"
            ]
        return []


@dataclass(kw_only=True)
class PathsConfig:
    """``configs/paths/*.yaml``: where records, checkpoints and run outputs go."""

    root_dir: str
    results_dir: str
    runs_dir: str
    checkpoints_dir: str
    output_dir: str


@dataclass(kw_only=True)
class RunConfig:
    """``configs/train.yaml`` after composition. ``task`` is checked against its family's schema and
    ``method`` by the method's dataclass; ``paper`` and ``repro`` hold the per-task numbers that
    task_backbone and sweep files interpolate from."""

    seed: int = setting(ge=0, lt=2**32)  # numpy's seed range
    run_id: str | None
    save_adapter: bool
    skip_existing: bool
    study: str | None = None
    backbone: BackboneConfig
    task: dict[str, Any]
    method: dict[str, Any]
    budget: BudgetConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    paths: PathsConfig
    paper: dict[str, Any] | None = None
    repro: dict[str, Any] | None = None
    hydra: dict[str, Any] | None = None

    @classmethod
    def relations(cls, config: dict, path: str) -> list[str]:
        found = task_problems(config["task"])
        if config["run_id"] is not None and ("/" in config["run_id"] or not config["run_id"].strip()):
            found.append(f"run_id={config['run_id']!r} is not a file name; drop the '/' or leave run_id=null")
        if not isinstance(config["method"].get("name"), str):
            found.append("method.name is missing; pick a method with method=<name>")
        return found


def _head_problem(cfg: DictConfig) -> str | None:
    """A task whose head the backbone has no modules for: the method's ``modules_to_save`` would fail
    to resolve, so this is checked (and said plainly) before resolving."""
    try:
        head, heads = cfg.task.head, cfg.backbone.heads
    except OmegaConfBaseException:
        return None  # resolving reports it
    if isinstance(heads, DictConfig) and head not in heads:
        return (
            f"backbone={cfg.backbone.name} has no {head!r} head for task={cfg.task.name} (its heads: "
            f"{sorted(heads)}); pick another backbone or add backbone.heads.{head}=[<module names>]"
        )
    return None


def resolve(cfg: DictConfig) -> dict:
    """The config as plain values; an interpolation that does not resolve is one line."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "the config"
        reason = str(err).splitlines()[0]
        raise ConfigError(
            f"{key} does not resolve ({reason}); set the key it refers to, or override {key} itself"
        ) from None


def check_config(cfg: DictConfig) -> dict:
    """The resolved config of a run, checked group by group; raises ConfigError on the first line of
    what is wrong (several problems are joined on that line)."""
    head = _head_problem(cfg)
    if head:
        raise ConfigError(head)
    config = resolve(cfg)
    raise_problems(problems(config, RunConfig))
    return config

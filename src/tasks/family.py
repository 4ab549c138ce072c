"""What every task family produces (``PreparedTask``), the keys every task has, and the family registry.

A family module (classification, question_answering, summarisation) registers its builder and its
config schema with ``@register_family(name, schema)``; ``src.tasks.prepare_task`` looks the family up
by the name a task's YAML gives. Families import this module, never the dispatcher, so the package
has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from omegaconf import DictConfig

from src.schema import setting
from src.tasks.sources import subsample


@dataclass
class PreparedTask:
    train: Dataset
    evals: dict[str, Dataset]  # alias -> tokenised eval split (MNLI has two)
    collator: Any
    compute_metrics: Callable
    head: str  # backbone head kind, e.g. "seq_cls"
    num_labels: int
    primary_metric: str  # key of the selection metric in the evaluation output (without "eval_")
    generation: dict | None = None  # model.generate kwargs: evaluation generates text (AdapterTrainer)


@dataclass(kw_only=True)
class SplitFrom:
    """``task.split_from``: train and eval derived from one split, whole groups at a time."""

    source: str
    group_by: str | None = None
    eval_fraction: float = setting(gt=0, lt=1)
    seed: int


@dataclass(kw_only=True)
class TaskConfig:
    """The keys of every task (``configs/task/*.yaml``); each family's schema adds its own."""

    name: str
    family: str
    head: str
    # where the examples come from: data_dir, else builder, else the Hub (src/tasks/sources.py)
    data_dir: str | None = None
    builder: str | None = None
    builder_args: dict[str, Any] | None = None
    hub_name: str | None = None
    hub_config: str | None = None
    hub_revision: str | None = None
    split_from: SplitFrom | None = None
    train_split: str
    eval_splits: dict[str, str]  # alias -> split
    columns: list[str] | None = None
    metrics: list[str]
    primary_metric: str
    max_train_samples: int | None = setting(None, ge=1)
    max_eval_samples: int | None = setting(None, ge=1)

    @classmethod
    def relations(cls, task: dict, path: str) -> list[str]:
        found = []
        if not (task.get("data_dir") or task.get("builder") or task.get("hub_name")):
            found.append(
                f"task {task['name']!r} has no data source; set {path}.data_dir=<folder of <split>.jsonl "
                f"files> (or {path}.hub_name / {path}.builder)"
            )
        if not task["eval_splits"]:
            found.append(
                f"{path}.eval_splits is empty; name at least one split, e.g. {{validation: validation}}"
            )
        if not task["metrics"]:
            found.append(f"{path}.metrics is empty; name the metrics to report")
        elif task["primary_metric"] not in task["metrics"]:
            found.append(
                f"{path}.primary_metric={task['primary_metric']!r} is not among {path}.metrics "
                f"{task['metrics']}; pick one of them or add it"
            )
        return found


# (task, tokenizer, seed, backbone) -> PreparedTask
FamilyBuilder = Callable[[DictConfig, Any, int, "DictConfig | None"], PreparedTask]
FAMILIES: dict[str, FamilyBuilder] = {}
SCHEMAS: dict[str, type[TaskConfig]] = {}  # family -> the schema of its tasks


def register_family(name: str, schema: type[TaskConfig]):
    """Decorator: make a builder available as ``family: <name>`` in a task YAML, its keys checked
    against ``schema`` before anything is loaded."""

    def wrap(builder: FamilyBuilder) -> FamilyBuilder:
        FAMILIES[name] = builder
        SCHEMAS[name] = schema
        return builder

    return wrap


def tokenise_splits(
    task: DictConfig, data, encode: Callable, seed: int
) -> tuple[Dataset, dict[str, Dataset]]:
    """The train split and every eval split (alias -> split), subsampled as configured, mapped by ``encode``."""

    def tokenise(ds: Dataset) -> Dataset:
        return ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenise {task.name}")

    train = tokenise(subsample(data[task.train_split], task.get("max_train_samples"), seed))
    evals = {
        alias: tokenise(subsample(data[split], task.get("max_eval_samples"), seed))
        for alias, split in task.eval_splits.items()
    }
    return train, evals

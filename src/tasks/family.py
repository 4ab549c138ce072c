"""What every task family produces (``PreparedTask``), and the family registry.

A family module (classification, question_answering, summarisation) registers its builder with
``@register_family(name)``; ``src.tasks.prepare_task`` looks the family up by the name a task's YAML
gives. Families import this module, never the dispatcher, so the package has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from omegaconf import DictConfig

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


# (task, tokenizer, seed, backbone) -> PreparedTask
FamilyBuilder = Callable[[DictConfig, Any, int, "DictConfig | None"], PreparedTask]
FAMILIES: dict[str, FamilyBuilder] = {}


def register_family(name: str):
    """Decorator: make a builder available as ``family: <name>`` in a task YAML."""

    def wrap(builder: FamilyBuilder) -> FamilyBuilder:
        FAMILIES[name] = builder
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

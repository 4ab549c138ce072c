"""Task families: how a task's examples become model inputs and how predictions are scored.

A task of a known family is one YAML (``configs/task/*.yaml``); the family is named there, so the
loop never learns task names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import Dataset
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding

from src import metrics as metric_fns
from src.data import load_task_data, subsample
from src.generation import summarisation
from src.qa import question_answering


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


def classification(
    task: DictConfig, tokenizer, seed: int, backbone: DictConfig | None = None
) -> PreparedTask:
    """Single-sentence or sentence-pair classification / regression (GLUE and the like)."""
    data = load_task_data(task)
    regression = task.num_labels == 1

    # Tokenizers without a pair template (SmolLM2's) would glue the two sentences together.
    separator = (backbone or {}).get("pair_separator")

    def encode(batch):
        texts = [batch[f] for f in task.text_fields]
        if separator is not None and len(texts) == 2:
            texts = [[a + separator + b for a, b in zip(*texts, strict=True)]]
        enc = tokenizer(*texts, truncation=True, max_length=task.max_length)
        enc["labels"] = [float(x) for x in batch[task.label_field]] if regression else batch[task.label_field]
        return enc

    train, evals = tokenise_splits(task, data, encode, seed)

    def compute_metrics(eval_pred):
        logits = (
            eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        )
        preds = np.squeeze(logits, -1) if regression else np.argmax(logits, axis=-1)
        return metric_fns.compute(list(task.metrics), preds, eval_pred.label_ids)

    primary = task.primary_metric if len(evals) == 1 else f"{next(iter(evals))}_{task.primary_metric}"
    return PreparedTask(
        train=train,
        evals=evals,
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        head=task.head,
        num_labels=task.num_labels,
        primary_metric=primary,
    )


FAMILIES = {
    "classification": classification,
    "question_answering": question_answering,
    "summarisation": summarisation,
}


def prepare_task(task: DictConfig, tokenizer, seed: int, backbone: DictConfig | None = None) -> PreparedTask:
    """Tokenised splits and scoring for ``task``; ``backbone`` tells families that care about the
    architecture (encoder-decoder vs decoder-only generation) which one they are feeding."""
    if task.family not in FAMILIES:
        raise ValueError(f"task {task.name!r} has unknown family {task.family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[task.family](task, tokenizer, seed, backbone)


def optimizer_steps(n_examples: int, batch_size: int, grad_accum: int, epochs: float, max_steps: int) -> int:
    """Total optimizer steps T, computed exactly as ``transformers.Trainer`` will run them."""
    if max_steps > 0:
        return max_steps
    batches = math.ceil(n_examples / batch_size)
    per_epoch = max(batches // grad_accum + int(batches % grad_accum > 0), 1)
    return math.ceil(epochs * per_epoch)

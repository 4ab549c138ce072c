"""The classification family: single sentences or sentence pairs -> labels or a score (GLUE and the like)."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding

from src.tasks import glue_metrics as metric_fns
from src.tasks.family import PreparedTask, register_family, tokenise_splits
from src.tasks.sources import load_task_data


@register_family("classification")
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

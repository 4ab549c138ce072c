"""The classification family: single sentences or sentence pairs -> labels or a score (GLUE and the like)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding

from src.schema import setting
from src.tasks import glue_metrics as metric_fns
from src.tasks.family import PreparedTask, TaskConfig, register_family, tokenise_splits
from src.tasks.sources import DataError, load_task_data


@dataclass(kw_only=True)
class ClassificationConfig(TaskConfig):
    text_fields: list[str]  # one sentence or a pair
    label_field: str
    num_labels: int = setting(ge=1)  # 1: regression
    metrics: list[str] = setting(choices=metric_fns.METRICS)
    max_length: int = setting(ge=1)  # tokens, the pair together

    @classmethod
    def relations(cls, task: dict, path: str) -> list[str]:
        found = super().relations(task, path)
        if len(task["text_fields"]) not in (1, 2):
            found.append(
                f"{path}.text_fields={task['text_fields']} has {len(task['text_fields'])} fields; "
                "name one text column, or two for a sentence pair"
            )
        return found


def _listed(values: list) -> str:
    return (
        str(values)
        if len(values) <= 8
        else f"[{', '.join(map(str, values[:8]))}, ... ({len(values)} values)]"
    )


def check_labels(task: DictConfig, data) -> None:
    """The labels in the data agree with ``task.num_labels``, in every split the run uses.

    A head of the wrong width otherwise trains without a word (a class never seen, a regression on
    class ids) or fails deep inside the loss at the first batch holding a label >= num_labels.
    """
    n = task.num_labels
    for split in dict.fromkeys([task.train_split, *task.eval_splits.values()]):
        ds = data[split]
        where = f"the {split!r} split of task {task.name!r}"
        values = ds.unique(task.label_field)
        odd = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
        if odd:
            raise DataError(
                f"{where} has labels that are not numbers (e.g. {odd[0]!r}) in column {task.label_field!r}; "
                "map them to 0..K-1 (or a score for regression) or set task.label_field"
            )
        values = sorted(values)
        integer_column = str(getattr(ds.features[task.label_field], "dtype", "")).startswith("int")
        if n == 1:
            if integer_column:
                raise DataError(
                    f"task.num_labels=1 (regression) but {where} has integer class labels {_listed(values)}; "
                    f"set task.num_labels={len(values)} (to regress on whole numbers, store them as floats)"
                )
            continue
        if not all(float(v).is_integer() for v in values):
            raise DataError(
                f"task.num_labels={n} but {where} has real-valued labels (e.g. "
                f"{next(v for v in values if not float(v).is_integer())}); set task.num_labels=1 for regression"
            )
        if values[0] < 0 or values[-1] >= n:
            fix = f"set task.num_labels={int(values[-1]) + 1}" if values[0] >= 0 else "relabel them 0..K-1"
            raise DataError(f"task.num_labels={n} but {where} has labels {_listed(values)}; {fix}")
        if split == task.train_split and len(values) < n:
            k = len(values)
            fix = f"set task.num_labels={k}" if values == list(range(k)) else f"relabel them 0..{k - 1}"
            raise DataError(f"task.num_labels={n} but {where} has {k} classes {_listed(values)}; {fix}")


@register_family("classification", ClassificationConfig)
def classification(
    task: DictConfig, tokenizer, seed: int, backbone: DictConfig | None = None
) -> PreparedTask:
    """Single-sentence or sentence-pair classification / regression (GLUE and the like)."""
    data = load_task_data(task)
    check_labels(task, data)
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

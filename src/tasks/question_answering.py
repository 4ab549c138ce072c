"""Extractive question answering (SQuAD v1.1 / v2.0): features with a sliding window, span decoding.

A long context becomes several features (windows of ``max_length`` tokens overlapping by
``doc_stride``); the model scores every token as answer start and end, and post-processing picks
the best span over all of an example's features. For SQuAD v2.0 the null answer (start = end =
CLS) competes with that span through ``null_score_diff_threshold``.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np
from datasets import Dataset
from omegaconf import DictConfig
from transformers import default_data_collator

from src.schema import setting
from src.tasks import squad_scorer
from src.tasks.family import PreparedTask, TaskConfig, register_family
from src.tasks.sources import DataError, load_task_data, subsample

SIDE_COLUMNS = ["example_id", "offset_mapping", "cls_index"]  # for post-processing, not for the model


def encode(examples: dict, tokenizer, max_length: int, doc_stride: int) -> dict:
    """Features of a batch of examples: model inputs, gold start/end token positions, and SIDE_COLUMNS.

    The answer positions are the CLS index when the example is unanswerable or its (first) gold
    answer is not wholly inside the window. ``offset_mapping`` keeps context tokens only (None
    elsewhere), so a decoded span can never reach into the question or special tokens.
    """
    question_first = tokenizer.padding_side == "right"
    # Leading spaces in some SQuAD questions only waste the window.
    questions = [q.lstrip() for q in examples["question"]]
    contexts = examples["context"]
    enc = tokenizer(
        questions if question_first else contexts,
        contexts if question_first else questions,
        truncation="only_second" if question_first else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",  # equal lengths, so the Trainer concatenates eval logits without padding
    )
    context_seq = 1 if question_first else 0
    sample_map = enc.pop("overflow_to_sample_mapping")
    enc.update(example_id=[], cls_index=[], start_positions=[], end_positions=[])
    for i, offsets in enumerate(enc["offset_mapping"]):
        ids = enc["input_ids"][i]
        cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        seq_ids = enc.sequence_ids(i)
        ctx = [k for k, s in enumerate(seq_ids) if s == context_seq]
        example = sample_map[i]
        answers = examples["answers"][example]
        start = end = cls
        if answers["text"] and answers["answer_start"][0] >= 0:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            if offsets[ctx[0]][0] <= start_char and offsets[ctx[-1]][1] >= end_char:
                start = max(k for k in ctx if offsets[k][0] <= start_char)
                end = min(k for k in ctx if offsets[k][1] >= end_char)
        enc["offset_mapping"][i] = [
            o if s == context_seq else None for o, s in zip(offsets, seq_ids, strict=True)
        ]
        enc["example_id"].append(examples["id"][example])
        enc["cls_index"].append(cls)
        enc["start_positions"].append(start)
        enc["end_positions"].append(end)
    return enc


def featurise(examples: Dataset, tokenizer, task: DictConfig) -> Dataset:
    return examples.map(
        encode,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": task.max_length, "doc_stride": task.doc_stride},
        desc=f"features {task.name}",
    )


def postprocess(
    examples: Dataset,
    side: dict[str, list],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int,
    max_answer_length: int,
    version_2: bool,
    null_score_diff_threshold: float,
) -> tuple[dict[str, str], dict[str, float]]:
    """Answer text per example id, and the null-score difference (null minus best span score) per id.

    The best span is the highest start + end logit over the ``n_best`` starts and ends of each
    feature; the null score is the lowest CLS start + end over the features (as in BERT's
    run_squad.py). With ``version_2`` the answer is "" when the difference exceeds the threshold.
    The differences are the no-answer scores of the best-threshold metric; +inf when no valid span.
    """
    features = collections.defaultdict(list)
    for i, example_id in enumerate(side["example_id"]):
        features[example_id].append(i)
    preds, diffs = {}, {}
    for example_id, context in zip(examples["id"], examples["context"], strict=True):
        null_score, best_score, best_text = math.inf, -math.inf, ""
        for i in features[example_id]:
            start, end = start_logits[i], end_logits[i]
            offsets, cls = side["offset_mapping"][i], side["cls_index"][i]
            null_score = min(null_score, float(start[cls] + end[cls]))
            for s in np.argsort(start)[::-1][:n_best]:
                for e in np.argsort(end)[::-1][:n_best]:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(start[s] + end[e])
                    if score > best_score:
                        best_score, best_text = score, context[offsets[s][0] : offsets[e][1]]
        diffs[example_id] = null_score - best_score
        answer_is_null = version_2 and diffs[example_id] > null_score_diff_threshold
        preds[example_id] = "" if answer_is_null else best_text
    return preds, diffs


@dataclass(kw_only=True)
class QuestionAnsweringConfig(TaskConfig):
    columns: list[str]
    version_2: bool  # unanswerable questions: a null answer and best-threshold scores
    num_labels: int = setting(ge=1)  # unused by the QA head; kept so every classifier-style task has it
    metrics: list[str] = setting(choices=["exact", "f1", "best_exact", "best_f1"])
    max_length: int = setting(ge=1)
    doc_stride: int = setting(ge=0)
    n_best: int = setting(ge=1)
    max_answer_length: int = setting(ge=1)
    null_score_diff_threshold: float

    @classmethod
    def relations(cls, task: dict, path: str) -> list[str]:
        found = super().relations(task, path)
        if task["doc_stride"] >= task["max_length"]:
            found.append(
                f"{path}.doc_stride={task['doc_stride']} must be below {path}.max_length={task['max_length']} "
                "(windows overlap by doc_stride tokens); lower doc_stride"
            )
        return found


@register_family("question_answering", QuestionAnsweringConfig)
def question_answering(
    task: DictConfig, tokenizer, seed: int, backbone: DictConfig | None = None
) -> PreparedTask:
    """SQuAD-style extractive QA; scores are the official exact match and F1 (``src.tasks.squad_scorer``)."""

    if not tokenizer.is_fast:
        raise ValueError(f"task {task.name!r} needs a fast tokenizer (offset mappings) for answer spans")
    if len(task.eval_splits) != 1:
        # compute_metrics is not told which eval set it scores, and must match logits to examples.
        raise ValueError(f"task {task.name!r}: question answering takes exactly one eval split")
    data = load_task_data(task)
    alias, split = next(iter(task.eval_splits.items()))
    examples = subsample(data[split], task.get("max_eval_samples"), seed)
    golds = dict(zip(examples["id"], (a["text"] for a in examples["answers"]), strict=True))
    unanswerable = [qid for qid, answers in golds.items() if not answers]
    if unanswerable and not task.version_2:  # found now, not at the first evaluation
        raise DataError(
            f"{len(unanswerable)} eval question(s) of task {task.name!r} have no gold answer (e.g. "
            f"{unanswerable[0]!r}), which SQuAD v1.1 scoring cannot score; use task=squad_v2 or "
            "set task.version_2=true"
        )
    train = featurise(subsample(data[task.train_split], task.get("max_train_samples"), seed), tokenizer, task)
    features = featurise(examples, tokenizer, task)
    side = features.select_columns(SIDE_COLUMNS).to_dict()

    def compute_metrics(eval_pred):
        # Gold positions make the Trainer compute an eval loss and call this at all; scoring uses the
        # texts. predictions = (start_logits, end_logits) over the eval features, in order.
        start_logits, end_logits = eval_pred.predictions[:2]
        preds, diffs = postprocess(
            examples,
            side,
            start_logits,
            end_logits,
            task.n_best,
            task.max_answer_length,
            task.version_2,
            task.null_score_diff_threshold,
        )
        if not task.version_2:
            return squad_scorer.evaluate_v1(golds, preds)
        # "No answer" exactly when the difference exceeds the threshold, as in postprocess.
        return squad_scorer.evaluate(golds, preds, diffs, na_prob_thresh=task.null_score_diff_threshold)

    return PreparedTask(
        train=train.remove_columns(SIDE_COLUMNS),
        evals={alias: features.remove_columns(SIDE_COLUMNS)},
        collator=default_data_collator,
        compute_metrics=compute_metrics,
        head=task.head,
        num_labels=task.num_labels,
        primary_metric=task.primary_metric,
    )

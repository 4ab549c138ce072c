"""Task families: how a task's examples become model inputs and how predictions are scored.

A task of a known family is one YAML (``configs/task/*.yaml``); the family is named there, so the
loop never learns task names. A new family is one module here that registers its builder and its
config schema with ``src.tasks.family.register_family`` and is imported below.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from src.schema import problems
from src.tasks import classification, question_answering, summarisation  # noqa: F401  (they register)
from src.tasks.family import FAMILIES, SCHEMAS, PreparedTask

__all__ = ["FAMILIES", "PreparedTask", "optimizer_steps", "prepare_task", "task_problems"]


def task_problems(task: dict, path: str = "task") -> list[str]:
    """What is wrong with a resolved task node, checked against its family's schema."""
    family = task.get("family") if isinstance(task, dict) else None
    if family not in SCHEMAS:
        return [f"{path}.family={family!r} is not supported; use one of {sorted(SCHEMAS)}"]
    return problems(task, SCHEMAS[family], path)


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

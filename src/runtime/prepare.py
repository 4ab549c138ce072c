"""What a run needs before it becomes a run: everything that can still show its config to be wrong."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# A fitted schedule's fixed phases take a fifth of the run: the ratio the short-run defaults were
# written for (configs/method/triadapt.yaml: growth starts after ~15-20% of T). Fitted runs keep the
# identity of their config (trainer.fit_schedule), so changing this number changes what such runs
# compute without changing their ids; their records carry it ("schedule_fit").
FIT_FRACTION = 0.2


def _counts(fields: dict, names: tuple[str, ...]) -> bool:
    return all(
        isinstance(fields.get(n), int) and not isinstance(fields[n], bool) and fields[n] >= 0 for n in names
    )


def fit_schedule(fields: dict[str, Any], total: int) -> tuple[dict[str, Any], dict | None]:
    """The method's schedule, fitted to a run of ``total`` optimizer steps if it is too short for it.

    Too short is exactly what the methods reject (spec §3, §4, §5.1): T <= T_w for a growing method
    (``init_warmup``, ``incre_interval``), t_i + t_f >= T for AdaLoRA (``tinit``, ``tfinal``,
    ``deltaT``). Then every step count of the schedule is multiplied by one factor, chosen so that
    its fixed phases (T_w; t_i + t_f) take ``FIT_FRACTION`` of the run, intervals at least 1 step.
    A run long enough for its schedule is left as the spec says. Keyed by the fields a schedule
    has, not by method names; returns the fields to build the method's config from and what was
    fitted (None if nothing was).
    """
    given: dict[str, int] = {}
    if _counts(fields, ("init_warmup", "incre_interval")) and total <= fields["init_warmup"]:
        given = {k: fields[k] for k in ("init_warmup", "incre_interval")}
        factor = FIT_FRACTION * total / given["init_warmup"]
        warmup = int(FIT_FRACTION * total)  # < T: the run has steps after the warmup
        # at most T - T_w': (T_w', T] then holds a multiple of the interval, so at least one event
        interval = min(max(1, round(given["incre_interval"] * factor)), total - warmup)
        fitted = {"init_warmup": warmup, "incre_interval": interval}
    elif _counts(fields, ("tinit", "tfinal", "deltaT")) and fields["tinit"] + fields["tfinal"] >= total:
        given = {k: fields[k] for k in ("tinit", "tfinal", "deltaT")}
        factor = FIT_FRACTION * total / (given["tinit"] + given["tfinal"])
        fitted = {
            "tinit": round(given["tinit"] * factor),  # t_i' + t_f' <= T / 5 + 1 < T (T = 1: 0 + 0)
            "tfinal": round(given["tfinal"] * factor),
            "deltaT": max(1, round(given["deltaT"] * factor)),
        }
    if not given:
        return fields, None
    fit = {
        "total_step": total,
        "fraction": FIT_FRACTION,
        "factor": round(factor, 6),
        "given": given,
        "fitted": fitted,
    }
    return {**fields, **fitted}, fit


def prepare(cfg: DictConfig, checkpoint_dir: Path):
    """Everything a run needs that can still show the config to be wrong: the method, the data, T, the
    Trainer's arguments and the method's config (its schedule fitted to T if T is too short for it,
    ``trainer.fit_schedule``). Nothing is written yet."""
    # looked up when a run starts, like src/train.py's imports (tests replace the loaders)
    from transformers import set_seed

    from src.methods import get_method
    from src.runtime import distributed
    from src.runtime.backbones import load_tokenizer
    from src.runtime.trainer import show_progress, training_arguments
    from src.tasks import optimizer_steps, prepare_task

    set_seed(cfg.seed)
    method = get_method(cfg.method.name)
    distributed.adopt_submitit_tasks()
    processes = distributed.launched_processes()
    if processes > 1 and not method.supports_distributed:
        raise ValueError(f"method={method.name} does not support multi-process runs (WORLD_SIZE={processes})")
    distributed.configure_launch(processes)
    task = prepare_task(cfg.task, load_tokenizer(cfg.backbone), cfg.seed, cfg.backbone)
    tr = cfg.trainer
    batch = tr.per_device_train_batch_size * processes  # T counts steps of the global batch
    per_epoch = optimizer_steps(len(task.train), batch, tr.gradient_accumulation_steps, 1, -1)
    total = optimizer_steps(
        len(task.train), batch, tr.gradient_accumulation_steps, tr.num_train_epochs, tr.max_steps
    )
    args = training_arguments(tr, str(checkpoint_dir), total, per_epoch, cfg.seed, show_progress())
    fields, fit = OmegaConf.to_container(cfg.method, resolve=True), None
    if tr.get("fit_schedule", True):  # configs written before the option had no fitting
        fields, fit = fit_schedule(fields, total)
    if fit:
        log.warning(
            "method=%s: T=%d optimizer steps is too short for its schedule %s; fitted to %s (x%.3g: the "
            "fixed phases take %d%% of the run; trainer.fit_schedule=false rejects such a run instead)",
            method.name, total, fit["given"], fit["fitted"], fit["factor"], round(100 * FIT_FRACTION),
        )  # fmt: skip
    method_cfg = method.make_config(fields, total_step=total, warmup_steps=args.warmup_steps, seed=cfg.seed)
    return SimpleNamespace(
        method=method, task=task, total=total, args=args, method_cfg=method_cfg, schedule_fit=fit
    )

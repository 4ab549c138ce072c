"""What a run needs before it becomes a run: everything that can still show its config to be wrong."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig, OmegaConf


def prepare(cfg: DictConfig, checkpoint_dir: Path):
    """Everything a run needs that can still show the config to be wrong: the method, the data, T, the
    Trainer's arguments and the method's config. Nothing is written yet."""
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
    method_cfg = method.make_config(
        OmegaConf.to_container(cfg.method, resolve=True),
        total_step=total,
        warmup_steps=args.warmup_steps,
        seed=cfg.seed,
    )
    return SimpleNamespace(method=method, task=task, total=total, args=args, method_cfg=method_cfg)

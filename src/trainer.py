"""HF ``Trainer`` with the method's optimizer groups, a group-aware schedule, and one generic callback.

The callback is the only link between the loop and a method: it forwards every optimizer step to
``method.step`` and reports the method's budget. Nothing here knows which method is running.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from transformers import Trainer, TrainerCallback, TrainingArguments

from src.methods.base import AdapterMethod
from src.schedule import GroupLambdaLR, linear_warmup_decay
from src.tracking import RunTracker


class AdapterTrainer(Trainer):
    def __init__(self, *args, method: AdapterMethod, **kwargs):
        self.method = method
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = self.method.param_groups(self.model, self.args.learning_rate, self.args.weight_decay)
            self.optimizer = torch.optim.AdamW(
                groups,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            warmup = self.args.get_warmup_steps(num_training_steps)
            self.lr_scheduler = GroupLambdaLR(
                optimizer or self.optimizer, linear_warmup_decay(warmup, num_training_steps)
            )
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Methods add their regulariser to outputs.loss inside forward; without labels it would be dropped.
        # The label names are the model's own (QA heads take start_positions/end_positions).
        missing = [name for name in self.label_names or ["labels"] if name not in inputs]
        if missing:
            raise ValueError(
                f"training batch has no {missing}; the method's regulariser needs the model to compute the loss"
            )
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )


class MethodCallback(TrainerCallback):
    """Forwards optimizer steps to the method and streams logs, evaluations and budgets to the tracker."""

    def __init__(self, method: AdapterMethod, tracker: RunTracker):
        self.method = method
        self.tracker = tracker

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.tracker.log_budget(0, self.method.budget(model))

    def on_optimizer_step(
        self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs
    ):
        # Runs after optimizer.step() and before lr_scheduler.step()/zero_grad(): gradients are still
        # there, and global_step has not been incremented yet, so this is step t = global_step + 1.
        step = state.global_step + 1
        event = self.method.step(model, optimizer, lr_scheduler, global_step=step)
        if event is not None:
            self.tracker.log_budget(step, self.method.budget(model), event)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs and not any(k.startswith("eval_") for k in logs):
            self.tracker.log_train(state.global_step, {**logs, **self.method.extra_logs(model)})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.tracker.log_eval(state.global_step, state.epoch, metrics or {})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.tracker.log_budget(state.global_step, self.method.budget(model))


def training_arguments(
    tr: DictConfig, output_dir: str, total: int, per_epoch: int, seed: int
) -> TrainingArguments:
    epochs = total / per_epoch
    eval_steps = tr.eval_steps or (per_epoch if epochs >= 20 else max(1, per_epoch // 4))
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=tr.per_device_train_batch_size,
        per_device_eval_batch_size=tr.per_device_eval_batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        learning_rate=tr.learning_rate,
        weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm,
        max_steps=total,
        warmup_steps=int(tr.warmup if tr.warmup >= 1 else round(tr.warmup * total)),
        eval_strategy="steps",
        eval_steps=eval_steps,
        logging_steps=tr.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=tr.bf16,
        fp16=tr.fp16,
        dataloader_num_workers=tr.dataloader_num_workers,
        train_sampling_strategy=tr.get("train_sampling_strategy", "random"),
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
    )

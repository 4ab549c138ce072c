"""HF ``Trainer`` with the method's optimizer groups, a group-aware schedule, and one generic callback.

The callback is the only link between the loop and a method: it forwards every optimizer step to
``method.step`` and reports the method's budget. Nothing here knows which method is running.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from src.lr_schedule import GroupLambdaLR, linear_warmup_decay
from src.methods.base import AdapterMethod
from src.runtime import checkpoints, distributed, preemption
from src.runtime.tracking import RunTracker, duration
from src.tasks.summarisation import prompts_from_labels

log = logging.getLogger("src.train")
OPTIMIZERS = {"adamw_torch": {}, "adamw_torch_fused": {"fused": True}}


def make_adamw(groups: list[dict], args: TrainingArguments) -> torch.optim.AdamW:
    """AdamW over the method's groups; ``args.optim`` picks the implementation of the same update.

    The fused kernel updates every tensor of a group in one call. Growing methods own many small
    tensors (TriAdaptLoRA: four per block per module), and the per-tensor loop of the default CPU
    implementation costs them a few percent of a step that LoRA does not pay.
    """
    betas = (args.adam_beta1, args.adam_beta2)
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon, **OPTIMIZERS[args.optim]
    )


class AdapterTrainer(Trainer):
    def __init__(self, *args, method: AdapterMethod, generation: dict | None = None, **kwargs):
        self.method = method
        self.generation = generation  # model.generate kwargs: evaluation predicts generated tokens
        super().__init__(*args, **kwargs)
        if self.args.disable_tqdm:  # no terminal: MethodCallback writes one readable line per log step
            self.remove_callback(PrinterCallback)

    # -- checkpoints: the method saves and restores the adapter (grown shapes included) ----------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if self.args.should_save:
            self.method.save_checkpoint(self.model, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # Runs before the optimizer exists: it is then built over the restored (grown) parameters
        # in the saved group order, so the saved optimizer and scheduler states load one to one.
        self.method.load_checkpoint(self.model, resume_from_checkpoint)
        self._resume_groups = checkpoints.read_groups(resume_from_checkpoint, self.model)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            checkpoints.write_groups(output_dir, self.optimizer, self.model)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            if getattr(self, "_resume_groups", None):
                hyper = {"lr": self.args.learning_rate, "weight_decay": self.args.weight_decay}
                groups = [{**hyper, **g} for g in self._resume_groups]  # the saved state overwrites these
            else:
                groups = self.method.param_groups(self.model, self.args.learning_rate, self.args.weight_decay)
            self.optimizer = make_adamw(groups, self.args)
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

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """With ``generation``: the teacher-forced loss, and generated token ids as the predictions.

        Decoder-only models continue their prompt (the tokens before the first label, left-padded);
        only the continuation is returned. The Trainer pads predictions across batches with -100.
        """
        if self.generation is None or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        loss, _, _ = super().prediction_step(model, inputs, prediction_loss_only=True)
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        unwrapped = self.accelerator.unwrap_model(model)
        decoder_only = not unwrapped.config.is_encoder_decoder
        if decoder_only:
            ids, mask = prompts_from_labels(ids, mask, labels, self.generation["pad_token_id"])
        with torch.no_grad():
            generated = unwrapped.generate(input_ids=ids, attention_mask=mask, **self.generation)
        if decoder_only:
            generated = generated[:, ids.shape[1] :]
        return loss, generated, labels


class MethodCallback(TrainerCallback):
    """Forwards optimizer steps to the method and streams logs, evaluations and budgets to the tracker."""

    def __init__(self, method: AdapterMethod, tracker: RunTracker):
        self.method = method
        self.tracker = tracker

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._t0, self._step0 = time.time(), state.global_step  # for the ETA of this attempt
        # global_step is the checkpoint's step when a run resumes (0 otherwise)
        self.tracker.log_budget(state.global_step, self.method.budget(model))

    def on_save(self, args, state, control, **kwargs):
        # The checkpoint is written; it gets the record as of its step (a resumed run continues that
        # record) and only then the COMPLETE mark, so a kill in between leaves it unused.
        if args.should_save:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.tracker.flush()
            self.tracker.snapshot(folder / checkpoints.RECORD_FILE, state.global_step)
            checkpoints.mark_complete(folder)

    # HF's order in one optimizer step (spec §1.4): clip -> on_pre_optimizer_step -> optimizer.step()
    # -> on_optimizer_step -> lr_scheduler.step() -> zero_grad() -> global_step += 1. In both
    # callbacks gradients are still there and this is step t = global_step + 1; the method says which.
    def on_pre_optimizer_step(
        self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs
    ):
        if self.method.allocator_timing(model) == "before_step":
            self._method_step(args, state, model, optimizer, lr_scheduler)

    def on_optimizer_step(
        self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs
    ):
        if self.method.allocator_timing(model) == "after_step":
            self._method_step(args, state, model, optimizer, lr_scheduler)

    def _method_step(self, args, state, model, optimizer, lr_scheduler) -> None:
        step = state.global_step + 1
        distributed.before_method_step(model, args.world_size)  # multi-process: scores read the same values
        event = self.method.step(model, optimizer, lr_scheduler, global_step=step)
        if event is not None:
            budget = self.method.budget(model)
            distributed.after_event(model, budget["rank_pattern"])  # new tensors join the gradient average
            self.tracker.log_budget(step, budget, event)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs and not any(k.startswith("eval_") for k in logs):
            self.tracker.log_train(state.global_step, {**logs, **self.method.extra_logs(model)})
            if args.disable_tqdm and "loss" in logs and state.is_world_process_zero:
                log.info(self._log_line(state, logs))
            # a diverged run only wastes its remaining steps: stop it and record why
            loss = logs.get("loss", logs.get("train_loss"))
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss} at step {state.global_step}; lower trainer.learning_rate "
                    f"(now {args.learning_rate:g}) or check the data"
                )

    def _log_line(self, state, logs: dict) -> str:
        """``step 40/120 (33%)  loss 0.6931  lr 4.17e-04  rank 96/288  elapsed 1m02s  eta 2m04s``: what a
        log file on a cluster shows at each logging step, in place of the Trainer's raw dict."""
        step, total = state.global_step, state.max_steps
        elapsed = time.time() - self._t0
        done = step - self._step0
        eta = elapsed / done * (total - step) if done > 0 else None
        budget = self.tracker.record["budget"]["final"] or {}
        rank = budget.get("total_rank")
        target = budget.get("target_total_rank")
        parts = [
            f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)",
            f"loss {logs['loss']:.4f}",
            f"lr {logs.get('learning_rate', float('nan')):.2e}",
            *([f"rank {rank}" + (f"/{target}" if target else "")] if rank is not None else []),
            f"elapsed {duration(elapsed)}",
            f"eta {duration(eta)}",
        ]
        return "  ".join(parts)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.tracker.log_eval(state.global_step, state.epoch, metrics or {})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.tracker.log_budget(state.global_step, self.method.budget(model))


class StopCallback(TrainerCallback):
    """Turns a stop request into "save now, then stop" at the end of an optimizer step."""

    def __init__(self, request: preemption.StopRequest, tracker: RunTracker):
        self.request = request
        self.tracker = tracker

    def on_step_end(self, args, state, control, **kwargs):
        # Every process must stop at the same step, or the others wait forever in a collective; with
        # several, agreeing costs a collective (and a device sync), so they agree at logging steps only.
        if distributed.world_size() > 1 and state.global_step % args.logging_steps:
            return
        if distributed.any_process(self.request.signum is not None):
            if self.request.signum is None:  # another process got the signal
                self.request.signum = signal.SIGTERM
            name = signal.Signals(self.request.signum).name
            stop = {"step": state.global_step, "signal": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self.tracker.record.setdefault("stops", []).append(stop)  # in the checkpoint's record too
            control.should_save = args.save_strategy != "no"
            control.should_training_stop = True


def show_progress() -> bool:
    """The Trainer's tqdm bars (training and evaluation) only for someone watching a terminal: off when
    stdout or stderr (where tqdm draws) is a file or a pipe, in CI, and in multiruns, whose jobs share
    one console."""
    if os.environ.get("CI") or not (sys.stdout.isatty() and sys.stderr.isatty()):
        return False
    return not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN)


# trainer.save_steps=null: this many checkpoints per run (every ceil(T / 5) steps), whatever the
# evaluation cadence. They are for a run killed without warning, which then redoes at most a fifth of
# itself (a stop signal writes one at the next step anyway); and the best evaluation is read off the
# record, not reloaded from a checkpoint (no load_best_model_at_end), so they need not fall on
# evaluations.
DEFAULT_CHECKPOINTS = 5


def default_eval_steps(total: int, per_epoch: int, max_evals: int | None) -> int:
    """trainer.eval_steps=null: spec §6's cadence (once per epoch when the run has >= 20 epochs, four
    times per epoch otherwise), spaced out to at most ``max_evals`` evaluations when that is set: a
    30-step run over 256 examples evaluated 15 times, more than half its wall time. The final model
    is always evaluated (src/train.py), so a run has ceil(T / eval_steps) evaluations."""
    steps = per_epoch if total / per_epoch >= 20 else max(1, per_epoch // 4)
    if max_evals and math.ceil(total / steps) > max_evals:
        steps = math.ceil(total / max_evals)  # ceil(T / ceil(T / n)) <= n
    return steps


def training_arguments(
    tr: DictConfig, output_dir: str, total: int, per_epoch: int, seed: int, progress: bool = False
) -> TrainingArguments:
    optim = tr.get("optim", "adamw_torch")  # configs written before the option had the loop
    if optim not in OPTIMIZERS:
        raise ValueError(f"trainer.optim={optim!r} is not supported; use one of {sorted(OPTIMIZERS)}")
    eval_steps = tr.eval_steps or default_eval_steps(total, per_epoch, tr.get("max_evals"))
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=tr.per_device_train_batch_size,
        per_device_eval_batch_size=tr.per_device_eval_batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        learning_rate=tr.learning_rate,
        weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm,
        optim=optim,
        max_steps=total,
        warmup_steps=int(tr.warmup if tr.warmup >= 1 else round(tr.warmup * total)),
        eval_strategy="steps",
        eval_steps=eval_steps,
        logging_steps=tr.logging_steps,
        logging_nan_inf_filter=False,  # a non-finite loss must be seen, not averaged away
        save_strategy="steps" if tr.get("checkpoint", True) else "no",
        save_steps=tr.get("save_steps") or math.ceil(total / DEFAULT_CHECKPOINTS),
        save_total_limit=2,  # the newest checkpoint may be cut short by a kill; the one before is complete
        report_to="none",
        seed=seed,
        bf16=tr.bf16,
        fp16=tr.fp16,
        # bf16 autocast on a CPU: transformers refuses bf16 without a GPU unless told it is on a CPU
        use_cpu=bool(tr.bf16) and not torch.cuda.is_available(),
        dataloader_num_workers=tr.dataloader_num_workers,
        train_sampling_strategy=tr.get("train_sampling_strategy", "random"),
        remove_unused_columns=False,
        # True multiplies the loss by the process count whenever forward takes **kwargs, even when the
        # head's loss is a plain batch mean (classification, QA): losses and gradients W times too large,
        # the method's regulariser included. Per-process means averaged by DDP are the global mean.
        average_tokens_across_devices=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not progress,
    )

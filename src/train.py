"""Fine-tune a backbone with a PEFT method on a task: ``python -m src.train method=triadapt task=mrpc``.

compose → seed → load backbone and task → apply the method → HF Trainer → run record. Every
component comes from its config group; this file names no method, task or backbone.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src.hub import HubUnavailableError, ensure_offline_mode_if_unreachable
from src.records import default_run_id, find_ok_record, load_record
from src.runtime.preemption import Stopped, StopRequest
from src.runtime.sweep_callbacks import write_job_status

log = logging.getLogger("src.train")


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "the configuration or the data is wrong": one line, no traceback."""
    from src.tasks.sources import DataError

    return ValueError, DataError, HubUnavailableError, FileNotFoundError, FloatingPointError


def train(cfg: DictConfig) -> dict:
    """Run one configuration end to end and return its run record (also written to disk).

    A config that does not check (a bad value, missing data, a schedule that cannot run) is not a
    run: it fails in ``check_config`` or ``prepare`` with one line, before the record, the W&B run
    or the checkpoint folder exists.
    """
    # torch, transformers, peft and datasets load here rather than at import: Hydra rejects a wrong
    # option (method=dora) before main() runs, and then answers in a second instead of ten.
    from src.runtime.quiet import silence_known_noise

    silence_known_noise(cfg.backbone.get("heads"))  # first: the imports below already print noise
    import datasets

    from src.runtime import distributed
    from src.runtime.backbones import load_model
    from src.runtime.checkpoints import checkpoint_step, prepare_run_dir
    from src.runtime.config_schema import check_config
    from src.runtime.prepare import prepare
    from src.runtime.tracking import RunTracker
    from src.runtime.trainer import AdapterTrainer, MethodCallback, StopCallback

    config = check_config(cfg)  # a bad value is one line here, before anything is loaded or written
    ensure_offline_mode_if_unreachable()
    datasets.disable_progress_bars()
    run_id = cfg.run_id or default_run_id(config)
    record_path = Path(cfg.paths.runs_dir) / f"{run_id}.json"
    done = find_ok_record(cfg.paths.runs_dir, run_id, config) if cfg.skip_existing else None
    if done:
        log.info(
            "run %s already has an ok record (%s); skipping (skip_existing=false reruns it)", run_id, done
        )
        return load_record(done)
    started = (time.time(), time.process_time())  # the run's clocks include the data preparation
    stop = StopRequest().install()
    tracker = None
    checkpoint_dir = Path(cfg.paths.checkpoints_dir) / run_id
    output_dir = str(Path(cfg.paths.output_dir))
    try:
        run = prepare(cfg, checkpoint_dir)  # every check that needs the data, before anything is written
        task, method, total = run.task, run.method, run.total
        resume_from = prepare_run_dir(
            checkpoint_dir, config, cfg.trainer.resume, distributed.is_main_process()
        )
        resume_step = checkpoint_step(resume_from) if resume_from else 0
        tracker = RunTracker(run_id, config, record_path, cfg.logger, output_dir, resume_from, started)
        tracker.set_primary_metric(task.primary_metric)
        tracker.record["method_config"] = dataclasses.asdict(run.method_cfg)  # with T and warmup filled in
        # null: the schedule as configured; else the run was too short for it (src/runtime/prepare.py)
        tracker.record["schedule_fit"] = run.schedule_fit
        overrides = config["backbone"].get("config_overrides") or {}
        model = method.apply(
            load_model(cfg.backbone, task.head, task.num_labels, cfg.seed, **overrides), run.method_cfg
        )
        trainer = AdapterTrainer(
            model=model,
            args=run.args,
            train_dataset=task.train,
            eval_dataset=task.evals if len(task.evals) > 1 else next(iter(task.evals.values())),
            data_collator=task.collator,
            compute_metrics=task.compute_metrics,
            callbacks=[MethodCallback(method, tracker), StopCallback(stop, tracker)],
            method=method,
            generation=task.generation,
        )
        if resume_from:
            log.info("run %s resumes from %s (step %d)", run_id, resume_from, resume_step)
        stop.check(
            resume_step, total, resume_from
        )  # told to stop while loading: the newest checkpoint stands
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        step = trainer.state.global_step
        if step != total:  # a stop request saved the checkpoint of this step; anything else is a bug
            stop.check(step, total, checkpoint_dir / f"checkpoint-{step}")
            raise RuntimeError(f"ran {step} optimizer steps, expected T={total}")
        if not tracker.record["evals"] or tracker.record["evals"][-1]["step"] != total:
            trainer.evaluate()  # the final model is always evaluated
        consistency = distributed.check_consistent(model, method.budget(model)["rank_pattern"])
        if consistency:  # multi-process: every process ended with the same adapter
            tracker.record["distributed"] = consistency
        if cfg.save_adapter and distributed.is_main_process():
            method.save(model, str(Path(output_dir) / "adapter"))
        if not cfg.trainer.keep_checkpoints and distributed.is_main_process():
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        record = tracker.finish(
            "ok",
            total_steps=total,
            train_examples_per_s=result.metrics.get("train_samples_per_second"),
            output_dir=output_dir,
        )
        log.info(tracker.summary())
        return record
    except (Exception, KeyboardInterrupt) as err:
        if tracker is not None:  # none yet: a config that did not check is not a run
            tracker.finish_after(err)
        if isinstance(err, Stopped):
            stop.requeue()  # in a submitit job: requeue it (the next attempt resumes) and exit
        raise
    finally:
        stop.restore()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        record = train(cfg)
    except Stopped as stopped:  # a signal: the sweep stops too; the same command continues both
        write_job_status(cfg, {"status": stopped.status}, stopped)
        print(
            f"{stopped}. Run the same command again to continue (trainer.resume=false starts over).",
            file=sys.stderr,
        )
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C
        write_job_status(cfg, {"status": "interrupted"}, None)
        sys.exit(
            "interrupted before a checkpoint was written; the same command continues from the newest one"
        )
    except Exception as err:
        write_job_status(cfg, None, err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # recorded as failed; the sweep goes on
            if isinstance(err, user_errors()):
                log.error("run failed: %s", err)
            else:
                log.exception("run failed; recorded as failed, continuing the sweep")
            return None
        if isinstance(err, user_errors()):
            sys.exit(f"error: {err}")
        raise
    write_job_status(cfg, record, None)
    best = record["best"] or {}
    return best.get(record["primary_metric"])


if __name__ == "__main__":
    main()

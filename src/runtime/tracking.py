"""One place that receives every metric and budget of a run and mirrors it to the record and W&B."""

from __future__ import annotations

import io
import logging
import math
import netrc
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from src.records import BUDGET_SCALARS, WANDB_RECORD_FILE, atomic_write_json, load_record, new_record
from src.runtime.checkpoints import RECORD_FILE
from src.runtime.distributed import is_main_process
from src.runtime.preemption import Stopped

log = logging.getLogger(__name__)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def _metric_at(record: dict, entry: dict | None) -> str:
    metric, total = record.get("primary_metric"), record.get("total_steps")
    if not entry or not isinstance(entry.get(metric), (int, float)):
        return "none (no evaluation)"
    return f"{metric} {entry[metric]:.4f} at step {entry.get('step')}" + (f" of {total}" if total else "")


def summary(record: dict, path: str | Path) -> str:
    """The few aligned lines a run ends with: id and status, best and final primary metric with their
    steps, the budget reached, wall time, and where the record is."""
    budget = (record.get("budget") or {}).get("final") or {}
    if budget:
        target = budget.get("target_total_rank")
        reached = f"total rank {budget.get('total_rank')}" + (f" / R* {target}" if target else " (fixed)")
        reached += (
            f", effective params {_count(budget.get('effective_adapter'))}"
            f" (trainable {_count(budget.get('trainable_total'))})"
        )
    else:
        reached = "none (the adapter was never applied)"
    status = str(record.get("status")) + (f": {record['error']}" if record.get("error") else "")
    cpu = f" (CPU {duration(record['cpu_time_s'])})" if record.get("cpu_time_s") else ""
    rows = [
        ("run", f"{record.get('run_id')}  {status}"),
        ("best", _metric_at(record, record.get("best"))),
        ("final", _metric_at(record, record.get("final"))),
        ("budget", reached),
        ("wall time", duration(record.get("wall_time_s")) + cpu),
        ("record", str(path)),
    ]
    return "run summary\n" + "\n".join(f"  {label:<10} {text}" for label, text in rows)


def _is_ok(path: Path) -> bool:
    try:
        return load_record(path).get("status") == "ok"
    except (OSError, ValueError):
        return False


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class RunTracker:
    def __init__(
        self,
        run_id: str,
        config: dict,
        record_path: Path,
        logger_cfg: DictConfig,
        output_dir: str,
        resume_from: Path | None = None,
        started: tuple[float, float] | None = None,
    ):
        self.path = self._final = Path(record_path)
        self.record = new_record(run_id, config)
        # multi-process runs: every process tracks (same values), only the main one writes
        self.main = is_main_process()
        if self.main and _is_ok(self.path):  # a new attempt never downgrades a finished run's record
            self.path = Path(output_dir) / "run_record.json"
            log.warning(
                "run %s already has an ok record (%s); it is replaced only if this attempt ends ok "
                "(until then this attempt's record is %s)",
                run_id,
                self._final,
                self.path,
            )
        self.wandb = None
        self._wandb_where = None  # the summary's W&B line: the run's URL, or how to upload it
        self._last_pattern = None
        # wall and CPU seconds that earlier attempts spent up to the checkpoint this run resumes from
        self._before = {"wall_time_s": 0.0, "cpu_time_s": 0.0}
        if resume_from is not None:  # a checkpoint folder holding the record as of its step
            self._continue(load_record(Path(resume_from) / RECORD_FILE))
        # wall and CPU clocks of this attempt: from ``started`` when the caller began before the record
        self._t0, self._cpu0 = started or (time.time(), time.process_time())
        if logger_cfg.get("backend") == "wandb" and self.main:
            self.wandb = self._init_wandb(run_id, config, logger_cfg, output_dir)
            # all that W&B's own lines (now in the log file) tell the user to do
            offline = f"offline; upload with `wandb sync {self.wandb.sync_dir}`"
            self._wandb_where = offline if self.wandb.offline else str(self.wandb.url)
        self.flush()

    @staticmethod
    def _init_wandb(run_id, config, cfg, output_dir):
        import wandb

        from src.runtime.quiet import wandb_to_log_file

        wandb_to_log_file(wandb)  # its header and end-of-run summary: the log file, not the console
        mode = os.environ.get("WANDB_MODE") or cfg.mode
        if mode == "online" and not _wandb_credentials():
            log.warning(
                "W&B: no credentials (wandb login / WANDB_API_KEY); logging offline to %s", output_dir
            )
            mode = "offline"
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=cfg.project,
            entity=cfg.get("entity"),
            name=run_id,
            id=run_id,
            resume="allow",
            mode=mode,
            dir=output_dir,
            config=config,
            tags=list(cfg.get("tags") or []),
            reinit="finish_previous",
        )

    def _continue(self, old: dict) -> None:
        """Continue the record a checkpoint holds: what was logged up to its step is kept, and this
        attempt's environment (git SHA, versions, host) is the one recorded."""
        rec = self.record
        for key in (
            "primary_metric",
            "evals",
            "best",
            "final",
            "train_log",
            "budget",
            "rank_patterns",
            "events",
        ):
            rec[key] = old[key]
        if old.get("stops"):  # the signals earlier attempts stopped on, each with its step
            rec["stops"] = old["stops"]
        patterns = rec["rank_patterns"]["history"]
        if patterns:
            modules = rec["rank_patterns"]["modules"]
            self._last_pattern = dict(zip(modules, patterns[-1]["ranks"], strict=True))
        rec["started_at"] = old["started_at"]
        self._before = {k: old.get(k) or 0.0 for k in self._before}
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        rec["resumed"] = [*(old.get("resumed") or []), {"from_step": old["checkpoint_step"], "at": now}]

    def snapshot(self, path: Path, step: int) -> None:
        """The record as of a checkpoint at ``step`` (what a resumed run continues)."""
        atomic_write_json(path, {**self.record, "checkpoint_step": step, **self._elapsed()})

    def _elapsed(self) -> dict:
        """Wall and CPU seconds of the run: earlier attempts up to their checkpoint, plus this one. The
        work an attempt did after its last checkpoint is redone, so it is not counted."""
        return {
            "wall_time_s": round(self._before["wall_time_s"] + time.time() - self._t0, 2),
            "cpu_time_s": round(self._before["cpu_time_s"] + time.process_time() - self._cpu0, 2),
        }

    def flush(self) -> None:
        if self.main:
            atomic_write_json(self.path, self.record)

    def _wb(self, data: dict, step: int) -> None:
        if self.wandb is not None:
            self.wandb.log(data, step=step)

    # -- metrics -------------------------------------------------------------------------------
    def set_primary_metric(self, name: str) -> None:
        self.record["primary_metric"] = name

    def log_train(self, step: int, logs: dict) -> None:
        entry = {"step": step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.record["train_log"].append(entry)
        self._wb({f"train/{k}": v for k, v in entry.items() if k != "step"}, step)

    def log_eval(self, step: int, epoch: float | None, metrics: dict) -> None:
        values = {k.removeprefix("eval_"): v for k, v in metrics.items() if isinstance(v, (int, float))}
        entry = {"step": step, "epoch": epoch, **values}
        self.record["evals"].append(entry)
        self._update_best(entry)
        self._wb({f"eval/{k}": v for k, v in values.items()}, step)
        self.flush()

    def _update_best(self, entry: dict) -> None:
        self.record["final"] = entry
        primary, best = self.record["primary_metric"], self.record["best"]
        score = entry.get(primary)
        if score is not None and not math.isnan(score) and (best is None or score > best[primary]):
            self.record["best"] = entry

    # -- budget --------------------------------------------------------------------------------
    def log_budget(self, step: int, budget: dict, event: dict | None = None) -> None:
        """Record the budget at start, at every change of the rank pattern, and at the end."""
        if event is not None:
            self.record["events"].append(event)
        pattern = budget["rank_pattern"]
        scalars = {k: v for k, v in budget.items() if k != "rank_pattern"}
        if self.record["budget"]["initial"] is None:
            self.record["budget"]["initial"] = scalars
            self.record["rank_patterns"]["modules"] = list(pattern)
        self.record["budget"]["final"] = scalars
        if pattern == self._last_pattern:
            return
        self._last_pattern = dict(pattern)
        self.record["budget"]["history"].append({"step": step, **scalars})
        self.record["rank_patterns"]["history"].append({"step": step, "ranks": list(pattern.values())})
        self._wb(
            {
                **{k: budget[v] for k, v in BUDGET_SCALARS.items()},
                **{f"rank/{m}": r for m, r in pattern.items()},
            },
            step,
        )

    # -- end -----------------------------------------------------------------------------------
    def finish(self, status: str, error: str | None = None, **fields) -> dict:
        if status == "ok":
            self.path = self._final
        self.record.update(fields)
        self.record["status"] = status
        self.record["error"] = error
        self.record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.record.update(self._elapsed())
        self.flush()
        if self.wandb is not None:
            import wandb

            pattern = self._last_pattern or {}
            self.wandb.log(
                {"budget/rank_pattern": wandb.Table(columns=["module", "rank"], data=list(pattern.items()))}
            )
            self._log_rank_heatmap(wandb)
            # the whole record as a run file: scripts/wandb_import.py turns a W&B project back into records
            atomic_write_json(Path(self.wandb.dir) / WANDB_RECORD_FILE, self.record)
            self.wandb.summary.update(
                {"status": status, "best": self.record["best"], "final": self.record["final"]}
            )
            if status in ("preempted", "interrupted"):
                self.wandb.mark_preempting()  # the same run id continues when the run resumes
            self.wandb.finish(exit_code=0 if status == "ok" else 1)
            # finish() only informs W&B's service process that the run is over: the service writes the
            # run's .wandb file through a 32 KiB buffer that it flushes when it closes the run's stream,
            # after finish() has returned, so the offline file could still be its 7-byte header here.
            # teardown() waits for the service to exit, so the file is complete once finish returns
            # (an import or `wandb sync` right after the run reads every record); the next wandb.init
            # starts a new service.
            wandb.teardown()
        return self.record

    def finish_after(self, err: BaseException) -> None:
        """The record of a run that ended on ``err``: stopped by a signal, interrupted, or failed."""
        if isinstance(err, Stopped):
            self.finish(err.status, stopped_at_step=err.step)
        elif isinstance(err, KeyboardInterrupt):  # a second Ctrl-C, before the checkpoint was written
            self.finish("interrupted", error="KeyboardInterrupt: stopped before a checkpoint was written")
        else:
            self.finish("failed", error=f"{type(err).__name__}: {err}")
        log.info(self.summary())

    def summary(self) -> str:
        text = summary(self.record, self.path)
        return text + f"\n  {'W&B':<10} {self._wandb_where}" if self._wandb_where else text

    def _log_rank_heatmap(self, wandb) -> None:
        """The final rank allocation as an image (src/reporting/figures.py); a plotting error never fails a run."""
        try:
            import PIL.Image

            from src.reporting.figures import figure_png, rank_heatmap_figure

            fig = rank_heatmap_figure(self.record)
            if fig is not None:
                image = PIL.Image.open(io.BytesIO(figure_png(fig)))
                self.wandb.log({"budget/rank_heatmap": wandb.Image(image)})
        except Exception as err:  # noqa: BLE001
            log.warning("W&B: rank heatmap not logged (%s: %s)", type(err).__name__, err)

"""Hydra callbacks: after a multirun, one summary of which jobs failed and why.

Every job of ``python -m src.train -m ...`` writes ``status.json`` into its output folder
(``src/train.py``). The summary reads those files rather than the launcher's return values, so it
is the same whether the jobs ran in this process (basic launcher) or on SLURM nodes (submitit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.records import atomic_write_json, default_run_id, load_record

JOB_STATUS_FILE = "status.json"
SUMMARY_FILE = "summary.json"


def write_job_status(cfg: DictConfig, record: dict | None, err: Exception | None) -> None:
    """``status.json`` in the Hydra job's folder, which ``FailureSummary`` reads (called by src/train.py).

    Written even when train() failed before its run record existed (e.g. a config that cannot resolve).
    """
    try:  # the name train() gives the run
        run_id = cfg.run_id or default_run_id(OmegaConf.to_container(cfg, resolve=True))
        record_path = Path(cfg.paths.runs_dir) / f"{run_id}.json"
    except Exception:  # noqa: BLE001  (the status file must not hide the run's own error)
        run_id = record_path = None
    hydra_cfg = HydraConfig.get()
    status = {
        "run_id": run_id,
        "status": record["status"] if record else "failed",
        "error": f"{type(err).__name__}: {err}" if err else None,
        "record": str(record_path) if record_path and record_path.is_file() else None,
        "overrides": list(hydra_cfg.overrides.task),
    }
    atomic_write_json(Path(hydra_cfg.runtime.output_dir) / JOB_STATUS_FILE, status)


def _job_entry(job_dir: Path, sweep_dir: Path) -> dict:
    status_file = job_dir / JOB_STATUS_FILE
    if status_file.is_file():
        entry = load_record(status_file)
    else:  # Hydra started the job (it wrote .hydra/) but the job never got to report: killed or timed out
        overrides = job_dir / ".hydra" / "overrides.yaml"
        entry = {
            "run_id": None,
            "status": "failed",
            "error": f"no {JOB_STATUS_FILE}: the job was killed, timed out or is still running",
            "record": None,
            "overrides": OmegaConf.to_container(OmegaConf.load(overrides)) if overrides.is_file() else [],
        }
    return {"job": str(job_dir.relative_to(sweep_dir)), **entry}


def summarise_sweep(sweep_dir: str | Path) -> dict:
    """Counts and per-job statuses of the multirun in ``sweep_dir``, failures listed on their own."""
    sweep_dir = Path(sweep_dir)
    job_dirs = {p.parent for p in sweep_dir.rglob(JOB_STATUS_FILE)}
    job_dirs |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    jobs = [_job_entry(d, sweep_dir) for d in sorted(job_dirs)]
    failures = [j for j in jobs if j["status"] != "ok"]
    return {
        "sweep_dir": str(sweep_dir),
        "ok": len(jobs) - len(failures),
        "failed": len(failures),
        "failures": failures,
        "jobs": jobs,
    }


def format_summary(summary: dict) -> str:
    """One line per failure, naming the job by the overrides that tell it apart from the others."""
    shared = set.intersection(*(set(j["overrides"]) for j in summary["jobs"])) if summary["jobs"] else set()
    lines = [f"sweep {summary['sweep_dir']}: {summary['ok']} ok, {summary['failed']} failed"]
    for job in summary["failures"]:
        own = " ".join(o for o in job["overrides"] if o not in shared) or f"job {job['job']}"
        error = (job["error"] or "no error message").splitlines()[0]
        lines.append(f"  {job['status']}: {own}: {error}")  # failed, or preempted / interrupted
    return "\n".join(lines)


class FailureSummary(Callback):
    """Prints the sweep's summary and writes it to ``<sweep dir>/summary.json``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        summary = summarise_sweep(sweep_dir)
        atomic_write_json(sweep_dir / SUMMARY_FILE, summary)
        # print, not log: after the basic launcher's last job, the root logger still writes to that
        # job's log file
        print(format_summary(summary), flush=True)

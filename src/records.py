"""The run record: one self-describing JSON per run under ``results/runs/`` that the repo owns.

Tables and plots are built from these files alone, so a record carries everything needed to trust
a number: the resolved config, git SHA and dirty flag, package versions, status, metrics at every
evaluation, the best and final metrics, the parameter budget over time, wall time and throughput.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

# How a record is mirrored in W&B (src/runtime/tracking.py) and read back (src/reporting/wandb_import.py).
WANDB_RECORD_FILE = "run_record.json"  # the run record, saved among the W&B run's files
BUDGET_SCALARS = {
    "budget/allocated_params": "trainable_total",
    "budget/effective_params": "effective_adapter",
    "budget/total_rank": "total_rank",
    "budget/adapter_params": "trainable_adapter",
    "budget/spare_params": "trainable_spare",
}

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "datasets",
    "accelerate",
    "hydra-core",
    "wandb",
    "numpy",
    "scipy",
)
# Keys that do not change what a run computes, so they stay out of its identity.
NON_IDENTITY_KEYS = ("paths", "logger", "run_id", "hydra", "skip_existing", "save_adapter")
# ... and such keys inside groups: checkpointing and resuming change how a run is carried out, not
# what it computes (a resumed run has the identity of the run it continues); `optim` picks an
# implementation of the same AdamW update, which changes results at rounding level, as threads do.
# `fit_schedule` only decides whether a run too short for its method's schedule fails or runs with the
# schedule fitted to it (src/runtime/prepare.py): an ok record under either value computed the same.
NON_IDENTITY_GROUP_KEYS = {
    "trainer": ("checkpoint", "save_steps", "resume", "keep_checkpoints", "optim", "fit_schedule")
}
# Options added after records existed, at the value that computes what those records computed:
# a key at this value stays out of the identity, so the old records keep their ids (any other value,
# e.g. IncreLoRA's new defaults activated_group=new and spares_after_growth=keep, is in it).
IDENTITY_NEUTRAL = {
    "method": {
        "allocator_timing": "after_step",
        "score": "sensitivity",  # IncreLoRA's (TriAdaptLoRA's score values differ)
        "activated_group": "birth",
        "spares_after_growth": "freeze",
        "seed": None,  # the growing methods' copy of the run seed, filled at run time
    },
    # null: spec §6's evaluation cadence, uncapped, as every record before the cap computed
    "trainer": {"max_evals": None},
}


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temp file in the same folder, then rename over ``path``: a kill never
    leaves half a file (records, checkpoints' metadata, tables, figures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))


def config_hash(config: dict) -> str:
    identity = {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}
    for group, keys in NON_IDENTITY_GROUP_KEYS.items():
        if isinstance(identity.get(group), dict):
            identity[group] = {k: v for k, v in identity[group].items() if k not in keys}
    for group, neutral in IDENTITY_NEUTRAL.items():
        if isinstance(identity.get(group), dict):
            identity[group] = {k: v for k, v in identity[group].items() if neutral.get(k, object()) != v}
    trainer = identity.get("trainer")
    if isinstance(trainer, dict) and trainer.get("eval_steps") is not None:
        # the cap spaces out the default cadence only; a run with its own eval_steps never reads it
        identity["trainer"] = {k: v for k, v in trainer.items() if k != "max_evals"}
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def default_run_id(config: dict) -> str:
    return "-".join(
        [
            config["task"]["name"],
            config["method"]["name"],
            config["backbone"]["name"],
            f"s{config['seed']}",
            config_hash(config),
        ]
    )


def find_ok_record(runs_dir: str | Path, run_id: str, config: dict) -> Path | None:
    """An ok record of this run: ``<run_id>.json``, or a record of the same task, method, backbone and
    seed whose config has the same identity under today's ``config_hash`` (records written before a
    key was added to, or taken out of, the identity; e.g. when checkpoint options arrived)."""
    runs_dir = Path(runs_dir)
    own = runs_dir / f"{run_id}.json"
    candidates = [own] if own.is_file() else []
    prefix = default_run_id(config).rsplit("-", 1)[0]
    candidates += sorted(p for p in runs_dir.glob(f"{prefix}-*.json") if p != own)
    digest = config_hash(config)
    for path in candidates:
        record = load_record(path)
        if record.get("status") == "ok" and (
            path == own or config_hash(record.get("config") or {}) == digest
        ):
            return path
    return None


def git_state(cwd: str | Path = ".") -> dict:
    """HEAD and whether tracked files outside results/ differ from it, read once per process: the jobs
    of a multirun run the code imported at its start, even if a commit lands while they run."""
    return dict(_git_state(str(Path(cwd).resolve())))


@functools.cache
def _git_state(cwd: str) -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        sha = git("rev-parse", "HEAD")
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        # results/ holds what runs produce (records, tables, write-ups), not code: a sweep that renders
        # its write-up between chunks must not mark the next chunk's runs as run from modified code.
        status = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)results")
        dirty = status.stdout.strip() != ""
        return {"sha": sha.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_info() -> dict:
    """Where the run ran; the thread count matters for comparing CPU wall times."""
    import torch  # the training process has it loaded already

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def new_record(run_id: str, config: dict, environment: bool = True) -> dict:
    """The record skeleton; ``environment=False`` leaves git, versions and host empty (imported runs)."""
    return {
        "run_id": run_id,
        "status": "running",
        "error": None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished_at": None,
        "task": config["task"]["name"],
        "method": config["method"]["name"],
        "backbone": config["backbone"]["name"],
        "seed": config["seed"],
        "config": config,
        "git": git_state() if environment else {"sha": None, "dirty": None},
        "versions": package_versions() if environment else {},
        "host": host_info() if environment else {},
        "primary_metric": None,
        "evals": [],  # one entry per evaluation: {"step", "epoch", <metric>: value, ...}
        "best": None,  # the evaluation with the best primary metric
        "final": None,  # the last evaluation
        "train_log": [],  # {"step", "loss", "learning_rate", ...} as the Trainer logs them
        "budget": {"initial": None, "final": None, "history": []},
        "rank_patterns": {"modules": None, "history": []},  # ranks in module order, at every change
        "events": [],  # what the method's step hook reported (allocation events)
        "total_steps": None,
        "wall_time_s": None,
        # CPU seconds of this process: with one torch thread, a measure of work that other jobs on a
        # shared machine do not inflate the way they inflate wall time
        "cpu_time_s": None,
        "train_examples_per_s": None,
    }


def load_record(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)

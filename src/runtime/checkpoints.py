"""Where a run's training checkpoints live, which of them are complete, and whose they are.

A run's checkpoints go to ``<paths.checkpoints_dir>/<run_id>/checkpoint-<step>/`` (a stable place:
the Hydra output folder changes with every launch, so ``trainer.resume=true`` could not find it).
The folder's ``run_config.json`` names the config it belongs to, so a reused ``run_id`` with another
config is refused instead of silently resuming the wrong run. The Trainer does not write a checkpoint
atomically; ``COMPLETE`` is written last, and only marked checkpoints are resumed from.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from src.records import atomic_write_json, config_hash

COMPLETE = "COMPLETE"
RUN_CONFIG = "run_config.json"
GROUPS_FILE = "param_groups.json"  # parameter names per optimizer group, in order
RECORD_FILE = "run_record.json"  # the run record as of the checkpoint's step
_STEP = re.compile(r"^checkpoint-(\d+)$")

log = logging.getLogger(__name__)


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Marked checkpoint folders of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in run_dir.iterdir()
        if (m := _STEP.match(p.name)) and (p / COMPLETE).is_file()
    ]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | Path) -> int:
    return int(_STEP.match(Path(path).name).group(1))


def mark_complete(checkpoint: str | Path) -> None:
    (Path(checkpoint) / COMPLETE).write_text("ok\n")


def prepare_run_dir(run_dir: str | Path, config: dict, resume: bool, main: bool = True) -> Path | None:
    """Claim ``run_dir`` for ``config``; return the checkpoint to resume from (None: start afresh).

    Raises ValueError when the folder belongs to a different config. Without ``resume``, checkpoints
    of an earlier attempt of the same config are removed (by the ``main`` process) so they cannot be
    mixed with this one.
    """
    run_dir = Path(run_dir)
    claim = run_dir / RUN_CONFIG
    digest = config_hash(config)
    if claim.is_file():
        owner = json.loads(claim.read_text()).get("config_hash")
        if owner != digest:
            raise ValueError(
                f"checkpoint folder {run_dir} belongs to another config (hash {owner}, this run {digest}); "
                "choose another run_id, or delete the folder to start over"
            )
    latest = complete_checkpoints(run_dir)
    if resume and latest:
        return newest_readable(latest)
    if not main:  # other processes of a multi-process run read; only the main one clears and claims
        return None
    for stale in run_dir.glob("checkpoint-*"):
        shutil.rmtree(stale)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(claim, {"config_hash": digest, "config": config})
    return None


def unreadable(checkpoint: str | Path) -> str | None:
    """Why a checkpoint marked complete cannot be resumed from (a partial copy, a truncated or corrupt
    file), or None when every file in it reads."""
    import safetensors.torch
    import torch

    for path in sorted(Path(checkpoint).iterdir()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                safetensors.torch.load_file(path)
            elif path.suffix in (".pt", ".pth", ".bin"):
                torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001  (any failure to read means: do not resume from it)
            first = str(err).split(". ")[0].splitlines()[0][:160] if str(err) else ""
            return f"{path.name}: {type(err).__name__}: {first}"
    for required in (RECORD_FILE, "trainer_state.json"):
        if not (Path(checkpoint) / required).is_file():
            return f"{required} is missing"
    return None


def newest_readable(complete: list[Path]) -> Path:
    """The newest of ``complete`` whose files all read; one warning per checkpoint passed over."""
    for checkpoint in reversed(complete):
        reason = unreadable(checkpoint)
        if reason is None:
            return checkpoint
        log.warning("checkpoint %s cannot be read (%s); trying an older one", checkpoint, reason)
    raise ValueError(
        f"none of the {len(complete)} complete checkpoints in {complete[0].parent} can be read; "
        "run again with trainer.resume=false to start over"
    )


def write_groups(checkpoint: str | Path, optimizer, model) -> None:
    """Parameter names of each optimizer group: a resumed run rebuilds the same groups in order."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for g in optimizer.param_groups:
        missing = [i for i, p in enumerate(g["params"]) if id(p) not in names]
        if missing:
            raise RuntimeError(f"optimizer group {g.get('name')!r} holds parameters that the model does not")
        groups.append(
            {
                "name": g.get("name"),
                "lr_schedule": g.get("lr_schedule"),  # the scheduler is rebuilt before the state loads
                "params": [names[id(p)] for p in g["params"]],
            }
        )
    atomic_write_json(Path(checkpoint) / GROUPS_FILE, groups)


def read_groups(checkpoint: str | Path, model) -> list[dict]:
    """Optimizer groups (params by name) as saved; hyperparameters come from the optimizer state."""
    path = Path(checkpoint) / GROUPS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} has no {GROUPS_FILE}; it was not written by this project")
    params = dict(model.named_parameters())
    groups = []
    for saved in json.loads(path.read_text()):
        unknown = [n for n in saved["params"] if n not in params]
        if unknown:
            raise ValueError(f"checkpoint {checkpoint} names parameters the model lacks: {unknown[:3]}")
        group = {"name": saved["name"], "params": [params[n] for n in saved["params"]]}
        if saved.get("lr_schedule"):
            group["lr_schedule"] = saved["lr_schedule"]
        groups.append(group)
    return groups

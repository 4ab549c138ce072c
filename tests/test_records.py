"""Run records: atomic, readable, and identified by what the run computes."""

import json
import os
import stat

import pytest

from src.records import atomic_write_json, config_hash, default_run_id


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "runs" / "r.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o044 == 0o044  # group/other can read


def test_a_failed_write_keeps_the_previous_record(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(TypeError):  # json.dump fails half-way through the temp file
        atomic_write_json(path, {"bad": object.__new__(type("Unserialisable", (), {"__str__": None}))})
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_run_id_ignores_paths_and_logger_but_not_hyperparameters():
    base = {"task": {"name": "rte"}, "method": {"name": "lora", "r": 8}, "backbone": {"name": "b"}, "seed": 1}
    moved = {
        **base,
        "paths": {"root_dir": "/elsewhere"},
        "logger": {"backend": "none"},
        "skip_existing": True,
    }
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash({**base, "method": {"name": "lora", "r": 2}})
    assert default_run_id(base).startswith("rte-lora-b-s1-")

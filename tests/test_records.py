"""Run records: atomic, readable, and identified by what the run computes."""

import json
import os
import stat
import subprocess

import pytest

from src.records import _git_state, atomic_write_json, config_hash, default_run_id, find_ok_record


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


def test_times_of_a_resumed_run_add_the_attempts_up_to_the_checkpoint(tmp_path):
    import time

    from omegaconf import OmegaConf

    from src.runtime.checkpoints import RECORD_FILE
    from src.runtime.tracking import RunTracker

    logger = OmegaConf.create({"backend": "none"})
    config = {"task": {"name": "rte"}, "method": {"name": "lora"}, "backbone": {"name": "b"}, "seed": 1}
    first = RunTracker("r", config, tmp_path / "r.json", logger, str(tmp_path))
    sum(i * i for i in range(300_000))  # some CPU work before the checkpoint
    (tmp_path / "ckpt").mkdir()
    first.snapshot(tmp_path / "ckpt" / RECORD_FILE, step=10)
    saved = json.loads((tmp_path / "ckpt" / RECORD_FILE).read_text())
    assert saved["wall_time_s"] > 0 and saved["cpu_time_s"] > 0
    time.sleep(0.05)  # work after the checkpoint, lost with the kill: not counted
    second = RunTracker(
        "r", config, tmp_path / "r.json", logger, str(tmp_path), resume_from=tmp_path / "ckpt"
    )
    done = second.finish("ok")
    assert saved["wall_time_s"] <= done["wall_time_s"] < saved["wall_time_s"] + 0.05
    assert saved["cpu_time_s"] <= done["cpu_time_s"]


def test_checkpoint_options_are_not_part_of_the_identity():
    base = {"task": {"name": "rte"}, "method": {"name": "lora"}, "backbone": {"name": "b"}, "seed": 1}
    resumed = {
        **base,
        "trainer": {"resume": True, "checkpoint": True, "save_steps": 5, "optim": "adamw_torch"},
    }
    assert config_hash({**base, "trainer": {}}) == config_hash(resumed)


def test_find_ok_record_matches_by_identity_not_only_by_file_name(tmp_path):
    config = {"task": {"name": "rte"}, "method": {"name": "lora"}, "backbone": {"name": "b"}, "seed": 1}
    config["trainer"] = {"learning_rate": 1e-3}
    # written when trainer.resume still counted in the hash: another file name, same identity today
    older = {**config, "trainer": {"learning_rate": 1e-3, "resume": False}}
    old_path = tmp_path / "rte-lora-b-s1-0ldhash0.json"
    atomic_write_json(old_path, {"status": "ok", "config": older})
    run_id = default_run_id(config)
    assert find_ok_record(tmp_path, run_id, config) == old_path
    other = {**config, "trainer": {"learning_rate": 2e-3}}
    assert find_ok_record(tmp_path, default_run_id(other), other) is None  # a different run
    atomic_write_json(old_path, {"status": "failed", "config": older})
    assert find_ok_record(tmp_path, run_id, config) is None  # only ok records count


def test_a_changed_results_file_does_not_make_the_code_dirty(tmp_path):
    """A sweep re-renders its write-up (results/) between chunks; only code changes mark a run dirty."""

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "results" / "README.md").write_text("table\n")
    (tmp_path / "src" / "method.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    (tmp_path / "results" / "README.md").write_text("table, re-rendered\n")
    assert _git_state(str(tmp_path / "src"))["dirty"] is False
    (tmp_path / "src" / "method.py").write_text("x = 2\n")
    _git_state.cache_clear()
    assert _git_state(str(tmp_path / "src"))["dirty"] is True

"""The adapter start-up diagnostic (scripts/adapter_startup.py) runs the repro protocol and writes its table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DATA = ROOT.parent / "shared" / "data" / "glue"


def grid_record(method: str, lr: float, accuracy: float) -> dict:
    """A seed-41 r̄ 8 point of the tuned protocol's LR grid, as lr_selection reads it."""
    return {
        "run_id": f"rte-{method}-{lr}", "status": "ok", "task": "rte", "method": method, "seed": 41,
        "primary_metric": "accuracy", "best": {"accuracy": accuracy}, "finished_at": "2026-12-01T00:00:00",
        "config": {"study": "cpu-repro-lr", "budget": {"name": "r8"}, "trainer": {"learning_rate": lr}, "method": {}},
    }  # fmt: skip


@pytest.mark.skipif(not (DATA / "rte").is_dir(), reason="needs ../shared/data/glue/rte")
def test_startup_diagnostic_measures_how_far_each_adapter_moved_the_encoder(tmp_path):
    runs = tmp_path / "runs"  # LoRA's grid selects 3e-3, TriAdaptLoRA's 1e-2 (then 3e-2 beyond it)
    runs.mkdir()
    grid = {
        "lora": {1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.55},
        "triadapt": {1e-3: 0.5, 3e-3: 0.55, 1e-2: 0.6, 3e-2: 0.4},
    }
    for method, points in grid.items():
        for lr, acc in points.items():
            (runs / f"{method}-{lr}.json").write_text(json.dumps(grid_record(method, lr, acc)))
    command = [
        sys.executable, "scripts/adapter_startup.py",
        "task.max_train_samples=64", "task.max_eval_samples=8", "trainer.per_device_train_batch_size=4",
        "--data-dir", str(DATA), "--steps", "2", "--every", "1", "--probe", "4", "--out", str(tmp_path),
        "--tag", "_t", "--selected-lrs", "--runs", str(runs), "--methods", "lora", "triadapt",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    rows = {r["method"]: r for r in json.loads((tmp_path / "adapter_startup_t.json").read_text())["rows"]}
    assert set(rows) == {"lora", "triadapt"}
    assert rows["lora"]["lr"] == 3e-3 and rows["triadapt"]["lr"] == 1e-2  # each at its selected LR
    for r in rows.values():
        assert [p["step"] for p in r["points"]] == [0, 1, 2]
        assert r["points"][0]["effect"] == 0.0  # both start function-preserving
        assert r["points"][-1]["effect"] > 0  # two AdamW steps moved the adapter
    assert "| triadapt | 0.01 |" in (tmp_path / "adapter_startup_t.md").read_text()


def test_a_bad_override_is_one_line_before_any_model_loads(tmp_path):
    command = [
        sys.executable, "scripts/adapter_startup.py", "trainer.learning_rate=abc",
        "--data-dir", str(DATA), "--out", str(tmp_path), "--methods", "lora",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: trainer.learning_rate='abc' is a string; set it to a number"
    ]
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.skipif(not (DATA / "rte").is_dir(), reason="needs ../shared/data/glue/rte")
def test_selected_lrs_refuse_an_open_cell_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    command = [
        sys.executable, "scripts/adapter_startup.py", "--selected-lrs", "--runs", str(runs),
        "--data-dir", str(DATA), "--out", str(tmp_path / "out"), "--methods", "lora", "triadapt",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: no selected LR yet for lora, triadapt on rte in {runs}; run python scripts/cpu_repro.py "
        "--chunk lr-rte --chunk lr-edge-rte first"
    ]
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.skipif(not (DATA / "stsb").is_dir(), reason="needs ../shared/data/glue/stsb")
def test_startup_diagnostic_runs_on_a_regression_task(tmp_path):
    """STS-B's head is a regression: the probe's loss is the head's own (mean squared error)."""
    command = [
        sys.executable, "scripts/adapter_startup.py", "--task", "stsb",
        "task.max_train_samples=16", "task.max_eval_samples=4", "trainer.per_device_train_batch_size=4",
        "--data-dir", str(DATA), "--steps", "1", "--every", "1", "--probe", "4", "--out", str(tmp_path),
        "--tag", "_stsb", "--methods", "lora",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads((tmp_path / "adapter_startup_stsb.json").read_text())["rows"]
    assert [p["step"] for p in row["points"]] == [0, 1]
    assert all(p["probe_loss"] > 0 for p in row["points"])


def test_the_recorded_command_names_repository_paths_relative_to_its_root(tmp_path):
    from scripts.adapter_startup import command_line

    argv = [
        "--runs",
        str(ROOT / "results" / "runs"),
        f"--out={ROOT / 'results' / 'diagnostics'}",
        "--task",
        "rte",
    ]
    argv += ["--data-dir", str(tmp_path)]  # outside the repository: kept as typed
    assert command_line(argv) == (
        "python scripts/adapter_startup.py --runs results/runs --out=results/diagnostics --task rte "
        f"--data-dir {tmp_path}"
    )

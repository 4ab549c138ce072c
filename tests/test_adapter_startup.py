"""The adapter start-up diagnostic (scripts/adapter_startup.py) runs the repro protocol and writes its table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DATA = ROOT.parent / "shared" / "data" / "glue"


@pytest.mark.skipif(not (DATA / "rte").is_dir(), reason="needs ../shared/data/glue/rte")
def test_startup_diagnostic_measures_how_far_each_adapter_moved_the_encoder(tmp_path):
    command = [
        sys.executable, "scripts/adapter_startup.py",
        "task.max_train_samples=64", "task.max_eval_samples=8", "trainer.per_device_train_batch_size=4",
        "--data-dir", str(DATA), "--steps", "2", "--every", "1", "--probe", "4", "--out", str(tmp_path),
        "--tag", "_t", "--methods", "lora", "triadapt",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    rows = {r["method"]: r for r in json.loads((tmp_path / "adapter_startup_t.json").read_text())["rows"]}
    assert set(rows) == {"lora", "triadapt"}
    for r in rows.values():
        assert [p["step"] for p in r["points"]] == [0, 1, 2]
        assert r["points"][0]["effect"] == 0.0  # both start function-preserving
        assert r["points"][-1]["effect"] > 0  # two AdamW steps moved the adapter
    assert "| triadapt |" in (tmp_path / "adapter_startup_t.md").read_text()


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

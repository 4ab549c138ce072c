"""The GPU check's plumbing (scripts/gpu_check.py), run small on the CPU: both parts, one folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.heavy  # ~2 min of subprocesses; `make test-slow` (CI runs it)


def test_gpu_check_runs_bench_and_every_method_into_one_folder(shared_data, tmp_path):
    out = tmp_path / "check"
    command = [
        sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--quick", "--bench-steps", "2",
        "--out", str(out), "--data-dir", str(shared_data / "glue" / "rte"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert [b["tag"] for b in result["bench"]] == [f"_cpu_r{r}_{p}" for r in (8, 2) for p in ("fp32", "bf16")]
    for b in result["bench"]:
        assert {r["method"] for r in b["rows"]} == {"lora", "triadapt"}
        assert (out / f"overhead{b['tag']}.md").is_file()
    assert "bf16 autocast" in (out / "overhead_cpu_r2_bf16.md").read_text()
    assert [t["method"] for t in result["train"]] == ["lora", "adalora", "increlora", "triadapt"]
    for t in result["train"]:
        assert t["status"] == "ok" and t["steps"] == 8, t
        if t["method"] in ("increlora", "triadapt"):
            assert t["total_rank"] == t["target_total_rank"]
    trip = result["round_trip"]  # SIGTERM after the checkpoint at T/4, then the same command again
    assert trip["stopped_status"] == "preempted" and trip["rc_stop"] == 143 and trip["status"] == "ok"
    assert trip["resumed_from"] == [trip["stopped_at"]] and trip["same_rank_history"] is True
    assert "SIGTERM and resume" in (out / "gpu_check.md").read_text()
    assert "passed" in (out / "gpu_check.md").read_text().splitlines()[0]


def test_gpu_check_refuses_a_missing_device_or_data_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().startswith("error: no RTE train.jsonl")

"""The overhead benchmark (scripts/bench_overhead.py) runs end to end and writes its table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.heavy  # `make test-slow`: three BERT-base-sized models built and timed, about 20 s
def test_bench_times_methods_at_the_same_rank_and_writes_the_table(tmp_path):
    command = [
        sys.executable, "scripts/bench_overhead.py", "--random-weights", "--rank", "2", "--steps", "3",
        "--warmup", "1", "--batch", "2", "--length", "16", "--threads", "1", "--out", str(tmp_path),
        "--tag", "_t", "--methods", "lora", "triadapt", "triadapt:orth_reg_weight=0",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    rows = {r["method"]: r for r in json.loads((tmp_path / "overhead_t.json").read_text())["rows"]}
    assert set(rows) == {"lora", "triadapt", "triadapt:orth_reg_weight=0"}
    assert all("error" not in r for r in rows.values())
    assert rows["lora"]["step_ratio_median"] == 1.0  # each round's LoRA step over itself
    for r in rows.values():
        assert r["avg_rank"] == 2.0 and r["median_step_s"] > 0 and r["peak_mem_mib"] >= 0
    # the regulariser is operators on every step: without it TriAdaptLoRA dispatches fewer
    assert rows["triadapt:orth_reg_weight=0"]["ops_per_step"] < rows["triadapt"]["ops_per_step"]
    assert rows["triadapt"]["allocation_events"] >= 1 and rows["triadapt"]["median_event_s"] > 0
    table = (tmp_path / "overhead_t.md").read_text()
    assert "| triadapt |" in table and "interleaved" in table

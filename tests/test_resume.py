"""trainer.resume: a run killed with SIGKILL after growth events continues from its last complete
checkpoint and ends where an uninterrupted run of the same seed ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.runtime.checkpoints import complete_checkpoints, prepare_run_dir
from tests.conftest import ROOT, user_runs

# Growth from step 10 to ~step 40 (events every 5 steps), checkpoints every 10 steps: a kill after
# checkpoint 20 lands between events, so the resumed run has to continue the allocator's state.
GROWTH = ["budget=r2", "method.init_warmup=5", "method.incre_interval=5"]
BEFORE = "method.allocator_timing=before_step"  # the allocator where the references call it (spec §1.4)
CASES = {
    "triadapt": ("triadapt", GROWTH),
    "increlora": ("increlora", [*GROWTH, "method.top_h=2"]),
    "adalora": ("adalora", ["method.tinit=5", "method.tfinal=20", "method.deltaT=5"]),
    "triadapt-before_step": ("triadapt", [*GROWTH, BEFORE]),
    "increlora-before_step": ("increlora", [*GROWTH, "method.top_h=2", BEFORE]),
}
KILL_AFTER_STEP = 20


def command(data: Path, root: Path, case: str, *extra: str) -> list[str]:
    method, overrides = CASES[case]
    return [
        sys.executable, "-m", "src.train", "backbone=tiny-deberta", "task=rte", f"task.data_dir={data}/glue/rte",
        "task.max_train_samples=256", "task.max_eval_samples=32", f"method={method}", *overrides,
        "trainer.max_steps=120", "trainer.eval_steps=40", "trainer.save_steps=10",
        "trainer.per_device_train_batch_size=8", "logger=none", "save_adapter=false", "run_id=victim",
        f"paths.root_dir={root}", f"hydra.run.dir={root}/out", *extra,
    ]  # fmt: skip


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def record(root: Path) -> dict:
    return json.loads((user_runs(root) / "victim.json").read_text())


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("method", CASES)
def test_a_killed_run_resumes_to_the_uninterrupted_result(shared_data, tmp_path, method):
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    done = subprocess.run(
        command(shared_data, reference, method), cwd=ROOT, env=env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(command(shared_data, victim, method), cwd=ROOT, env=env(), stderr=subprocess.PIPE)
    run_dir = victim / "checkpoints" / "victim"
    deadline = time.time() + 300
    while not any(int(p.name.split("-")[1]) >= KILL_AFTER_STEP for p in complete_checkpoints(run_dir)):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = record(victim)
    assert killed["status"] == "running"  # what a kill leaves: no finish, no error written
    resumed_from = complete_checkpoints(run_dir)[-1]

    done = subprocess.run(
        command(shared_data, victim, method, "trainer.resume=true"),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = record(reference), record(victim)
    assert b["status"] == "ok" and b["resumed"][0]["from_step"] == int(resumed_from.name.split("-")[1])
    assert b["budget"]["final"]["total_rank"] == a["budget"]["final"]["total_rank"]
    assert b["rank_patterns"]["history"] == a["rank_patterns"]["history"]
    assert [e["step"] for e in b["events"]] == [e["step"] for e in a["events"]]
    assert [e["step"] for e in b["evals"]] == [e["step"] for e in a["evals"]]
    for ea, eb in zip(a["evals"], b["evals"], strict=True):
        assert eb["loss"] == pytest.approx(ea["loss"], rel=1e-4, abs=1e-5)
        assert eb["accuracy"] == ea["accuracy"]
    losses = {e["step"]: e["loss"] for e in a["train_log"] if "loss" in e}
    for e in b["train_log"]:
        if "loss" in e:
            assert e["loss"] == pytest.approx(losses[e["step"]], rel=1e-4, abs=1e-5)
    assert not run_dir.exists()  # checkpoints are removed once the run has finished ok


def test_a_checkpoint_folder_of_another_config_is_refused(tmp_path):
    prepare_run_dir(tmp_path / "run", {"seed": 1}, resume=False)
    with pytest.raises(ValueError, match="belongs to another config"):
        prepare_run_dir(tmp_path / "run", {"seed": 2}, resume=True)


def test_only_complete_checkpoints_are_resumed_from(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, {"seed": 1}, resume=False)
    for step, complete in [(10, True), (20, True), (30, False)]:  # 30: cut short by a kill
        (run / f"checkpoint-{step}").mkdir()
        for name in ("trainer_state.json", "run_record.json"):
            (run / f"checkpoint-{step}" / name).write_text("{}")
        if complete:
            (run / f"checkpoint-{step}" / "COMPLETE").write_text("ok\n")
    assert prepare_run_dir(run, {"seed": 1}, resume=True) == run / "checkpoint-20"
    assert prepare_run_dir(run, {"seed": 1}, resume=False) is None  # a fresh start clears them
    assert not list(run.glob("checkpoint-*"))

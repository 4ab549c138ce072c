"""Preemption round trips with real signals and real processes (heavy: ``make test-slow``).

- A plain ``python -m src.train`` gets SIGTERM between two periodic checkpoints, after growth events: it
  writes a checkpoint at the next optimizer step, records ``preempted`` and exits 143; the same command
  run again (no ``trainer.resume`` needed) ends where an uninterrupted run ends.
- The same through submitit's local executor (``hydra/launcher=submitit_local``, real job processes):
  the job gets submitit's preemption signal (USR2), checkpoints, is requeued by submitit, resumes by
  itself and finishes, for TriAdaptLoRA, IncreLoRA and AdaLoRA.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from src.runtime.checkpoints import complete_checkpoints
from tests.conftest import ROOT
from tests.test_resume import command as resume_command
from tests.test_resume import env, record

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

SIGNAL_AFTER_STEP = 20  # growth and masking events start at step 5-10; checkpoints every 10 steps
SECOND_SIGNAL_AFTER_STEP = 60


def command(data: Path, root: Path, case: str, *extra: str, multirun: bool = False) -> list[str]:
    """tests/test_resume.py's run; ``multirun``: as one job of submitit's local executor."""
    if not multirun:
        return resume_command(data, root, case, *extra)
    launcher = [
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=20",
        f"hydra.sweep.dir={root}/sweep",
    ]
    python, module, train, *overrides = resume_command(data, root, case, *launcher, *extra)
    return [python, module, train, "-m", *overrides]  # Hydra reads -m before the overrides


def wait_for_checkpoint(root: Path, proc: subprocess.Popen, step: int = SIGNAL_AFTER_STEP) -> None:
    deadline = time.time() + 600
    while not any(
        int(p.name.split("-")[1]) >= step for p in complete_checkpoints(root / "checkpoints" / "victim")
    ):
        assert proc.poll() is None, "the run ended before it could be signalled"
        assert time.time() < deadline
        time.sleep(0.02)


def assert_same_run(reference: dict, resumed: dict) -> None:
    """What the kill-and-resume test checks (tests/test_resume.py), at its tolerance."""
    assert resumed["status"] == "ok"
    assert resumed["rank_patterns"]["history"] == reference["rank_patterns"]["history"]
    assert resumed["budget"]["final"]["total_rank"] == reference["budget"]["final"]["total_rank"]
    assert [e["step"] for e in resumed["events"]] == [e["step"] for e in reference["events"]]
    assert [e["step"] for e in resumed["evals"]] == [e["step"] for e in reference["evals"]]
    for a, b in zip(reference["evals"], resumed["evals"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
        assert b["accuracy"] == a["accuracy"]


def reference_run(data: Path, root: Path, case: str) -> dict:
    done = subprocess.run(command(data, root, case), cwd=ROOT, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return record(root)


def test_sigterm_checkpoints_and_the_same_command_continues(shared_data, tmp_path):
    reference = reference_run(shared_data, tmp_path / "reference", "triadapt")
    root = tmp_path / "victim"
    proc = subprocess.Popen(
        command(shared_data, root, "triadapt"), cwd=ROOT, env=env(), stderr=subprocess.PIPE, text=True
    )
    wait_for_checkpoint(root, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143
    stopped = record(root)
    step = stopped["stopped_at_step"]
    assert stopped["status"] == "preempted" and SIGNAL_AFTER_STEP <= step < SIGNAL_AFTER_STEP + 10
    assert stopped["stops"] == [{"step": step, "signal": "SIGTERM", "at": stopped["stops"][0]["at"]}]
    assert stderr.strip().splitlines()[-1] == (
        f"stopped on SIGTERM at step {step} of 120; checkpoint {root}/checkpoints/victim/checkpoint-{step}. "
        "Run the same command again to continue (trainer.resume=false starts over)."
    )
    assert "Traceback" not in stderr
    assert complete_checkpoints(root / "checkpoints" / "victim")[-1].name == f"checkpoint-{step}"

    # the same command again, stopped a second time, then once more to the end
    again = subprocess.Popen(
        command(shared_data, root, "triadapt"), cwd=ROOT, env=env(), stderr=subprocess.PIPE
    )
    wait_for_checkpoint(root, again, step=SECOND_SIGNAL_AFTER_STEP)
    again.send_signal(signal.SIGTERM)
    again.communicate(timeout=300)
    assert again.returncode == 143
    second = record(root)["stopped_at_step"]
    assert SECOND_SIGNAL_AFTER_STEP <= second < SECOND_SIGNAL_AFTER_STEP + 10
    last = subprocess.run(
        command(shared_data, root, "triadapt"), cwd=ROOT, env=env(), capture_output=True, text=True
    )
    assert last.returncode == 0, last.stderr[-2000:]
    resumed = record(root)
    assert [r["from_step"] for r in resumed["resumed"]] == [step, second]  # no step was lost, twice
    assert [s["step"] for s in resumed["stops"]] == [step, second]
    assert_same_run(reference, resumed)


def seconds_between(start: str, end: str) -> float:
    fmt = "%Y-%m-%dT%H:%M:%S%z"
    return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()


def job_processes(root: Path) -> list[psutil.Process]:
    """The submitit job processes (``python -m submitit.core._submit <folder>``) of this test's sweep."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "submitit.core._submit" in cmd and str(root) in cmd:
            found.append(p)
    return found


@pytest.mark.parametrize("case", ["triadapt", "increlora", "adalora"])
def test_a_preempted_submitit_job_is_requeued_and_finishes_as_if_uninterrupted(shared_data, tmp_path, case):
    reference = reference_run(shared_data, tmp_path / "reference", case)
    root = tmp_path / "victim"
    sweep = subprocess.Popen(
        command(shared_data, root, case, multirun=True),
        cwd=ROOT,
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(root, sweep)
    jobs = job_processes(root)
    assert len(jobs) == 1, jobs
    signalled = time.time()
    jobs[0].send_signal(signal.SIGUSR2)  # what SLURM sends before a timeout, and on preemption
    _, stderr = sweep.communicate(timeout=900)
    finished = time.time()
    assert sweep.returncode == 0, stderr[-3000:]
    resumed = record(root)
    assert resumed["status"] == "ok"
    (stop,) = resumed["stops"]
    (resume,) = resumed["resumed"]
    assert stop["signal"] == "SIGUSR2" and resume["from_step"] == stop["step"]  # requeued once, nothing lost
    assert SIGNAL_AFTER_STEP <= stop["step"] < SIGNAL_AFTER_STEP + 10
    assert any(e["step"] <= stop["step"] for e in resumed["events"])  # after a growth or masking event
    assert_same_run(reference, resumed)
    logs = "".join(p.read_text() for p in (root / "sweep" / ".submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs  # submitit's own handler ran: it is what requeued the job
    eval_diff = max(
        abs(a["loss"] - b["loss"]) for a, b in zip(reference["evals"], resumed["evals"], strict=True)
    )
    print(
        f"\n{case}: signal after checkpoint {SIGNAL_AFTER_STEP}, stopped at step {stop['step']} (0 steps lost), "
        f"requeued job resumed training {seconds_between(stop['at'], resume['at']):.0f} s after the stop, "
        f"run finished {finished - signalled:.1f} s after the signal, "
        f"max |eval loss - uninterrupted| {eval_diff:.2e}"
    )

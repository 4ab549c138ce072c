"""Stopping on a signal, resuming automatically, and what a resume must never lose (fast tests; the
end-to-end round trips with real signals and real submitit jobs are in tests/test_requeue.py)."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest
import torch
from omegaconf import OmegaConf

from src.records import load_record
from src.runtime import preemption
from src.runtime.checkpoints import prepare_run_dir
from src.runtime.tracking import RunTracker


def test_the_first_signal_is_noted_and_a_second_ctrl_c_stops_at_once():
    stop = preemption.StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread before kill returns
        assert stop.signum == signal.SIGTERM  # noted, the process goes on
        os.kill(os.getpid(), signal.SIGTERM)  # a repeat changes nothing
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_stop_status_and_exit_code_follow_the_signal():
    term = preemption.Stopped(signal.SIGTERM, 21, 120, "ckpt/checkpoint-21")
    ctrl_c = preemption.Stopped(signal.SIGINT, 31, 120, None)
    assert (term.status, term.exit_code) == ("preempted", 143)
    assert (ctrl_c.status, ctrl_c.exit_code) == ("interrupted", 130)
    assert str(term) == "stopped on SIGTERM at step 21 of 120; checkpoint ckpt/checkpoint-21"


def test_only_the_preemption_signal_hands_over_to_submitits_requeue(monkeypatch):
    calls = []

    def checkpoint_and_try_requeue(signum, frame):  # the name of submitit's handler
        calls.append(signum)

    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert preemption.preempt_signal() == signal.SIGUSR1
    previous = signal.signal(signal.SIGUSR1, checkpoint_and_try_requeue)
    try:
        for sig, requeued in [(signal.SIGTERM, []), (signal.SIGINT, []), (signal.SIGUSR1, [signal.SIGUSR1])]:
            stop = preemption.StopRequest().install()
            stop.signum = sig
            stop.requeue()
            stop.restore()
            assert calls == requeued, sig  # scancel (SIGTERM) and Ctrl-C mean stop, not come back
            calls.clear()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def checkpoint(run, step: int, *, corrupt: bool = False):
    folder = run / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "run_record.json").write_text(json.dumps({"checkpoint_step": step}))
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    if corrupt:  # a partial copy: the first bytes only
        data = (folder / "optimizer.pt").read_bytes()
        (folder / "optimizer.pt").write_bytes(data[:64])
    (folder / "COMPLETE").write_text("ok\n")
    return folder


def test_an_unreadable_newest_checkpoint_falls_back_to_the_newest_that_reads(tmp_path, caplog):
    run = tmp_path / "run"
    prepare_run_dir(run, {"seed": 1}, resume=False)
    checkpoint(run, 10)
    good = checkpoint(run, 20)
    checkpoint(run, 30, corrupt=True)
    with caplog.at_level(logging.WARNING):
        assert prepare_run_dir(run, {"seed": 1}, resume=True) == good
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "checkpoint-30 cannot be read (optimizer.pt" in warnings[0]


def test_no_readable_checkpoint_is_one_error_that_says_how_to_start_over(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, {"seed": 1}, resume=False)
    checkpoint(run, 10, corrupt=True)
    (checkpoint(run, 20) / "run_record.json").write_text('{"checkpoint_st')  # truncated JSON
    with pytest.raises(ValueError, match="none of the 2 complete checkpoints .* trainer.resume=false"):
        prepare_run_dir(run, {"seed": 1}, resume=True)
    assert (run / "checkpoint-20").is_dir()  # nothing is deleted


def tracker(tmp_path, path):
    logger = OmegaConf.create({"backend": "none"})
    return RunTracker("r1", {"task": {"name": "rte"}, "method": {"name": "lora"}, "backbone": {"name": "b"}, "seed": 1},
                      path, logger, str(tmp_path / "attempt"))  # fmt: skip


def test_a_new_attempt_never_downgrades_an_ok_record(tmp_path):
    path = tmp_path / "runs" / "r1.json"
    first = tracker(tmp_path, path)
    first.finish("ok")
    assert load_record(path)["status"] == "ok"

    again = tracker(tmp_path, path)  # e.g. the same command with skip_existing=false
    assert load_record(path)["status"] == "ok"  # while it runs
    again.finish("failed", error="RuntimeError: boom")
    assert load_record(path)["status"] == "ok"  # and after it failed
    attempt = load_record(tmp_path / "attempt" / "run_record.json")
    assert attempt["status"] == "failed" and attempt["error"] == "RuntimeError: boom"

    last = tracker(tmp_path, path)
    last.finish("ok", marker=1)  # an attempt that ends ok replaces it
    assert load_record(path)["status"] == "ok" and load_record(path)["marker"] == 1

"""What a user sees: progress bars only in a terminal, and a run that ends with a short aligned summary."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from types import SimpleNamespace

import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf

from src.runtime import trainer as runtime_trainer
from src.runtime.tracking import summary
from tests.conftest import ROOT, user_runs

TRAINER = OmegaConf.load(ROOT / "configs" / "trainer" / "default.yaml")
RECORD = {
    "run_id": "rte-triadapt-minilm-l6-s41-0123abcd",
    "status": "ok",
    "error": None,
    "primary_metric": "accuracy",
    "total_steps": 234,
    "best": {"step": 171, "accuracy": 0.57761},
    "final": {"step": 234, "accuracy": 0.5415},
    "budget": {"final": {"total_rank": 288, "target_total_rank": 288, "effective_adapter": 325270,
                         "trainable_total": 473880}},
    "wall_time_s": 583.6,
    "cpu_time_s": 385.3,
}  # fmt: skip


class Stream:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def terminal(monkeypatch):
    """Both streams a terminal, not CI, not a multirun; each test then takes one of these away. (The
    module's ``sys`` is replaced: pytest puts its own sys.stdout back before each test body.)"""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(runtime_trainer, "sys", SimpleNamespace(stdout=Stream(True), stderr=Stream(True)))
    monkeypatch.setattr(runtime_trainer.HydraConfig, "initialized", staticmethod(lambda: False))
    return monkeypatch


def test_progress_bars_show_in_a_terminal(terminal):
    assert runtime_trainer.show_progress()


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_no_progress_bars_when_output_goes_to_a_file_or_pipe(terminal, stream):
    terminal.setattr(runtime_trainer.sys, stream, Stream(False))
    assert not runtime_trainer.show_progress()


def test_no_progress_bars_in_ci(terminal):
    terminal.setenv("CI", "true")
    assert not runtime_trainer.show_progress()


def test_no_progress_bars_in_a_multirun(terminal):
    hydra = runtime_trainer.HydraConfig
    terminal.setattr(hydra, "initialized", staticmethod(lambda: True))
    terminal.setattr(hydra, "get", staticmethod(lambda: SimpleNamespace(mode=RunMode.MULTIRUN)))
    assert not runtime_trainer.show_progress()
    terminal.setattr(hydra, "get", staticmethod(lambda: SimpleNamespace(mode=RunMode.RUN)))
    assert runtime_trainer.show_progress()


@pytest.mark.parametrize("progress", [True, False])
def test_the_trainer_draws_bars_only_when_asked(tmp_path, progress):
    args = runtime_trainer.training_arguments(TRAINER, str(tmp_path), 100, 10, 0, progress=progress)
    assert args.disable_tqdm is not progress


def test_summary_is_a_few_aligned_lines():
    lines = summary(RECORD, "results/runs/rte-triadapt-minilm-l6-s41-0123abcd.json").splitlines()
    assert lines == [
        "run summary",
        "  run        rte-triadapt-minilm-l6-s41-0123abcd  ok",
        "  best       accuracy 0.5776 at step 171 of 234",
        "  final      accuracy 0.5415 at step 234 of 234",
        "  budget     total rank 288 / R* 288, effective params 325,270 (trainable 473,880)",
        "  wall time  9m44s (CPU 6m25s)",
        "  record     results/runs/rte-triadapt-minilm-l6-s41-0123abcd.json",
    ]


def test_summary_of_a_failed_run_without_evaluations_or_budget():
    failed = {
        **RECORD,
        "status": "failed",
        "error": "FloatingPointError: loss is nan at step 3",
        "best": None,
        "final": None,
        "total_steps": None,
        "budget": {"final": None},
        "wall_time_s": 12.34,
        "cpu_time_s": None,
    }
    lines = summary(failed, "r.json").splitlines()
    assert (
        lines[1]
        == "  run        rte-triadapt-minilm-l6-s41-0123abcd  failed: FloatingPointError: loss is nan at step 3"
    )
    assert lines[2:6] == [
        "  best       none (no evaluation)",
        "  final      none (no evaluation)",
        "  budget     none (the adapter was never applied)",
        "  wall time  12.3s",
    ]


def test_summary_of_a_fixed_rank_method_has_no_target():
    lora = {**RECORD, "budget": {"final": {**RECORD["budget"]["final"], "target_total_rank": None}}}
    assert "  budget     total rank 288 (fixed), effective params" in summary(lora, "r.json")


@pytest.mark.slow
def test_a_run_in_a_terminal_shows_bars_and_ends_with_the_summary(shared_data, tmp_path):
    """The real entrypoint under a pseudo-terminal (80 x 24: a 0 x 0 terminal gets empty bars)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("CI", None)
    args = [
        "backbone=tiny-deberta", "task=rte", f"task.data_dir={shared_data}/glue/rte", "method=lora",
        "logger=none", "save_adapter=false", "trainer.max_steps=2", "trainer.eval_steps=2",
        "trainer.checkpoint=false", "task.max_train_samples=16", "task.max_eval_samples=16",
        f"paths.root_dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args], cwd=ROOT, env=env, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=600) == 0
    os.close(leader)
    out = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    assert "2/2 [" in out and "it/s]" in out  # the training bar, drawn with \r
    assert "1/1 [" in out  # an evaluation bar (16 examples, one batch)
    tail = out.rstrip().split("\n")[-7:]
    [record] = list(user_runs(tmp_path).glob("*.json"))
    assert tail[0].endswith("run summary") and tail[1] == f"  run        {record.stem}  ok"
    assert tail[2].startswith("  best       accuracy ") and tail[6] == f"  record     {record}"

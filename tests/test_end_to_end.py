"""End to end on real data: the entrypoint, run records, multirun failure isolation, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.train import train
from tests.conftest import ROOT, user_runs

pytestmark = pytest.mark.slow
RECORD_KEYS = {
    "run_id", "status", "error", "config", "git", "versions", "primary_metric", "evals", "best", "final",
    "budget", "rank_patterns", "events", "total_steps", "wall_time_s", "cpu_time_s", "train_examples_per_s",
}  # fmt: skip


def cli(
    *args: str, cwd: Path = ROOT, timeout: int = 600, python: list[str] = ()
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *python, "-m", "src.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(user_runs(root).glob("*.json"))]


GROWTH = ["budget=r2", "method.init_warmup=2", "method.incre_interval=2"]  # R* reachable in 8 steps
METHOD_OVERRIDES = {"lora": [], "adalora": [], "increlora": [*GROWTH, "method.top_h=6"], "triadapt": GROWTH}


@pytest.mark.parametrize("method", METHOD_OVERRIDES)
def test_tiny_deberta_on_real_rte_writes_a_complete_record(cfg_factory, shared_data, tmp_path, method):
    cfg = cfg_factory(
        "backbone=tiny-deberta",
        "task=rte",
        f"task.data_dir={shared_data}/glue/rte",
        f"method={method}",
        *METHOD_OVERRIDES[method],
        "trainer.max_steps=8",
        "trainer.eval_steps=4",
        "trainer.per_device_train_batch_size=8",
        "task.max_eval_samples=64",  # one eval batch: the full dev set would be most of the test's time
        "logger=wandb",  # offline (WANDB_MODE=offline in tests): the mirror must work without an account
    )
    record = train(cfg)
    on_disk = json.loads((user_runs(tmp_path) / f"{record['run_id']}.json").read_text())
    assert RECORD_KEYS <= set(on_disk)
    assert on_disk["status"] == "ok" and on_disk["error"] is None
    assert on_disk["total_steps"] == 8 and [e["step"] for e in on_disk["evals"]] == [4, 8]
    assert on_disk["method_config"]["target_modules"] and on_disk["method_config"].get("total_step", 8) == 8
    assert 0.0 <= on_disk["best"]["accuracy"] <= 1.0 and on_disk["final"]["step"] == 8
    assert on_disk["config"]["task"]["data_dir"].endswith("glue/rte")
    assert on_disk["versions"]["peft"] == "0.21.2" and on_disk["versions"]["torch"].startswith("2.13.0")
    assert on_disk["git"]["sha"] is None or len(on_disk["git"]["sha"]) == 40
    budget = on_disk["budget"]
    assert budget["initial"]["trainable_total"] > budget["initial"]["effective_adapter"] > 0
    assert on_disk["rank_patterns"]["history"][0]["step"] == 0
    if method != "lora":  # adaptive: the record shows the rank pattern changing during training
        assert on_disk["events"] and len(on_disk["budget"]["history"]) > 1
        assert on_disk["budget"]["final"]["total_rank"] == on_disk["budget"]["final"]["target_total_rank"]
    assert len(on_disk["rank_patterns"]["modules"]) == 12
    assert on_disk["wall_time_s"] > 0 and on_disk["cpu_time_s"] > 0 and on_disk["train_examples_per_s"] > 0
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*")), "W&B offline run directory missing"
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


def test_multirun_summarises_a_failed_job_and_goes_on(shared_data, tmp_path):
    good, bad = f"{shared_data}/glue/rte", str(tmp_path / "no-such-dir")
    proc = cli(
        "-m",
        "backbone=tiny-deberta",
        "task=rte",
        f"task.data_dir={bad},{good}",
        "method=lora",
        "trainer.max_steps=2",
        "trainer.eval_steps=2",
        "task.max_train_samples=64",
        "task.max_eval_samples=16",
        "logger=none",
        f"paths.root_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["status"] for r in records(tmp_path)] == ["ok"]  # the bad config wrote no record ...
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert (summary["ok"], summary["failed"]) == (1, 1)  # ... and the sweep's summary names it
    (failure,) = summary["failures"]
    assert "no-such-dir" in failure["error"] and "not a directory" in failure["error"]


def test_bad_input_in_a_single_run_is_one_line_and_writes_nothing(tmp_path):
    proc = cli(
        "backbone=tiny-deberta",
        "task=rte",
        "task.data_dir=/nonexistent/rte",
        "logger=none",
        f"paths.root_dir={tmp_path}",
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: task.data_dir='/nonexistent/rte' is not a directory")
    )
    assert "Traceback" not in proc.stderr
    assert records(tmp_path) == []  # a config that does not check is not a run: no record
    assert not (tmp_path / "checkpoints").exists() and not list(tmp_path.rglob("wandb"))


def test_unknown_method_lists_the_choices_before_torch_loads(tmp_path):
    proc = cli("method=dora", f"paths.root_dir={tmp_path}", python=["-X", "importtime"])
    assert proc.returncode != 0 and "Could not find 'method/dora'" in proc.stderr and "lora" in proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "hydra" in imported and not imported & {"torch", "transformers", "peft", "datasets"}


def test_hub_backbone_while_offline_fails_fast(tmp_path):
    start = time.time()
    proc = cli("backbone=deberta-v3-base", "task=rte", "logger=none", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 1 and time.time() - start < 60
    assert "microsoft/deberta-v3-base" in proc.stderr and "Traceback" not in proc.stderr


def test_skip_existing_reuses_an_ok_record_and_reruns_otherwise(cfg_factory, shared_data, tmp_path):
    args = [
        "backbone=tiny-deberta",
        "task=rte",
        f"task.data_dir={shared_data}/glue/rte",
        "logger=none",
        "method=lora",
    ]
    args += ["trainer.max_steps=2", "trainer.eval_steps=2", "task.max_eval_samples=16", "save_adapter=false"]
    first = train(cfg_factory(*args))
    path = user_runs(tmp_path) / f"{first['run_id']}.json"
    path.write_text(json.dumps({**first, "marker": "kept"}))
    again = train(cfg_factory(*args, "skip_existing=true"))
    assert again["run_id"] == first["run_id"] and again.get("marker") == "kept"
    path.write_text(json.dumps({**first, "status": "failed"}))
    rerun = train(cfg_factory(*args, "skip_existing=true"))
    assert rerun["status"] == "ok" and json.loads(path.read_text())["status"] == "ok"


@pytest.mark.heavy  # `make test-slow`: four more end-to-end runs
@pytest.mark.parametrize("method", METHOD_OVERRIDES)
def test_bf16_autocast_trains_every_method_and_keeps_adapter_tensors_fp32(
    cfg_factory, shared_data, tmp_path, method
):
    import torch
    from safetensors.torch import load_file

    seen = set()  # output dtypes of every nn.Linear forward during the run

    def note(module, args, output):
        if isinstance(module, torch.nn.Linear) and torch.is_tensor(output):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(note)
    try:
        record = train(
            cfg_factory(
                "backbone=tiny-deberta",
                "task=rte",
                f"task.data_dir={shared_data}/glue/rte",
                f"method={method}",
                *METHOD_OVERRIDES[method],
                "trainer.bf16=true",
                "trainer.max_steps=8",
                "trainer.eval_steps=8",
                "trainer.per_device_train_batch_size=8",
                "task.max_eval_samples=16",
            )
        )
    finally:
        handle.remove()
    assert record["status"] == "ok" and record["config"]["trainer"]["bf16"] is True
    assert torch.bfloat16 in seen, "no linear ran under bf16 autocast"
    assert all(e.get("loss") is None or e["loss"] == e["loss"] for e in record["evals"])
    if method != "lora":
        assert record["budget"]["final"]["total_rank"] == record["budget"]["final"]["target_total_rank"]
    saved = load_file(str(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}


@pytest.mark.heavy  # `make test-slow`: four more end-to-end runs
@pytest.mark.parametrize("method", ["increlora", "triadapt"])
def test_allocator_before_the_optimizer_step_runs_in_the_trainer(cfg_factory, shared_data, tmp_path, method):
    """allocator_timing=before_step: HF's on_pre_optimizer_step runs the hook (spec §1.4), given the
    updates already done (t − 1, the released code's step); so its events are after_step's, except
    one at the last step T, which comes after update T and is after_step's alone."""
    runs = {}
    for timing in ("after_step", "before_step"):
        runs[timing] = train(
            cfg_factory(
                "backbone=tiny-deberta",
                "task=rte",
                f"task.data_dir={shared_data}/glue/rte",
                f"method={method}",
                *METHOD_OVERRIDES[method],
                f"method.allocator_timing={timing}",
                "trainer.max_steps=8",
                "trainer.eval_steps=8",
                "trainer.per_device_train_batch_size=8",
                "task.max_eval_samples=16",
                "logger=none",
                f"run_id={method}-{timing}",
            )
        )
    after, before = runs["after_step"], runs["before_step"]
    assert before["status"] == "ok" and before["method_config"]["allocator_timing"] == "before_step"
    last = 8  # trainer.max_steps
    assert [e["step"] for e in before["events"]] == [e["step"] for e in after["events"] if e["step"] < last]
    assert before["events"] and before["events"][-1]["step"] < last
    assert before["budget"]["final"]["total_rank"] == before["events"][-1]["total_rank"]
    assert after["budget"]["final"]["total_rank"] == after["budget"]["final"]["target_total_rank"]
    assert (
        before["run_id"] != after["run_id"]
        and before["config"]["method"]["allocator_timing"] == "before_step"
    )

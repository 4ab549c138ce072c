"""Two processes (torchrun, gloo on CPU) train what one process trains with the same global batch.

Sequential sampling gives both runs the same examples per optimizer step (rank r takes every other
batch of B, the single run batches of 2B); dropout is off, so the only difference left is fp32
summation order (two half-batch gradients averaged vs one full batch, other padding lengths).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from src.train import train
from tests.conftest import ROOT, user_runs

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
BATCH = 4  # per process; the single-process run uses 2 * BATCH
GROWTH = ["budget=r2", "method.init_warmup=2", "method.incre_interval=2"]  # events at steps 4, 6, 8
METHODS = {
    "triadapt": GROWTH,
    # k=5, top_h=3 reach R* = 24 at step 4 with a clipped growth of 2: a spare is split into new tensors
    "increlora": [*GROWTH, "method.incre_rank_num=5", "method.top_h=3"],
    "adalora": ["budget=r2", "method.deltaT=2"],  # masks at steps 2, 4, 6, 8 from DDP-averaged gradients
}
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout", "cls_dropout")
# Observed differences are ~2e-7; one Adam step moves a weight by ~lr = 5e-4, so a tensor whose
# gradient was not averaged (or was initialised differently) would be off by far more than this.
ATOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_args(shared_data, method: str) -> list[str]:
    return [
        "backbone=tiny-deberta",
        "task=rte",
        f"task.data_dir={shared_data}/glue/rte",
        f"method={method}",
        *METHODS[method],
        "task.max_train_samples=64",  # one epoch of 8 steps at the global batch of 8
        "task.max_eval_samples=16",
        "trainer.max_steps=8",
        "trainer.eval_steps=8",
        "trainer.train_sampling_strategy=sequential",
        "trainer.checkpoint=false",
        "logger=none",
        *[f"+backbone.config_overrides.{key}=0.0" for key in DROPOUT_KEYS],
    ]


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_match_one_process_with_the_same_global_batch(
    cfg_factory, shared_data, tmp_path, method
):
    args = run_args(shared_data, method)
    ddp_root = tmp_path / "ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*launch, "--master_port", str(free_port()), "-m", "src.train", *args]
        + [f"trainer.per_device_train_batch_size={BATCH}", f"paths.root_dir={ddp_root}"]
        + [f"paths.output_dir={ddp_root}/out", "run_id=ddp"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((user_runs(ddp_root) / "ddp.json").read_text())
    single = train(cfg_factory(*args, f"trainer.per_device_train_batch_size={2 * BATCH}", "run_id=single"))

    assert (
        ddp["status"] == "ok" and ddp["distributed"]["world_size"] == 2 and ddp["distributed"]["consistent"]
    )
    assert "distributed" not in single
    assert ddp["events"] and [e["step"] for e in ddp["events"]] == [e["step"] for e in single["events"]]
    assert ddp["rank_patterns"] == single["rank_patterns"]  # every allocation decision, not just the last
    # the loss is a per-process mean averaged over processes, not scaled by the process count
    assert ddp["final"]["loss"] == pytest.approx(single["final"]["loss"], abs=ATOL)

    weights = {
        name: load_file(root / "out" / "adapter" / "adapter_model.safetensors")
        for name, root in (("ddp", ddp_root), ("single", tmp_path))
    }
    assert weights["ddp"].keys() == weights["single"].keys()
    for key, tensor in weights["single"].items():
        assert weights["ddp"][key].shape == tensor.shape, key
        if tensor.numel():  # peft drops masked AdaLoRA ranks, leaving some tensors empty
            diff = (weights["ddp"][key] - tensor).abs().max().item()
            assert diff <= ATOL, f"{key}: max |ddp - single| = {diff:.2e}"


STOCK_SCRIPT = """
import json, os, sys
import peft, torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments, default_data_collator
from src.methods import RankGrowthCallback
from src.runtime.backbones import load_model
from tests.test_peft_tuners import examples, tuner_config
from tests.conftest import CONFIG_DIR
from tests.test_distributed import DROPOUT_KEYS

method, out, batch, checkpointing = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
resume = sys.argv[5] if len(sys.argv) > 5 else None  # a checkpoint of an earlier run of this script
backbone = OmegaConf.load(CONFIG_DIR / "backbone" / "tiny-deberta.yaml")
torch.manual_seed(0)
base = load_model(backbone, "seq_cls", 2, 0, **{key: 0.0 for key in DROPOUT_KEYS})
model = peft.get_peft_model(base, tuner_config(method))  # T = 24, events every 2 steps from 4
args = TrainingArguments(
    output_dir=out, per_device_train_batch_size=batch, max_steps=24, learning_rate=5e-3, warmup_steps=2,
    report_to="none", save_strategy="steps", save_steps=8, logging_strategy="no", disable_tqdm=True, use_cpu=True,
    remove_unused_columns=False, train_sampling_strategy="sequential", average_tokens_across_devices=False,
    gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
    ddp_find_unused_parameters=False,
)
callback = RankGrowthCallback()
Trainer(model=model, args=args, train_dataset=examples(128), data_collator=default_data_collator,
        callbacks=[callback]).train(resume_from_checkpoint=resume)
rank = int(os.environ.get("RANK", "0"))
weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
save_file(weights, os.path.join(out, f"rank{rank}.safetensors"))
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"events": [e["step"] for e in callback.events], "ranks": model.base_model.budget()["rank_pattern"]}, f)
"""


@pytest.mark.parametrize("method", ["triadapt", "increlora"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_a_stock_trainer_with_rank_growth_callback_under_torchrun_matches_one_process(
    tmp_path, method, checkpointing
):
    """Also ``train(resume_from_checkpoint=...)`` under torchrun, from step 8, after two events."""
    script = tmp_path / "stock.py"
    script.write_text(STOCK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    flag = "1" if checkpointing else "0"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    runs = {
        "ddp": [*torchrun, "--master_port", str(free_port()), str(script), method, str(tmp_path / "ddp"),
                str(BATCH), flag],
        "single": [sys.executable, str(script), method, str(tmp_path / "single"), str(2 * BATCH), flag],
        "resumed": [*torchrun, "--master_port", str(free_port()), str(script), method,
                    str(tmp_path / "resumed"), str(BATCH), flag, str(tmp_path / "ddp" / "checkpoint-8")],
    }  # fmt: skip
    for name, command in runs.items():
        (tmp_path / name).mkdir()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    read = lambda name, rank: (  # noqa: E731
        json.loads((tmp_path / name / f"rank{rank}.json").read_text()),
        load_file(tmp_path / name / f"rank{rank}.safetensors"),
    )
    single_log, single = read("single", 0)
    assert [e for e in single_log["events"] if e <= 8] == [6, 8]  # the checkpoint is after growth
    for name in ("ddp", "resumed"):
        (log0, rank0), (log1, rank1) = read(name, 0), read(name, 1)
        assert log0 == log1 == single_log, name  # the same events and rank pattern
        assert rank0.keys() == rank1.keys() == single.keys()
        for key, tensor in single.items():
            assert torch.equal(rank0[key], rank1[key]), f"{name} {key}: the two processes differ"
            diff = (rank0[key] - tensor).abs().max().item() if tensor.numel() else 0.0
            assert diff <= ATOL, f"{name} {key}: max |ddp - single| = {diff:.2e}"

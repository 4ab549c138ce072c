"""Shared fixtures: the real Hydra config, composed; tiny offline models; the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers.modeling_outputs import SequenceClassifierOutput

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("WANDB_MODE", "offline")

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()


def user_runs(root: Path) -> Path:
    """Where a run with ``paths.root_dir=root`` writes its record by default (configs/paths/default.yaml,
    the user's untracked folder; the project's sweeps write to results/runs instead)."""
    node = OmegaConf.create({"paths": OmegaConf.load(CONFIG_DIR / "paths" / "default.yaml")})
    node.paths.root_dir = str(root)
    return Path(node.paths.runs_dir)


def compose_config(*overrides: str, tmp_path: Path | None = None):
    """Compose ``configs/train.yaml`` as ``python -m src.train`` would, with outputs under tmp_path."""
    extra = []
    if tmp_path is not None:
        extra = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/out"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*extra, *overrides])


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda *overrides: compose_config(*overrides, tmp_path=tmp_path)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: required in CI (a missing copy is a failure there), skipped locally without it."""
    if not (SHARED_DATA / "glue" / "rte" / "train.jsonl").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the shared real data at {SHARED_DATA}")
        pytest.skip(f"no shared data at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_backbone():
    return OmegaConf.load(CONFIG_DIR / "backbone" / "tiny-deberta.yaml")


class ToyMLP(torch.nn.Module):
    """The spec's toy model (§7): Linear 10→20, ReLU, Linear 20→2, taking labels like an HF model."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin0 = torch.nn.Linear(10, 20)
        self.relu = torch.nn.ReLU()
        self.lin1 = torch.nn.Linear(20, 2)

    def forward(self, x, labels=None):
        logits = self.lin1(self.relu(self.lin0(x)))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

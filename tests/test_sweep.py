"""The sweep configs (configs/sweep/), the SLURM launcher option, and `make glue-sweep` end to end."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src.methods import get_method
from tests.conftest import CONFIG_DIR, ROOT

GLUE = ["mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb"]
METHODS = ["lora", "adalora", "increlora", "triadapt"]


def compose_sweep(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_config)


def grid(cfg) -> dict[str, list[str]]:
    return {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


def resolved(cfg) -> dict:
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "paths"])  # paths need a running Hydra job
    return OmegaConf.to_container(cfg, resolve=True)


def test_glue_grid_is_8_tasks_4_methods_2_budgets_5_seeds():
    cfg = compose_sweep("+sweep=glue", hydra_config=True)
    assert grid(cfg) == {
        "task": GLUE,
        "budget": ["r2", "r8"],
        "method": METHODS,
        "seed": ["41", "42", "43", "44", "45"],
    }
    assert cfg.study == "glue" and cfg.backbone.name == "deberta-v3-base"


@pytest.mark.parametrize("task", GLUE)
def test_glue_sweep_uses_the_per_task_paper_numbers(task):
    """A sweep job composes exactly like the single run of the same task (the task_backbone file applies)."""
    for method in METHODS:
        for budget in ("r2", "r8"):
            args = [f"task={task}", f"method={method}", f"budget={budget}"]
            swept = resolved(compose_sweep("+sweep=glue", *args))
            single = resolved(compose_sweep(*args))
            assert swept.pop("study") == "glue"
            assert swept == single
            assert "paper" in swept  # configs/task_backbone/<task>_deberta-v3-base.yaml was selected


def test_cpu_grid_and_identical_schedules():
    cfg = compose_sweep("+sweep=glue_cpu", hydra_config=True)
    assert grid(cfg) == {"task": ["rte", "mrpc", "stsb", "cola"], "budget": ["r2", "r8"], "method": METHODS,
                         "seed": ["41", "42"]}  # fmt: skip
    trainers = set()
    for task in grid(cfg)["task"]:
        for method in METHODS:
            for budget in ("r2", "r8"):
                c = resolved(
                    compose_sweep("+sweep=glue_cpu", f"task={task}", f"method={method}", f"budget={budget}")
                )
                assert c["backbone"]["name"] == "minilm-l6" and c["study"] == "glue-cpu"
                trainers.add(json.dumps(c["trainer"], sort_keys=True))
                # every method's config is valid at the CPU schedule's T (no T <= warmup errors)
                get_method(method).make_config(
                    c["method"], total_step=c["trainer"]["max_steps"], warmup_steps=6
                )
    assert len(trainers) == 1  # one training schedule for every task, method and budget


def test_slurm_launcher_composes():
    cfg = compose_sweep("+sweep=glue", "hydra/launcher=slurm", hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 1 and launcher.gpus_per_node == 1 and launcher.timeout_min > 0
    assert OmegaConf.select(cfg, "hydra.launcher.partition") is None or isinstance(launcher.partition, str)
    # a timed-out or preempted run is requeued and continues from the checkpoint its signal wrote
    assert launcher.max_num_timeout >= 3 and launcher.signal_delay_s >= 60
    assert cfg.trainer.resume is True
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher  # noqa: F401


def test_the_multi_gpu_launcher_starts_one_task_per_gpu_of_one_node():
    cfg = compose_sweep(
        "+sweep=glue", "hydra/launcher=slurm_multigpu", "hydra.launcher.gpus_per_node=8", hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.nodes == 1
    assert (launcher.gpus_per_node, launcher.tasks_per_node) == (8, 8)
    assert launcher.max_num_timeout >= 3  # everything else as hydra/launcher=slurm


def report_distributed_env() -> dict:
    """What one submitit task sees after src.train's adoption step, and a gloo all-reduce over the tasks."""
    import os

    import torch
    import torch.distributed as dist

    from src.runtime.distributed import adopt_submitit_tasks

    adopt_submitit_tasks()
    dist.init_process_group("gloo")  # env://: the variables adopt_submitit_tasks exported
    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    dist.destroy_process_group()
    return {"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]), "sum": total.item()}


@pytest.mark.slow
def test_submitit_tasks_of_one_run_join_one_process_group(tmp_path):
    import sys

    import cloudpickle
    import submitit

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job process cannot import this file
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(tasks_per_node=2, nodes=1, timeout_min=2)
    job = executor.submit(report_distributed_env)
    results = job.results()
    assert sorted((r["rank"], r["world"], r["sum"]) for r in results) == [(0, 2, 3.0), (1, 2, 3.0)]


def make(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE", "GLUE_DIR", "SWEEP_ARGS", "MAKEFLAGS")}
    return subprocess.run(["make", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_make_glue_sweep_skips_ok_runs_unless_forced():
    plain, forced = make("-n", "glue-sweep"), make("-n", "glue-sweep", "FORCE=1")
    assert "+sweep=glue skip_existing=true" in plain.stdout and "task.data_dir" not in plain.stdout
    assert "skip_existing=false" in forced.stdout
    local = make("-n", "glue-sweep-cpu", "DATA_DIR=/data/glue")
    assert "+sweep=glue_cpu skip_existing=true" in local.stdout
    assert "'task.data_dir=/data/glue/${task.name}'" in local.stdout


@pytest.mark.heavy  # `make test-slow`: four runs and a table through make, about 30 s
def test_make_glue_sweep_on_tiny_deberta_writes_records_and_a_table(shared_data, tmp_path):
    overrides = [
        "backbone=tiny-deberta", "task=rte,mrpc", "method=lora,triadapt", "budget=r2", "seed=41",
        "trainer.max_steps=2", "trainer.eval_steps=2", "task.max_train_samples=64", "task.max_eval_samples=32",
        "+paper.increlora.r2.interval=1",  # TriAdaptLoRA's T_w = Δ = 1, so T = 2 steps is a valid schedule
        "save_adapter=false", "logger=none", f"paths.root_dir={tmp_path}",
    ]  # fmt: skip
    sweep = make(
        "glue-sweep", f"GLUE_DIR={shared_data}/glue", f"SWEEP_ARGS={' '.join(overrides)}", timeout=300
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "runs").glob("*.json"))]
    assert sorted((r["task"], r["method"]) for r in records) == [
        ("mrpc", "lora"), ("mrpc", "triadapt"), ("rte", "lora"), ("rte", "triadapt"),
    ]  # fmt: skip
    assert all(r["status"] == "ok" and r["config"]["study"] == "glue" for r in records)
    assert {r["config"]["task"]["data_dir"] for r in records} == {
        f"{shared_data}/glue/rte",
        f"{shared_data}/glue/mrpc",
    }
    tables = make("tables", f"RUNS={tmp_path}/results/runs", f"TABLES_DIR={tmp_path}/tables")
    assert tables.returncode == 0, tables.stderr
    md = (tmp_path / "tables" / "glue_glue_tiny-deberta.md").read_text()
    assert "| Method | r̄ | #Params | RTE | MRPC |" in md
    assert "| LoRA | 2 |" in md and "| TriAdaptLoRA | 2 |" in md and "(n=1)" in md
    assert (tmp_path / "tables" / "glue_glue_tiny-deberta.tex").is_file()

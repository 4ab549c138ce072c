"""Two places for records: a user's runs go to an untracked folder (my_results/) with their own
tables, the shipped study stays in results/ and changes only when the project regenerates it; and a
run's console is its own output, ending with the run summary (library noise goes to its log file)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src.records import config_hash
from tests.conftest import ROOT, compose_config, user_runs

_spec = importlib.util.spec_from_file_location("make_tables", ROOT / "scripts" / "make_tables.py")
make_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_tables)
with_user_defaults = make_tables.with_user_defaults

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def make_dry_run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RESULTS", "RUNS", "TABLES_DIR", "MAKEFLAGS")}
    return subprocess.run(
        ["make", "-n", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def resolved(*overrides: str) -> dict:
    cfg = compose_config("paths.root_dir=/repo", "paths.output_dir=/repo/out", *overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def test_a_run_writes_to_the_users_folder_and_make_results_builds_that_folder():
    paths = resolved("backbone=tiny-deberta", "task=rte", "task.data_dir=unused")["paths"]
    assert paths["runs_dir"] == "/repo/my_results/runs" == str(user_runs(Path("/repo")))
    assert "--runs my_results/runs --results my_results" in make_dry_run("results")
    assert "--runs my_results/runs --out my_results/tables" in make_dry_run("tables")
    assert "--runs my_results/runs --out my_results/figures" in make_dry_run("figures")
    # the project regenerates its study on purpose, and the check always reads the committed one
    assert "--runs results/runs --results results" in make_dry_run("results", "RESULTS=results")
    assert "--runs results/runs --results results --check" in make_dry_run("check-results")
    assert "--runs results/runs --results results --check" in make_dry_run("check-results", "RESULTS=x")


def test_the_tables_script_defaults_to_the_users_folder_too(tmp_path):
    runs = user_runs(tmp_path)
    runs.mkdir(parents=True)
    record = json.loads(next((ROOT / "results" / "runs").glob("rte-lora-minilm-l6-*.json")).read_text())
    (runs / f"{record['run_id']}.json").write_text(
        json.dumps({**record, "config": {**record["config"], "study": "mine"}})
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_tables.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert (runs.parent / "tables" / "glue_mine_minilm-l6.md").is_file()
    assert with_user_defaults(["--out=elsewhere", "--anchors"]) == [
        "--runs",
        "my_results/runs",
        "--out=elsewhere",
        "--anchors",
    ]


@pytest.mark.parametrize(
    "sweep", ["+sweep=glue", "+sweep=glue_cpu task.data_dir=unused", "+sweep=cpu_repro task.data_dir=unused"]
)
def test_the_sweeps_of_the_shipped_study_write_to_results_with_unchanged_run_ids(sweep):
    study = resolved(*sweep.split())
    assert study["paths"]["runs_dir"] == "/repo/results/runs"
    # paths is not part of a run's identity: the same run in the user's folder has the same id
    mine = {**study, "paths": resolved("task.data_dir=unused")["paths"]}
    assert mine["paths"]["runs_dir"] == "/repo/my_results/runs"
    assert config_hash(mine) == config_hash(study)


def test_the_users_folder_is_ignored_by_git_and_results_is_not():
    ignored = subprocess.run(["git", "check-ignore", "-q", "my_results/runs/x.json"], cwd=ROOT, check=False)
    tracked = subprocess.run(["git", "check-ignore", "-q", "results/runs/x.json"], cwd=ROOT, check=False)
    assert (ignored.returncode, tracked.returncode) == (0, 1)


@pytest.fixture(scope="module")
def adhoc_run(tmp_path_factory, shared_data):
    """A committed copy of what git tracks of the study (results/, Makefile, .gitignore), and one real
    ad-hoc run made in it as a user makes one: from its root, default paths and logger (W&B,
    offline). Pretrained MiniLM-L6, whose new classifier head transformers reports on loading."""
    repo = tmp_path_factory.mktemp("checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--", "results", "Makefile", ".gitignore"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, tracked):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    subprocess.run([*GIT, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "the shipped study"], cwd=repo, check=True)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PROJECT_ROOT", "CI", "MAKEFLAGS", "RESULTS")},
        "PYTHONPATH": str(ROOT),  # the code under test; the checkout holds only what it writes to
        "WANDB_MODE": "offline",
        **dict.fromkeys(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"), "1"),
    }
    args = [
        "backbone=minilm-l6", "task=rte", f"task.data_dir={shared_data}/glue/rte", "method=lora",
        "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.logging_steps=1", "task.max_length=64",
        "trainer.per_device_train_batch_size=8", "task.max_train_samples=32", "task.max_eval_samples=16",
    ]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # the console, as a terminal shows both streams
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    return repo, env, run.stdout


@pytest.mark.slow
def test_an_adhoc_run_and_make_results_leave_the_checkout_clean(adhoc_run):
    repo, env, _ = adhoc_run
    [record] = (repo / "my_results" / "runs").glob("rte-lora-minilm-l6-*.json")
    made = subprocess.run(
        ["make", "results", f"PY={sys.executable}"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    assert (repo / "my_results" / "tables" / "glue_adhoc_minilm-l6.md").is_file()
    assert "not committed" not in made.stdout  # the user's folder is never committed: no reminder
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, text=True,
                            capture_output=True, check=True).stdout  # fmt: skip
    assert status == "", f"the run ({record.name}) or make results changed the checkout:\n{status}"


@pytest.mark.slow
def test_the_console_is_the_runs_own_output_ending_with_the_summary(adhoc_run):
    repo, _, console = adhoc_run
    noise = [
        "wandb:",
        "LOAD REPORT",
        "Run history",
        "Running in WANDB offline mode",
        "is_gradient_checkpointing",
    ]
    assert [line for line in console.splitlines() if any(n in line for n in noise)] == []
    tail = console.rstrip().splitlines()[-8:]
    [record] = (repo / "my_results" / "runs").glob("*.json")
    assert tail[0].endswith("run summary") and tail[1] == f"  run        {record.stem}  ok"
    assert tail[6] == f"  record     my_results/runs/{record.name}"
    assert tail[7].startswith("  W&B        offline; upload with `wandb sync ") and record.stem in tail[7]
    # ... and the noise is in the run's log file, for when something did go wrong
    [log] = (repo / "outputs").glob("*/*/train.log")
    text = log.read_text()
    for line in [
        "LOAD REPORT",
        "classifier.weight | MISSING",
        "wandb: Run summary:",
        "Running in WANDB offline",
    ]:
        assert line in text

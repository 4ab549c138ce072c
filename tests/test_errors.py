"""Bad input fails with one actionable line; in a multirun a failed job is recorded and summarised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import src.runtime.backbones
import src.tasks
import src.train
from src.hub import HubUnavailableError
from src.runtime.sweep_callbacks import format_summary, summarise_sweep
from src.schema import ConfigError
from src.tasks.sources import DataError
from src.train import train
from tests.conftest import user_runs
from tests.test_end_to_end import cli, records

TINY = ["backbone=tiny-deberta", "task=rte", "logger=none", "save_adapter=false", "method=lora"]
SHORT = [
    "trainer.max_steps=2",
    "trainer.eval_steps=2",
    "task.max_train_samples=16",
    "task.max_eval_samples=8",
]


def small_rte(shared_data: Path, dest: Path, train_lines: int = 30) -> Path:
    """A few lines of the real RTE files, for corrupting."""
    dest.mkdir()
    for split, n in (("train", train_lines), ("validation", 10)):
        lines = (shared_data / "glue" / "rte" / f"{split}.jsonl").read_text().splitlines(keepends=True)
        (dest / f"{split}.jsonl").write_text("".join(lines[:n]))
    return dest


def corrupt_line(path: Path, number: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = lines[number - 1][:40] + "\n"  # cut inside the first string: unterminated
    path.write_text("".join(lines))


def failed_record(tmp_path: Path) -> dict:
    [record] = records(tmp_path)
    assert record["status"] == "failed"
    return record


def assert_nothing_written(root: Path) -> None:
    """No record, no checkpoint folder, no W&B run: what a config that fails its checks leaves."""
    assert not records(root)
    assert not (root / "checkpoints").exists()
    assert not list(root.rglob("wandb"))


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if the run gets as far as loading a tokenizer, data or a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the bad value was not caught before loading")

    # where train() looks each one up when it runs
    monkeypatch.setattr(src.train, "ensure_offline_mode_if_unreachable", refuse)
    monkeypatch.setattr(src.runtime.backbones, "load_tokenizer", refuse)
    monkeypatch.setattr(src.runtime.backbones, "load_model", refuse)
    monkeypatch.setattr(src.tasks, "prepare_task", refuse)


# One case per class of field: (overrides, the line's regex). Each fails before anything loads.
BAD_VALUES = {
    # wrong type, in each group
    "type-trainer": (["trainer.learning_rate=abc"], r"^trainer\.learning_rate='abc' is a string; set it to a number$"),
    "type-task": (["task.max_length=long"], r"^task\.max_length='long' is a string; set it to an integer$"),
    "type-bool": (["trainer.fp16=maybe"], r"^trainer\.fp16='maybe' is a string; set it to true or false$"),
    "type-backbone": (["backbone.target_modules=query_proj"], r"^backbone\.target_modules='query_proj' is a string; set it to a list of strings$"),
    "type-logger": (["logger=wandb", "logger.tags=oops"], r"^logger\.tags='oops' is a string; set it to a list of strings or null$"),
    "type-paths": (["paths.runs_dir=[a,b]"], r"^paths\.runs_dir=\['a', 'b'\] is a list; set it to a string$"),
    "type-budget": (["budget.avg_rank=8.5"], r"^budget\.avg_rank=8\.5 is a float; set it to an integer$"),
    "type-top": (["seed=forty"], r"^seed='forty' is a string; set it to an integer$"),
    # unknown keys
    "unknown-near": (["+trainer.learning_rte=1e-3"], r"^trainer\.learning_rte is not a known key; rename it to trainer\.learning_rate or remove it$"),
    "unknown-task": (["+task.max_lenght=64"], r"^task\.max_lenght is not a known key; rename it to task\.max_length or remove it$"),
    "unknown-top": (["+lr=0.1"], r"^lr is not a known key; remove it \(known keys of the config: seed, run_id, .*\)$"),
    "missing": (["~task.label_field"], r"^task\.label_field is missing; add it to the YAML or pass \+task\.label_field=<value>$"),
    # out of range
    "batch": (["trainer.per_device_train_batch_size=0"], r"^trainer\.per_device_train_batch_size=0 is out of range; set it to an integer >= 1$"),
    "eval-batch": (["trainer.per_device_eval_batch_size=-8"], r"^trainer\.per_device_eval_batch_size=-8 is out of range; set it to an integer >= 1$"),
    "accumulation": (["trainer.gradient_accumulation_steps=0"], r"gradient_accumulation_steps=0 is out of range; set it to an integer >= 1$"),
    "length": (["task.max_length=0"], r"^task\.max_length=0 is out of range; set it to an integer >= 1$"),
    "epochs": (["trainer.num_train_epochs=0"], r"^trainer\.num_train_epochs=0 is out of range; set it to a number > 0$"),
    "steps": (["trainer.max_steps=0"], r"^trainer\.max_steps=0 is out of range; set it to an integer >= 1, or -1 to train for trainer\.num_train_epochs$"),
    "warmup": (["trainer.warmup=-0.1"], r"^trainer\.warmup=-0\.1 is out of range; set it to a number >= 0$"),
    "warmup-steps": (["trainer.warmup=2.5"], r"^trainer\.warmup=2\.5 is neither a fraction \(< 1\) nor a whole number of steps"),
    "eval-cadence": (["trainer.eval_steps=0"], r"^trainer\.eval_steps=0 is out of range; set it to an integer >= 1$"),
    "logging-cadence": (["trainer.logging_steps=0"], r"^trainer\.logging_steps=0 is out of range; set it to an integer >= 1$"),
    "save-cadence": (["trainer.save_steps=-5"], r"^trainer\.save_steps=-5 is out of range; set it to an integer >= 1$"),
    "dropout": (["+backbone.config_overrides.cls_dropout=1.5"], r"^backbone\.config_overrides\.cls_dropout=1\.5 is out of range; set it to a number >= 0 and < 1$"),
    "lr-zero": (["trainer.learning_rate=0"], r"^trainer\.learning_rate=0 is out of range; set it to a number > 0$"),
    "lr-negative": (["trainer.learning_rate=-1e-3"], r"^trainer\.learning_rate=-0\.001 is out of range; set it to a number > 0$"),
    "rank": (["budget.avg_rank=0"], r"^budget\.avg_rank=0 is out of range; set it to an integer >= 1$"),
    "samples": (["task.max_train_samples=0"], r"^task\.max_train_samples=0 is out of range; set it to an integer >= 1$"),
    "seed": (["seed=-1"], r"^seed=-1 is out of range; set it to an integer >= 0 and < 4294967296$"),
    "nested": (["task=squad", "task.split_from={source: validation, eval_fraction: 1.5, seed: 0}"], r"^task\.split_from\.eval_fraction=1\.5 is out of range; set it to a number > 0 and < 1$"),
    "generation": (["backbone=tiny-t5", "task=xsum", "task.generation.num_beams=0"], r"^task\.generation\.num_beams=0 is out of range; set it to an integer >= 1$"),
    # choices and relations
    "choice": (["trainer.train_sampling_strategy=sorted"], r"^trainer\.train_sampling_strategy='sorted' is not supported; use one of \['random', 'sequential', 'group_by_length'"),
    "choice-metric": (["task.metrics=[acc]"], r"^task\.metrics\[0\]='acc' is not supported; use one of \['accuracy', 'f1'"),
    "precision": (["trainer.bf16=true", "trainer.fp16=true"], r"^trainer\.bf16 and trainer\.fp16 are both true; set one of them to false$"),
    "head": (["backbone=tiny-llama", "task=squad"], r"^backbone=tiny-llama has no 'qa' head for task=squad \(its heads: \['causal_lm', 'seq_cls'\]\); pick another backbone"),
    "interpolation": (["trainer.learning_rate=${paper.nothing}"], r"^trainer\.learning_rate does not resolve \(Interpolation key 'paper\.nothing' not found\); set the key it refers to"),
}  # fmt: skip


@pytest.mark.parametrize("overrides,match", BAD_VALUES.values(), ids=BAD_VALUES)
def test_a_bad_config_value_is_one_line_before_anything_loads(
    cfg_factory, nothing_loads, tmp_path, overrides, match
):
    with pytest.raises(ConfigError, match=match) as caught:
        train(cfg_factory(*TINY, *SHORT, "task.data_dir=unused", *overrides))
    assert "\n" not in str(caught.value)
    assert not user_runs(tmp_path).parent.exists()  # no record: a config that does not check is not a run


def test_several_bad_values_are_named_on_the_one_line(cfg_factory, nothing_loads):
    cfg = cfg_factory(*TINY, *SHORT, "trainer.learning_rate=0", "trainer.logging_steps=0")
    with pytest.raises(
        ConfigError, match=r"^trainer\.learning_rate=0 .* \(and 1 more: trainer\.logging_steps=0 "
    ):
        train(cfg)


@pytest.mark.parametrize(
    "task,num_labels,match",
    [
        ("rte", 3, r"task\.num_labels=3 but the 'train' split of task 'rte' has 2 classes \[0, 1\]; set task\.num_labels=2$"),
        ("mrpc", 1, r"task\.num_labels=1 \(regression\) but the 'train' split of task 'mrpc' has integer class labels \[0, 1\]; set task\.num_labels=2"),
        ("stsb", 2, r"task\.num_labels=2 but the 'train' split of task 'stsb' has real-valued labels \(e\.g\. 0\.\d+\); set task\.num_labels=1 for regression$"),
    ],
)  # fmt: skip
def test_num_labels_that_disagree_with_the_data_stop_before_the_model_loads(
    cfg_factory, shared_data, monkeypatch, tmp_path, task, num_labels, match
):
    monkeypatch.setattr(src.runtime.backbones, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    cfg = cfg_factory(
        *TINY,
        *SHORT,
        f"task={task}",
        f"task.data_dir={shared_data}/glue/{task}",
        f"task.num_labels={num_labels}",
    )
    with pytest.raises(DataError, match=match):
        train(cfg)
    assert_nothing_written(tmp_path)  # a config that does not check is not a run


def test_labels_beyond_num_labels_in_an_eval_split_are_refused(cfg_factory, shared_data, tmp_path):
    data = small_rte(shared_data, tmp_path / "rte")
    lines = (data / "validation.jsonl").read_text().replace('"label": 1', '"label": 2')
    (data / "validation.jsonl").write_text(lines)
    with pytest.raises(
        DataError, match=r"the 'validation' split of task 'rte' has labels \[0, 2\]; set task\.num_labels=3$"
    ):
        train(cfg_factory(*TINY, *SHORT, f"task.data_dir={data}"))


def test_malformed_jsonl_names_the_file_and_the_line(cfg_factory, shared_data, tmp_path):
    data = small_rte(shared_data, tmp_path / "rte")
    corrupt_line(data / "train.jsonl", 7)
    with pytest.raises(DataError, match=r"rte/train\.jsonl: line 7 is not valid JSON .*; fix or delete"):
        train(cfg_factory(*TINY, *SHORT, f"task.data_dir={data}"))
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "make_dir,match",
    [
        (lambda root: root / "missing", r"'.*/missing' is not a directory; point it at a folder"),
        (
            lambda root: root / "empty",
            r"'.*/empty' is empty; expected train\.jsonl and validation\.jsonl \(or \.json/\.parquet/\.csv\)",
        ),
    ],
    ids=["missing", "empty"],
)
def test_missing_or_empty_data_dir(cfg_factory, tmp_path, make_dir, match):
    data_dir = make_dir(tmp_path)
    if data_dir.name == "empty":
        data_dir.mkdir()
    with pytest.raises(DataError, match=rf"task\.data_dir={match}"):
        train(cfg_factory(*TINY, *SHORT, f"task.data_dir={data_dir}"))


@pytest.mark.parametrize(
    "override,match",
    [
        (
            "task.eval_splits.validation=dev",
            r"no file for split 'dev' .*present: \['train\.jsonl', 'validation\.jsonl'\]\); "
            r"add it or set task\.train_split / task\.eval_splits",
        ),
        (
            "task.label_field=gold",
            r"lacks column\(s\) \['gold'\]; it has .*set task\.text_fields / task\.label_field",
        ),
    ],
    ids=["split", "column"],
)
def test_unknown_split_or_column(cfg_factory, shared_data, override, match):
    with pytest.raises(DataError, match=match):
        train(cfg_factory(*TINY, *SHORT, f"task.data_dir={shared_data}/glue/rte", override))


def test_unsupported_optimizer_names_the_choices(cfg_factory, shared_data):
    cfg = cfg_factory(*TINY, *SHORT, f"task.data_dir={shared_data}/glue/rte", "trainer.optim=adafactor")
    with pytest.raises(
        ValueError, match=r"trainer\.optim='adafactor' is not supported; use one of \['adamw_torch'"
    ):
        train(cfg)


def test_target_modules_matching_nothing_list_the_linear_names(cfg_factory, shared_data, tmp_path):
    cfg = cfg_factory(
        *TINY, *SHORT, f"task.data_dir={shared_data}/glue/rte", "backbone.target_modules=[q_proj]"
    )
    with pytest.raises(
        ValueError,
        match=r"matches target_modules \['q_proj'\]; its nn\.Linear leaf names are \[.*'query_proj'.*\]; "
        r"set backbone\.target_modules",
    ):
        train(cfg)
    assert failed_record(tmp_path)["error"].startswith("ValueError: no module of")


@pytest.mark.parametrize(
    "method,overrides,match",
    [
        (
            "triadapt",
            ["method.init_warmup=5"],
            r"total_step=2 must exceed init_warmup=5.*lower method\.init_warmup",
        ),
        ("triadapt", ["method.init_warmup=0", "method.incre_interval=0"], r"incre_interval=0 must be >= 1"),
        (
            "increlora",
            ["method.init_warmup=0", "method.incre_interval=0"],
            r"method\.incre_interval must be >= 1",
        ),
        (
            "increlora",
            ["method.init_warmup=2"],
            r"total_step \(2\) must exceed init_warmup \(2\).*train longer",
        ),
        (
            "adalora",
            ["method.tinit=1", "method.tfinal=1"],
            r"tinit \(1\) \+ tfinal \(1\) >= total_step \(2\)",
        ),
        ("adalora", ["method.tinit=-1"], r"method\.tinit must be >= 0, got -1"),
    ],
)
def test_impossible_schedule_names_the_fields(cfg_factory, shared_data, method, overrides, match):
    # fit_schedule=false: the methods' own checks (by default a run too short for its schedule is
    # fitted to it instead; tests/test_short_runs.py)
    strict = "trainer.fit_schedule=false"
    cfg = cfg_factory(
        *TINY, *SHORT, f"task.data_dir={shared_data}/glue/rte", f"method={method}", strict, *overrides
    )
    with pytest.raises(ValueError, match=match):
        train(cfg)


def test_hub_name_while_offline_names_it_and_the_local_override(cfg_factory, shared_data):
    cfg = cfg_factory(
        *TINY, *SHORT, f"task.data_dir={shared_data}/glue/rte", "backbone=minilm-l6",
        "backbone.pretrained=nobody/missing-model",
    )  # fmt: skip
    with pytest.raises(
        HubUnavailableError, match=r"'nobody/missing-model'.*offline.*supply local files with `backbone\."
    ):
        train(cfg)


def test_nan_loss_stops_the_run_with_the_step_and_the_learning_rate(cfg_factory, shared_data, tmp_path):
    cfg = cfg_factory(
        *TINY, *SHORT, f"task.data_dir={shared_data}/glue/rte", "trainer.max_steps=4",
        "trainer.logging_steps=1", "trainer.learning_rate=1e9",
    )  # fmt: skip
    with pytest.raises(
        FloatingPointError, match=r"^loss is nan at step \d; lower trainer\.learning_rate \(now 1e\+09\)"
    ):
        train(cfg)
    assert failed_record(tmp_path)["error"].startswith("FloatingPointError: loss is nan")


def test_summary_counts_a_job_that_never_reported_as_failed(tmp_path):
    for job, status in (("0", {"status": "ok", "error": None}), ("1", None)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n- task=rte\n")
        if status:
            (tmp_path / job / "status.json").write_text(
                json.dumps({"run_id": "r0", **status, "record": None, "overrides": ["seed=0", "task=rte"]})
            )
    summary = summarise_sweep(tmp_path)
    assert (summary["ok"], summary["failed"]) == (1, 1)
    assert summary["failures"][0]["overrides"] == ["seed=1", "task=rte"]
    assert format_summary(summary).splitlines()[1] == (
        "  failed: seed=1: no status.json: the job was killed, timed out or is still running"
    )


# -- through the command line ---------------------------------------------------------------------
@pytest.mark.slow
def test_cli_malformed_jsonl_is_one_error_line(shared_data, tmp_path):
    data = small_rte(shared_data, tmp_path / "rte")
    corrupt_line(data / "validation.jsonl", 3)
    proc = cli(*TINY, *SHORT, f"task.data_dir={data}", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {data}/validation.jsonl: line 3 is not valid JSON"), last


@pytest.mark.slow
def test_cli_bad_config_value_is_one_error_line_and_no_record(tmp_path):
    proc = cli(*TINY, *SHORT, "trainer.per_device_train_batch_size=0", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: trainer.per_device_train_batch_size=0 is out of range; set it to an integer >= 1"
    ]
    assert not user_runs(tmp_path).parent.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "group,choices", [("backbone", ["tiny-deberta", "minilm-l6"]), ("task", ["rte", "mrpc"])]
)
def test_cli_unknown_option_lists_the_choices(tmp_path, group, choices):
    proc = cli(f"{group}=nope", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"Could not find '{group}/nope'" in proc.stderr
    listed = proc.stderr.split(f"Available options in '{group}':")[1].split()
    assert set(choices) <= set(listed)


@pytest.mark.slow
def test_cli_nan_loss_is_one_error_line(shared_data, tmp_path):
    proc = cli(
        *TINY, *SHORT, f"task.data_dir={shared_data}/glue/rte", "trainer.max_steps=4",
        "trainer.logging_steps=1", "trainer.learning_rate=1e9", f"paths.root_dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: loss is nan at step")


@pytest.mark.slow
def test_multirun_with_a_diverging_job_summarises_the_failure(shared_data, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(
        "-m", *TINY, *SHORT, f"task.data_dir={shared_data}/glue/rte", "trainer.max_steps=4",
        "trainer.logging_steps=1", "trainer.learning_rate=5e-4,1e9", f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_status = {r["status"]: r for r in records(tmp_path)}
    assert set(by_status) == {"ok", "failed"}
    assert by_status["failed"]["error"].startswith("FloatingPointError: loss is nan at step")
    assert by_status["failed"]["config"]["trainer"]["learning_rate"] == 1e9
    statuses = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/status.json")}
    assert {s["status"] for s in statuses.values()} == {"ok", "failed"}
    assert all(Path(s["record"]).is_file() for s in statuses.values())
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["ok"], summary["failed"]) == (1, 1)
    [failure] = summary["failures"]
    assert (
        failure["run_id"] == by_status["failed"]["run_id"]
        and "trainer.learning_rate=1000000000.0" in failure["overrides"]
    )
    assert "1 ok, 1 failed" in proc.stdout
    assert "  failed: trainer.learning_rate=1000000000.0: FloatingPointError: loss is nan" in proc.stdout

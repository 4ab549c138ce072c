"""Tables, figures, notebooks and the W&B importer, from a fixture set of run records (offline, fast)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from omegaconf import OmegaConf

from src.reporting import figures as plots
from src.reporting import tables as report
from src.reporting.wandb_import import (
    find_offline_runs,
    iter_wandb_records,
    latest_per_run,
    read_offline_run,
    reconstruct_record,
    record_from_offline_run,
    records_from_api,
)
from src.runtime.tracking import WANDB_RECORD_FILE, RunTracker
from tests.conftest import ROOT
from tests.fixtures.records import fixture_records, record, write_fixture_records

EXPECTED = Path(__file__).parent / "fixtures" / "expected"


def tables_by_name(records, **kwargs) -> dict[str, report.Table]:
    return {t.name: t for t in report.build_tables(records, **kwargs)}


# -- tables ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(EXPECTED.glob("*.md")), ids=lambda p: p.stem)
def test_tables_match_the_expected_markdown(path):
    anchors = path.stem.endswith("_anchors")
    tables = tables_by_name(fixture_records(), anchors=anchors)
    assert tables[path.stem.removesuffix("_anchors")].to_markdown() == path.read_text()


def test_every_table_is_checked_against_an_expected_file():
    assert {f"{name}.md" for name in tables_by_name(fixture_records())} <= {
        p.name for p in EXPECTED.glob("*.md")
    }


def test_failed_and_unfinished_runs_are_listed_not_counted():
    glue = tables_by_name(fixture_records())["glue_fixture_tiny-deberta"]
    triadapt = next(row for row in glue.rows if row[0] == "TriAdaptLoRA")
    assert triadapt[glue.header.index("RTE")] == "72.00 (n=1)"  # seed 41 only: 42 failed, 43 unfinished
    notes = "\n".join(glue.notes)
    assert "1 failed run(s): rte-triadapt-tiny-deberta-r2-s42" in notes
    assert "1 unfinished run(s) (status running): rte-triadapt-tiny-deberta-r2-s43" in notes


def test_uneven_seed_counts_are_shown_per_cell():
    glue = tables_by_name(fixture_records())["glue_fixture_tiny-deberta"]
    lora8 = glue.rows[0]
    assert lora8[:2] == ["LoRA", "8"]
    assert lora8[glue.header.index("RTE")] == "71.00 ± 1.00 (n=3)"  # 70, 72, 71
    assert lora8[glue.header.index("MRPC")] == "85.00 ± 1.41 (n=2)"


def test_a_missing_metric_is_a_dash_never_zero():
    records = fixture_records()
    nan_record = record("qnli", "lora", 2, 41)
    nan_record["best"]["accuracy"] = math.nan
    glue = tables_by_name([*records, nan_record])["glue_fixture_tiny-deberta"]
    lora2 = next(row for row in glue.rows if row[:2] == ["LoRA", "2"])
    assert lora2[glue.header.index("QQP acc")] == "85.00 (n=1)"
    assert lora2[glue.header.index("QQP F1")] == report.DASH  # the record has no f1
    assert lora2[glue.header.index("QNLI")] == report.DASH  # NaN
    assert lora2[-2:] == [report.DASH, report.DASH]  # averages need every task
    assert not any(cell.startswith("0.00") for row in glue.rows for cell in row)


def test_averages_use_the_right_metric_per_task():
    """Distinct values per metric, so a wrong metric anywhere changes the averages."""
    best = {
        "mnli": {"matched_accuracy": 0.80, "mismatched_accuracy": 0.90},
        "sst2": {"accuracy": 0.95},
        "cola": {"matthews": 0.60, "accuracy": 0.10},
        "qqp": {"accuracy": 0.90, "f1": 0.70},
        "qnli": {"accuracy": 0.92},
        "rte": {"accuracy": 0.75},
        "mrpc": {"accuracy": 0.85, "f1": 0.99},
        "stsb": {"pearson": 0.88, "spearman": 0.80, "pearson_spearman_mean": 0.84},
    }
    records = []
    for task, metrics in best.items():
        r = record(task, "lora", 8, 41)
        r["best"] = metrics
        records.append(r)
    glue = tables_by_name(records)["glue_fixture_tiny-deberta"]
    row = glue.rows[0]
    one_metric = (80 + 95 + 60 + 90 + 92 + 75 + 85 + 88) / 8  # MNLI-m, QQP acc, STS-B Pearson, MRPC acc
    task_mean = (85 + 95 + 60 + 80 + 92 + 75 + 85 + 84) / 8  # MNLI (m+mm)/2, QQP (acc+F1)/2, STS-B (P+S)/2
    assert row[glue.header.index("Avg (8-metric)")] == f"{one_metric:.2f}"
    assert row[glue.header.index("Avg (task mean)")] == f"{task_mean:.2f}"
    assert row[glue.header.index("STS-B")] == "88.00 (n=1)"  # Pearson, the selection metric


def test_published_rows_reproduce_the_papers_averages():
    """Spec §8: All Ave. as printed, and the 8-metric recomputation, from the per-task numbers."""
    printed = {  # (label, r̄) -> (All Ave., 8-metric)
        ("Full FT", None): (88.09, 88.25),
        ("LoRA", 8): (88.34, 88.50),
        ("AdaLoRA", 8): (89.31, 89.46),
        ("LoRA", 2): (88.15, 88.32),
        ("AdaLoRA", 2): (88.86, 89.03),
    }
    rows = report.anchor_rows(report.ANCHOR_GLUE, report.GLUE_COLUMNS, report.GLUE_TASKS)
    for row in rows:
        key = (row[0].removesuffix(" (published)"), None if row[1] == report.DASH else int(row[1]))
        all_ave, eight = printed[key]
        assert abs(float(row[-2]) - eight) <= 0.011 and abs(float(row[-1]) - all_ave) <= 0.011, row


def test_anchor_rows_only_when_asked():
    assert not any("published" in row[0] for t in report.build_tables(fixture_records()) for row in t.rows)


def test_percent_values_in_records_are_refused():
    bad = record("rte", "lora", 8, 41)
    bad["best"]["accuracy"] = 71.0
    with pytest.raises(ValueError, match="not a fraction"):
        report.build_tables([bad])


def test_studies_and_backbones_are_separate_tables():
    names = set(tables_by_name(fixture_records()))
    assert "glue_adhoc_minilm-l6" in names and "glue_fixture_tiny-deberta" in names


def test_cli_writes_markdown_and_latex(tmp_path):
    runs = write_fixture_records(tmp_path / "runs")
    report.main(["--runs", str(runs), "--out", str(tmp_path / "tables")])
    tex = (tmp_path / "tables" / "glue_fixture_tiny-deberta.tex").read_text()
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "effective\\_adapter" in tex
    assert "—" not in tex and "±" not in tex  # escaped for LaTeX
    md = (tmp_path / "tables" / "glue_fixture_tiny-deberta.md").read_text()
    assert md == (EXPECTED / "glue_fixture_tiny-deberta.md").read_text()


def at_lr(rec: dict, lr: float, study: str = "sweep") -> dict:
    """``rec`` run at learning rate ``lr`` in ``study``, with a run id of its own."""
    rec = copy.deepcopy(rec)
    rec["config"]["trainer"] = {"learning_rate": lr}
    rec["config"]["study"] = study
    rec["run_id"] += f"-lr{lr:g}"
    return rec


def test_runs_at_another_learning_rate_are_another_cell_not_a_rerun():
    low = at_lr(record("rte", "lora", 8, 41), 1e-3)  # 70.00
    high = at_lr(record("rte", "lora", 8, 42), 1e-2)  # 72.00
    high["seed"] = high["config"]["seed"] = 41  # the same seed, finished later: not a rerun of `low`
    glue = tables_by_name([low, high])["glue_sweep_tiny-deberta"]
    assert glue.header[:4] == ["Method", "LR", "r̄", "#Params"]
    assert [row[:2] + [row[glue.header.index("RTE")]] for row in glue.rows] == [
        ["LoRA", "1e-3", "70.00 (n=1)"],
        ["LoRA", "1e-2", "72.00 (n=1)"],
    ]
    assert not any("Superseded" in note for note in glue.notes)
    unknown = record("rte", "lora", 8, 43)  # 71.00, written before records stored the trainer config
    glue = tables_by_name([low, high, {**unknown, "config": {**unknown["config"], "study": "sweep"}}])
    rows = [row[:2] + [row[4]] for row in glue["glue_sweep_tiny-deberta"].rows]
    assert rows == [
        ["LoRA", "—", "71.00 (n=1)"],
        ["LoRA", "1e-3", "70.00 (n=1)"],
        ["LoRA", "1e-2", "72.00 (n=1)"],
    ]


def test_a_table_names_the_learning_rate_of_each_row():
    tuned = [at_lr(record("rte", "lora", 8, 41), 1e-3), at_lr(record("mrpc", "lora", 8, 41), 3e-4)]
    tuned.append(at_lr(record("rte", "adalora", 8, 41), 1e-2))
    glue = tables_by_name(tuned)["glue_sweep_tiny-deberta"]
    assert "LR" not in glue.header  # one rate per cell: no row per rate
    assert (
        "Learning rate (trainer.learning_rate) per row: LoRA r8: 3e-4 (MRPC); 1e-3 (RTE) | AdaLoRA r8: 1e-2 (RTE)."
        in glue.notes
    )
    same = tables_by_name([at_lr(record("rte", m, 8, 41), 1e-3) for m in ("lora", "adalora")])
    assert (
        "Learning rate (trainer.learning_rate): 1e-3 in every cell." in same["glue_sweep_tiny-deberta"].notes
    )


def test_increlora_random_allocation_control_is_not_in_the_main_table():
    sensitivity = record("rte", "increlora", 8, 41)  # 70.50
    control = record("rte", "increlora", 8, 41)
    control.update(run_id="rte-increlora-random", finished_at="2026-01-02T00:00:00+0000")
    control["config"]["method"]["score"] = "random"
    control["best"]["accuracy"] = 0.10
    glue = tables_by_name([sensitivity, control])["glue_fixture_tiny-deberta"]
    assert glue.rows[0][glue.header.index("RTE")] == "70.50 (n=1)"
    assert "rte-increlora-random" not in {
        r["run_id"] for rs in plots.selected_runs([sensitivity, control]).values() for r in rs
    }


def test_a_run_that_ended_below_its_target_rank_is_flagged_with_its_final_budget():
    glue = tables_by_name(fixture_records())["glue_fixture_tiny-deberta"]
    increlora = next(row for row in glue.rows if row[0] == "IncreLoRA")
    assert increlora[glue.header.index("RTE")] == "70.50 (n=1) ‡"
    assert not any("‡" in cell for row in glue.rows if row[0] != "IncreLoRA" for cell in row)
    assert (
        "‡: the cell counts a run that ended off its target total rank R* (budget.final.total_rank): "
        "rte-increlora-short-tiny-deberta-r8-s41 ended at total rank 24 of R* 96." in glue.notes
    )
    assert "70.50 (n=1) $^\\ddagger$" in glue.to_latex()
    reached = record("rte", "increlora", 8, 41)  # the same run, grown to R*: no mark, and said so
    [table] = report.build_tables([reached])
    assert table.rows[0][table.header.index("RTE")] == "70.50 (n=1)"
    assert (
        "R*: all 1 run(s) with a target total rank (budget.final.target_total_rank) ended at it."
        in table.notes
    )
    [lora] = report.build_tables([record("rte", "lora", 8, 41)])  # no target: no R* note at all
    assert not any("R*" in note for note in lora.notes)


def test_a_run_that_ended_above_its_target_rank_is_flagged_too():
    """AdaLoRA prunes towards R*: a run stopped before its schedule finished ends above it."""
    unfinished = record("rte", "adalora", 8, 41)
    unfinished["budget"]["final"]["total_rank"] = 120
    [table] = report.build_tables([unfinished])
    assert table.rows[0][table.header.index("RTE")].endswith(" ‡")
    assert "ended at total rank 120 of R* 96" in "\n".join(table.notes)


def test_tasks_outside_the_paper_tables_get_a_table_per_family_with_their_records_metrics():
    tables = tables_by_name(fixture_records())
    tweets = tables["classification_tasks_demo_tiny-deberta"]
    assert tweets.header == ["Method", "r̄", "#Params", "Tweets acc", "Tweets F1"]
    assert [row[:2] + row[3:] for row in tweets.rows] == [
        ["LoRA", "8", "92.00 ± 1.41 (n=2)", "83.00 ± 1.41 (n=2)"],
        ["TriAdaptLoRA", "8", "94.00 ± 1.41 (n=2)", "85.00 ± 1.41 (n=2)"],
    ]
    aclsum = tables["summarisation_tasks_demo_tiny-deberta"]
    assert aclsum.header[3:] == ["ACLSum R-1", "ACLSum R-2", "ACLSum R-L", "ACLSum R-Lsum"]
    assert "primary metric: ACLSum rougeL" in "\n".join(aclsum.notes)
    assert not any(name.startswith("glue_demo") for name in tables)  # tweets is not a GLUE task
    # A task no label names, from a record without a family (older records): its own table, its own
    # metrics (a metric listed but never reported gets no column).
    other = record("tweets", "lora", 8, 41, study="demo")
    other.update(task="emotion", run_id="emotion-lora")
    other["config"]["task"] = {
        "name": "emotion",
        "metrics": ["accuracy", "macro_f1"],
        "primary_metric": "accuracy",
    }
    table = tables_by_name([other])["other_tasks_demo_tiny-deberta"]
    assert table.header[3:] == ["emotion acc"] and table.rows[0][3] == "91.00 (n=1)"


# -- figures ---------------------------------------------------------------------------------------
def test_rank_grid_is_layer_by_matrix_type():
    layers, types, grid = plots.final_rank_grid(record("rte", "triadapt", 2, 41))
    assert layers == ["0", "1"] and types == ["Q", "K", "V", "O", "FF1", "FF2"]
    assert grid.tolist() == [[1, 2, 3, 1, 2, 3], [1, 2, 3, 1, 2, 3]]


def test_figures_are_written_as_png_and_pdf(tmp_path):
    paths = plots.write_figures(fixture_records(), tmp_path)
    names = {p.name for p in paths}
    for stem in [
        "rank_heatmaps_fixture_tiny-deberta_r2",
        "rank_heatmaps_fixture_tiny-deberta_r8",
        "budget_fixture_tiny-deberta",
        "metric_fixture_tiny-deberta",
        "seed_spread_fixture_tiny-deberta",
    ]:
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        assert (tmp_path / f"{stem}.png").stat().st_size > 10_000
    assert not any("rank_heatmaps_adhoc" in n for n in names)  # LoRA only: nothing adaptive to show


def test_the_budget_figure_draws_r_star_and_flags_a_run_that_ended_below_it():
    runs = plots.selected_runs(fixture_records())[("fixture", "tiny-deberta")]
    assert plots.off_target_runs(runs) == [("rte-increlora-short-tiny-deberta-r8-s41", 24, 96)]
    assert plots.targets(runs) == [24, 96]  # m × r̄ for r̄ = 2 and 8
    fig = plots.budget_figure(runs)
    rank_axes = [ax for ax in fig.axes if ax.get_ylabel() == "total rank Σ r_i"]
    flat = {
        (ax.get_title(), float(line.get_ydata()[0]))
        for ax in rank_axes
        for line in ax.get_lines()
        if line.get_linestyle() == ":"
    }
    assert flat == {("r̄ = 2", 24.0), ("r̄ = 8", 96.0)}  # R* of each budget, as a dotted line
    markers = [line for ax in rank_axes for line in ax.get_lines() if line.get_marker() == "X"]
    assert [(float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in markers] == [(20.0, 24.0)]
    caption = fig.get_suptitle()
    assert "rte-increlora-short-tiny-deberta-r8-s41 ended at total rank 24 of R* 96" in caption
    heatmaps = plots.rank_heatmaps_figure(runs, "r8")
    assert "IncreLoRA, RTE (n=1) ‡" in {ax.get_title() for ax in heatmaps.axes}
    reached = [r for r in runs if "short" not in r["run_id"]]
    assert plots.off_target_runs(reached) == [] and "‡" not in plots.budget_figure(reached).get_suptitle()


def test_plots_use_the_tables_selection():
    groups = plots.selected_runs(fixture_records())
    ids = {r["run_id"] for r in groups[("fixture", "tiny-deberta")]}
    assert "rte-triadapt-tiny-deberta-r2-s41" in ids
    assert not ids & {"rte-triadapt-tiny-deberta-r2-s42", "mrpc-lora-old-r2-s41"}  # failed, superseded
    assert "rte-triadapt-exponential-tiny-deberta-r2-s41" not in ids  # an ablation, not the default


def test_plots_leave_out_a_cell_run_at_several_learning_rates():
    sweep = [at_lr(record("rte", "lora", 8, 41), lr) for lr in (1e-3, 1e-2)]  # one seed, two rates
    single = at_lr(record("mrpc", "lora", 8, 41), 1e-3)
    ids = {r["run_id"] for r in plots.selected_runs([*sweep, single])[("sweep", "tiny-deberta")]}
    assert ids == {single["run_id"]}


# -- W&B -------------------------------------------------------------------------------------------
def offline_wandb_run(tmp_path: Path, source: dict) -> tuple[dict, Path]:
    """Replay a fixture record through RunTracker with W&B offline; return (record, output dir)."""
    out = tmp_path / "out"
    logger = OmegaConf.create({"backend": "wandb", "project": "import-test", "mode": "offline"})
    tracker = RunTracker(source["run_id"], source["config"], tmp_path / "rec.json", logger, str(out))
    tracker.set_primary_metric(source["primary_metric"])
    modules = source["rank_patterns"]["modules"]
    for pattern, budget in zip(source["rank_patterns"]["history"], source["budget"]["history"], strict=True):
        scalars = {"trainable_total": 50, "trainable_adapter": 40, "trainable_spare": 0}
        scalars |= {k: v for k, v in budget.items() if k != "step"}
        tracker.log_budget(
            pattern["step"], {**scalars, "rank_pattern": dict(zip(modules, pattern["ranks"], strict=True))}
        )
    for e in source["evals"]:
        tracker.log_eval(e["step"], e["epoch"], {f"eval_{k}": v for k, v in e.items() if k != "step"})
    return tracker.finish("ok", total_steps=20), out


def test_wandb_offline_run_imports_back_into_the_same_record(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    source = record("rte", "triadapt", 2, 41)
    for budget in source["budget"]["history"]:  # W&B logs no R* (BUDGET_SCALARS): a rebuilt record has none
        del budget["target_total_rank"]
    written, out = offline_wandb_run(tmp_path, source)
    [run_dir] = find_offline_runs([out])
    assert list((run_dir / "files" / "media" / "images").rglob("rank_heatmap_*.png")), "heatmap not logged"
    proc = subprocess.run(
        [sys.executable, "scripts/wandb_import.py", "--offline", str(out), "--out", str(tmp_path / "imported")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    imported = json.loads((tmp_path / "imported" / f"{written['run_id']}.json").read_text())
    assert imported.pop("imported_from").startswith("wandb offline run")
    assert imported == json.loads(json.dumps(written))

    # a run logged without the record file is rebuilt from config, summary and history
    (run_dir / "files" / WANDB_RECORD_FILE).unlink()
    rebuilt = record_from_offline_run(run_dir)
    assert rebuilt["reconstructed"] is True
    for key in [
        "run_id",
        "status",
        "config",
        "primary_metric",
        "evals",
        "best",
        "final",
        "budget",
        "rank_patterns",
    ]:
        assert rebuilt[key] == written[key], key
    assert report.build_tables([rebuilt])[0].rows == report.build_tables([written])[0].rows


def test_wandb_api_import_with_and_without_the_record_file():
    source = record("mrpc", "adalora", 8, 42)
    history = [
        {"_step": 0, "budget/total_rank": 144, "budget/effective_params": 14000, "rank/b.layer.0.x": 12},
        {"_step": 10, "eval/accuracy": 0.8, "eval/f1": 0.85, "eval/epoch": 1.0},
    ]

    class FakeFile:
        def __init__(self, name):
            self.name = name

        def download(self, root, replace):
            Path(root, self.name).write_text(json.dumps(source))

    class FakeRun:
        def __init__(self, run_id, files):
            self.id, self._files = run_id, files
            self.config = {**copy.deepcopy(source["config"]), "_wandb": {}}
            self.summary = {"status": "ok", "best": source["best"], "final": source["final"], "_runtime": 9}

        def files(self):
            return [FakeFile(n) for n in self._files]

        def file(self, name):
            return FakeFile(name)

        def scan_history(self):
            return iter(history)

    class FakeApi:
        def runs(self, path, filters=None):
            assert path == "team/project"
            return [FakeRun("with-file", [WANDB_RECORD_FILE]), FakeRun("old-run", ["output.log"])]

    full, rebuilt = records_from_api("team/project", api=FakeApi())
    assert full["imported_from"] == "wandb team/project/with-file"
    assert {k: v for k, v in full.items() if k != "imported_from"} == source
    assert rebuilt["run_id"] == "old-run" and rebuilt["reconstructed"] and "_wandb" not in rebuilt["config"]
    assert rebuilt["evals"] == [{"step": 10, "epoch": 1.0, "accuracy": 0.8, "f1": 0.85}]
    assert rebuilt["budget"]["final"] == {"total_rank": 144, "effective_adapter": 14000}
    assert rebuilt["rank_patterns"] == {"modules": ["b.layer.0.x"], "history": [{"step": 0, "ranks": [12]}]}
    assert rebuilt["best"] == source["best"] and rebuilt["status"] == "ok"


def test_reconstruct_names_the_primary_metric_like_the_tasks_do():
    config = {
        "task": {
            "name": "mnli",
            "primary_metric": "accuracy",
            "eval_splits": {"matched": "a", "mismatched": "b"},
        }
    }
    config |= {"method": {"name": "lora"}, "backbone": {"name": "x"}, "seed": 1}
    assert reconstruct_record("r", config, {}, [])["primary_metric"] == "matched_accuracy"


def test_a_truncated_wandb_file_still_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _, out = offline_wandb_run(tmp_path, record("rte", "lora", 8, 41))
    [run_dir] = find_offline_runs([out])
    log = next(run_dir.glob("run-*.wandb"))
    kinds = [r.WhichOneof("record_type") for r in iter_wandb_records(log)]
    assert kinds[0] == "header" and "run" in kinds and kinds[-1] == "exit", kinds
    data = log.read_bytes()
    log.write_bytes(data[: len(data) * 2 // 3])  # a run killed mid-write: the complete records still read
    kinds_left = [r.WhichOneof("record_type") for r in iter_wandb_records(log)]
    assert 0 < len(kinds_left) < len(kinds) and kinds_left == kinds[: len(kinds_left)]
    assert read_offline_run(run_dir)["config"]["task"]["name"] == "rte"


# -- notebooks -------------------------------------------------------------------------------------
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_paired_and_stripped():
    import jupytext

    assert {p.stem for p in NOTEBOOKS} == {"tables", "plots"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        paired = jupytext.read(path.with_suffix(".py"))
        assert [c.source for c in nb.cells] == [c.source for c in paired.cells], (
            f"{path.name}: run jupytext --sync"
        )
        for cell in nb.cells:
            assert not cell.get("outputs") and cell.get("execution_count") is None, (
                f"{path.name}: strip outputs"
            )


def test_notebooks_execute_on_fixture_records(tmp_path):
    runs = write_fixture_records(tmp_path / "runs")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "scripts/run_notebooks.py", "--runs", str(runs), "--out", str(tmp_path / "executed")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = nbformat.read(tmp_path / "executed" / "tables.ipynb", as_version=4)
    shown = [o["data"]["text/markdown"] for c in tables.cells for o in c.get("outputs", []) if "data" in o]
    assert (EXPECTED / "glue_fixture_tiny-deberta.md").read_text() in shown
    figures = nbformat.read(tmp_path / "executed" / "plots.ipynb", as_version=4)
    images = [o for c in figures.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    # fixture group: 2 heatmaps + 3; ad-hoc group: budget, metric, seed spread; demo group: 1 heatmap + 3
    assert len(images) == 5 + 3 + 4


def test_no_records_give_no_tables_and_a_record_without_a_budget_still_renders():
    assert report.build_tables([]) == []
    old = record("rte", "lora", 8, 41)
    del old["config"]["budget"]  # written before the budget group existed
    [table] = report.build_tables([old])
    assert table.rows == [["LoRA", report.DASH, "12.0K", "70.00 (n=1)", "70.00", "70.00"]]


def test_a_killed_and_rerun_run_imports_as_its_finished_record():
    killed = {"run_id": "a", "status": "running", "finished_at": None, "n": 1}
    rerun = {"run_id": "a", "status": "ok", "finished_at": "2026-01-01T01:00:00+0000", "n": 2}
    failed_later = {"run_id": "b", "status": "failed", "finished_at": "2026-01-02T00:00:00+0000", "n": 3}
    ok_earlier = {"run_id": "b", "status": "ok", "finished_at": "2026-01-01T00:00:00+0000", "n": 4}
    picked = latest_per_run([rerun, killed, failed_later, ok_earlier])
    assert sorted(r["n"] for r in picked) == [2, 4]


def test_learning_rates_print_short_and_exact():
    # One formatter for every table and write-up; rounding 1.5e-4 to "2e-4" would name another run.
    assert [report.fmt_lr(lr) for lr in (1e-3, 3e-4, 1e-2, 1.5e-4, 2e-5, 0.1)] == [
        "1e-3",
        "3e-4",
        "1e-2",
        "1.5e-4",
        "2e-5",
        "1e-1",
    ]
    assert report.fmt_lr(None) == report.fmt_lr(float("nan")) == report.DASH

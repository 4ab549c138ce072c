"""Derived files (tables, figures, write-ups) stay in step with the run records: `make results` writes
them all in one place each, and the committed ones must be what the committed records give."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from src.reporting import cpu_repro, derived
from src.reporting.figures import STUDIES_WITH_WRITEUP, study_figures
from tests.conftest import ROOT
from tests.fixtures.records import fixture_records
from tests.test_repro_report import grid

RESULTS = ROOT / "results"


def test_committed_derived_files_match_the_committed_records():
    found = derived.differences(RESULTS / "runs", RESULTS, RESULTS / "diagnostics" / "adapter_startup.json")
    assert not found, "run `make results` and commit what it changes:\n" + "\n".join(found)


def write_runs(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    for r in records:
        (folder / f"{r['run_id']}.json").write_text(json.dumps(r))
    return folder


def test_make_results_writes_each_file_once_removes_stale_ones_and_then_checks_clean(tmp_path):
    rte = [r for r in fixture_records() if r["task"] == "rte"]  # a few figures: drawing is the slow part
    runs = write_runs(tmp_path / "runs", [*rte, *grid()])
    results = tmp_path / "results"
    (results / "figures").mkdir(parents=True)
    stale = [results / "figures" / "metric_old-study_minilm-l6.png", results / "tables" / "glue_old.md"]
    stale[1].parent.mkdir()
    for path in stale:
        path.write_text("from a study that no record has any more")
    keep = results / "figures" / "notes.txt"  # not a derived file: left alone
    keep.write_text("mine")
    startup = tmp_path / "no-startup.json"

    written, removed = derived.write_results(runs, results, startup)

    assert sorted(removed) == sorted(stale) and keep.is_file()
    assert {p.relative_to(results) for p in written} == derived.present(results)
    assert (results / "tables" / "glue_fixture_tiny-deberta.md").is_file()
    assert (results / "figures" / "metric_fixture_tiny-deberta.png").is_file()
    # cpu-repro's figures live beside its write-up only
    assert (results / "cpu-repro" / "figures" / "metric.png").is_file()
    assert "](figures/metric.png)" in (results / "cpu-repro" / "README.md").read_text()
    assert not list((results / "figures").glob("*cpu-repro*"))
    assert derived.differences(runs, results, startup) == []

    (results / "tables" / "glue_fixture_tiny-deberta.md").write_text("edited by hand\n")
    (results / "cpu-repro" / "figures" / "budget.pdf").unlink()
    shutil.copy(results / "figures" / "metric_fixture_tiny-deberta.png", results / "figures" / "extra.png")
    assert derived.differences(runs, results, startup) == [
        f"{results}/cpu-repro/figures/budget.pdf is missing",
        f"{results}/figures/extra.png is stale: `make results` no longer makes it",
        f"{results}/tables/glue_fixture_tiny-deberta.md differs",
    ]


def test_the_check_reads_only_the_records_git_tracks(tmp_path):
    runs = write_runs(tmp_path / "runs", fixture_records()[:2])
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "add", "runs"], cwd=tmp_path, check=True)
    (runs / "local-run.json").write_text("{}")  # made after the commit: not counted by the check
    tracked = derived.record_files(runs, committed_only=True)
    assert [p.name for p in tracked] == sorted(f"{r['run_id']}.json" for r in fixture_records()[:2])
    assert len(derived.record_files(runs, committed_only=False)) == 3


def test_cli_check_fails_with_one_line_saying_what_to_run(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs", fixture_records())
    assert derived.main(["--runs", str(runs), "--results", str(tmp_path / "results"), "--check"]) == 1
    out, err = capsys.readouterr()
    assert "glue_fixture_tiny-deberta.md is missing" in out
    assert err.strip().splitlines() == [
        f"error: {len(out.splitlines())} derived file(s) out of step with the committed records in {runs}; "
        f"run `make results RESULTS={tmp_path / 'results'}` and commit what it changes (with any new records)"
    ]


def test_figures_of_a_study_with_a_writeup_are_not_made_twice():
    assert cpu_repro.STUDY in STUDIES_WITH_WRITEUP
    assert study_figures(grid()) == {}  # make figures leaves them to the write-up
    assert "metric_cpu-repro_tiny-deberta" in study_figures(grid(), skip_studies=())  # --all-studies

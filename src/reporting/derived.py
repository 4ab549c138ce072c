"""Every file derived from the run records, in one place: ``make results`` writes them all, and
``--check`` (run by ``tests/test_derived_results.py`` in ``make test``) says whether the committed
ones are what the committed records give.

    python -m src.reporting.derived [--runs results/runs] [--results results] [--check]

What is derived, and where (one place per figure):

- ``tables/<table>_<study>_<backbone>.{md,tex}``: every study (src/reporting/tables/);
- ``figures/<figure>_<study>_<backbone>[_<budget>].{png,pdf}``: every study without a write-up of
  its own (src/reporting/figures.py);
- ``cpu-repro/README.md`` and ``cpu-repro/figures/*.{png,pdf}``: the CPU reproduction's write-up and
  its figures (src/reporting/cpu_repro/), which therefore are not in ``figures/``.

Writing removes derived files no record gives any more (a study renamed, a figure that has nothing
left to show). Executed notebooks (``make notebooks``) render the same tables and figures and are
not committed.

The check compares tables and write-ups byte for byte, and figures by name only: matplotlib writes
the same bytes run after run on one installation, but other matplotlib or FreeType versions draw
the same figure with different bytes, and rendering every figure would cost most of a minute.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from src.records import atomic_write_text, load_record
from src.reporting import cpu_repro
from src.reporting.figures import save, study_figures
from src.reporting.tables import build_tables

FIGURE_SUFFIXES = (".png", ".pdf")
# folder (relative to the results folder) -> the names of derived files in it; nothing else there is touched
MANAGED = {
    "tables": ("*.md", "*.tex"),
    "figures": tuple(f"*{s}" for s in FIGURE_SUFFIXES),
    cpu_repro.STUDY: ("README.md",),
    f"{cpu_repro.STUDY}/figures": tuple(f"*{s}" for s in FIGURE_SUFFIXES),
}


@dataclass
class Derived:
    texts: dict[Path, str] = field(default_factory=dict)  # path -> content
    figures: dict[Path, Figure] = field(default_factory=dict)  # path without suffix -> figure

    def files(self) -> set[Path]:
        return set(self.texts) | {stem.with_suffix(s) for stem in self.figures for s in FIGURE_SUFFIXES}


def derive(
    records: list[dict], startup: dict | None, tuned_startups: dict[str, dict] | None = None
) -> Derived:
    """Everything derived from ``records``, paths relative to the results folder; figures are built
    but not drawn (drawing is what takes the time)."""
    out = Derived()
    for table in build_tables(records):
        out.texts[Path("tables", f"{table.name}.md")] = table.to_markdown()
        out.texts[Path("tables", f"{table.name}.tex")] = table.to_latex()
    out.figures = {Path("figures", stem): fig for stem, fig in study_figures(records).items()}
    if cpu_repro.study_frame(records).empty:  # a user's own runs (my_results/): no write-up to keep
        return out
    report = cpu_repro.report_figures(records)
    out.figures |= {Path(cpu_repro.STUDY, "figures", stem): fig for stem, fig in report.items()}
    readme = cpu_repro.render(records, [f"{stem}.png" for stem in report], startup, tuned_startups)
    out.texts[Path(cpu_repro.STUDY, "README.md")] = readme
    return out


def _from_root(startup: dict, path: Path, results_dir: Path) -> dict:
    """``startup`` with its source named from the repository root (the folder holding ``results_dir``)
    however the path was given, so the write-up reads the same from anywhere."""
    try:
        startup["source"] = (
            path.with_suffix(".md").resolve().relative_to(results_dir.resolve().parent).as_posix()
        )
    except ValueError:  # kept outside the repository: named as given
        pass
    return startup


def load_startup(path: Path, results_dir: Path) -> dict | None:
    """cpu_repro's adapter-effect measurement at lr 1e-3."""
    startup = cpu_repro.load_startup(path)
    return _from_root(startup, path, results_dir) if startup else None


def load_tuned_startups(path: Path, results_dir: Path) -> dict[str, dict]:
    """The same measurement at the selected LRs, per task, from the files beside ``path``."""
    found = cpu_repro.load_tuned_startups(path.parent)
    return {
        task: _from_root(startup, path.parent / cpu_repro.TUNED_STARTUP.format(task=task), results_dir)
        for task, startup in found.items()
    }


def present(results_dir: Path) -> set[Path]:
    """The derived files now in the managed folders, relative to ``results_dir``."""
    return {
        path.relative_to(results_dir)
        for folder, patterns in MANAGED.items()
        for pattern in patterns
        for path in (results_dir / folder).glob(pattern)
        if path.is_file()
    }


def record_files(runs_dir: Path, committed_only: bool) -> list[Path]:
    """The records under ``runs_dir``; with ``committed_only``, those git tracks (all of them outside
    a git checkout), so a run just made locally does not count until it is committed."""
    every = sorted(runs_dir.glob("*.json"))
    if not committed_only or not every:
        return every
    try:
        git = subprocess.run(
            ["git", "ls-files", "-z", "--", "*.json"],
            cwd=runs_dir,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return every
    if git.returncode != 0:
        return every
    tracked = {(runs_dir / name).resolve() for name in git.stdout.split("\0") if name}
    return [path for path in every if path.resolve() in tracked]


def ignored(path: Path) -> bool:
    """Whether git ignores the folder ``path`` (false outside a git checkout)."""
    try:
        git = subprocess.run(["git", "check-ignore", "-q", "."], cwd=path, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return git.returncode == 0


def write_results(runs_dir: Path, results_dir: Path, startup: Path) -> tuple[list[Path], list[Path]]:
    """Write every derived file from the records in ``runs_dir``; remove stale ones. (written, removed)"""
    records = [load_record(path) for path in record_files(runs_dir, committed_only=False)]
    derived = derive(records, load_startup(startup, results_dir), load_tuned_startups(startup, results_dir))
    written = []
    for rel, text in derived.texts.items():
        atomic_write_text(results_dir / rel, text)
        written.append(results_dir / rel)
    for rel, fig in derived.figures.items():
        written += save(fig, results_dir / rel)
    removed = [results_dir / rel for rel in sorted(present(results_dir) - derived.files())]
    for path in removed:
        path.unlink()
    return written, removed


def differences(runs_dir: Path, results_dir: Path, startup: Path) -> list[str]:
    """How the derived files in ``results_dir`` differ from what the committed records give."""
    records = [load_record(path) for path in record_files(runs_dir, committed_only=True)]
    derived = derive(records, load_startup(startup, results_dir), load_tuned_startups(startup, results_dir))
    want, have = derived.files(), present(results_dir)
    found = [f"{results_dir / rel} is missing" for rel in sorted(want - have)]
    found += [
        f"{results_dir / rel} is stale: `make results` no longer makes it" for rel in sorted(have - want)
    ]
    for rel, text in sorted(derived.texts.items()):
        path = results_dir / rel
        if path.is_file() and path.read_text() != text:
            found.append(f"{path} differs")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder of run records")
    parser.add_argument("--results", type=Path, default=Path("results"), help="where derived files go")
    parser.add_argument(
        "--startup", type=Path, default=Path(cpu_repro.STARTUP), help="adapter_startup.py's output"
    )
    parser.add_argument("--check", action="store_true", help="only compare with the committed records")
    args = parser.parse_args(argv)
    if args.check:
        found = differences(args.runs, args.results, args.startup)
        for line in found:
            print(line)
        if found:
            print(
                f"error: {len(found)} derived file(s) out of step with the committed records in {args.runs}; "
                f"run `make results RESULTS={args.results}` and commit what it changes (with any new records)",
                file=sys.stderr,
            )
            return 1
        print(f"derived files in {args.results} match the committed records")
        return 0
    written, removed = write_results(args.runs, args.results, args.startup)
    for path in removed:
        print(f"removed {path} (no longer made from the records)")
    untracked = sorted(
        set(record_files(args.runs, committed_only=False)) - set(record_files(args.runs, committed_only=True))
    )
    print(f"wrote {len(written)} files under {args.results}")
    if untracked and not ignored(args.runs):  # a user's folder (my_results/) is never committed
        print(f"note: {len(untracked)} of the records are not committed yet ({untracked[0].name}, ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

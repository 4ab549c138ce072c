"""Paper tables from run records alone: ``python -m src.reporting.tables [--runs results/runs] [--out results/tables]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from src.records import atomic_write_text
from src.reporting.tables.build import build_tables
from src.reporting.tables.frame import load_records
from src.reporting.tables.render import Table


def write_tables(tables: list[Table], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in tables:
        for suffix, text in [(".md", table.to_markdown()), (".tex", table.to_latex())]:
            path = out / f"{table.name}{suffix}"
            atomic_write_text(path, text)
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="results/runs", help="folder of run records (*.json)")
    parser.add_argument("--out", default="results/tables", help="where the .md and .tex files go")
    parser.add_argument(
        "--anchors",
        action="store_true",
        help="add the papers' published rows (their results tables) for comparison",
    )
    parser.add_argument("--all-columns", action="store_true", help="every GLUE column, even without runs")
    args = parser.parse_args(argv)
    records = load_records(args.runs)
    tables = build_tables(records, anchors=args.anchors, all_columns=args.all_columns)
    for path in write_tables(tables, args.out):
        print(path)
    if not tables:
        print(f"no records with results under {args.runs}")

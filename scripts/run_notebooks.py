"""Execute the notebooks on a folder of run records; any cell error fails (``make notebooks``, tests).

    python scripts/run_notebooks.py [--runs results/runs] [--out results/notebooks] [notebooks/*.ipynb]

Each notebook runs in a fresh kernel (this interpreter's ``python3`` kernel) with ``REPORT_RUNS_DIR``
set, from the repository root; the executed copy (with outputs) goes to ``--out``. The notebooks in
``notebooks/`` stay output-free (paired with their ``.py`` by jupytext).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def execute(notebook: Path, runs_dir: Path, out_dir: Path, timeout: int = 300) -> Path:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    os.environ["REPORT_RUNS_DIR"] = str(runs_dir.resolve())
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / notebook.name
    nbformat.write(nb, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--runs", type=Path, default=ROOT / "results" / "runs")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "notebooks")
    args = parser.parse_args(argv)
    for notebook in args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb")):
        print(f"executed {notebook.name} -> {execute(notebook, args.runs, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

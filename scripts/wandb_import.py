"""Import W&B runs as run records (then ``make tables`` / ``make figures`` work from them).

    python scripts/wandb_import.py --offline outputs/ multirun/      # offline run folders, searched recursively
    python scripts/wandb_import.py --project my-team/triadaptlora-repro [--filters '{"state": "finished"}']

Records go to ``--out`` (default results/runs/) as ``<run_id>.json``; existing records are kept unless
``--overwrite``. How a record is recovered is documented in src/reporting/wandb_import.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.reporting.wandb_import import (  # noqa: E402  (after the path fix, as a script)
    find_offline_runs,
    latest_per_run,
    record_from_offline_run,
    records_from_api,
    write_records,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--offline", nargs="+", metavar="DIR", help="offline run folders or folders above them"
    )
    source.add_argument("--project", metavar="ENTITY/PROJECT", help="an online W&B project (public API)")
    parser.add_argument("--filters", default=None, help="W&B API filters as JSON (with --project)")
    parser.add_argument("--out", default="results/runs", help="records folder")
    parser.add_argument("--overwrite", action="store_true", help="replace records that already exist")
    args = parser.parse_args(argv)
    if args.offline:
        run_dirs = find_offline_runs(args.offline)
        if not run_dirs:
            print(f"no W&B run folders under {' '.join(args.offline)}", file=sys.stderr)
            return 1
        records = (record_from_offline_run(d) for d in run_dirs)
    else:
        records = records_from_api(args.project, filters=json.loads(args.filters) if args.filters else None)
    written, kept = write_records(latest_per_run(records), args.out, overwrite=args.overwrite)
    for path in written:
        print(f"imported {path}")
    for path in kept:
        print(f"kept existing {path} (--overwrite replaces it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

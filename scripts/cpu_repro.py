"""The CPU mini-reproduction (issue #7): run what is missing of the grid, then render the write-up.

    python scripts/cpu_repro.py [--chunk rte --chunk ablation-mrpc ...] [--render-only] [--list]

The grid is a list of chunks, each small enough for one working session on 2 CPU cores; a chunk is
one Hydra multirun of ``+sweep=cpu_repro`` (configs/sweep/cpu_repro.yaml holds the protocol). Runs
whose record already exists with status ok are skipped (``skip_existing=true``), so the command is
resumable: kill it at any time and start it again. Seeds vary slowest, so a half-finished chunk
leaves complete seeds (every method and budget) that the paired comparisons can use.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = "lora,adalora,increlora,triadapt"
SEEDS_5 = "41,42,43,44,45"  # RTE and MRPC: the noisiest small tasks get five seeds
SEEDS_3 = "41,42,43"
# TriAdaptLoRA options compared one at a time against its defaults (linear / identity / increment).
# The fixed schedule adds K = top_h modules per event; 15 fills r̄ = 8 (M = 36, 252 ranks to add)
# after 17 events, as the linear schedule does, so the ablation compares the shape of the schedule.
ABLATION_VARIANTS = [
    "method.schedule=exponential",
    "method.schedule=fixed method.top_h=15",
    "method.init=gaussian",
    "method.score=level",
]


@dataclass
class Chunk:
    name: str
    task: str
    seeds: str
    sweeps: list[str] = field(default_factory=lambda: [f"method={METHODS} budget=r2,r8"])


CHUNKS = [
    Chunk("rte", "rte", SEEDS_5),
    Chunk("mrpc", "mrpc", SEEDS_5),
    Chunk("stsb", "stsb", SEEDS_3),
    Chunk("cola", "cola", SEEDS_3),
    Chunk("sst2", "sst2", SEEDS_3),
    Chunk("ablation-rte", "rte", SEEDS_5, [f"method=triadapt budget=r8 {v}" for v in ABLATION_VARIANTS]),
    Chunk("ablation-mrpc", "mrpc", SEEDS_5, [f"method=triadapt budget=r8 {v}" for v in ABLATION_VARIANTS]),
]


def commands(chunk: Chunk, data_dir: str, runs_dir: str, extra: list[str]) -> list[list[str]]:
    return [
        [
            sys.executable,
            "-m",
            "src.train",
            "-m",
            "+sweep=cpu_repro",
            f"seed={chunk.seeds}",
            f"task={chunk.task}",
            *sweep.split(),
            f"task.data_dir={data_dir}/{chunk.task}",
            f"paths.runs_dir={runs_dir}",
            "skip_existing=true",
            "save_adapter=false",
            *extra,
        ]  # fmt: skip
        for sweep in chunk.sweeps
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [c.name for c in CHUNKS]
    parser.add_argument("--chunk", action="append", choices=names, help="run only these chunks (repeatable)")
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "../shared/data/glue"))
    parser.add_argument("--runs", default="results/runs", help="where run records are written and read")
    parser.add_argument("--out", default="results/cpu-repro", help="where the write-up goes")
    parser.add_argument("--render-only", action="store_true", help="only render the write-up")
    parser.add_argument("--list", action="store_true", help="print the chunks' commands and exit")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. logger=none)")
    args = parser.parse_args(argv)

    data_dir = args.data_dir.rstrip("/")  # as given: it is part of each run's config identity
    chosen = [c for c in CHUNKS if not args.chunk or c.name in args.chunk]
    if not args.render_only:
        if not (ROOT / data_dir / "rte").is_dir() and not args.list:
            parser.error(f"--data-dir {args.data_dir} has no rte/ folder; point it at the local GLUE files")
        for chunk in chosen:
            for cmd in commands(chunk, data_dir, args.runs, args.overrides):
                print("$", " ".join(cmd[1:]), flush=True)
                if args.list:
                    continue
                start = time.time()
                # A failed job is recorded and the sweep goes on (src/train.py); a non-zero exit here
                # means the sweep itself could not start, which no later chunk would survive either.
                subprocess.run(cmd, cwd=ROOT, check=True)
                print(f"chunk {chunk.name}: {time.time() - start:.0f} s", flush=True)
    if args.list:
        return 0
    from src.repro_report import write_report

    for path in write_report(args.runs, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

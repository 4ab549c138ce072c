"""The CPU mini-reproduction: run what is missing of the grid, then render the write-up.

    python scripts/cpu_repro.py [--chunk rte --chunk ablation-mrpc ...] [--render-only] [--list]

The grid is a list of chunks, each small enough for one working session on 2 CPU cores; a chunk is
one Hydra multirun of ``+sweep=cpu_repro`` (configs/sweep/cpu_repro.yaml holds the protocol). Runs
whose record already exists with status ok are skipped (``skip_existing=true``) and a run that was
killed continues from its newest complete checkpoint (``trainer.resume=true`` in the sweep config),
so the command is resumable: kill it at any time and start it again. Seeds vary slowest, so a half-finished chunk
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

from src.reporting.lr_selection import (  # noqa: E402  (the plan: tasks, seeds, variants)
    ABLATION_VARIANTS,
    FIXED_ABLATION_TASKS,
    FIXED_SEEDS,
    LR_STUDY,
    REUSED,
    TASKS,
    TUNED_SEEDS,
)

METHODS = "lora,adalora,increlora,triadapt"
# The fixed schedule adds K = top_h modules per event; 15 fills r̄ = 8 (M = 36, 252 ranks to add)
# after 17 events, as the linear schedule does, so the ablation compares the shape of the schedule.


@dataclass
class Chunk:
    name: str
    task: str
    seeds: str
    sweeps: list[str] = field(default_factory=lambda: [f"method={METHODS} budget=r2,r8"])
    # "edges": the LR grid's edge points; "tuned": the main grid and controls at the selected LRs;
    # either way the sweeps are read off the records when the chunk starts
    derived: str | None = None


# Learning-rate selection: one rule for every method x task. r̄ 8, seed 41, grid {1e-3, 3e-3,
# 1e-2}; the grid has a study of its own. Reused records: every 1e-3 point but IncreLoRA's is the
# fixed-lr study's (`study: cpu-repro`); RTE's 1e-2 points for LoRA, AdaLoRA and TriAdaptLoRA are the
# earlier single-LR check (`study: cpu-repro-lr1e-2`, same configuration). IncreLoRA's defaults
# changed (released behaviour), so all three of its points are run here. A best LR at an
# edge of the grid adds the next point beyond it (3e-4 or 3e-2): the lr-edge-<task> chunks, whose
# sweeps src/reporting/lr_selection.py reads off the records when they start.
BASELINES = ",".join(REUSED)


def fixed_seeds(task: str) -> str:
    """The fixed-lr study's seeds of ``task`` (RTE and MRPC, the noisiest small tasks, get five)."""
    return ",".join(map(str, FIXED_SEEDS[task]))


def lr_grid(task: str) -> list[str]:
    rates = "3e-3" if task == "rte" else "3e-3,1e-2"
    return [
        f"method={BASELINES} budget=r8 trainer.learning_rate={rates} study={LR_STUDY}",
        f"method=increlora budget=r8 trainer.learning_rate=1e-3,3e-3,1e-2 study={LR_STUDY}",
    ]


CHUNKS = [
    *(Chunk(f"lr-{t}", t, "41", lr_grid(t)) for t in TASKS),
    *(Chunk(f"lr-edge-{t}", t, "41", [], derived="edges") for t in TASKS),
    # The tuned protocol's main grid, random-allocation controls and schedules, each cell at its
    # selected LR; seed 41 (the selection seed) is not rerun.
    *(Chunk(f"tuned-{t}", t, TUNED_SEEDS[t], [], derived="tuned") for t in TASKS),
    # The fixed-lr study: every method at lr 1e-3, then TriAdaptLoRA's options one at a time.
    *(Chunk(t, t, fixed_seeds(t)) for t in TASKS),
    *(
        Chunk(
            f"ablation-{t}", t, fixed_seeds(t), [f"method=triadapt budget=r8 {v}" for v in ABLATION_VARIANTS]
        )
        for t in FIXED_ABLATION_TASKS
    ),
]


def commands(
    chunk: Chunk, data_dir: str, runs_dir: str, extra: list[str], only_seeds: set[str] | None = None
) -> list[list[str]]:
    """One ``src.train -m`` command per sweep. A sweep may name its own seeds (a reused cell runs only
    the seeds its reused study lacks); ``only_seeds`` keeps those seeds alone, so a queue can run
    every cell's next seed before any cell's last one."""
    out = []
    for i, sweep in enumerate(chunk.sweeps):
        args = sweep.split()
        own = [a.split("=", 1)[1] for a in args if a.startswith("seed=")]
        seeds = (own[0] if own else chunk.seeds).split(",")
        if only_seeds is not None:
            seeds = [s for s in seeds if s in only_seeds]
        if not seeds:
            continue
        out.append(
            [
                sys.executable,
                "-m",
                "src.train",
                "-m",
                "+sweep=cpu_repro",
                f"seed={','.join(seeds)}",
                f"task={chunk.task}",
                *(a for a in args if not a.startswith("seed=")),
                f"task.data_dir={data_dir}/{chunk.task}",
                f"paths.runs_dir={runs_dir}",
                "skip_existing=true",
                "save_adapter=false",
                # one folder per sweep: sweeps started in the same second (--jobs) must not share one
                f"hydra.sweep.dir=multirun/cpu-repro/{chunk.name}-{i}/${{now:%Y-%m-%d_%H-%M-%S}}",
                *extra,
            ]  # fmt: skip
        )
    return out


def run_queue(queue: list[tuple[str, list[str]]], jobs: int) -> None:
    """Run the sweeps, ``jobs`` at a time. With several jobs each gets an equal share of the cores as
    its torch threads (unless OMP_NUM_THREADS is set) and writes its log to multirun/cpu-repro-logs/."""
    env = dict(os.environ)
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    logs = ROOT / "multirun" / "cpu-repro-logs"
    running: list[tuple[str, subprocess.Popen, float]] = []
    pending = list(queue)
    while pending or running:
        while pending and len(running) < jobs:
            name, cmd = pending.pop(0)
            out = None
            if jobs > 1:
                logs.mkdir(parents=True, exist_ok=True)
                out = open(logs / f"{name}.log", "a")  # noqa: SIM115  (closed with the process)
            running.append(
                (name, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out), time.time())
            )
        time.sleep(1)
        for item in list(running):
            name, proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            # A failed run is recorded and its sweep goes on (src/train.py); a non-zero exit means the
            # sweep itself could not start (bad override, missing data), which later ones would share.
            if proc.returncode != 0:
                raise SystemExit(
                    f"error: the {name} sweep exited with {proc.returncode}; see its output above"
                )
            print(f"chunk {name}: sweep done in {time.time() - start:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [c.name for c in CHUNKS]
    parser.add_argument("--chunk", action="append", choices=names, help="run only these chunks (repeatable)")
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "../shared/data/glue"))
    parser.add_argument("--runs", default="results/runs", help="where run records are written and read")
    parser.add_argument("--out", default="results/cpu-repro", help="where the write-up goes")
    parser.add_argument("--jobs", type=int, default=1, help="sweeps run at once (cores are shared out)")
    parser.add_argument("--seed", action="append", help="run only these seeds of each chunk (repeatable)")
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
            if chunk.derived:  # edge points a best-at-the-edge asks for; runs at the selected LRs
                from src.reporting import lr_selection
                from src.reporting.tables import load_records

                derive = {"edges": lr_selection.edge_sweeps, "tuned": lr_selection.tuned_sweeps}[
                    chunk.derived
                ]
                chunk.sweeps = derive(load_records(args.runs)).get(chunk.task, [])
        only = set(args.seed) if args.seed else None
        queue = [
            (c.name, cmd) for c in chosen for cmd in commands(c, data_dir, args.runs, args.overrides, only)
        ]
        for _, cmd in queue:
            print("$", " ".join(cmd[1:]), flush=True)
        if not args.list:
            run_queue(queue, args.jobs)
    if args.list:
        return 0
    from src.reporting.cpu_repro import write_report

    for path in write_report(args.runs, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

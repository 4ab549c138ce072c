"""The GPU check (`make gpu-check`): step overhead on the device and every method end to end, ≤ 8 minutes.

1. ``scripts/bench_overhead.py`` on the device at r̄ 8 and 2, in fp32 and under bf16 autocast (the
   compute profile, batch 16 × 128: on a GPU at this size the operator launches dominate anyway;
   MiniLM's architecture with random weights, on which timing does not depend);
   each writes ``overhead_gpu_r{8,2}_{fp32,bf16}.{md,json}`` into the output folder.
2. ``python -m src.train`` for each of the four methods on MiniLM-L6 with local RTE, bf16, 64 steps, a
   growth schedule that completes (T_w = Δ = 4 at r̄ 2); every record must be ``ok``.
3. A SIGTERM-and-resume round trip of TriAdaptLoRA in bf16: the signal once the checkpoint at T/4 is
   complete, then the same command again; it must resume from the step it stopped at and end with the
   uninterrupted run's rank history (the eval-loss difference is reported).

Everything lands in one folder (``--out``), with ``gpu_check.md`` summarising it and the exit code
saying whether every part passed. ``--device cpu --quick`` runs the same plumbing small on a CPU
(what tests/test_gpu_check.py does). On the lent device machine, which has neither the Hub nor this
project's packages, run it through ``scripts/gpu_check_device.sh`` (docs/benchmarks.md, "GPU check").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lora", "adalora", "increlora", "triadapt")
# r̄ 2 for all; the growing methods allocate every 4 steps after 4, so R* = 2·M is reached well
# inside 64 steps (AdaLoRA's short-run defaults budget from the start); --quick allocates every step
GROWTH = {"method.init_warmup": 4, "method.incre_interval": 4}
QUICK_GROWTH = {"method.init_warmup": 1, "method.incre_interval": 1}
METHOD_ARGS = {
    "lora": {},
    "adalora": {},
    "increlora": {**GROWTH, "method.top_h": 12},
    "triadapt": GROWTH,
}


def child_env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("WANDB_MODE", "disabled")
    return env


def run(command: list[str], log: Path, timeout: int) -> int:
    print("$", " ".join(command), flush=True)
    env = child_env()
    with log.open("w") as f:
        try:
            return subprocess.run(
                command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\ntimed out after {timeout} s\n")
            return 124


def bench(args, out: Path) -> list[dict]:
    results = []
    for rank in (8, 2):
        for precision in ("fp32", "bf16"):
            tag = (
                f"_gpu_r{rank}_{precision}"
                if args.device == "cuda"
                else f"_{args.device}_r{rank}_{precision}"
            )
            command = [
                sys.executable, "scripts/bench_overhead.py", "--device", args.device, "--rank", str(rank),
                "--steps", str(args.bench_steps), "--warmup", "3", "--out", str(out), "--tag", tag,
            ]  # fmt: skip
            if precision == "bf16":
                command.append("--bf16")
            if args.git_sha:
                command += ["--git-sha", args.git_sha]
            command.append("--random-weights")  # timing does not depend on the weights
            if args.quick:
                command += ["--batch", "1", "--length", "8", "--warmup", "1"]
                command += ["--methods", "lora", "triadapt"]
            t0 = time.time()
            code = run(command, out / f"bench{tag}.log", timeout=args.timeout)
            rows = []
            if code == 0:
                rows = json.loads((out / f"overhead{tag}.json").read_text())["rows"]
            results.append({"tag": tag, "rc": code, "seconds": time.time() - t0, "rows": rows})
    return results


def train_command(args, method: str, root: Path, *extra: str) -> list[str]:
    backbone = "tiny-deberta" if args.quick else "minilm-l6"
    steps = 8 if args.quick else args.train_steps
    command = [
        sys.executable, "-m", "src.train", f"backbone={backbone}", "task=rte",
        f"task.data_dir={args.data_dir}", f"method={method}", "budget=r2",
        f"trainer.max_steps={steps}", f"trainer.eval_steps={steps // 2}", "trainer.bf16=true",
        "trainer.per_device_train_batch_size=32", "task.max_eval_samples=128", "logger=none",
        f"paths.root_dir={root}", f"paths.results_dir={root}/results", "save_adapter=false", *extra,
    ]  # fmt: skip
    if args.pretrained:
        command.append(f"backbone.pretrained={Path(args.pretrained).resolve()}")
    overrides = dict(METHOD_ARGS[method])
    if args.quick and "method.init_warmup" in overrides:
        overrides.update(QUICK_GROWTH)
    return command + [f"{k}={v}" for k, v in overrides.items()]


def latest_record(root: Path, method: str) -> dict:
    records = sorted((root / "results" / "runs").glob(f"rte-{method}-*.json"))
    return json.loads(records[-1].read_text()) if records else {}


def train_runs(args, out: Path) -> list[dict]:
    results = []
    for method in METHODS:
        command = train_command(args, method, out / "train", "trainer.checkpoint=false")
        t0 = time.time()
        code = run(command, out / f"train_{method}.log", timeout=args.timeout)
        record = latest_record(out / "train", method)
        budget = (record.get("budget") or {}).get("final") or {}
        results.append(
            {
                "method": method, "rc": code, "seconds": time.time() - t0, "status": record.get("status"),
                "error": record.get("error"), "best": record.get("best"), "total_rank": budget.get("total_rank"),
                "target_total_rank": budget.get("target_total_rank"), "steps": record.get("total_steps"),
            }
        )  # fmt: skip
    return results


def round_trip(args, out: Path) -> dict:
    """TriAdaptLoRA in bf16 gets SIGTERM once a checkpoint past its first growth events is complete,
    then the same command runs again; compared with the uninterrupted run of ``train_runs``."""
    root = out / "round_trip"
    steps = 8 if args.quick else args.train_steps
    every = max(1, steps // 4)
    command = train_command(args, "triadapt", root, "trainer.checkpoint=true", f"trainer.save_steps={every}")
    env = child_env()
    result = {"rc_stop": None, "rc_resume": None, "status": None}
    with (out / "round_trip_stop.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        marker = None
        deadline = time.time() + args.timeout
        while time.time() < deadline and proc.poll() is None:
            marks = list((root / "checkpoints").glob(f"*/checkpoint-{every}/COMPLETE"))
            if marks:
                marker = marks[0]
                break
            time.sleep(0.05)
        if marker is None or proc.poll() is not None:
            proc.kill()
            result["error"] = "the run ended or timed out before its first checkpoint"
            return result
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        result["rc_stop"] = proc.wait(timeout=args.timeout)
        result["stop_seconds"] = time.time() - signalled  # the step, the checkpoint, the exit
    stopped = latest_record(root, "triadapt")
    restarted = time.time()
    result["rc_resume"] = run(command, out / "round_trip_resume.log", timeout=args.timeout)
    result["rerun_seconds"] = time.time() - restarted
    resumed = latest_record(root, "triadapt")
    reference = latest_record(out / "train", "triadapt")
    result.update(
        status=resumed.get("status"),
        stopped_status=stopped.get("status"),
        stopped_at=stopped.get("stopped_at_step"),
        resumed_from=[r["from_step"] for r in resumed.get("resumed") or []],
    )
    if resumed.get("status") == "ok" and reference.get("status") == "ok":
        pairs = list(zip(reference["evals"], resumed["evals"], strict=True))
        result["max_eval_loss_diff"] = max(abs(a["loss"] - b["loss"]) for a, b in pairs)
        result["same_rank_history"] = (
            reference["rank_patterns"]["history"] == resumed["rank_patterns"]["history"]
        )
    return result


def round_trip_ok(trip: dict) -> bool:
    return (
        trip.get("stopped_status") == "preempted"
        and trip.get("status") == "ok"
        and trip.get("resumed_from") == [trip.get("stopped_at")]
        and trip.get("same_rank_history") is True
    )


def summary(
    device_name: str, benches: list[dict], trains: list[dict], trip: dict, seconds: float
) -> tuple[str, bool]:
    ok = all(b["rc"] == 0 for b in benches) and all(t["rc"] == 0 and t["status"] == "ok" for t in trains)
    ok = ok and round_trip_ok(trip)
    lines = [
        f"# GPU check on {device_name}: {'passed' if ok else 'FAILED'} in {seconds:.0f} s",
        "",
        "## Step overhead",
        "",
    ]
    lines += [
        "| run | method | median step (ms) | × LoRA | peak memory × LoRA | ops / step |",
        "|---|---|---|---|---|---|",
    ]
    for b in benches:
        lora = next((r for r in b["rows"] if r["method"] == "lora" and "error" not in r), None)
        if b["rc"] != 0:
            lines.append(f"| {b['tag']} | failed (rc {b['rc']}, see bench{b['tag']}.log) | | | | |")
        for r in b["rows"]:
            if "error" in r:
                lines.append(f"| {b['tag']} | {r['method']} | failed: {r['error']} | | | |")
                continue
            mem = r["peak_mem_mib"] / lora["peak_mem_mib"] if lora and lora["peak_mem_mib"] else float("nan")
            lines.append(
                f"| {b['tag']} | {r['method']} | {1e3 * r['median_step_s']:.2f} | "
                f"{r.get('step_ratio_median', float('nan')):.3f} | {mem:.3f} | {r['ops_per_step']} |"
            )
    lines += [
        "",
        "## End to end (bf16)",
        "",
        "| method | status | steps | total rank / R* | best | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for t in trains:
        lines.append(
            f"| {t['method']} | {t['status'] or 'no record'} (rc {t['rc']}) | {t['steps']} | "
            f"{t['total_rank']} / {t['target_total_rank']} | {t['best']} | {t['seconds']:.0f} |"
        )
        if t["error"]:
            lines.append(f"|  | {t['error']} | | | | |")
    lost = (trip["stopped_at"] - trip["resumed_from"][0]) if trip.get("resumed_from") else "?"
    diff = trip.get("max_eval_loss_diff")
    lines += [
        "",
        "## SIGTERM and resume (TriAdaptLoRA, bf16)",
        "",
        f"{'passed' if round_trip_ok(trip) else 'FAILED'}: stopped ({trip.get('stopped_status')}, rc "
        f"{trip.get('rc_stop')}) at step {trip.get('stopped_at')} in {trip.get('stop_seconds', float('nan')):.1f} s "
        f"after the signal; the same command resumed from step(s) {trip.get('resumed_from')} ({lost} steps lost) "
        f"and finished {trip.get('status')} in {trip.get('rerun_seconds', float('nan')):.1f} s; rank history "
        f"{'equal to' if trip.get('same_rank_history') else 'NOT equal to'} the uninterrupted run's, max |eval "
        f"loss difference| {diff if diff is None else f'{diff:.2e}'}."
        + (f" Error: {trip['error']}" if trip.get("error") else ""),
    ]
    return "\n".join(lines) + "\n", ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=str(ROOT / "results" / "gpu-check"))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue" / "rte"))
    parser.add_argument("--bench-steps", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=64)
    parser.add_argument(
        "--timeout", type=int, default=240, help="seconds per part before it counts as failed"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the plumbing on a CPU")
    parser.add_argument("--pretrained", default=None, help="MiniLM-L6 folder (where its package is absent)")
    parser.add_argument("--git-sha", default=None, help="the SHA, where the copy has no .git")
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(
                "error: no CUDA device; run on a GPU machine, or pass --device cpu --quick", file=sys.stderr
            )
            return 2
        device_name = torch.cuda.get_device_name()
    else:
        device_name = args.device
    if not Path(args.data_dir, "train.jsonl").is_file():
        print(f"error: no RTE train.jsonl in {args.data_dir}; pass --data-dir", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    benches = bench(args, out)
    trains = train_runs(args, out)
    trip = round_trip(args, out)
    text, ok = summary(device_name, benches, trains, trip, time.time() - t0)
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(
        json.dumps({"device": device_name, "bench": benches, "train": trains, "round_trip": trip}, indent=1)
    )
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

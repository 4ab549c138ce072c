"""Training-step overhead of each method at the same final average rank (`make bench-overhead`).

For every registered method: MiniLM-L6 (all six linear maps per layer adapted), batch 16 x length 128,
AdamW + the project's scheduler, the method's step hook inside every timed step. Growing methods are
first grown to their full budget with a forced fast schedule (every module grows at every step) so
that all methods are timed at the same final average rank r̄; the time of each allocation event in
that phase is recorded separately. AdaLoRA starts at init_r = 1.5 r̄ and is timed in its budgeting
phase (importance update every step), which is the phase that costs it most.

Peak memory: on CUDA, ``max_memory_allocated`` over the timed steps (all methods in one process);
on CPU, each method runs in a forked child and reports its peak RSS growth from the child's start.

Writes results/bench/overhead.json and overhead.md (ratios to LoRA).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.backbones import load_model  # noqa: E402
from src.methods import METHODS, get_method  # noqa: E402
from src.records import git_state, package_versions  # noqa: E402
from src.schedule import GroupLambdaLR, linear_warmup_decay  # noqa: E402

HEADS = ["classifier", "pooler"]
TOTAL_STEP = 10_000  # nominal T: keeps every schedule in its active phase during the measurement


def method_overrides(name: str, r: int, n_modules: int) -> dict:
    """Budget matching (spec §6): every method ends at average rank r per module."""
    fast = {"init_warmup": 0, "incre_interval": 1, "top_h": n_modules}
    return {
        "lora": {"r": r},
        "adalora": {"init_r": math.ceil(1.5 * r), "target_r": r, "tinit": 0, "tfinal": 0, "deltaT": 1},
        "increlora": {"target_rank": r, **fast},
        "triadapt": {"reference_rank": r, "schedule": "fixed", "incre_rank_num": 1, **fast},
    }[name]


def parse_variant(spec: str) -> tuple[str, dict]:
    """``triadapt:orth_reg_weight=0`` -> ("triadapt", {"orth_reg_weight": 0.0}): a method with extra fields."""
    import yaml

    name, _, extra = spec.partition(":")
    fields = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in extra.split(",") if kv)}
    return name, fields


def build(spec: str, r: int, args):
    name, extra = parse_variant(spec)
    from omegaconf import OmegaConf

    backbone = OmegaConf.load(ROOT / "configs" / "backbone" / "minilm-l6.yaml")
    if args.random_weights:  # same architecture, random values: timing does not depend on the weights
        backbone.pretrained = None
        backbone.random_config = {
            "model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
            "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512,
        }  # fmt: skip
    model = load_model(backbone, "seq_cls", 2, seed=0)
    method = get_method(name)
    method_yaml = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "method" / f"{name}.yaml"))
    fields = {k: v for k, v in method_yaml.items() if not isinstance(v, str) or "${" not in v}
    fields.update(target_modules=list(backbone.target_modules), modules_to_save=HEADS)
    from src.methods.base import find_targets

    n_modules = len(find_targets(model, fields["target_modules"], HEADS))
    fields.update(method_overrides(name, r, n_modules))
    fields.update(extra)
    config = method.make_config(fields, total_step=TOTAL_STEP, warmup_steps=0)
    return method, method.apply(model, config).to(args.device)


def measure(spec: str, r: int, args) -> dict:
    name = parse_variant(spec)[0]
    dev = torch.device(args.device)
    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    method, model = build(spec, r, args)
    model.train()
    opt = torch.optim.AdamW(method.param_groups(model, 1e-4, 0.01), lr=1e-4)
    sched = GroupLambdaLR(opt, linear_warmup_decay(0, TOTAL_STEP))
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 30000, (args.batch, args.length), generator=g).to(dev),
        "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long, device=dev),
        "labels": torch.randint(0, 2, (args.batch,), generator=g).to(dev),
    }

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step_no = 0

    def one_step():
        nonlocal step_no
        step_no += 1
        model(**batch).loss.backward()
        opt.step()
        t0 = time.perf_counter()
        event = method.step(model, opt, sched, global_step=step_no)
        sync()
        hook_s = time.perf_counter() - t0
        sched.step()
        opt.zero_grad(set_to_none=True)
        return event, hook_s

    budget0 = method.budget(model)
    target = budget0["target_total_rank"]
    event_times = []
    if name in ("increlora", "triadapt"):  # grow to the full budget first
        for _ in range(200):
            event, hook_s = one_step()
            if event is not None:
                event_times.append(hook_s)
            if method.budget(model)["total_rank"] >= target:
                break
    for _ in range(args.warmup):
        one_step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    times = []
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        one_step()
        sync()
        times.append(time.perf_counter() - t0)
    budget = method.budget(model)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    )
    return {
        "method": spec,
        "median_step_s": statistics.median(times),
        "p10_step_s": sorted(times)[len(times) // 10],
        "p90_step_s": sorted(times)[(9 * len(times)) // 10],
        "peak_mem_mib": peak,
        "peak_mem_kind": "cuda max_memory_allocated"
        if dev.type == "cuda"
        else "peak RSS growth (forked child)",
        "resting_mem_mib": base_mem / 2**20 if dev.type == "cuda" else None,
        "allocation_events": len(event_times),
        "median_event_s": statistics.median(event_times) if event_times else None,
        "total_rank": budget["total_rank"],
        "target_total_rank": target,
        "avg_rank": budget["total_rank"] / len(budget["rank_pattern"]),
        "trainable_total": budget["trainable_total"],
        "effective_adapter": budget["effective_adapter"],
    }


def _child(name, r, args, queue):
    torch.set_num_threads(args.threads or torch.get_num_threads())
    try:
        queue.put(measure(name, r, args))
    except Exception as err:  # reported in the table, never silently dropped
        queue.put({"method": name, "error": f"{type(err).__name__}: {err}"})


def run_all(args) -> list[dict]:
    names = [m for m in args.methods if parse_variant(m)[0] in METHODS]
    rows = []
    for name in names:
        print(f"measuring {name} ...", flush=True)
        if args.device == "cpu":
            ctx = mp.get_context("fork")
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(name, args.rank, args, queue))
            proc.start()
            rows.append(queue.get())
            proc.join()
        else:
            rows.append(measure(name, args.rank, args))
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lora = next((r for r in rows if r["method"] == "lora" and "error" not in r), None)
    lines = [
        f"# Step overhead at average rank {meta['rank']} ({meta['device_name']})",
        "",
        f"MiniLM-L6, all six linear maps per layer, batch {meta['batch']} x length {meta['length']}, "
        f"{meta['steps']} timed steps (median), step hook included. Command: `{meta['command']}`",
        "",
        "| method | median step (ms) | × LoRA | peak memory (MiB) | × LoRA | avg rank | allocation event (ms) | event / step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | |")
            continue
        step_ratio = r["median_step_s"] / lora["median_step_s"] if lora else float("nan")
        mem_ratio = (
            r["peak_mem_mib"] / lora["peak_mem_mib"] if lora and lora["peak_mem_mib"] else float("nan")
        )
        ev = r["median_event_s"]
        lines.append(
            f"| {r['method']} | {1e3 * r['median_step_s']:.1f} | {step_ratio:.3f} | {r['peak_mem_mib']:.0f} | "
            f"{mem_ratio:.3f} | {r['avg_rank']:.2f} | {'—' if ev is None else f'{1e3 * ev:.2f}'} | "
            f"{'—' if ev is None else format(100 * ev / r['median_step_s'], '.2f') + '%'} |"
        )
    lines += [
        "",
        f"Memory: {rows[0].get('peak_mem_kind', '')}. Versions: {meta['versions']}. Git: {meta['git']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["lora", "adalora", "increlora", "triadapt", "triadapt:orth_reg_weight=0"],
        help="methods, optionally with extra fields: name:key=value,...",
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="MiniLM architecture with random weights"
    )
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    parser.add_argument("--tag", default="", help="suffix for the output files, e.g. _h100")
    parser.add_argument(
        "--git-sha", default=None, help="record this SHA when the checkout has no .git (device copies)"
    )
    args = parser.parse_args()
    rows = run_all(args)
    meta = {
        "rank": args.rank, "batch": args.batch, "length": args.length, "steps": args.steps,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "command": "python " + " ".join(sys.argv),
        "versions": package_versions(), "git": {"sha": args.git_sha, "dirty": None} if args.git_sha else git_state(ROOT),
        "weights": "random" if args.random_weights else "pretrained",
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"overhead{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / f"overhead{args.tag}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()

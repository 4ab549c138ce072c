"""Training-step overhead of each method at the same final average rank (`make bench-overhead`).

For every registered method: MiniLM-L6 (all six linear maps per layer adapted), in one of two
profiles: ``compute`` (batch 16 x length 128, all threads: the arithmetic dominates) or ``dispatch``
(batch 1 x length 8, one thread: the cost of each operator call dominates, as on a GPU at this size);
``--bf16`` runs the forward under bf16 autocast with fp32 weights, as the Trainer's ``bf16=true``.
A step as the Trainer takes it (forward, backward, clipping, AdamW in the trainer's implementation,
the method's step hook, the project's scheduler). Growing methods are first grown to their full
budget with a forced fast schedule (every module grows at every step) so that all methods are timed
at the same final average rank r̄; the time of each allocation event in that phase is recorded
separately. AdaLoRA starts at init_r = 1.5 r̄ and is timed in its budgeting phase (importance update
every step), which is the phase that costs it most.

Step time: all methods live in one process and are stepped in turn, one step each per round, the
order rotating every round, so that load from anything else on the machine falls on every method
alike. Reported: median step time, and the median (p10-p90) of the per-round ratios to LoRA.

Peak memory (a separate pass, 3 steps after growth): on CUDA, ``max_memory_allocated``; on CPU, each
method runs in a forked child, on random weights of MiniLM's shapes (pretrained ones are mapped from
the file, off the heap), and reports two numbers from the child's start: its peak RSS growth, and
its peak allocated growth, the C heap's bytes in use (glibc ``mallinfo2``) read after every operator
call of the 3 steps. The second is the CPU analogue of CUDA's measure; RSS adds what the allocator
keeps from freed blocks, and the random initialisation's temporaries.

Writes results/bench/overhead<tag>.json and overhead<tag>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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

from src.lr_schedule import GroupLambdaLR, linear_warmup_decay  # noqa: E402
from src.methods import METHODS, get_method  # noqa: E402
from src.records import git_state, package_versions  # noqa: E402
from src.runtime.backbones import load_model  # noqa: E402
from src.runtime.trainer import OPTIMIZERS  # noqa: E402

HEADS = ["classifier", "pooler"]
PROFILES = {
    "compute": {"batch": 16, "length": 128, "threads": 0},
    "dispatch": {"batch": 1, "length": 8, "threads": 1},
}
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


class Stepper:
    """One method's model, optimizer and scheduler, stepped exactly as the Trainer steps them:
    forward, backward, clip to max_grad_norm 1.0, AdamW (--optim, the trainer's implementations),
    the method's step hook, scheduler, zero_grad. Growing methods are grown to the budget first."""

    def __init__(self, spec: str, r: int, args):
        self.spec, self.name = spec, parse_variant(spec)[0]
        self.dev = torch.device(args.device)
        self.bf16 = args.bf16
        torch.manual_seed(0)
        self.method, self.model = build(spec, r, args)
        self.model.train()
        groups = self.method.param_groups(self.model, 1e-4, 0.01)
        self.opt = torch.optim.AdamW(groups, lr=1e-4, **OPTIMIZERS[args.optim])
        self.sched = GroupLambdaLR(self.opt, linear_warmup_decay(0, TOTAL_STEP))
        g = torch.Generator().manual_seed(0)
        self.batch = {
            "input_ids": torch.randint(1000, 30000, (args.batch, args.length), generator=g).to(self.dev),
            "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long, device=self.dev),
            "labels": torch.randint(0, 2, (args.batch,), generator=g).to(self.dev),
        }
        self.step_no = 0
        self.target = self.method.budget(self.model)["target_total_rank"]
        self.event_times = []
        if self.name in ("increlora", "triadapt"):  # grow to the full budget first
            for _ in range(200):
                event, hook_s = self.step()
                if event is not None:
                    self.event_times.append(hook_s)
                if self.method.budget(self.model)["total_rank"] >= self.target:
                    break
        for _ in range(args.warmup):
            self.step()
        self.sync()

    def sync(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def step(self):
        self.step_no += 1
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model(**self.batch).loss
        loss.backward()
        params = [p for group in self.opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.opt.step()
        t0 = time.perf_counter()
        event = self.method.step(self.model, self.opt, self.sched, global_step=self.step_no)
        self.sync()
        hook_s = time.perf_counter() - t0
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return event, hook_s

    def timed_step(self) -> float:
        self.sync()
        t0 = time.perf_counter()
        self.step()
        self.sync()
        return time.perf_counter() - t0

    def ops_per_step(self) -> int:
        """Operator calls the profiler sees in one step (nested calls included). Where the host
        dispatches faster than the device computes (a GPU at this size) a step costs about this many
        dispatches, whatever the arithmetic."""
        from torch.profiler import profile

        with profile() as prof:
            self.step()
            self.sync()
        return sum(event.count for event in prof.key_averages())

    def summary(self) -> dict:
        budget = self.method.budget(self.model)
        return {
            "method": self.spec,
            "allocation_events": len(self.event_times),
            "median_event_s": statistics.median(self.event_times) if self.event_times else None,
            "total_rank": budget["total_rank"],
            "target_total_rank": self.target,
            "avg_rank": budget["total_rank"] / len(budget["rank_pattern"]),
            "trainable_total": budget["trainable_total"],
            "effective_adapter": budget["effective_adapter"],
        }


def _heap_in_use():
    """Bytes the C heap has handed out (glibc ``mallinfo2``), or None where there is no glibc."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]  # fmt: skip

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Mallinfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd  # small blocks from the arenas, large ones mapped

    return in_use


def _allocated_peak(in_use):
    """A dispatch mode that records the heap's bytes in use after every operator call."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Peak(TorchDispatchMode):
        peak = in_use()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use())
            return out

    return Peak()


def peak_memory(spec: str, r: int, args) -> dict:
    """Peak memory of 3 training steps after growth: on CUDA max_memory_allocated, on CPU the peak
    RSS growth of this (forked) process from its start (model building and growth included)."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    in_use = _heap_in_use() if args.device == "cpu" else None
    alloc0 = in_use() if in_use else None
    stepper = Stepper(spec, r, args)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        resting = torch.cuda.memory_allocated()
    tracker = _allocated_peak(in_use) if in_use else contextlib.nullcontext()
    with tracker:
        for _ in range(3):
            stepper.step()
    stepper.sync()
    if args.device == "cuda":
        return {
            "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20,
            "peak_alloc_mib": torch.cuda.max_memory_allocated() / 2**20,
            "resting_mem_mib": resting / 2**20,
            "peak_mem_kind": "cuda max_memory_allocated",
        }
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {
        "peak_mem_mib": rss,
        "peak_alloc_mib": None if alloc0 is None else (tracker.peak - alloc0) / 2**20,
        "resting_mem_mib": None,
        "peak_mem_kind": "forked child on random weights of the same shapes; peak RSS growth, and allocated: "
        "peak glibc heap in use after every operator call, both from the child's start",
    }


def _peak_memory_or_error(spec, r, args) -> dict:
    try:
        return peak_memory(spec, r, args)
    except Exception as err:  # reported in the table, never silently dropped
        return {"error": f"{type(err).__name__}: {err}"}


def _memory_child(spec, r, args, queue):
    torch.set_num_threads(args.threads or torch.get_num_threads())
    # safetensors maps pretrained weights from the file, off the heap; random weights of the same
    # shapes put every tensor on it, so "allocated" counts the model as CUDA's measure does
    args = copy.copy(args)
    args.random_weights = True
    queue.put(_peak_memory_or_error(spec, r, args))


def memory_of(spec: str, r: int, args) -> dict:
    if args.device == "cuda":  # one process: max_memory_allocated is per method after a reset
        result = _peak_memory_or_error(spec, r, args)
        torch.cuda.empty_cache()
        return result
    ctx = mp.get_context("fork")  # RSS only grows: a fresh child per method
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(spec, r, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def run_all(args) -> list[dict]:
    """Memory per method, then step times with the methods interleaved step by step (the order
    rotating every round), so that a change in machine load hits every method alike; each method's
    step time is the median over rounds, and its ratio to LoRA the median of the per-round ratios."""
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [m for m in args.methods if parse_variant(m)[0] in METHODS]
    rows = {}
    for spec in specs:
        print(f"memory of {spec} ...", flush=True)
        rows[spec] = {"method": spec, **memory_of(spec, args.rank, args)}
    steppers = {}
    for spec in specs:
        if "error" in rows[spec]:
            continue
        print(f"building and growing {spec} ...", flush=True)
        try:
            steppers[spec] = Stepper(spec, args.rank, args)
        except Exception as err:  # reported in the table, never silently dropped
            rows[spec]["error"] = f"{type(err).__name__}: {err}"
    times = {spec: [] for spec in steppers}
    order = list(steppers)
    for round_no in range(args.steps):
        shift = round_no % len(order)
        for spec in order[shift:] + order[:shift]:
            times[spec].append(steppers[spec].timed_step())
    lora = times.get("lora")
    for spec, stepper in steppers.items():
        t = sorted(times[spec])
        rows[spec].update(stepper.summary())
        rows[spec].update(
            ops_per_step=stepper.ops_per_step(),
            median_step_s=statistics.median(t),
            p10_step_s=t[len(t) // 10],
            p90_step_s=t[(9 * len(t)) // 10],
        )
        if lora is not None:
            ratios = sorted(a / b for a, b in zip(times[spec], lora, strict=True))
            rows[spec].update(
                step_ratio_median=statistics.median(ratios),
                step_ratio_p10=ratios[len(ratios) // 10],
                step_ratio_p90=ratios[(9 * len(ratios)) // 10],
            )
        print(json.dumps(rows[spec]), flush=True)
    return list(rows.values())


def markdown(rows: list[dict], meta: dict) -> str:
    lora = next((r for r in rows if r["method"] == "lora" and "error" not in r), None)
    precision = "bf16 autocast" if meta.get("bf16") else "fp32"
    lines = [
        f"# Step overhead at average rank {meta['rank']}, {meta.get('profile', 'custom')} profile, "
        f"{precision} ({meta['device_name']})",
        "",
        f"MiniLM-L6, all six linear maps per layer, batch {meta['batch']} x length {meta['length']}, "
        f"{meta.get('threads') or 'all'} thread(s), {precision}, "
        f"{meta['steps']} timed rounds, the methods interleaved step by step; median step time, and the "
        f"median of the per-round ratios to LoRA. A step is forward, backward, gradient clipping, AdamW "
        f"({meta['optim']}) and the method's step hook. Command: `{meta['command']}`",
        "",
        "| method | median step (ms) | × LoRA (p10–p90) | peak memory (MiB) | × LoRA | peak allocated (MiB) | × LoRA | avg rank | allocation event (ms) | event / step | ops / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | | | | |")
            continue
        step_ratio = r.get("step_ratio_median", float("nan"))
        mem_ratio = (
            r["peak_mem_mib"] / lora["peak_mem_mib"] if lora and lora["peak_mem_mib"] else float("nan")
        )
        alloc, lora_alloc = r.get("peak_alloc_mib"), lora and lora.get("peak_alloc_mib")
        alloc_cells = f"{alloc:.1f} | {alloc / lora_alloc:.3f}" if alloc and lora_alloc else "— | —"
        ev = r["median_event_s"]
        lines.append(
            f"| {r['method']} | {1e3 * r['median_step_s']:.1f} | {step_ratio:.3f} "
            f"({r.get('step_ratio_p10', float('nan')):.3f}–{r.get('step_ratio_p90', float('nan')):.3f}) | "
            f"{r['peak_mem_mib']:.0f} | "
            f"{mem_ratio:.3f} | {alloc_cells} | {r['avg_rank']:.2f} | {'—' if ev is None else f'{1e3 * ev:.2f}'} | "
            f"{'—' if ev is None else format(100 * ev / r['median_step_s'], '.2f') + '%'} | "
            f"{r.get('ops_per_step', '—')} |"
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
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="compute", help="batch, length and threads"
    )
    parser.add_argument("--batch", type=int, help="overrides the profile's")
    parser.add_argument("--length", type=int, help="overrides the profile's")
    parser.add_argument("--threads", type=int, help="overrides the profile's (0: torch's default)")
    parser.add_argument("--bf16", action="store_true", help="forward under bf16 autocast")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--optim", choices=sorted(OPTIMIZERS), default="adamw_torch_fused")
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
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    explicit = any(f"--{key}" in sys.argv for key in PROFILES[args.profile])
    rows = run_all(args)
    meta = {
        "profile": f"{args.profile} (overridden)" if explicit else args.profile, "bf16": args.bf16,
        "threads": args.threads,
        "rank": args.rank, "batch": args.batch, "length": args.length, "steps": args.steps, "optim": args.optim,
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

"""How far each method's adapter moves the model in the first steps of the CPU-repro protocol.

Why this exists: in the CPU mini-reproduction (issue #7) AdaLoRA scores the same at r̄ 2 and r̄ 8 on
every seed, as if its adapter did nothing. This script trains every method exactly as the repro
configures it (``+sweep=cpu_repro``: same task data, batch, AdamW, warmup/decay, clipping, schedules,
step hook) and every ``--every`` steps measures on a fixed probe of dev examples:

- ``effect``: how much the adapter has changed the encoder's output: ‖h_on − h_off‖ / ‖h_off‖ per
  token of the last hidden state, averaged over the probe's tokens, with h_off from the method's own
  ``disable_adapter`` (heads do not enter it: disabling also swaps the trained heads out);
- ``probe_loss``: the task's loss on the probe (cross-entropy; mean squared error for STS-B's
  regression head), trained heads, adapter on.

Writes results/diagnostics/adapter_startup<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from src.lr_schedule import GroupLambdaLR, linear_warmup_decay  # noqa: E402
from src.methods import METHODS, get_method  # noqa: E402
from src.records import git_state, package_versions  # noqa: E402
from src.runtime.backbones import load_model, load_tokenizer  # noqa: E402
from src.runtime.config_schema import check_config  # noqa: E402
from src.runtime.trainer import make_adamw, training_arguments  # noqa: E402
from src.schema import ConfigError  # noqa: E402
from src.tasks import optimizer_steps, prepare_task  # noqa: E402


def protocol(task: str, method: str, budget: str, data_dir: str, overrides: list[str]):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose(
            "train",
            [
                "+sweep=cpu_repro",
                f"task={task}",
                f"method={method}",
                f"budget={budget}",
                f"task.data_dir={data_dir}/{task}",
                "logger=none",
                *overrides,
            ],  # fmt: skip
        )


def batches(dataset, collator, size: int, seed: int):
    """Shuffled batches forever (epoch after epoch), as the Trainer's sampler draws them."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(dataset), generator=g).tolist()
        for i in range(0, len(order) - size + 1, size):
            yield collator([dataset[j] for j in order[i : i + size]])


@torch.no_grad()
def probe(method, model, inputs) -> dict:
    model.eval()
    features = {k: v for k, v in inputs.items() if k != "labels"}
    out = model(**inputs, output_hidden_states=True)  # with the labels: the head's own loss
    with method.disable_adapter(model):
        off = model(**features, output_hidden_states=True).hidden_states[-1]
    model.train()
    on = out.hidden_states[-1]
    mask = features["attention_mask"].bool()
    relative = (on - off).norm(dim=-1)[mask] / off.norm(dim=-1)[mask]
    return {
        "effect": float(relative.mean()),
        "probe_loss": float(out.loss),
    }


def run_method(name: str, args, overrides: list[str]) -> dict:
    cfg = protocol(args.task, name, args.budget, args.data_dir, overrides)
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(cfg.backbone)
    task = prepare_task(cfg.task, tokenizer, args.seed, cfg.backbone)
    tr = cfg.trainer
    batch = tr.per_device_train_batch_size
    per_epoch = optimizer_steps(len(task.train), batch, 1, 1, -1)
    total = optimizer_steps(len(task.train), batch, 1, tr.num_train_epochs, -1)
    with tempfile.TemporaryDirectory() as tmp:
        targs = training_arguments(tr, tmp, total, per_epoch, args.seed)
    method = get_method(name)
    method_cfg = method.make_config(
        OmegaConf.to_container(cfg.method, resolve=True), total_step=total, warmup_steps=targs.warmup_steps
    )
    model = method.apply(load_model(cfg.backbone, task.head, task.num_labels, args.seed), method_cfg)
    model.train()
    opt = make_adamw(method.param_groups(model, targs.learning_rate, targs.weight_decay), targs)
    sched = GroupLambdaLR(opt, linear_warmup_decay(targs.warmup_steps, total))
    dev = next(iter(task.evals.values()))
    probe_inputs = task.collator([dev[i] for i in range(min(args.probe, len(dev)))])
    points = [
        {"step": 0, **probe(method, model, probe_inputs), "total_rank": method.budget(model)["total_rank"]}
    ]
    train_losses = []
    draws = batches(task.train, task.collator, batch, args.seed)
    for step, inputs in enumerate(itertools.islice(draws, args.steps), start=1):
        loss = model(**inputs).loss
        loss.backward()
        train_losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(
            [p for g in opt.param_groups for p in g["params"]], targs.max_grad_norm
        )
        opt.step()
        method.step(model, opt, sched, global_step=step)
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % args.every == 0 or step == args.steps:
            window = train_losses[-args.every :]
            points.append({
                "step": step, **probe(method, model, probe_inputs),
                "train_loss": sum(window) / len(window), "total_rank": method.budget(model)["total_rank"],
            })  # fmt: skip
            print(f"{name} step {step}: {points[-1]}", flush=True)
    return {"method": name, "total_step": total, "lr": targs.learning_rate, "points": points}


def markdown(rows: list[dict], meta: dict) -> str:
    steps = [p["step"] for p in rows[0]["points"]]
    lines = [
        f"# Adapter start-up on {meta['task'].upper()} (r̄ {meta['budget'].removeprefix('r')}), CPU-repro protocol",
        "",
        f"Command: `{meta['command']}`. Git {meta['git']['sha'][:8]}"
        f"{' (dirty)' if meta['git'].get('dirty') else ''}, torch {meta['versions'].get('torch')}, "
        f"peft {meta['versions'].get('peft')}. Each method trained as `+sweep=cpu_repro` configures it "
        f"(T = {rows[0]['total_step']} for the whole run; the first {steps[-1]} steps here), seed {meta['seed']}; "
        f"probe: the first {meta['probe']} dev examples.",
        "",
        "**Adapter effect**: ‖h(adapter on) − h(adapter off)‖ / ‖h(adapter off)‖ for the last hidden "
        "state, mean over the probe's tokens (0 = the adapter has not changed the encoder).",
        "",
        "| Method | LR | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for r in rows:
        cells = " | ".join(f"{p['effect']:.2g}" for p in r["points"])
        lines.append(f"| {r['method']} | {r['lr']:g} | {cells} |")
    lines += [
        "",
        "**Probe loss** (the task's loss on the probe: cross-entropy, or mean squared error for regression) "
        "and mean training loss over the preceding steps (regulariser included):",
        "",
        "| Method | " + " | ".join(f"step {s}" for s in steps[1:]) + " |",
        "|---|" + "---|" * (len(steps) - 1),
    ]
    for r in rows:
        cells = [f"{p['probe_loss']:.3f} / train {p['train_loss']:.3f}" for p in r["points"][1:]]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Total rank at the last step: "
        + ", ".join(f"{r['method']} {r['points'][-1]['total_rank']}" for r in rows),
        "",
    ]
    return "\n".join(lines)


def command_line(argv: list[str], root: Path = ROOT) -> str:
    """The command as it is run from the repository root: an absolute path inside the repository is
    written relative to it, so the committed file names a command any clone can rerun."""

    def portable(arg: str) -> str:
        if arg.startswith("--") and "=" in arg:  # --out=/abs/path
            flag, value = arg.split("=", 1)
            return f"{flag}={portable(value)}"
        path = Path(arg)
        if path.is_absolute() and path.resolve().is_relative_to(root.resolve()):
            return path.resolve().relative_to(root.resolve()).as_posix()
        return arg

    return " ".join(["python scripts/adapter_startup.py", *map(portable, argv)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rte")
    parser.add_argument("--budget", default="r8")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument(
        "--methods", nargs="+", choices=sorted(METHODS), default=["lora", "adalora", "increlora", "triadapt"]
    )
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--probe", type=int, default=64, help="dev examples in the probe")
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "results" / "diagnostics"))
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--selected-lrs",
        action="store_true",
        help="each method at the LR the tuned protocol selected for --task (issue #20), read from --runs",
    )
    parser.add_argument("--runs", default=str(ROOT / "results" / "runs"), help="run records (--selected-lrs)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="extra Hydra overrides for every method (before --methods, which takes the rest)",
    )
    args = parser.parse_args()
    if not Path(args.data_dir, args.task).is_dir():
        sys.exit(
            f"error: no task data in {args.data_dir}/{args.task}; pass --data-dir (e.g. ../shared/data/glue)"
        )
    torch.set_num_threads(args.threads)
    started = time.time()
    per_method = {name: list(args.overrides) for name in args.methods}
    if args.selected_lrs:
        from src.reporting.lr_selection import selected_lrs
        from src.reporting.tables import load_records

        chosen = selected_lrs(load_records(args.runs))
        if unselected := [name for name in args.methods if (args.task, name) not in chosen]:
            sys.exit(
                f"error: no selected LR yet for {', '.join(unselected)} on {args.task} in {args.runs}; run "
                f"python scripts/cpu_repro.py --chunk lr-{args.task} --chunk lr-edge-{args.task} first"
            )
        for name in args.methods:
            per_method[name].append(f"trainer.learning_rate={chosen[(args.task, name)]:g}")
    try:  # every method's config first: a bad override is one line, before any model loads
        for name in args.methods:
            # no Hydra run here, so no run folder to resolve: the script writes only to --out
            extra = [*per_method[name], f"paths.output_dir={args.out}"]
            check_config(protocol(args.task, name, args.budget, args.data_dir, extra))
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    rows = [run_method(name, args, per_method[name]) for name in args.methods]
    meta = {
        "command": command_line(sys.argv[1:]),
        "task": args.task, "budget": args.budget, "seed": args.seed, "probe": args.probe,
        "git": git_state(), "versions": package_versions(), "host": platform.node(),
        "wall_s": time.time() - started,
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"adapter_startup{args.tag}"
    for suffix, text in (
        (".json", json.dumps({"meta": meta, "rows": rows}, indent=1)),
        (".md", markdown(rows, meta)),
    ):
        tmp = out / (stem + suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / (stem + suffix))
    print(f"wrote {out / stem}.md ({meta['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()

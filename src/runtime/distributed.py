"""Multi-process training (``torchrun``, ``accelerate launch``) for every method, growing ones included.

transformers' Trainer wraps the model in DDP, whose reducer averages the gradients of the parameters
that were trainable when it was built. Growth breaks that: TriAdaptLoRA appends blocks, IncreLoRA
creates spares, splits them, and starts training a spare's E, all after wrapping. Left alone, those
gradients stay per-process and the processes drift apart. What keeps them identical:

1. ``after_event`` (after every allocation event, on every process): checks that all processes made
   the same decision (rank pattern, names and shapes of the new tensors; a clear error otherwise),
   broadcasts the new tensors from rank 0 so their initial values never depend on a process's RNG,
   and gives every newly trainable parameter a post-accumulate-grad hook that averages its gradient
   over the processes. The hook runs inside backward, so the average exists before the Trainer clips
   (transformers 5 runs ``_clip_grad_norm``, then ``on_pre_optimizer_step``, ``optimizer.step`` and
   ``on_optimizer_step``: every callback is too late). Under gradient accumulation the hook averages
   the running sum at each micro-batch: avg(avg(g1) + g2) = avg(g1) + avg(g2), one average of the total.
2. ``before_method_step`` (every optimizer step): averages gradients captured outside parameters,
   which DDP never sees: IncreLoRA's G = ∂L/∂ΔW, summed by a tensor hook into a layer's ``grad_sum``.
   The mean of per-process G over equal local batches is the G of the global batch.
3. Everything else a decision reads is identical on every process already: weights (TriAdaptLoRA's
   ‖L + U‖), DDP-averaged gradients of parameters that exist from the start (AdaLoRA's |w·∇w|, read in
   ``on_optimizer_step`` before ``zero_grad``), and the averaged G above. An all-reduce leaves the same
   bits on every process, so decisions agree without further communication.

Steps 1 and 2 live in src/methods/sync.py, so that ``RankGrowthCallback`` in a stock Trainer does the
same. ``check_consistent`` proves it at the end: a digest of the trained tensors, of every parameter's
name and shape, and of the rank pattern must be equal on all processes.

Collectives are issued in the same order everywhere because every process runs the same graph and
autograd fires hooks in a deterministic order. Only the main process writes (``is_main_process``:
the run record, W&B, the saved adapter); every process runs the loop. Two things make a
multi-process run train what one process would train on the same global batch. ``configure_launch``
makes accelerate distribute on CPU, and ``before_method_step`` refuses a Trainer that did not
distribute. ``training_arguments`` turns off transformers' loss scaling by the process count
(``average_tokens_across_devices``).
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.distributed as dist
from torch import nn

from src.methods.sync import after_event, average_captured, world_size

__all__ = ["after_event", "before_method_step", "check_consistent", "world_size"]


def adopt_submitit_tasks() -> None:
    """Several submitit tasks per run (``hydra/launcher=slurm_multigpu``: one task per GPU, each running
    the same Hydra job) are the processes of one run: export the ``env://`` variables torchrun would
    set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) so the Trainer joins them. A no-op
    outside submitit, with one task, or under torchrun."""
    if "SUBMITIT_FOLDER" not in os.environ or "WORLD_SIZE" in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=torch.cuda.is_available()
        )


def launched_processes() -> int:
    """World size as set by the launcher; readable before the Trainer initialises the process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def configure_launch(processes: int) -> None:
    """Call before TrainingArguments. Without a GPU, accelerate distributes (gloo) only when told to use
    the CPU; otherwise every process would silently train alone on all the data."""
    if processes > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (one collective; none on a single process)."""
    if world_size() == 1:
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def before_method_step(model: nn.Module, trainer_processes: int) -> None:
    """Average what the method's scores read and DDP does not; call before ``method.step``."""
    if trainer_processes != launched_processes():
        raise RuntimeError(
            f"{launched_processes()} processes were launched but the Trainer trains on {trainer_processes}: "
            "each would train alone on all the data (on CPU, set ACCELERATE_USE_CPU=true)"
        )
    average_captured(model)


def digest(model: nn.Module, rank_pattern: dict) -> str:
    """sha256 of the rank pattern, every parameter's name and shape, and the trainable values."""
    h = hashlib.sha256(json.dumps(rank_pattern, sort_keys=True).encode())
    for name, p in model.named_parameters():
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        if p.requires_grad:  # frozen base weights never change after DDP's initial broadcast
            h.update(p.detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def check_consistent(model: nn.Module, rank_pattern: dict) -> dict | None:
    """``{"world_size", "consistent", "digest"}`` when every process holds the same adapter; raises if not.

    None on a single process. Collective: every process must call it.
    """
    n = world_size()
    if n == 1:
        return None
    mine = digest(model, rank_pattern)
    digests = [None] * n
    dist.all_gather_object(digests, mine)
    if len(set(digests)) > 1:
        raise RuntimeError(
            f"the {n} processes ended with different adapters (digests {digests}); their gradients "
            "or allocation decisions were not synchronised"
        )
    return {"world_size": n, "consistent": True, "digest": mine}

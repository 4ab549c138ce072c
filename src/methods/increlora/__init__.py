"""IncreLoRA (Zhang et al., arXiv 2308.12043): ranks grow from 1 towards an average r̄ (spec §4).

Faithful to the released code (FeiyuZhang98/IncreLoRA, ``loralib/loralib/increlora.py``):

- every target holds triplet blocks (A_j, E_j, B_j); ΔW = (α / r) · B diag(E) A over their
  concatenations, r counting active triplets only; the first block is AdaLoRA's init (E = 0);
- while the budget is not spent the forward builds ΔW explicitly and a tensor hook captures
  G = ∂L/∂ΔW; the sensitivity Σ|ΔW ⊙ G| / √numel is smoothed into Ī (EMA) and Ū (uncertainty);
- every ν steps after the warmup the ``top_h`` modules by Ī·Ū gain k ranks; with advance learning
  each module trains a spare block (E frozen at 1e-5) ahead of time and growth activates it;
- new tensors go into a new optimizer group on a restarted warmup (``new_params_lr``).

Released behaviour is the default; each difference is an option (spec §4):

- ``activated_group: new`` (released): an activated spare's E joins the event's new optimizer group,
  so under restart warmup its LR restarts from 0; ``birth`` keeps it in its spare's group.
- ``spares_after_growth: keep`` (released): fresh spares are made at the last event too, and after
  growth every spare's a and b stay trainable and inside the regulariser with E = 0; ``freeze``
  makes none at the last event and freezes them.
- ``allocator_timing``: ``after_step`` (default, spec D12) runs the hook after ``optimizer.step``, so
  ΔW in the score already includes update t; ``before_step`` runs it where the released code does
  and, as it does, counts the updates already done (t − 1) as the step (spec §1.4).
- ``clip_to_budget: false`` (released): min(top_h, R* − R) modules grow by k each and R may pass R*.
- ``score: random``: the allocation control of spec §5.5.

Other departures, all deliberate: the reference overwrites the captured gradient per micro-batch, we
sum it (gradient accumulation gives the same G as one large batch); the reference's scaling is
α / (r + 1e-5), ours α / r. The orthogonal penalty is over each module's concatenated factors, as
the released GLUE trainer computes it. A clipped last growth (g < k) activates part of a spare: those
rows become new tensors that take over the spare's optimizer slot and Adam moments (the reference
has 1-row blocks).
"""

from src.methods.growing.tuner import register_growing_method
from src.methods.increlora.allocator import schedule_capacity
from src.methods.increlora.config import IncreLoRAConfig, IncreLoraConfig
from src.methods.increlora.layer import IncreLoRALinear
from src.methods.increlora.model import IncreLoRA, IncreLoraModel

# method=<Hydra name> and peft type <PEFT NAME>: both fixed by saved runs and adapters
register_growing_method("increlora", "increlora", IncreLoRA, IncreLoraConfig, IncreLoraModel)

__all__ = [
    "IncreLoRA",
    "IncreLoRAConfig",
    "IncreLoRALinear",
    "IncreLoraConfig",
    "IncreLoraModel",
    "schedule_capacity",
]

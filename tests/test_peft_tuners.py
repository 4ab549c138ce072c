"""TriAdaptLoRA and IncreLoRA as peft tuners (src/methods/growing/tuner.py): a stock Trainer grows them,
and save_pretrained -> PeftModel.from_pretrained (fresh process) -> merge_and_unload round-trips."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import peft
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from src.methods import RankGrowthCallback, get_method
from src.methods.growing import resume
from src.methods.growing.tuner import growing_tuner
from src.methods.increlora import IncreLoraConfig, IncreLoraModel
from src.methods.triadapt import TriAdaptLoraConfig, TriAdaptLoraModel
from tests.conftest import CONFIG_DIR, ROOT

STEPS = 24
BACKBONES = {"deberta": ("tiny-deberta", "seq_cls"), "llama": ("tiny-llama", "seq_cls")}


def base_model(backbone: str = "deberta", seed: int = 0):
    from src.runtime.backbones import load_model

    name, head = BACKBONES[backbone]
    return load_model(OmegaConf.load(CONFIG_DIR / "backbone" / f"{name}.yaml"), head, 2, seed)


def tuner_config(method: str, backbone: str = "deberta", **kw):
    b = OmegaConf.load(CONFIG_DIR / "backbone" / f"{BACKBONES[backbone][0]}.yaml")
    common = dict(
        target_modules=list(b.target_modules),
        modules_to_save=list(b.heads.seq_cls),
        total_step=STEPS,
        init_warmup=4,
    )
    if method == "triadapt":
        return TriAdaptLoraConfig(**common, reference_rank=2, incre_interval=2, **kw)
    return IncreLoraConfig(**common, target_rank=2, incre_interval=2, top_h=4, **kw)


def examples(n: int = 32, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (n, 10), generator=g)
    labels = (ids[:, 0] % 2).long()  # learnable: the label is a property of the first token
    return [
        {"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y}
        for i, y in zip(ids, labels, strict=True)
    ]


def batch():
    ex = examples(6, seed=11)
    return {k: torch.stack([e[k] for e in ex]) for k in ("input_ids", "attention_mask")}


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(**batch()).logits


def train_with_trainer(model, tmp_path, save_steps: int | None = None, resume: str | None = None):
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=5e-3,
        warmup_steps=2,
        report_to="none",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        remove_unused_columns=False,
    )
    callback = RankGrowthCallback()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=examples(),
        data_collator=default_data_collator,
        callbacks=[callback],
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback


def grown_model(method: str, tmp_path, backbone: str = "deberta", **options):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the short schedule's dry-run warning
        model = peft.get_peft_model(base_model(backbone), tuner_config(method, backbone, **options))
    trainer, callback = train_with_trainer(model, tmp_path)
    return model, trainer, callback


FRESH_PROCESS = """
import sys, torch, peft
import src.methods  # registers the tuners with peft
from tests.test_peft_tuners import base_model, logits
model = peft.PeftModel.from_pretrained(base_model(sys.argv[2]), sys.argv[1])
torch.save(logits(model), sys.argv[3])
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,backbone,options",
    [
        ("triadapt", "deberta", {}),
        pytest.param("increlora", "deberta", {}, marks=pytest.mark.heavy),
        # a stock Trainer's optimizer never held the frozen spare E that "birth" keeps in their group
        pytest.param("increlora", "deberta", {"activated_group": "birth"}, marks=pytest.mark.heavy),
        pytest.param("triadapt", "llama", {}, marks=pytest.mark.heavy),
    ],
)
def test_stock_trainer_grows_and_round_trips(method, backbone, options, tmp_path):
    model, trainer, callback = grown_model(method, tmp_path, backbone, **options)
    tuner = growing_tuner(model)
    assert isinstance(tuner, TriAdaptLoraModel if method == "triadapt" else IncreLoraModel)

    # 1. a plain Trainer with the callback grows the adapter, and trains the new tensors
    budget = tuner.budget()
    init = len(budget["rank_pattern"])  # r0 = 1 per module for both methods here
    assert callback.events, "no allocation event happened"
    assert budget["total_rank"] > init
    grown = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer_ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in optimizer_ids for p in grown.values()), "a trainable tensor is not in the optimizer"
    assert len(trainer.lr_scheduler.lr_lambdas) == len(trainer.optimizer.param_groups)

    # 5. peft's count of trainable parameters is the method's budget
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == budget["trainable_total"]

    # 2. save_pretrained writes the grown rank pattern
    before = logits(model)
    directory = tmp_path / "adapter"
    model.save_pretrained(directory)
    saved = json.loads((directory / "adapter_config.json").read_text())
    assert saved["peft_type"] == ("TRIADAPTLORA" if method == "triadapt" else "INCRELORA")
    assert {n: sum(b) for n, b in saved["rank_pattern"].items()} == budget["rank_pattern"]

    # 3. a fresh process loads it with peft alone and computes the same logits
    out = tmp_path / "logits.pt"
    subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(directory), backbone, str(out)],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    torch.testing.assert_close(torch.load(out), before, rtol=1e-5, atol=1e-6)

    # 4. merged into the base weights, the plain model computes the same function
    merged = model.merge_and_unload()
    assert not any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in merged.modules())
    assert not hasattr(merged, "adapter_info") and not hasattr(merged, "triadapt_blocks")
    torch.testing.assert_close(logits(merged), before, rtol=1e-4, atol=1e-5)


def fresh_tuner(method: str, **options):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the short schedule's dry-run warning
        return peft.get_peft_model(base_model(), tuner_config(method, **options))


def training_state(model, trainer, callback) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = trainer.optimizer
    return {
        "events": callback.events,
        "weights": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
        "groups": [
            (g.get("name"), g["lr"], sorted(names[id(p)] for p in g["params"]))
            for g in optimizer.param_groups
        ],
        "adam_steps": {names[id(p)]: int(s["step"]) for p, s in optimizer.state.items()},
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,options",
    [
        ("triadapt", {}),
        pytest.param("increlora", {}, marks=pytest.mark.heavy),
        pytest.param("increlora", {"activated_group": "birth"}, marks=pytest.mark.heavy),
    ],
)
def test_stock_trainer_resumes_a_grown_run_from_its_checkpoint(method, options, tmp_path):
    """``trainer.train(resume_from_checkpoint=...)`` from step 8, after two events, ends where the
    uninterrupted run ends: same events, optimizer groups, AdamW step counts and weights."""
    model = fresh_tuner(method, **options)
    trainer, callback = train_with_trainer(model, tmp_path / "full", save_steps=8)
    full = training_state(model, trainer, callback)
    assert [e["step"] for e in full["events"] if e["step"] <= 8] == [6, 8]  # grown before the checkpoint
    checkpoint = tmp_path / "full" / "trainer" / "checkpoint-8"
    assert resume.RESUME_KEY in load_file(checkpoint / "adapter_model.safetensors")

    model = fresh_tuner(method, **options)
    trainer, callback = train_with_trainer(model, tmp_path / "resumed", save_steps=8, resume=str(checkpoint))
    resumed = training_state(model, trainer, callback)
    assert resumed["events"] == full["events"]
    assert resumed["groups"] == full["groups"]
    assert resumed["adam_steps"] == full["adam_steps"]
    assert resumed["weights"].keys() == full["weights"].keys()
    for name, weight in full["weights"].items():
        torch.testing.assert_close(resumed["weights"][name], weight, rtol=0, atol=1e-6, msg=name)

    # after training the callback is detached: an adapter saved now is a plain one
    model.save_pretrained(tmp_path / "adapter")
    assert resume.RESUME_KEY not in load_file(tmp_path / "adapter" / "adapter_model.safetensors")


def test_config_carries_every_method_field_and_round_trips_as_json(tmp_path):
    for method, cls in (("triadapt", TriAdaptLoraConfig), ("increlora", IncreLoraConfig)):
        fields = set(cls.method_config_class.__dataclass_fields__)
        assert fields <= set(cls.__dataclass_fields__) and "rank_pattern" in cls.__dataclass_fields__
        config = tuner_config(method, new_params_lr="restart_warmup")
        config.save_pretrained(tmp_path / method)
        loaded = peft.PeftConfig.from_pretrained(tmp_path / method)
        assert type(loaded) is cls
        assert loaded.method_config() == config.method_config()
        assert get_method(growing_tuner_name(cls)).config_class is cls.method_config_class


def growing_tuner_name(config_cls) -> str:
    return {TriAdaptLoraConfig: "triadapt", IncreLoraConfig: "increlora"}[config_cls]


def test_custom_loop_update_and_allocate_adds_a_scheduled_group():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base_model(), tuner_config("triadapt"))
    tuner = growing_tuner(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, 2, STEPS)
    data = examples(8)
    inputs = {k: torch.stack([e[k] for e in data]) for k in data[0]}
    events = []
    for step in range(1, 9):
        model.train()
        model(**inputs).loss.backward()
        optimizer.step()
        event = tuner.update_and_allocate(step, optimizer, scheduler)
        scheduler.step()
        optimizer.zero_grad()
        events += [event] if event else []
    assert [e["step"] for e in events] == [6, 8]
    assert len(optimizer.param_groups) == 3 and len(scheduler.get_last_lr()) == 3
    # follow: the new group's LR is the global schedule's
    assert scheduler.get_last_lr()[-1] == pytest.approx(scheduler.get_last_lr()[0])
    assert model.peft_config["default"].rank_pattern == {
        n: growing_tuner(model).model.get_submodule(n).block_sizes() for n in tuner.budget()["rank_pattern"]
    }


def test_one_adapter_per_model_and_clear_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base_model(), tuner_config("triadapt"))
        with pytest.raises(ValueError, match="one adapter per model"):
            model.add_adapter("second", tuner_config("triadapt"))
    with pytest.raises(ValueError, match="holds no growing adapter"):
        growing_tuner(base_model())
    with pytest.raises(ValueError, match="total_step"):
        TriAdaptLoraConfig(target_modules=["query_proj"])


@pytest.mark.heavy  # pretrained MiniLM in a subprocess: make test-slow (CI runs it too)
def test_example_script_trains_grows_saves_and_reloads(tmp_path):
    out = tmp_path / "example"
    result = subprocess.run(
        [sys.executable, "scripts/example_peft_trainer.py", "--steps", "12", "--train-samples", "192"]
        + ["--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "TRIADAPTLORA"
    assert sum(map(sum, saved["rank_pattern"].values())) > len(saved["rank_pattern"])  # it grew
    assert "reloaded as TriAdaptLoraModel" in result.stdout


def test_each_growing_method_ties_its_hydra_name_and_peft_type_in_one_registration():
    """``register_growing_method`` in each package's __init__: method=<name> for Hydra (run ids keep
    it) and the peft type saved adapters carry; the tuner and the config find each other from it."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType

    from src.methods.growing.tuner import method_for

    for name, peft_type, config_cls, model_cls in (
        ("triadapt", PeftType.TRIADAPTLORA, TriAdaptLoraConfig, TriAdaptLoraModel),
        ("increlora", PeftType.INCRELORA, IncreLoraConfig, IncreLoraModel),
    ):
        assert method_for(config_cls).name == name and get_method(name).peft_config_class is config_cls
        assert config_cls.registered_peft_type() is peft_type
        assert PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] is config_cls
        assert PEFT_TYPE_TO_TUNER_MAPPING[peft_type] is model_cls


class AdaLoraAllocator(TrainerCallback):
    """peft's documented use of AdaLoRA: ``update_and_allocate`` after each optimizer step."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)


@pytest.mark.slow
@pytest.mark.heavy
def test_peft_adalora_cannot_resume_a_stock_trainer_after_tinit(tmp_path):
    """The peft limit the README names: its AdaLoRA saves the triplets sliced to ``rank_pattern``, and
    a fresh model (no rank pattern yet) cannot load them. ``src.train method=adalora`` saves the
    unsliced tensors and resumes (tests/test_resume.py). If this fails, peft has fixed it: say so."""
    b = OmegaConf.load(CONFIG_DIR / "backbone" / "tiny-deberta.yaml")

    def run(resume=None):
        torch.manual_seed(0)
        config = peft.AdaLoraConfig(
            target_modules=list(b.target_modules),
            modules_to_save=list(b.heads.seq_cls),
            init_r=4,
            target_r=2,
            tinit=2,
            tfinal=2,
            deltaT=2,
            total_step=12,
        )
        model = peft.get_peft_model(base_model(), config)
        args = TrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=4,
            max_steps=12,
            save_strategy="steps",
            save_steps=6,
            report_to="none",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=examples(),
            data_collator=default_data_collator,
            callbacks=[AdaLoraAllocator()],
        )
        trainer.train(resume_from_checkpoint=resume)

    run()
    saved = json.loads((tmp_path / "checkpoint-6" / "adapter_config.json").read_text())
    assert saved["rank_pattern"], "no masking before the checkpoint: the test would prove nothing"
    with pytest.raises(RuntimeError, match="size mismatch"):
        run(resume=str(tmp_path / "checkpoint-6"))

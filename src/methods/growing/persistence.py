"""Save and load of a directly injected growing adapter (spec §1.6): rebuilt shapes, strict key check."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from src.methods.growing.injection import adapter_layers, get_info, in_adapter, unwrap
from src.methods.growing.layer import AdapterLinear

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything the adapter adds: adapter-layer tensors (not the frozen base) and trained heads."""
    model = unwrap(model)
    layers = adapter_layers(model)
    state = {}
    for name, tensor in model.state_dict().items():
        if in_adapter(name, layers) or ".trained_module." in f".{name}":
            state[name] = tensor
    return state


def save_adapter(model: nn.Module, directory: str, extra: dict | None = None) -> None:
    """Write ``adapter_config.json`` (method, config, base model, rank pattern, ``extra``) and the
    tensors, one set per adapter layer under its own name."""
    info = get_info(model)
    if any(layer.merged for layer in adapter_layers(model).values()):
        raise RuntimeError("cannot save a merged adapter (ΔW is inside the base weights); unmerge first")
    os.makedirs(directory, exist_ok=True)
    config = getattr(model, "config", None)
    meta = {
        "method": info.method,
        "config": dataclasses.asdict(info.config),
        "base_model": {
            "name_or_path": getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None),
            "revision": getattr(config, "_commit_hash", None),
        },
        "rank_pattern": {name: layer.block_sizes() for name, layer in adapter_layers(model).items()},
        **(extra or {}),
    }
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    save_file(tensors, os.path.join(directory, WEIGHTS_FILE))


def read_adapter_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory!r}; is this an adapter directory?")
    with open(path) as f:
        return json.load(f)


def load_adapter(method, base_model: nn.Module, directory: str) -> nn.Module:
    """Inject ``method`` into ``base_model`` at init rank, grow to the saved pattern, load strictly."""
    meta = read_adapter_config(directory)
    if meta.get("method") != method.name:
        raise ValueError(f"{directory!r} holds a {meta.get('method')!r} adapter, not {method.name!r}")
    saved_base = (meta.get("base_model") or {}).get("name_or_path")
    current = getattr(getattr(base_model, "config", None), "_name_or_path", None)
    if saved_base and current and saved_base != current:
        warnings.warn(f"adapter was trained on {saved_base!r}, loading onto {current!r}", stacklevel=2)
    config = method.make_config(meta["config"])  # names unknown fields instead of a bare TypeError
    model = method.inject(base_model, config)
    restore_adapter(method, model, meta, directory)
    return model


def restore_adapter(method, model: nn.Module, meta: dict, directory: str) -> None:
    """Grow a freshly injected ``model`` to the saved pattern and load the saved tensors strictly."""
    restore_layout(method, model, meta, directory)
    load_adapter_state(model, load_file(os.path.join(directory, WEIGHTS_FILE)))


def restore_layout(method, model: nn.Module, meta: dict, source: str = "adapter_config.json") -> None:
    """Grow a freshly injected ``model`` to a saved layout (``rank_pattern`` and the method's extras)."""
    pattern = meta.get("rank_pattern")
    check_rank_pattern(pattern, adapter_layers(model))
    method.restore_blocks(model, {name: list(blocks) for name, blocks in pattern.items()}, meta)
    method.restore_extra(model, meta, source)  # e.g. IncreLoRA's spares: more shapes to rebuild


def check_rank_pattern(pattern, layers: dict[str, AdapterLinear]) -> None:
    """A saved pattern must name exactly the injected modules and extend each one's initial blocks."""
    if not isinstance(pattern, dict):
        raise ValueError(f"rank_pattern must map module names to block lists, got {type(pattern).__name__}")
    missing, unexpected = sorted(set(layers) - set(pattern)), sorted(set(pattern) - set(layers))
    if missing or unexpected:
        raise ValueError(
            f"rank_pattern does not match the injected modules: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, blocks in pattern.items():
        ok = isinstance(blocks, list) and blocks and all(isinstance(b, int) and b >= 1 for b in blocks)
        init = layers[name].block_sizes()
        if not ok or blocks[: len(init)] != init:
            raise ValueError(
                f"corrupted rank_pattern for {name!r}: {blocks!r} (expected positive block sizes "
                f"starting with the initial blocks {init})"
            )


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict load of the adapter tensors: missing, unexpected or mis-shaped keys are errors."""
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"adapter weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(
            f"adapter weight {k!r} has shape {tuple(state[k].shape)}, the model expects "
            f"{tuple(expected[k].shape)} ({len(bad)} mismatches; is the rank_pattern consistent?)"
        )
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"unexpected adapter keys: {result.unexpected_keys[:5]}")

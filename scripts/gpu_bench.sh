#!/usr/bin/env bash
# Device-tool wrapper for scripts/gpu_bench.py:
#   run(command="bash scripts/gpu_bench.sh", carry=[".whl"], timeout_s=540)
# Installs the carried wheels (.whl/, from scripts/fetch_gpu_wheels.sh) into /tmp/site, then
# runs the benchmark writing into $OUT (default ./out). Extra arguments go to gpu_bench.py.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "gpu_bench.sh: installing .whl failed"; exit 3; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "gpu_bench.sh: no .whl/ carried; using the image's transformers (may be too old)"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
export PYTHONUNBUFFERED=1
exec python3 scripts/gpu_bench.py --out "${OUT:-out}" "$@"

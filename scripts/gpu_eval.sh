#!/usr/bin/env bash
# Device-tool wrapper for the evaluation at scale (scripts/gpu_eval.py, whose docstring has the
# whole procedure):
#   run(command="bash scripts/gpu_eval.sh --budget 480", carry=[".gpu-eval/delivery-N"],
#       timeout_s=570)
# Installs the wheel groups the deliveries carried so far (once each, into .gpu-eval/site,
# kept between the calls of a warm lease), then runs the jobs whose inputs arrived, rows into
# $OUT.  Extra arguments go to `gpu_eval.py run`.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.gpu-eval/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p .gpu-eval/site
for group in core ruler notebooks; do
  wheels=$(ls .gpu-eval/delivery-*/wheels-$group/*.whl 2>/dev/null)
  [ -z "$wheels" ] && continue
  stamp=.gpu-eval/site/.installed-$group-$(echo "$wheels" | md5sum | cut -c1-8)
  [ -e "$stamp" ] && continue
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target .gpu-eval/site $wheels || { echo "gpu_eval.sh: installing $group failed"; exit 3; }
  touch "$stamp"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec python3 scripts/gpu_eval.py run --out "${OUT:-out}" "$@"

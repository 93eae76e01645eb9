#!/usr/bin/env bash
# Device-tool wrapper for the GPU run:
#   run(command="bash scripts/gpu_bench.sh", carry=[".whl"], timeout_s=540)
# Installs the carried wheels (.whl/, from scripts/fetch_gpu_wheels.sh) into /tmp/site, runs
# the gpu test layer (tests/gpu: the CUDA kernels against the CPU, Mesa's fused launch at long
# positions; log and JUnit XML into $OUT), then the benchmark (scripts/gpu_bench.py) writing
# into $OUT (default ./out), with the fused launch off (--fused-off) where the tests failed.
# MESA_VIZ_GPU_TESTS=0 skips the tests; MESA_VIZ_GPU_LONG sets their long check's keys.
# Extra arguments go to gpu_bench.py.
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
OUT="${OUT:-out}"
mkdir -p "$OUT"
fused=()
if [ "${MESA_VIZ_GPU_TESTS:-1}" != 0 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/gpu --junitxml "$OUT/gpu_tests.xml" 2>&1 \
    | tee "$OUT/gpu_tests.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    failed=$(grep -oE '^(FAILED|ERROR) [^ ]+' "$OUT/gpu_tests.log" | sed 's/^[A-Z]* //; s/.*:://' \
             | paste -sd, -)
    why="tests/gpu failed (pytest exit $rc): ${failed:-see gpu_tests.log}"
    echo "gpu_bench.sh: $why; the benchmark runs with the fused launch off"
    fused=(--fused-off "$why")
  fi
fi
exec python3 scripts/gpu_bench.py --out "$OUT" ${fused[@]+"${fused[@]}"} "$@"

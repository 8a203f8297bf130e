#!/usr/bin/env bash
# benchmarks/resolution_gpu.py in ONE device call (Keras on JAX on the lent GPU; see its docstring):
#   here, once:   PIP=/work/main/.venv/bin/pip bash benchmarks/gpu_check.sh --prepare
#   device call:  run(command="bash benchmarks/resolution_gpu.sh", carry=["benchmarks/wheels",
#                     "benchmarks/.work/mobilenetv2_224_digits_e6.keras"], timeout_s=540)
#   back here:    .venv/bin/python benchmarks/resolution_gpu.py --render <files_at>/resolution_gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/resolution-gpu}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
python3 benchmarks/resolution_gpu.py --out "$OUT/resolution_gpu.json" "$@" 2>&1 | grep -v "^WARNING\|^I0000\|^E0000" | tail -40

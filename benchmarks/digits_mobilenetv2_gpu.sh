#!/usr/bin/env bash
# Train the base model of `benchmarks/optimize.py --only mobilenetv2-train` on a lent GPU in ONE
# device call (Keras on JAX; the CPU here takes about 38 minutes for the same recipe):
#   here, once:   PIP=/work/main/.venv/bin/pip bash benchmarks/gpu_check.sh --prepare   (wheels, Pillow included)
#   device call:  run(command="bash benchmarks/digits_mobilenetv2_gpu.sh", carry=["benchmarks/wheels"], timeout_s=420)
#   back here:    .venv/bin/python benchmarks/optimize.py --adopt-base <files_at>/mobilenetv2_224_digits_e6.keras
# The adopt step loads the model with Keras on TensorFlow, checks its test accuracy here and
# saves it where optimize.py looks for it (benchmarks/.work), with its provenance note.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/digits-mobilenetv2}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
python3 benchmarks/digits_mobilenetv2.py --out "$OUT/mobilenetv2_224_digits_e6.keras" 2>&1 | tail -20
ls -l "$OUT"

#!/usr/bin/env bash
# The keras-jax GPU check, in ONE device call: installs the carried Keras wheels (the GPU machine
# has JAX with CUDA, numpy, h5py, rich, ml-dtypes, psutil, scikit-learn, no TensorFlow and no
# network), then runs benchmarks/gpu.py: the keras-jax contract checks on the GPU, then
# MobileNetV2 and ResNet50 at batch 1 and 256 in fp32, bf16 and fp16, the fp32 and bf16 rows of the
# model as loaded (no BatchNormalization folding), then tf32 (gpu.py's ORDER: a cut for time loses
# the last rows first). On a lent H200 on 2026-11-26 the whole call took 340 s (--budget-s 420). Writes
# $OUT/gpu.json, $OUT/gpu_section.md (the GPU section for BENCHMARKS.md) and $OUT/gpu.log.
#
# 1. Here, once, from the repository root (needs the package index; ~3 MB into the git-ignored
#    benchmarks/wheels/):
#        PIP=/work/main/.venv/bin/pip bash benchmarks/gpu_check.sh --prepare
#    and, optionally, the same script's CPU smoke run (a few minutes on 2 cores):
#        KERAS_BACKEND=jax PYTHONPATH= .venv/bin/python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke
# 2. The device call (the device tool's `run`; about 6 to 8 minutes of the 15 a task is lent,
#    plus the machine's start):
#        run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/wheels"], timeout_s=480)
#    gpu.py starts no new model or precision after 330 s (--budget-s), so the call ends inside its
#    limit; rows already measured are in $OUT/gpu.json even if it is cut short. A second, shorter
#    call can fill in what was skipped, e.g.
#        run(command="bash benchmarks/gpu_check.sh --skip-checks --models ResNet50 --precisions tf32 fp16",
#            carry=["benchmarks/wheels"], timeout_s=300)
# 3. Back here, with the fetched files (files_at in the run's reply):
#        .venv/bin/python benchmarks/gpu.py --render <files_at>/gpu.json
#    writes the section into BENCHMARKS.md (the "GPU (keras-jax)" block between its gpu markers)
#    and copies the JSON to benchmarks/results/gpu.json. Then update README's "unverified" lines.
# Any further arguments go to benchmarks/gpu.py (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-benchmarks/wheels}  # (overridable only to test this script elsewhere)

if [ "${1:-}" = "--prepare" ]; then
    PIP=${PIP:-python3 -m pip}
    mkdir -p "$WHEELS"
    $PIP download -q --no-deps keras==3.15.1 namex==0.1.0 -d "$WHEELS"
    # optree is compiled: the GPU machine's Python is 3.12 on x86-64
    $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        optree==0.20.0 -d "$WHEELS"
    # Pillow: the digits' resize to 224x224 in benchmarks/digits_mobilenetv2_gpu.sh (the version
    # .venv has here, so the inputs are resized alike)
    $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        pillow==13.0.0 -d "$WHEELS"
    ls -l "$WHEELS"
    exit 0
fi

OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
ls "$WHEELS"/keras-*.whl "$WHEELS"/namex-*.whl "$WHEELS"/optree-*.whl >/dev/null \
    || { echo "gpu_check: no wheels in $WHEELS: run 'bash benchmarks/gpu_check.sh --prepare' here and carry $WHEELS"; exit 2; }
SITE=/tmp/kt-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH="$SITE:$PWD/src:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
python3 - <<'PY'
import importlib.metadata as md
for d in ("keras", "namex", "optree", "jax", "jaxlib", "numpy", "h5py", "ml-dtypes", "rich", "absl-py", "packaging", "psutil", "scikit-learn"):
    try:
        print(f"{d} {md.version(d)}", end="; ")
    except md.PackageNotFoundError:
        print(f"{d} MISSING", end="; ")
print()
PY
set -o pipefail
python3 benchmarks/gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu.log"

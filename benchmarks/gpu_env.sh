# Sourced by the one-call GPU scripts (digits_mobilenetv2_gpu.sh, resolution_gpu.sh): installs the
# carried Keras wheels (the device machine has JAX with CUDA and no TensorFlow, no network) and
# sets up Keras on JAX with the package on the path. Run from the repository root.
WHEELS=${WHEELS:-benchmarks/wheels}
SITE=/tmp/kt-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH="$SITE:$PWD/src:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi -L || true

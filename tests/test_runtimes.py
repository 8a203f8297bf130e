"""The one contract every runtime passes, on a Sequential model, a functional model with a
residual Add, and a two-input model: same outputs as Keras (float paths within 1e-4 relative;
16-bit variants within their precision's tolerance and with the same top-1 wherever the float
model's choice is clear), inputs untouched, any batch size, list and dict inputs meaning the same
thing."""

from __future__ import annotations

import numpy as np
import pytest

import keras_turbo
from keras_turbo.model import resolve
from keras_turbo.runtimes import BACKENDS, artifact_for
from tests.conftest import inputs_for, keras_out

CASES = [(m, b) for m in ("sequential", "residual", "two_input") for b in BACKENDS]
CLASSIFIERS = ("sequential", "residual")

# Largest error relative to the output's scale, by the arithmetic a runtime runs in. (tf32 is
# float32 on a CPU; on a GPU its matrix products keep 10 mantissa bits.)
TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 1e-2, "bf16": 5e-2}


def rel_err(got, want):
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12))


@pytest.mark.parametrize("model_name,backend", CASES)
def test_runtime_matches_keras(model_files, model_name, backend):
    from keras_turbo.machine import cpu_flags
    from keras_turbo.runtimes.here import skip_reason

    if skip_reason(backend, cpu_flags()):
        pytest.skip(skip_reason(backend, cpu_flags()))
    path, model = model_files[model_name]
    feeds = inputs_for(model, n=5)
    want = keras_out(model, feeds)
    before = {k: v.copy() for k, v in feeds.items()}

    precision = BACKENDS[backend].precision
    tol = TOLERANCE[precision]
    p = keras_turbo.load(path, backend=backend, threads=2)
    assert p.backend == backend
    assert [t.name for t in p.inputs] == sorted(feeds)  # one input order on every runtime: by name
    got = p(feeds)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel_err(got, want) < tol, f"{backend} differs from Keras by {rel_err(got, want):.2e}"
    for k in feeds:  # the caller's arrays are never written to
        np.testing.assert_array_equal(feeds[k], before[k])

    # A list means name order; the batch size can change from call to call.
    as_list = [feeds[t.name][:1] for t in p.inputs]
    if precision == "fp32":
        np.testing.assert_allclose(p(as_list), want[:1], rtol=1e-4, atol=1e-5)
        # predict() in small batches gives the same numbers as one big call.
        np.testing.assert_allclose(p.predict(feeds, batch_size=2), got, rtol=1e-5, atol=1e-6)
    else:
        assert rel_err(p(as_list), want[:1]) < tol
        assert rel_err(p.predict(feeds, batch_size=2), got) < tol
        if model_name in CLASSIFIERS:
            assert_same_top1_where_clear(p, model)
    p.close()


def assert_same_top1_where_clear(p, model, n=60):
    """A lower-precision path picks the float model's class wherever the float model's top two
    scores are apart by more than 5% of the output's scale (closer calls may flip, honestly)."""
    feeds = inputs_for(model, n=n, seed=1)
    # In batches of 5, the batch size the contract already ran: runtimes that compile per input
    # shape (keras-jax) compile nothing new for this.
    want, got = keras_out(model, feeds), p.predict(feeds, batch_size=5)
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05 * np.abs(want).max()
    assert clear.sum() >= n // 2, "too few clear-cut inputs for the check to mean anything"
    np.testing.assert_array_equal(got.argmax(axis=1)[clear], want.argmax(axis=1)[clear])


def test_export_is_cached_and_reused(model_files):
    path, _ = model_files["residual"]
    ref = resolve(path)
    first = artifact_for(ref, "onnxruntime")
    mtime = first.path.stat().st_mtime_ns
    second = artifact_for(ref, "onnxruntime")
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert first.format == "onnx" and first.path.suffix == ".onnx"


@pytest.mark.parametrize("backend,suffix", [("litert", ".tflite"), ("onnxruntime", ".onnx"), ("openvino", ".xml")])
def test_artifact_files_load_on_their_runtime(model_files, backend, suffix):
    """An exported artifact opened by path runs on its own runtime by default."""
    path, model = model_files["sequential"]
    artifact = artifact_for(resolve(path), backend)
    assert artifact.path.suffix == suffix
    p = keras_turbo.load(artifact.path)
    assert p.backend == backend
    feeds = inputs_for(model, n=3)
    assert rel_err(p(feeds), keras_out(model, feeds)) < 1e-4


def test_openvino_reads_onnx_too(model_files):
    path, model = model_files["residual"]
    onnx_file = artifact_for(resolve(path), "onnxruntime").path
    p = keras_turbo.load(onnx_file, backend="openvino")
    feeds = inputs_for(model)
    assert rel_err(p(feeds), keras_out(model, feeds)) < 1e-4


def test_in_memory_keras_model(model_files):
    _, model = model_files["two_input"]
    p = keras_turbo.load(model, backend="litert")
    feeds = inputs_for(model)
    assert rel_err(p(feeds), keras_out(model, feeds)) < 1e-4


def test_keras_runtime_refuses_artifact(model_files):
    path, _ = model_files["sequential"]
    tfl = artifact_for(resolve(path), "litert").path
    with pytest.raises(keras_turbo.BackendError, match="cannot run a .tflite"):
        keras_turbo.load(tfl, backend="keras-predict")


def test_unknown_backend(model_files):
    path, _ = model_files["sequential"]
    with pytest.raises(keras_turbo.BackendError, match="unknown backend 'tensorrt'.*litert"):
        keras_turbo.load(path, backend="tensorrt")


def test_wrong_input_shape_is_a_clear_error(model_files):
    path, _ = model_files["sequential"]
    p = keras_turbo.load(path, backend="onnxruntime")
    with pytest.raises(keras_turbo.DataError, match=r"input 'img': expected shape \(batch, 12, 12, 3\)"):
        p(np.zeros((1, 10, 10, 3), "float32"))


def _has_gpu():
    from keras_turbo import _tf

    return bool(_tf.tf().config.list_physical_devices("GPU"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["tf-function", "tf-xla"])
def test_tf_runtimes_run_on_gpu(model_files, backend):
    if not _has_gpu():
        pytest.skip("no GPU on this machine: the GPU placement of tf-function / tf-xla is checked where one is")
    path, model = model_files["residual"]
    p = keras_turbo.load(path, backend=backend, device="gpu")
    assert p.device == "gpu"
    feeds = inputs_for(model)
    assert rel_err(p(feeds), keras_out(model, feeds)) < 1e-3

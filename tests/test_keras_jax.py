"""keras-jax beyond the shared runtime contract: a benchmark row, a throughput-sized batch, safety before any worker loads a file, worker failures as one-line errors that never
hang, evaluate through the worker, and legacy .h5 files."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import keras_turbo
from keras_turbo.runtimes import keras_jax
from keras_turbo.runtimes.here import default_backends
from keras_turbo.model import resolve
from tests.conftest import inputs_for, keras, keras_out

QUICK = keras_turbo.BenchmarkConfig(warmup_runs=2, warmup_seconds=0.0, min_runs=5, min_seconds=0.05)


def test_benchmark_row(model_files):
    path, _ = model_files["residual"]
    report = keras_turbo.benchmark(path, backends=["keras-jax-bf16"], batch_sizes=[1], threads=1, config=QUICK)
    assert [(r.backend, r.batch_size) for r in report.results] == [("keras-jax-bf16", 1)]
    for r in report.results:
        assert r.ok, r.error
        assert r.device == "cpu" and r.runs >= QUICK.min_runs and r.throughput_per_s > 0
        assert r.pid != os.getpid()
    # the first call compiles; the timed ones run the compiled call
        # The model ran in the benchmark's own worker (JAX and Keras in its memory), not behind a
        # pipe in a further process, so the timings hold no inter-process copies.
        assert r.peak_rss_mb > 200
        # Given the batch size, the Predictor compiled its call while loading.
        assert r.init_ms > 10 * r.latency_ms["p50"]


def test_default_backends_leave_out_precision_variants(model_files):
    names = default_backends(resolve(model_files["sequential"][0]))
    assert "keras-jax" in names and not any(n.startswith("keras-jax-") for n in names)


def test_lambda_layer_refused_before_the_worker_loads_it(tmp_path):
    x = keras.Input((3,), name="x")
    model = keras.Model(x, keras.layers.Lambda(lambda t: t * 2, name="doubler")(x))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(keras_turbo.ModelLoadError, match="Lambda layer.*doubler.*refused in safe mode"):
        keras_turbo.load(path, backend="keras-jax")


def test_savedmodel_is_not_for_keras_jax(tmp_path):
    d = tmp_path / "sm"
    d.mkdir()
    (d / "saved_model.pb").write_bytes(b"\x00")
    with pytest.raises(keras_turbo.BackendError, match="cannot run a .savedmodel"):
        keras_turbo.load(d, backend="keras-jax")


def test_bad_file_is_one_line_and_the_worker_lives_on(tmp_path, model_files):
    import zipfile

    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("config.json", "{not json")
    with pytest.raises(keras_turbo.KerasTurboError, match=r"^keras-jax worker: .*bad\.keras") as e:
        keras_turbo.load(bad, backend="keras-jax")
    assert "\n" not in str(e.value)
    path, model = model_files["sequential"]
    feeds = inputs_for(model)
    assert np.allclose(keras_turbo.load(path, backend="keras-jax")(feeds), keras_out(model, feeds), rtol=1e-4, atol=1e-6)


def test_a_worker_that_dies_is_an_error_not_a_hang(model_files):
    path, model = model_files["two_input"]
    p = keras_turbo.load(path, backend="keras-jax")
    os.kill(keras_jax._WORKERS["any"]._proc.pid, signal.SIGKILL)
    with pytest.raises(keras_turbo.BackendError, match="keras-jax worker exited"):
        p(inputs_for(model))
    # the next model starts a fresh worker
    feeds = inputs_for(model)
    np.testing.assert_allclose(keras_turbo.load(path, backend="keras-jax")(feeds), keras_out(model, feeds), rtol=1e-4, atol=1e-6)


def test_a_worker_that_fails_to_start_gives_its_first_error_line(model_files, monkeypatch):
    # device="cpu" models have a worker of their own, so this one starts fresh (and the shared one lives on)
    keras_jax._WORKERS.pop("cpu", None)
    monkeypatch.setattr(keras_jax, "_WORKER_MAIN", "import sys; print('starting', file=sys.stderr); "
                                                   "raise RuntimeError('no accelerator runtime here')")
    with pytest.raises(keras_turbo.BackendError, match="exited.*RuntimeError: no accelerator runtime here"):
        keras_turbo.load(model_files["sequential"][0], backend="keras-jax", device="cpu")


def test_closed_and_collected_predictors_free_their_models(model_files):
    import gc

    path, model = model_files["two_input"]
    feeds = inputs_for(model)
    closed, collected = keras_turbo.load(path, backend="keras-jax"), keras_turbo.load(path, backend="keras-jax")
    worker, ids = closed.engine._worker, [closed.engine._id, collected.engine._id]
    closed.close()
    with pytest.raises(keras_turbo.BackendError, match="closed"):
        closed(feeds)
    del collected  # never closed: the garbage collector hands it back, with no I/O of its own
    gc.collect()
    for model_id in ids:  # the worker holds neither any more
        header, _ = worker.request({"op": "run", "id": model_id}, [feeds["a_feats"], feeds["z_feats"]])
        assert not header["ok"] and header["kind"] == "KeyError"


def test_evaluate_runs_in_the_worker_and_agrees(tmp_path, model_files):
    path, model = model_files["sequential"]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((40, 12, 12, 3)).astype("float32"), y=np.arange(40) % 5)
    res = keras_turbo.evaluate(path, tmp_path / "d.npz", reference=path, backend="keras-jax-fp16",
                               reference_backend="keras-call", batch_size=8)
    assert res["backend"] == "keras-jax-fp16" and res["samples"] == 40
    assert res["top1_agreement"] >= 0.95 and res["max_abs_diff"] < 1e-2


def test_legacy_h5_file_and_a_throughput_batch(tmp_path, model_files):
    _, model = model_files["residual"]
    path = tmp_path / "residual.h5"
    model.save(path)
    feeds = inputs_for(model, n=256)  # --objective throughput times large batches
    got = keras_turbo.load(path, backend="keras-jax", batch_size=256)(feeds)
    np.testing.assert_allclose(got, keras_out(model, feeds), rtol=1e-4, atol=1e-6)


def test_jax_gpus_is_the_planners_switch():
    """keras_jax.jax_gpus() (for optimize's planner) lists the GPUs among JAX's devices, probed in a
    subprocess: this process's Keras stays on TensorFlow."""
    devices, error = keras_jax.jax_devices()
    assert error is None and any(d["platform"] == "cpu" for d in devices)
    assert keras_jax.jax_gpus() == [d["kind"] for d in devices if d["platform"] in ("gpu", "cuda", "rocm")]
    assert keras.backend.backend() == "tensorflow"



def test_batchnorm_folding_keeps_the_function_and_the_input(tmp_path):
    from keras_turbo.runtimes.fold import fold_batchnorm
    from tests import tiny_models

    model = tiny_models.bn_fold(keras)
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).standard_normal((16, 9, 9, 3)).astype("float32")
    want = np.asarray(model(x, training=False))
    folded, n = fold_batchnorm(keras, model)
    # Three BatchNormalization layers follow a Conv2D, a DepthwiseConv2D (multiplier 2) and a Dense
    # that nothing else reads; the fourth's convolution output is also read by the Add.
    assert n == 3
    kinds = [type(l).__name__ for l in folded.layers]
    assert kinds.count("BatchNormalization") == 1 and len(folded.layers) == len(model.layers) - 3
    got = np.asarray(folded(x, training=False))
    assert np.max(np.abs(got - want)) < 1e-5 * np.max(np.abs(want))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the input is unchanged

    # keras-jax folds at load and still matches Keras-on-TensorFlow on the unfolded model.
    model.save(tmp_path / "bn.keras")
    p = keras_turbo.load(tmp_path / "bn.keras", backend="keras-jax", device="cpu")
    try:
        assert p.engine.folded == 3
        assert np.max(np.abs(p(x) - want)) < 1e-4 * np.max(np.abs(want))
    finally:
        p.close()


def test_nothing_folds_where_an_activation_or_a_second_reader_sits_between(model_files):
    from keras_turbo.runtimes.fold import fold_batchnorm

    _, model = model_files["sequential"]  # Conv2D(activation="relu") then BatchNormalization
    same, n = fold_batchnorm(keras, model)
    assert n == 0 and same is model

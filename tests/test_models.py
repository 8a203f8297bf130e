"""Loading every Keras format safely, and describing models."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import keras_turbo
from keras_turbo import describe
from tests.conftest import inputs_for, keras, keras_out


def test_keras_file_round_trip(model_files):
    path, model = model_files["residual"]
    loaded = keras_turbo.load_model(path)
    feeds = inputs_for(model)
    np.testing.assert_allclose(keras_out(loaded, feeds), keras_out(model, feeds), rtol=1e-6)


def test_legacy_h5_from_keras3(tmp_path, model_files):
    _, model = model_files["sequential"]
    path = tmp_path / "legacy.h5"
    model.save(path)
    feeds = inputs_for(model)
    np.testing.assert_allclose(keras_out(keras_turbo.load_model(path), feeds), keras_out(model, feeds), rtol=1e-6)


def test_keras2_h5_written_by_tf_keras(tmp_path):
    """A real Keras 2 file, written by tf_keras (the Keras that TF 2.15 and older shipped)."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    old = tf_keras.Sequential([
        tf_keras.layers.InputLayer(input_shape=(8, 8, 1)),
        tf_keras.layers.Conv2D(4, 3, activation="relu"),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(3, activation="softmax"),
    ])
    path = tmp_path / "keras2.h5"
    old.save(path)
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype="float32")
    want = old.predict(x, verbose=0)
    p = keras_turbo.load(path, backend="litert")
    np.testing.assert_allclose(p(x), want, rtol=1e-4, atol=1e-6)


def keras224_h5(tmp_path, name="old224.h5"):
    """A Keras 2.2-era .h5 as such files are: a Sequential whose config is a bare list of layers,
    the first one carrying `batch_input_shape`, no InputLayer. Keras 3 refuses it; tf-keras reads it.
    (Written by tf_keras, then given the old layout: Keras 2.2.4 itself is not installable here.)"""
    import json

    import h5py
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    m = tf_keras.Sequential([tf_keras.layers.Conv2D(8, 3, input_shape=(16, 16, 1), activation="relu"),
                             tf_keras.layers.MaxPooling2D(2), tf_keras.layers.Flatten(),
                             tf_keras.layers.Dense(10, activation="softmax")])
    path = tmp_path / name
    m.save(path)
    with h5py.File(path, "r+") as f:
        layers = [l for l in json.loads(f.attrs["model_config"])["config"]["layers"] if l["class_name"] != "InputLayer"]
        layers[0]["config"]["batch_input_shape"] = [None, 16, 16, 1]
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": layers}).encode()
        f.attrs["keras_version"] = b"2.2.4"
    return path, m


def test_a_keras2_file_keras3_refuses_is_loaded_with_tf_keras_and_carried_on(capsys, tmp_path, monkeypatch):
    """issue 28: the old .h5 goes through inspect, benchmark, convert and optimize, as a Keras 3
    model rebuilt from tf-keras' reading (its outputs the same), saying so in one line."""
    from keras_turbo.cli import main
    from keras_turbo.model import legacy, resolve

    monkeypatch.setenv("KERAS_TURBO_CACHE", str(tmp_path / "cache"))
    path, old = keras224_h5(tmp_path)
    assert legacy.keras3_refuses(resolve(path)) is not None  # Keras 3's own loader cannot read it
    x = np.random.default_rng(0).random((4, 16, 16, 1), dtype="float32")
    with pytest.warns(UserWarning, match="Keras 3 cannot read this Keras 2 file.*loaded with tf-keras"):
        p = keras_turbo.load(path, backend="litert")
    np.testing.assert_allclose(p(x), old.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
    assert main(["inspect", str(path), "--json", str(tmp_path / "i.json")]) == 0
    import json

    info = json.loads((tmp_path / "i.json").read_text())
    assert info["params"] == old.count_params() and info["flops_per_sample"] > 0
    assert main(["benchmark", str(path), "--backend", "litert", "--min-runs", "3", "--min-seconds", "0.01"]) == 0
    out = tmp_path / "o"
    code = main(["optimize", str(path), "--data", str(_npz(tmp_path, x, old)), "--out", str(out), "--techniques",
                 "runtimes,int8", "--runtimes", "litert", "--time-budget", "3m", "--runoff-rounds", "0"])
    assert code == 0 and json.loads((out / "results.json").read_text())["recommended"]
    # the safe-mode pre-scan stands in front of tf-keras too
    import h5py

    bad = tmp_path / "lambda.h5"
    keras224_h5(tmp_path, "lambda.h5")
    with h5py.File(bad, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"].append({"class_name": "Lambda", "config": {"name": "code", "function": "x"}})
        f.attrs["model_config"] = json.dumps(cfg).encode()
    with pytest.raises(keras_turbo.ModelLoadError, match="Lambda"):
        keras_turbo.load_model(bad)


def _npz(tmp_path, x, model):
    xs = np.random.default_rng(1).random((60, 16, 16, 1), dtype="float32")
    path = tmp_path / "d.npz"
    np.savez(path, x=xs, y=model.predict(xs, verbose=0).argmax(1))
    return path


def test_a_tf_keras_savedmodel_has_parameters_and_flops_and_its_sigmoids_are_named(tmp_path):
    """A tf.keras SavedModel with dict outputs: inspect counts its variables and its graph's
    FLOPs (it said 0 and 0), and an output in [0, 1] is called likely probabilities."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((16, 16, 3), name="image")
    h = tf_keras.layers.Conv2D(8, 3, activation="relu")(inp)
    h = tf_keras.layers.GlobalAveragePooling2D()(h)
    m = tf_keras.Model(inp, {"logit": tf_keras.layers.Dense(2)(h), "prob": tf_keras.layers.Dense(1, activation="sigmoid")(h)})
    sm = tmp_path / "sm"
    m.save(sm, save_format="tf")
    info = describe.describe(keras_turbo.model.resolve(sm))
    conv = 2 * 14 * 14 * 8 * (3 * 3 * 3)  # 2 x MACs of the convolution
    assert info["params"] == m.count_params() and info["flops_per_sample"] >= conv, info
    from keras_turbo import quality

    outs = keras_turbo.load(sm, backend="tf-function")(np.random.default_rng(0).random((8, 16, 16, 3), dtype="float32"))
    prob = outs[1]  # outputs in key order: logit, prob
    k = quality.detect("output_1", (None, 1), None, prob)
    assert k.kind == "regression" and not k.sure and "likely probabilities" in k.why and "output_1=binary" in k.why


def test_recurrent_layers_count_their_flops():
    """LSTM (four gates), GRU (three) and a Bidirectional wrapper (both ways) over their sequence
    (they counted none)."""
    lstm = keras.Sequential([keras.Input((10, 8)), keras.layers.LSTM(16), keras.layers.Dense(2)])
    assert describe.describe_keras(lstm)["flops_per_sample"] == 2 * 4 * 16 * (8 + 16) * 10 + 2 * 16 * 2
    gru = keras.Sequential([keras.Input((5, 3)), keras.layers.Bidirectional(keras.layers.GRU(4))])
    assert describe.describe_keras(gru)["flops_per_sample"] == 2 * (2 * 3 * 4 * (3 + 4) * 5)


def test_savedmodel_directory(tmp_path, model_files):
    _, model = model_files["two_input"]
    sm = tmp_path / "sm"
    model.export(str(sm), verbose=False)
    feeds = inputs_for(model)
    want = keras_out(model, feeds)
    for backend in ("keras-call", "tf-function", "onnxruntime", "openvino"):
        got = keras_turbo.load(sm, backend=backend)(feeds)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=backend)


def _lambda_model(marker):
    # A lambda expression is stored as bytecode; this one would leave a file behind if it ever
    # ran while loading.
    # (Built from source so the path is a constant in its bytecode.)
    side_effect = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x * 2.0)[1]")
    inp = keras.Input((4,))
    return keras.Model(inp, keras.layers.Lambda(side_effect, output_shape=(4,))(inp))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_refused_without_unsafe_and_no_code_runs(tmp_path, suffix):
    marker = tmp_path / "marker.txt"
    model = _lambda_model(marker)
    path = tmp_path / f"lambda{suffix}"
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model traced the lambda once
    with pytest.raises(keras_turbo.ModelLoadError, match="Lambda.*--unsafe"):
        keras_turbo.load_model(path)
    assert not marker.exists(), "code from the model file ran during a refused load"


def _hold_h5_lock(path, seconds):
    """A process that opens `path` for writing (HDF5 takes its file lock) and keeps it."""
    code = f"import h5py, time; f = h5py.File({str(path)!r}, 'a'); print('held', flush=True); time.sleep({seconds})"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_h5_locked_by_a_writer_waits_then_says_so(tmp_path, monkeypatch):
    from keras_turbo.model import load as model_load

    path = tmp_path / "m.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    writer = _hold_h5_lock(path, 0.5)  # a writer finishing: the load waits for it
    try:
        assert keras_turbo.load_model(path).output_shape == (None, 2)
    finally:
        writer.kill()
    monkeypatch.setattr(model_load, "H5_LOCK_WAITS", (0.05,))
    writer = _hold_h5_lock(path, 60)
    try:
        with pytest.raises(keras_turbo.ModelLoadError, match="another process holds the file open for writing"):
            keras_turbo.load_model(path)
    finally:
        writer.kill()


def test_keras2_h5_lambda_bytecode_refused(tmp_path):
    """Keras 2 stored a Lambda's function as marshalled bytecode inside the .h5 file."""
    import tf_keras

    marker = tmp_path / "marker.txt"
    old = tf_keras.Sequential([tf_keras.layers.InputLayer(input_shape=(4,)),
                               tf_keras.layers.Lambda(lambda x: x * 2.0, name="double")])
    path = tmp_path / "keras2_lambda.h5"
    old.save(path)
    with pytest.raises(keras_turbo.ModelLoadError, match="Lambda layer.*double.*--unsafe"):
        keras_turbo.load(path, backend="keras-call")
    assert not marker.exists()


def test_lambda_loads_with_unsafe(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "lambda.keras"
    _lambda_model(marker).save(path)
    marker.unlink(missing_ok=True)
    with pytest.warns(UserWarning, match="arbitrary Python code"):
        m = keras_turbo.load_model(path, unsafe=True)
    np.testing.assert_allclose(np.asarray(m(np.ones((1, 4), "float32"))), 2.0)
    assert marker.exists()  # the file's own code ran, as --unsafe allows


def test_savedmodel_with_file_ops_refused(tmp_path):
    from keras_turbo import _tf

    tf = _tf.tf()

    class Leaky(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 2), tf.float32)])
        def serve(self, x):
            tf.io.write_file("/tmp/kt-should-not-exist", "x")
            return {"output_0": x}

    sm = tmp_path / "leaky"
    m = Leaky()
    tf.saved_model.save(m, str(sm), signatures={"serving_default": m.serve})
    with pytest.raises(keras_turbo.ModelLoadError, match="WriteFile"):
        keras_turbo.load_model(sm)


@pytest.mark.parametrize("name,content,match", [
    ("truncated.keras", None, "not a valid .keras file"),
    ("random.keras", b"\x13\x37" * 500, "not a valid .keras file"),
    ("random.h5", b"\x00garbage" * 100, "not a valid HDF5 file"),
    ("empty.h5", b"", "the file is empty"),
    ("model.pt", b"whatever", "unknown model format '.pt'"),
])
def test_bad_model_files(tmp_path, model_files, name, content, match):
    path = tmp_path / name
    if content is None:  # the first half of a real .keras file
        real = model_files["sequential"][0].read_bytes()
        content = real[: len(real) // 2]
    path.write_bytes(content)
    with pytest.raises(keras_turbo.ModelLoadError, match=match):
        keras_turbo.load_model(path)


def test_truncated_h5(tmp_path, model_files):
    _, model = model_files["sequential"]
    good = tmp_path / "good.h5"
    model.save(good)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(keras_turbo.ModelLoadError, match="bad.h5"):
        keras_turbo.load_model(bad)


def test_random_tflite_is_a_clear_error(tmp_path):
    path = tmp_path / "random.tflite"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(keras_turbo.KerasTurboError, match="random.tflite"):
        keras_turbo.load(path)


def test_missing_file():
    with pytest.raises(keras_turbo.ModelLoadError, match="no such file"):
        keras_turbo.load_model("/nonexistent/model.keras")


def test_inspect_counts_flops_by_hand():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, padding="same"),
                          keras.layers.DepthwiseConv2D(3, padding="same"), keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(10)])
    info = describe.describe_keras(m)
    conv = 2 * 16 * 16 * 8 * (3 * 3 * 3)
    dw = 2 * 16 * 16 * 8 * 9
    dense = 2 * 8 * 10
    assert info["flops_per_sample"] == conv + dw + dense
    assert info["params"] == m.count_params()
    assert info["layer_types"]["Conv2D"] == 1 and "DepthwiseConv2D" in info["notable"]


def test_inspect_file_and_artifact(model_files):
    path, model = model_files["residual"]
    info = keras_turbo.inspect(path)
    assert info["format"] == "keras" and info["size_bytes"] == path.stat().st_size
    assert info["inputs"] == [{"name": "x", "shape": [None, 10, 10, 4], "dtype": "float32"}]
    assert info["outputs"][0]["shape"] == [None, 3]
    assert info["params"] == model.count_params() and info["flops_per_sample"] > 0
    assert "Add" in info["notable"]
    from keras_turbo.model import resolve
    from keras_turbo.runtimes import artifact_for

    onnx_info = keras_turbo.inspect(artifact_for(resolve(path), "onnxruntime").path)
    # Converters fold and fuse constants, so an artifact's stored weights only approximate the count.
    assert 0.8 * model.count_params() <= onnx_info["params"] <= 1.2 * model.count_params()
    assert "Conv" in onnx_info["op_types"]

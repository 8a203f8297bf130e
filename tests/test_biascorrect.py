"""Bias correction (techniques/biascorrect.py): int8 weight rounding's mean error out of the biases."""

from __future__ import annotations

import numpy as np
import pytest

from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError
from keras_turbo.techniques import biascorrect
from keras_turbo.techniques.biascorrect import BiasCorrectConfig
from tests.conftest import keras
from tests.test_prune import assert_unchanged, weights_of

L = keras.layers


def _positive(shape, n=64, seed=0):
    """Inputs with a mean far from zero, as after a ReLU: where rounding errors do not cancel."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, *shape)).astype("float32")


def _coarse(layer):
    """One large weight per output channel, so its int8 step is coarse and rounding shows."""
    k = np.asarray(layer.kernel.numpy())
    flat = k.reshape(-1, k.shape[-1]) if not isinstance(layer, L.DepthwiseConv2D) else k.reshape(-1, k.shape[-2] * k.shape[-1])
    flat[0] = 8.0
    layer.kernel.assign(flat.reshape(k.shape))


def _model(kind):
    keras.utils.set_random_seed(3)
    if kind == "conv+batchnorm without beta":   # the conv's own bias carries it, scaled by the BatchNorm
        x = keras.Input((6, 6, 3), name="x")
        bn = L.BatchNormalization(center=False, name="bn")
        model = keras.Model(x, bn(L.Conv2D(5, 1, name="w")(x)))
        rng = np.random.default_rng(1)
        bn.set_weights([rng.uniform(0.5, 2.0, 5), rng.normal(0, 0.3, 5), rng.uniform(0.5, 2.0, 5)])
        return model, bn
    if kind == "dense":
        x = keras.Input((16,), name="x")
        return keras.Model(x, L.Dense(6, name="w")(x)), None
    x = keras.Input((6, 6, 3), name="x")
    if kind == "depthwise":
        return keras.Model(x, L.DepthwiseConv2D(3, depth_multiplier=2, name="w")(x)), None
    bn = L.BatchNormalization(name="bn")
    model = keras.Model(x, bn(L.Conv2D(5, 1, use_bias=False, name="w")(x)))
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 2.0, 5), rng.normal(0, 0.3, 5), rng.normal(0, 0.3, 5), rng.uniform(0.5, 2.0, 5)])
    return model, bn


def _as_int8(model, bn):
    """The model with its (BatchNorm-folded) kernel rounded to int8 per output channel, as a
    runtime rounds it: kernel := Q(W * s) / s, where s is what the BatchNorm scales by."""
    layer = model.get_layer("w")
    k = np.asarray(layer.kernel.numpy(), np.float64)
    s = 1.0
    if bn is not None:
        b = model.get_layer("bn")
        s = np.asarray(b.gamma.numpy()) / np.sqrt(np.asarray(b.moving_variance.numpy()) + b.epsilon)
    cols = k.shape[-1] if not isinstance(layer, L.DepthwiseConv2D) else k.shape[-2] * k.shape[-1]
    f = k.reshape(-1, cols) * (s if np.ndim(s) else 1.0)
    scale = np.abs(f).max(0) / 127
    q = np.round(f / scale) * scale / (s if np.ndim(s) else 1.0)
    layer.kernel.assign(q.reshape(k.shape).astype("float32"))
    return model


def _mean_error(model, bn, reference, x):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    out = np.asarray(_as_int8(clone, bn)(x, training=False), np.float64)
    ref = np.asarray(reference(x, training=False), np.float64)
    return np.abs((out - ref).reshape(-1, out.shape[-1]).mean(0)).max()


@pytest.mark.parametrize("kind", ["dense", "depthwise", "conv+batchnorm", "conv+batchnorm without beta"])
def test_the_int8_models_mean_output_is_the_float_models_after_correction(kind):
    model, bn = _model(kind)
    _coarse(model.get_layer("w"))
    x = _positive(tuple(model.inputs[0].shape[1:]))
    if kind == "depthwise":   # the same value across the image: every 3x3 window's mean is the input's
        x = np.broadcast_to(x[:, :1, :1, :], x.shape).copy()
    before = weights_of(model)
    assert _mean_error(model, bn, model, x) > 1e-3   # rounding biases the uncorrected int8 model
    res = biascorrect.apply(model, train=Dataset((x,), None, "test"))
    assert res.report["corrected"] == 1 and res.report["samples"] == 64
    assert res.report["layers"][0]["into"] == ("bn" if kind == "conv+batchnorm" else "bias")
    assert _mean_error(res.model, bn, model, x) < 1e-5
    assert_unchanged(model, before)


def test_layers_with_nowhere_to_put_the_shift_are_listed_and_data_is_required():
    keras.utils.set_random_seed(3)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, L.Dense(3, use_bias=False, name="nobias")(L.Dense(4, name="d")(x)))
    data = Dataset((_positive((4,)),), None, "test")
    res = biascorrect.apply(model, BiasCorrectConfig(exclude=("d",)), train=data)
    assert res.report["corrected"] == 0
    assert res.report["left"] == [{"layer": "nobias", "reason": "no bias, and no BatchNormalization beta after it"}]
    with pytest.raises(KerasTurboError, match="bias correction measures each layer's input mean"):
        biascorrect.apply(model)
    with pytest.raises(KerasTurboError, match="`bits` must be an integer from 2 to 16"):
        BiasCorrectConfig(bits=32)


def test_optimize_corrects_on_the_calibration_samples_without_train_data(tmp_path):
    """A repair step of optimize: the build gives bias correction the int8 calibration split."""
    from keras_turbo.model import io_specs, resolve
    from keras_turbo.optimize.build import BuildJob, build
    from keras_turbo.optimize.measure import DataRef
    from keras_turbo.optimize.recipe import Recipe, Step

    keras.utils.set_random_seed(5)
    x = keras.Input((8, 8, 1), name="x")
    h = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", use_bias=False, name="c")(x))
    model = keras.Model(x, L.Dense(10, name="logits")(L.GlobalAveragePooling2D()(L.ReLU()(h))))
    path = tmp_path / "m.keras"
    model.save(path)
    ref = resolve(path)
    calib = DataRef("builtin:digits:train", part="head", k=40, labels=False)
    recipe = Recipe(ref.cache_key(), (Step("train", "biascorrect", {}), Step("runtime", "tf-function")))
    assert recipe.name == "biascorrect + tf-function fp32"
    res = build(BuildJob(recipe, str(path), str(tmp_path / "root"), calib, calib, "", inputs=tuple(io_specs(ref)[0]),
                         outputs=tuple(io_specs(ref)[1]), evaluate=False))
    assert res["ok"], res["error"]
    report = res["details"]["report"]
    assert report["samples"] == 40 and report["corrected"] == 2, report


def test_convert_bias_corrects_before_int8_and_judges_against_the_model_as_given(tmp_path, capsys, digits_model):
    import json

    from tests.test_cli import assert_one_line_error, run_cli

    path, _ = digits_model
    out, doc = tmp_path / "m.tflite", tmp_path / "c.json"
    code, _, err = run_cli(capsys, "convert", path, "--to", "litert", "--quantize", "int8", "--calibration-data",
                           "builtin:digits:train", "--calibration-size", "50", "--bias-correct", "--eval-data",
                           "builtin:digits:test", "--max-accuracy-drop", "5", "-o", out, "--json", doc)
    assert code == 0, err
    d = json.loads(doc.read_text())
    assert d["bias_correction"]["corrected"] >= 3 and d["bias_correction"]["samples"] == 50
    assert "bias correction:" in err and out.stat().st_size > 1000
    # the budget's float reference is the model as given, not its corrected copy
    import keras_turbo
    assert d["fallback"]["float_accuracy"] == pytest.approx(
        keras_turbo.evaluate(path, "builtin:digits:test", backend="tf-function")["accuracy"], abs=1e-9)
    code, _, err = run_cli(capsys, "convert", path, "--to", "openvino", "--quantize", "int8", "--calibration-data",
                           "builtin:digits:train", "--bias-correct")
    assert_one_line_error(code, err, "--bias-correct applies to --quantize int8 on --to litert or onnx")


def test_the_fallback_judges_a_corrected_copy_against_the_model_it_came_from(tmp_path, digits_model):
    """quantize_with_fallback(reference=): the budget's float accuracy is the reference's, not
    that of the model converted (here a copy with its classifier zeroed: chance accuracy)."""
    import keras_turbo
    from keras_turbo import Budget
    from keras_turbo.convert import ConvertConfig
    from keras_turbo.techniques.repair import FallbackConfig, quantize_with_fallback

    path, _ = digits_model
    broken = keras_turbo.load_model(path)
    last = [layer for layer in broken.layers if layer.weights][-1]
    last.set_weights([np.zeros_like(w) for w in last.get_weights()])
    broken_path = tmp_path / "broken.keras"
    broken.save(broken_path)
    fr = quantize_with_fallback(broken_path, ConvertConfig(to="litert", quantize="int8", calibration_size=50),
                                "builtin:digits:train", "builtin:digits:test",
                                FallbackConfig(Budget(max_accuracy_drop=100.0), eval_size=200), reference=path)
    original = keras_turbo.evaluate(path, "builtin:digits:test", backend="tf-function")["accuracy"]
    assert fr.float_accuracy > 0.8 and abs(fr.float_accuracy - original) < 0.05
    assert fr.final.accuracy < 0.3   # the artifact is the converted model's: the zeroed classifier

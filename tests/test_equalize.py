"""Cross-layer equalization: the float function is kept, the outlier is gone, and full int8 of the
equalized model is as accurate as float where plain int8 collapses."""

from __future__ import annotations

import numpy as np
import pytest

import keras_turbo
from keras_turbo.convert import ConvertConfig, convert
from keras_turbo.techniques import equalize
from keras_turbo.quality import Budget
from tests.conftest import keras, needs_int8_dot


def _same_function(a, b, x):
    want, got = np.asarray(a(x, training=False)), np.asarray(b(x, training=False))
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want)) + 1e-6


@pytest.mark.parametrize("via", ["pool", "add"])
def test_keeps_the_function_and_the_input(outlier_cnns, via):
    model, _ = outlier_cnns(via)
    before = [w.copy() for w in model.get_weights()]
    r = equalize.apply(model, equalize.EqualizeConfig())
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((8, 16, 16, 1)).astype("float32")
    _same_function(model, r.model, x)
    groups = {(tuple(g["writers"]), tuple(g["readers"])): g for g in r.report["groups"]}
    if via == "pool":  # the outlier pair, through BatchNorm, ReLU and MaxPooling2D
        g = groups[(("c2",), ("c3",))]
        assert g["batchnorms"] == ["bn2"] and g["between"] == ["relu2", "pool"]
    else:  # the residual group: c3 and the branch c4 write the sum, c4 and c5 read it
        g = groups[(("c3", "c4"), ("c4", "c5"))]
        assert g["between"] == ["add", "relu_add", "pool"]
    assert g["range_spread_before"] > 100 > 3 > g["range_spread_after"]


@pytest.mark.parametrize("via,to", [("pool", "litert"), ("add", "litert")])  # onnx: test_repair_...; all three: benchmarks/repair.py
def test_equalized_outlier_model_survives_full_int8(outlier_cnns, via, to):
    model, float_acc = outlier_cnns(via)
    plain = convert(model, ConvertConfig(to=to, quantize="int8"), "builtin:digits:train")
    eq = equalize.apply(model).model
    fixed = convert(eq, ConvertConfig(to=to, quantize="int8"), "builtin:digits:train")
    acc_plain = keras_turbo.evaluate(plain.load(), "builtin:digits:test")["accuracy"]
    acc_fixed = keras_turbo.evaluate(fixed.load(), "builtin:digits:test")["accuracy"]
    assert float_acc - acc_plain > 0.5  # plain int8 collapses
    assert float_acc - acc_fixed <= 0.01  # every layer int8, within a point of float


def test_chains_dense_flatten_depthwise_and_leaky_relu():
    keras.utils.set_random_seed(4)
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(x)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.LeakyReLU(0.1, name="leaky")(h)
    h = keras.layers.ZeroPadding2D(name="pad")(h)
    h = keras.layers.Conv2D(4, 3, name="b")(h)
    h = keras.layers.ReLU(max_value=6.0, name="relu6")(h)  # bounded: no pair across it
    h = keras.layers.Conv2D(4, 1, activation="relu", name="c")(h)
    h = keras.layers.AveragePooling2D(2, name="avg")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(5, activation="relu", name="d1")(h)
    m = keras.Model(x, keras.layers.Dense(3, name="d2")(h))
    w = m.get_layer("a").get_weights()
    w[0][..., 2] *= 300.0  # an uneven channel to equalize
    m.get_layer("a").set_weights(w)
    r = equalize.apply(m)
    got = {(tuple(g["writers"]), tuple(g["readers"])) for g in r.report["groups"]}
    assert got == {(("a",), ("dw",)), (("dw",), ("b",)), (("c",), ("d1",)), (("d1",), ("d2",))}
    _same_function(m, r.model, np.random.default_rng(1).standard_normal((4, 8, 8, 3)).astype("float32"))


def test_concatenate_and_model_outputs_end_a_group():
    keras.utils.set_random_seed(5)
    x = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="a")(x)
    b = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="b")(a)
    h = keras.layers.Concatenate(name="cat")([a, b])
    out = keras.layers.Conv2D(2, 1, name="out")(h)
    m = keras.Model(x, [out, b])
    assert equalize.find_groups(m) == []  # a feeds cat; b is a model output


def test_bad_settings():
    with pytest.raises(keras_turbo.KerasTurboError, match=r"`iterations` must be an integer >= 1. Received"):
        equalize.EqualizeConfig(iterations=0)


@needs_int8_dot
def test_repair_equalizes_first_and_needs_no_float_layer(outlier_cnns):
    from keras_turbo.techniques.repair import FallbackConfig, quantize_with_repair

    model, _ = outlier_cnns("add")
    fr = quantize_with_repair(model, ConvertConfig(to="onnx", quantize="int8"), "builtin:digits:train",
                              "builtin:digits:val", FallbackConfig(budget=Budget(max_accuracy_drop=1.0)))
    assert fr.met and fr.kept_float == [] and len(fr.steps) == 1  # int8 everywhere, no fallback step
    assert any("add" in g["between"] for g in fr.equalization["groups"])
    assert fr.to_dict()["equalization"]["groups"]


def test_bias_absorption_moves_a_positive_offset_into_the_reader():
    keras.utils.set_random_seed(6)
    x = keras.Input((6,))
    h = keras.layers.Dense(8, use_bias=False, name="w1")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    m = keras.Model(x, keras.layers.Dense(3, name="w2")(h))
    bn = m.get_layer("bn")
    bn.set_weights([np.full(8, 0.5, "float32"), np.linspace(0, 8, 8).astype("float32"),
                    np.zeros(8, "float32"), np.ones(8, "float32")])  # gamma, beta, mean, variance
    plain = equalize.apply(m, equalize.EqualizeConfig())
    r = equalize.apply(m, equalize.EqualizeConfig(absorb_bias=True))
    assert "bias_absorbed" not in plain.report["groups"][0] and r.report["groups"][0]["bias_absorbed"] > 1.0
    x = (0.1 * np.random.default_rng(2).standard_normal((16, 6))).astype("float32")

    def relu_out(model):
        return np.asarray(keras.Model(model.inputs, model.get_layer("relu").output)(x))

    # The activation int8 has to cover now starts near 0 instead of at the offset.
    assert relu_out(r.model).max() < relu_out(plain.model).max() - 1.0 and relu_out(r.model).min() >= 0
    # Small inputs keep every pre-activation within 3 sigma of beta: the function is unchanged.
    _same_function(m, r.model, x)

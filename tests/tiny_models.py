"""The tiny test models, built with whichever `keras` module is passed in.

tests/conftest.py builds them on Keras-on-TensorFlow; benchmarks/gpu.py builds the same models on
Keras-on-JAX where TensorFlow is absent (the lent GPU machines). This module imports neither.
"""

from __future__ import annotations


def sequential(keras):
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((12, 12, 3), name="img"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(5, activation="softmax", name="probs"),
    ], name="seq")


def residual(keras):
    keras.utils.set_random_seed(2)
    x = keras.Input((10, 10, 4), name="x")
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(x)
    h = keras.layers.ReLU()(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.Add(name="residual")([h, x])
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(3, name="logits")(h), name="residual")


def two_input(keras):
    keras.utils.set_random_seed(3)
    # Names chosen so that Keras' input order (z, a) differs from name order (a, z).
    z = keras.Input((8,), name="z_feats")
    a = keras.Input((4,), name="a_feats")
    h = keras.layers.Concatenate()([keras.layers.Dense(6, activation="tanh")(z), keras.layers.Dense(6)(a)])
    return keras.Model([z, a], keras.layers.Dense(3, name="out")(h), name="two_input")


def bn_fold(keras):
    """BatchNormalization after a Conv2D, a DepthwiseConv2D (multiplier 2) and a Dense, all foldable,
    and one after a Conv2D whose output is also read by an Add (not foldable); moving statistics
    and scales away from 0/1 so that a wrong fold shows. Not in MAKERS: the keras-jax fold checks
    use it (tests/test_keras_jax.py, benchmarks/gpu.py)."""
    import numpy as np

    keras.utils.set_random_seed(4)
    bn = keras.layers.BatchNormalization
    i = keras.Input((9, 9, 3), name="img")
    x = bn(name="bn_c1")(keras.layers.Conv2D(4, 3, use_bias=False, name="c1")(i))
    x = keras.layers.ReLU(6.0)(x)
    y = bn(name="bn_dw")(keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x))
    z = keras.layers.Conv2D(8, 1, name="c2")(x)
    h = keras.layers.Add()([y, bn(name="bn_c2")(z), z])
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(i, bn(name="bn_d")(keras.layers.Dense(5, name="d")(h)), name="bn_fold")
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if isinstance(layer, bn):  # gamma, beta, moving mean, moving variance
            c = layer.weights[0].shape
            layer.set_weights([rng.uniform(0.5, 2, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c), rng.uniform(0.5, 2, c)])
    return model


MAKERS = {"sequential": sequential, "residual": residual, "two_input": two_input}


# ---------------------------------------------------------------- the kinds real models come in
# (issue 11): layers, inputs and outputs that exports have broken on. Separate from MAKERS, which
# benchmarks/gpu.py also builds on Keras-on-JAX (the text model needs TensorFlow to adapt).

TEXTS = ["the cat sat on the mat", "a dog ran far away", "birds flew over the sea", "cats and dogs play",
         "far away the sea is calm", "the mat is red", "dogs bark at night", "a cat sleeps all day"]


def normalization(keras):
    """A Normalization layer with adapted mean and variance (they once became ONNX graph inputs)."""
    import numpy as np

    keras.utils.set_random_seed(4)
    x = keras.Input((6,), name="x")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(np.random.default_rng(4).normal(3.0, 2.0, (64, 6)).astype("float32"))
    h = keras.layers.Dense(8, activation="relu")(norm(x))
    return keras.Model(x, keras.layers.Dense(3, activation="softmax", name="probs")(h), name="normalization")


def gelu_block(keras):
    """A transformer block: MultiHeadAttention, LayerNormalization and an exact-GELU Dense (tf2onnx
    had no conversion for GELU's Erfc)."""
    keras.utils.set_random_seed(5)
    x = keras.Input((6, 8), name="tokens")
    a = keras.layers.MultiHeadAttention(2, 4, name="attn")(x, x)
    h = keras.layers.LayerNormalization(name="ln")(keras.layers.Add()([x, a]))
    h = keras.layers.Dense(16, activation="gelu", name="ffn")(h)
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(8)(h))
    return keras.Model(x, keras.layers.Dense(3, name="logits")(h), name="gelu_block")


def lstm(keras):
    """An LSTM over a fixed number of steps (the LiteRT converter refused its TensorList loop)."""
    keras.utils.set_random_seed(6)
    x = keras.Input((5, 3), name="seq")
    h = keras.layers.LSTM(6, name="lstm")(x)
    return keras.Model(x, keras.layers.Dense(2, name="out")(h), name="lstm")


def dict_output(keras):
    """Two heads returned as a dict (Keras serves them sorted by key: box, then score)."""
    keras.utils.set_random_seed(7)
    x = keras.Input((6,), name="feats")
    h = keras.layers.Dense(8, activation="relu")(x)
    return keras.Model(x, {"score": keras.layers.Dense(1, activation="sigmoid", name="score")(h),
                           "box": keras.layers.Dense(4, name="box")(h)}, name="dict_output")


def text(keras):
    """A string input through TextVectorization, an Embedding and a softmax."""
    import numpy as np

    keras.utils.set_random_seed(8)
    vec = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=6, name="vec")
    vec.adapt(np.array(TEXTS))
    x = keras.Input((1,), dtype="string", name="text")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 8, name="embed")(vec(x)))
    return keras.Model(x, keras.layers.Dense(3, activation="softmax", name="probs")(h), name="text")


def dynamic_fcn(keras):
    """A fully convolutional net over images of any size (per-pixel softmax)."""
    keras.utils.set_random_seed(9)
    x = keras.Input((None, None, 3), name="img")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
    return keras.Model(x, keras.layers.Conv2D(2, 1, activation="softmax", name="mask")(h), name="dynamic_fcn")


KINDS = {"normalization": normalization, "gelu_block": gelu_block, "lstm": lstm, "dict_output": dict_output,
         "text": text}

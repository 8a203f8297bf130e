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


MAKERS = {"sequential": sequential, "residual": residual, "two_input": two_input}

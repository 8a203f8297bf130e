"""The one contract every technique passes (as scikit-learn's check_estimator does for its
estimators): the input model is untouched, the config round-trips through a dict, the output is
a Keras model that runs on a non-Keras runtime with the input's shapes, and the report is filled.
(Every runtime's own contract is in test_runtimes.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import keras_turbo
from keras_turbo.data import load_data
from keras_turbo.runtimes.base import TensorInfo
from keras_turbo.techniques import TECHNIQUES
from tests.conftest import keras

# Settings that keep each technique to seconds on the tiny model below.
QUICK = {
    "prune": {"sparsity": 0.5, "epochs": 1},
    "structured": {"sparsity": 0.5, "epochs": 1},
    "distill": {"student": "width:0.5", "epochs": 1},
    "qat": {"epochs": 1, "calibration_size": 50},
    "cluster": {"clusters": 8, "epochs": 1},
    "equalize": {"iterations": 5},
}


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.Dense(10, activation="softmax", name="out"),
    ], name="tiny")
    m.compile("adam", "sparse_categorical_crossentropy")
    spec = [TensorInfo("image", (None, 8, 8, 1), "float32")]
    train = load_data("builtin:digits:train", spec).take(300)
    m.fit(train.x[0], train.y, epochs=3, verbose=0)
    return m, train, load_data("builtin:digits:val", spec).take(100)


def test_registry_is_complete():
    assert set(TECHNIQUES) == set(QUICK)


@pytest.mark.parametrize("name", sorted(QUICK))
def test_technique_contract(name, tiny, tmp_path):
    model, train, val = tiny
    config_cls, apply = TECHNIQUES[name]
    cfg = config_cls(**QUICK[name])
    assert config_cls.from_dict(cfg.to_dict()) == cfg  # the config round-trips
    before = [w.copy() for w in model.get_weights()]

    result = apply(model, cfg, train, val)

    for a, b in zip(before, model.get_weights()):  # the input is untouched
        np.testing.assert_array_equal(a, b)
    assert result.model is not model and result.config == cfg and result.report  # a new model, a report
    x = val.x[0][:4]
    want = np.asarray(result.model(x, training=False))
    assert want.shape == (4, 10)
    if name == "qat":
        # QAT's deployable output is its int8 LiteRT export, not the fake-quantized Keras model.
        from keras_turbo.techniques import qat

        path = qat.export_tflite(result, tmp_path / "qat.tflite", calibration=train)
        p = keras_turbo.load(path)
        assert float(np.mean(p(x).argmax(1) == want.argmax(1))) >= 0.75
    else:
        p = keras_turbo.load(result.model, backend="onnxruntime")  # it runs outside Keras
        np.testing.assert_allclose(p(x), want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(QUICK))
def test_technique_rejects_bad_settings(name):
    config_cls, _ = TECHNIQUES[name]
    bad = {"prune": {"sparsity": 1.5}, "structured": {"sparsity": -0.1}, "distill": {"temperature": 0.0},
           "qat": {"epochs": -1}, "cluster": {"clusters": 1},
           "equalize": {"tolerance": 0.0}}[name]
    with pytest.raises(keras_turbo.KerasTurboError, match=r"must be .* Received"):
        config_cls(**bad)

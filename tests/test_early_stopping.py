"""Training long enough, and no longer: early stopping on a validation split keeps the best
epoch's weights and stops after `patience` epochs without improvement."""

from __future__ import annotations

import numpy as np

from keras_turbo.data import load_data
from keras_turbo.model.signature import TensorInfo
from keras_turbo.techniques import _training
from tests.conftest import keras


def test_finetune_stops_early_and_keeps_the_best_epoch():
    spec = [TensorInfo("img", (None, 8, 8, 1), "float32")]
    train = load_data("builtin:digits:train", spec).take(300)
    val = load_data("builtin:digits:val", spec)
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1), name="img"), keras.layers.Flatten(),
                          keras.layers.Dense(10, activation="softmax")])
    rep = _training.finetune(m, train, epochs=200, batch_size=32, learning_rate=3e-2, val=val, patience=2)
    es = rep["early_stopping"]
    assert es["epochs_run"] < 200 and es["epochs_run"] - es["best_epoch"] == 2  # stopped 2 epochs past the best
    assert _training.accuracy(m, val) == es["val_accuracy"] > 0.8  # the best epoch's weights are the model's
    # without val or patience nothing changes: every epoch runs
    m2 = keras.Sequential([keras.Input((8, 8, 1), name="img"), keras.layers.Flatten(),
                           keras.layers.Dense(10, activation="softmax")])
    assert _training.finetune(m2, train, epochs=3, batch_size=32, learning_rate=1e-2)["early_stopping"] is None
    assert np.isfinite(_training.accuracy(m2, val))

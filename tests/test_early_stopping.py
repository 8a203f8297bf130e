"""Training long enough, and no longer: early stopping on a validation split keeps the best
epoch's weights and stops after `patience` epochs without improvement."""

from __future__ import annotations

import numpy as np

from keras_turbo.data import load_data
from keras_turbo.model.signature import TensorInfo
from keras_turbo.techniques import _training
from tests.conftest import keras


def _digits_and_model():
    """300 digits to train on, the validation split, and a fresh softmax regression over them."""
    spec = [TensorInfo("img", (None, 8, 8, 1), "float32")]
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1), name="img"), keras.layers.Flatten(),
                          keras.layers.Dense(10, activation="softmax")])
    return load_data("builtin:digits:train", spec).take(300), load_data("builtin:digits:val", spec), m


def test_finetune_stops_early_and_keeps_the_best_epoch():
    train, val, m = _digits_and_model()
    rep = _training.finetune(m, train, epochs=200, batch_size=32, learning_rate=3e-2, val=val, patience=2)
    es = rep["early_stopping"]
    assert es["epochs_run"] < 200 and es["epochs_run"] - es["best_epoch"] == 2  # stopped 2 epochs past the best
    assert _training.accuracy(m, val) == es["val_accuracy"] > 0.8  # the best epoch's weights are the model's
    # without val or patience nothing changes: every epoch runs
    m2 = keras.Sequential([keras.Input((8, 8, 1), name="img"), keras.layers.Flatten(),
                           keras.layers.Dense(10, activation="softmax")])
    assert _training.finetune(m2, train, epochs=3, batch_size=32, learning_rate=1e-2)["early_stopping"] is None
    assert np.isfinite(_training.accuracy(m2, val))


def test_the_starting_weights_are_kept_when_no_epoch_beats_them():
    """Epoch 0: a fine-tune that only harms (here a learning rate far too large for a model that
    has already learned) gives back the weights it started from."""
    train, val, m = _digits_and_model()
    _training.finetune(m, train, epochs=30, batch_size=32, learning_rate=3e-2)
    start, before = _training.accuracy(m, val), [w.copy() for w in m.get_weights()]
    rep = _training.finetune(m, train, epochs=6, batch_size=32, learning_rate=50.0, val=val, patience=3)
    es = rep["early_stopping"]
    assert es["best_epoch"] == 0 and es["start_kept"] and es["epochs_run"] >= 3  # epoch 0 counts for no patience
    assert _training.accuracy(m, val) == start == es["val_accuracy"]
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), before))


def test_keep_start_undoes_a_fine_tune_that_scores_below_its_start_and_keeps_one_that_helps():
    """keep_start trains every epoch, then judges the result beside the weights it started from."""
    from keras_turbo import report

    train, val, m = _digits_and_model()
    _training.finetune(m, train, epochs=30, batch_size=32, learning_rate=3e-2)
    start, before = _training.accuracy(m, val), [w.copy() for w in m.get_weights()]
    rep = _training.finetune(m, train, epochs=2, batch_size=32, learning_rate=50.0, val=val, keep_start=True)
    check = rep["start_check"]
    assert check["start_kept"] and check["val_accuracy_trained"] < check["val_accuracy_start"] == start
    assert rep["early_stopping"] is None  # no patience: the whole schedule ran
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), before))
    assert "undone, the weights before it scored better on" in report.trained_on({"technique_report": {"finetune": rep}})
    # a fresh model gains from its fine-tune: the trained weights stay
    _, _, fresh = _digits_and_model()
    rep = _training.finetune(fresh, train, epochs=5, batch_size=32, learning_rate=3e-2, val=val, keep_start=True)
    assert not rep["start_check"]["start_kept"] and _training.accuracy(fresh, val) == rep["start_check"]["val_accuracy_trained"] > 0.8
    assert "undone" not in report.trained_on({"technique_report": {"finetune": rep}})
    # without val there is nothing to judge by: the fine-tune stands
    assert _training.finetune(fresh, train, epochs=1, batch_size=32, learning_rate=1e-2, keep_start=True)["start_check"] is None

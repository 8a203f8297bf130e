"""The built-in model: the digits CNN `keras-turbo demo` optimizes, shipped trained (and the code
that trained it). Nothing here downloads anything: the digits come inside scikit-learn.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from keras_turbo import _tf, cache
from keras_turbo.data import load_digits
from keras_turbo.model.signature import TensorInfo
from keras_turbo.outdir import write_file_atomically

DIGITS_INPUT = (32, 32, 1)
DIGITS_VERSION = 1  # bump when the architecture or training changes, so the cache is rebuilt


def digits_cnn(input_shape=DIGITS_INPUT, width: int = 16):
    """A small CNN for the digits: three Conv-BN-ReLU stages, global pooling, a softmax head."""
    keras = _tf.keras()
    L = keras.layers
    inputs = keras.Input(input_shape, name="image")
    h = inputs
    for i, filters in enumerate((width, 2 * width, 4 * width)):
        h = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(h)
        h = L.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(h)
        h = L.ReLU(name=f"relu{i + 1}")(h)
        if i < 2:
            h = L.MaxPooling2D(name=f"pool{i + 1}")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    h = L.Dropout(0.2, name="dropout")(h)
    outputs = L.Dense(10, activation="softmax", name="probs")(h)
    return keras.Model(inputs, outputs, name="digits_cnn")


def train_digits_cnn(epochs: int = 60, seed: int = 0, verbose: int = 0):
    """Train the digits CNN on the fixed train split (validation split for early stopping).

    Returns:
        (model, test accuracy in [0, 1])
    """
    keras = _tf.keras()
    keras.utils.set_random_seed(seed)
    spec = [TensorInfo("image", (None, *DIGITS_INPUT), "float32")]
    train, val, test = (load_digits(spec, s) for s in ("train", "val", "test"))
    model = digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True),
                 keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=4)]
    model.fit(train.x[0], train.y, validation_data=(val.x[0], val.y), epochs=epochs, batch_size=32,
              callbacks=callbacks, verbose=verbose)
    _, acc = model.evaluate(test.x[0], test.y, verbose=0)
    return model, float(acc)


#: the digits CNN as `train_digits_cnn()` made it (60 epochs, seed 0; 99.63% on the test split),
#: shipped so that a first run does not spend a minute training it. To make it again (after a
#: DIGITS_VERSION bump): `python -c "from keras_turbo import builtin as b; b.train_digits_cnn()[0].save(b.SHIPPED_DIGITS)"`
SHIPPED_DIGITS = Path(__file__).parent / "assets" / f"digits_cnn_v{DIGITS_VERSION}.keras"


def digits_model_path(cache_dir: Path | None = None, progress=None) -> Path:
    """The trained digits CNN as a `.keras` file in the cache: a copy of the one shipped with the
    package, or (where that is missing) trained on first use."""
    path = cache.root(cache_dir) / "models" / f"digits_cnn_v{DIGITS_VERSION}.keras"
    if path.exists():
        return path
    with cache.lock(path):  # two first runs at once: one writes, the other waits for its file
        if not path.exists():
            if SHIPPED_DIGITS.is_file():
                write_file_atomically(path, lambda tmp: shutil.copyfile(SHIPPED_DIGITS, tmp))
                return path
            if progress:
                progress("training the built-in digits CNN (once; cached afterwards)")
            model, _ = train_digits_cnn()
            write_file_atomically(path, model.save)
    return path

"""Models the tests and the benchmarks build, not part of the package: weight-free reference
architectures (keras.applications with `weights=None`) and the outlier models int8 repair is
tested on (a trained digits model made to break int8 through one activation channel)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keras_turbo import _tf
from keras_turbo.data import load_digits
from keras_turbo.model.signature import TensorInfo


def application(name: str, input_shape=(224, 224, 3), alpha: float | None = None):
    """A keras.applications architecture with random weights (`weights=None`; no download)."""
    keras = _tf.keras()
    A = keras.applications
    makers = {
        "mobilenet": A.MobileNet, "mobilenetv2": A.MobileNetV2, "mobilenetv3small": A.MobileNetV3Small,
        "efficientnetb0": A.EfficientNetB0, "resnet50": A.ResNet50,
    }
    if name not in makers:
        raise ValueError(f"unknown architecture {name!r} (expected one of {', '.join(makers)})")
    kwargs = {"alpha": alpha} if alpha is not None else {}
    return makers[name](weights=None, input_shape=input_shape, classes=1000, **kwargs)


def outlier_digits_mlp(scale: float = 1000.0, seed: int = 0, epochs: int = 30, extra: int = 0):
    """A digits MLP that full int8 breaks, built honestly: trained normally, then one channel of
    the `spread` layer's output is scaled up by `scale` and the `head` layer's matching input
    weights scaled down by the same factor. In float the function is unchanged (ReLU commutes
    with a positive scale); in int8 the activation range of `spread`'s output is set by that one
    channel, so every other channel rounds to almost nothing.

    `extra` adds that many more hidden layers before `spread` (`hidden2`, ...) and after it
    (`post1`, ...; then `post1` reads the outlier instead of `head`): a deeper model in which a
    fallback has to leave most layers int8 to be any good.

    Returns:
        (model, float test accuracy on builtin:digits:test)
    """
    keras = _tf.keras()
    keras.utils.set_random_seed(seed)
    spec = [TensorInfo("pixels", (None, 64), "float32")]
    train, val, test = (load_digits(spec, s) for s in ("train", "val", "test"))
    L = keras.layers
    inp = keras.Input((64,), name="pixels")
    h = L.Dense(64, activation="relu", name="hidden")(inp)
    for i in range(extra):
        h = L.Dense(64, activation="relu", name=f"hidden{i + 2}")(h)
    h = L.Dense(64, activation="relu", name="spread")(h)
    for i in range(extra):
        h = L.Dense(64, activation="relu", name=f"post{i + 1}")(h)
    out = L.Dense(10, activation="softmax", name="head")(h)
    model = keras.Model(inp, out, name="outlier_mlp")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train.x[0], train.y, validation_data=(val.x[0], val.y), epochs=epochs, batch_size=32, verbose=0)
    spread, reader = model.get_layer("spread"), model.get_layer("post1" if extra else "head")
    k, b = spread.get_weights()
    # The channel that is most active on the training data, so the outlier is real, not a dead unit.
    act = keras.Model(inp, spread.input).predict(train.x[0], verbose=0)
    j = int(np.argmax(np.maximum(act @ k + b, 0).mean(0)))
    k, b = k.copy(), b.copy()
    k[:, j] *= scale
    b[j] *= scale
    spread.set_weights([k, b])
    hk, hb = reader.get_weights()
    hk = hk.copy()
    hk[j, :] /= scale
    reader.set_weights([hk, hb])
    _, acc = model.evaluate(test.x[0], test.y, verbose=0)
    return model, float(acc)


OUTLIER_PATHS = ("pool", "add")


def outlier_digits_cnn(via: str = "pool", scale: float = 1000.0, seed: int = 0, epochs: int = 25, width: int = 8):
    """A small digits CNN (16x16 input) that full int8 breaks, with an activation outlier that
    reaches the next convolution through a parameter-free op, as outliers do in real networks.

    Trained normally, then made function-preserving: one output channel `j` of the producer is
    scaled up by `scale` and the reader's input weights for `j` scaled down by the same factor.
    ReLU and max pooling commute with a positive per-channel scale, so the float function is
    unchanged; in int8 the producer's per-tensor activation range is set by that one channel.

    via="pool": c1 -> c2 -> bn2 -> relu2 -> pool -> c3 -> c4 -> flat -> head. The outlier is made
        by bn2 (its gamma and beta for `j`), carried by relu2 and `pool`, and read by c3.
    via="add": c1 -> c2 -> c3 --add--> relu_add -> pool -> c5 -> c6 -> flat -> head, where the
        residual branch c4 (reading c3) joins at `add`. c3's channel `j` is the outlier; the
        branch c4 reads it (input weights / scale) and writes it scaled too (output weights and
        bias x scale), so the sum stays homogeneous; c5 reads it through add, relu_add and pool.

    The head reads the flattened feature map, not its global average: with a global-average head
    this network trained to 84-95% train accuracy depending on the seed, and its decisions were so
    close to their boundaries that noise of 0.003 on c1's bias (or NNCF's bias correction of an
    int8 c1) moved validation accuracy by 1.5 to 3.7 points. Which layers the repair then had to
    keep float depended on the weights a CPU's training arithmetic happened to give (issue 26).
    With the flattened head it trains to 100% and such noise moves nothing: int8 breaks it only
    through the outlier.

    Returns:
        (model, float test accuracy on builtin:digits:test)
    """
    if via not in OUTLIER_PATHS:
        raise ValueError(f"via must be one of {OUTLIER_PATHS}, got {via!r}")
    keras = _tf.keras()
    keras.utils.set_random_seed(seed)
    shape = (16, 16, 1)
    spec = [TensorInfo("image", (None, *shape), "float32")]
    train, val, test = (load_digits(spec, s) for s in ("train", "val", "test"))
    L = keras.layers
    w = width
    inp = keras.Input(shape, name="image")
    h = L.Conv2D(w, 3, padding="same", activation="relu", name="c1")(inp)
    if via == "pool":
        h = L.Conv2D(2 * w, 3, padding="same", name="c2")(h)
        h = L.BatchNormalization(name="bn2")(h)
        h = L.ReLU(name="relu2")(h)
        h = L.MaxPooling2D(name="pool")(h)
        h = L.Conv2D(2 * w, 3, padding="same", activation="relu", name="c3")(h)
        h = L.Conv2D(4 * w, 3, padding="same", activation="relu", name="c4")(h)
        producer, reader = "bn2", "c3"
    else:
        h = L.Conv2D(2 * w, 3, padding="same", activation="relu", name="c2")(h)
        h = L.Conv2D(2 * w, 3, padding="same", activation="relu", name="c3")(h)
        r = L.Conv2D(2 * w, 3, padding="same", name="c4")(h)
        h = L.Add(name="add")([h, r])
        h = L.ReLU(name="relu_add")(h)
        h = L.MaxPooling2D(name="pool")(h)
        h = L.Conv2D(4 * w, 3, padding="same", activation="relu", name="c5")(h)
        h = L.Conv2D(4 * w, 3, padding="same", activation="relu", name="c6")(h)
        producer, reader = "c3", "c5"
    h = L.Flatten(name="flat")(h)
    out = L.Dense(10, activation="softmax", name="head")(h)
    model = keras.Model(inp, out, name=f"outlier_cnn_{via}")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train.x[0], train.y, validation_data=(val.x[0], val.y), epochs=epochs, batch_size=32, verbose=0)

    # The channel most active on the training data, so the outlier is real, not a dead unit.
    act = keras.Model(inp, model.get_layer(producer).output).predict(train.x[0], verbose=0)
    j = int(np.argmax(np.maximum(act, 0).mean(axis=(0, 1, 2))))
    prod = model.get_layer(producer)
    weights = [a.copy() for a in prod.get_weights()]
    if via == "pool":  # BatchNormalization: gamma, beta, moving mean, moving variance
        weights[0][j] *= scale
        weights[1][j] *= scale
    else:
        weights[0][..., j] *= scale
        weights[1][j] *= scale
    prod.set_weights(weights)
    if via == "add":  # the residual branch reads channel j and writes it, both rescaled
        k, b = (a.copy() for a in model.get_layer("c4").get_weights())
        k[:, :, j, :] /= scale
        k[..., j] *= scale
        b[j] *= scale
        model.get_layer("c4").set_weights([k, b])
    k, b = (a.copy() for a in model.get_layer(reader).get_weights())
    k[:, :, j, :] /= scale
    model.get_layer(reader).set_weights([k, b])
    _, acc = model.evaluate(test.x[0], test.y, verbose=0)
    return model, float(acc)


# ------------------------------------------------------------------ trained ImageNet networks and photos

#: ../shared/imagenet beside the checkout (its README: ImageNet-trained MobileNets, 1,300 labelled
#: validation photos); the reference benchmarks judge on it, and a fast test keeps it usable
SHARED_IMAGENET = Path(__file__).resolve().parents[2] / "shared" / "imagenet"
IMAGENET_MODELS = {"mobilenet_v1_0.75": "mobilenet_v1_0.75_224.keras", "mobilenet_v2_1.0": "mobilenet_v2_1.0_224.keras"}


def imagenet_photos(start: int = 0, count: int | None = None, size: int = 224, root: Path = SHARED_IMAGENET):
    """(x, y, names) of the shared validation photos in file-name order, [start, start + count):
    RGB, centre-cropped to `size` (resized first where smaller), as Keras' `preprocess_input` for
    both models: float32 x / 127.5 - 1; y the ImageNet class ids (Keras' order)."""
    from PIL import Image

    labels = json.loads((root / "labels.json").read_text())
    names = sorted(labels)[start:None if count is None else start + count]
    xs = []
    for n in names:
        with Image.open(root / "val" / n) as im:
            im = im.convert("RGB")
            if min(im.size) < size:
                im = im.resize((max(size, im.size[0] * size // min(im.size)), max(size, im.size[1] * size // min(im.size))),
                               Image.BILINEAR)
            left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
            xs.append(np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32))
    return np.stack(xs) / 127.5 - 1.0, np.array([labels[n] for n in names], dtype=np.int64), names

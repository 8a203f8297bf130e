"""Keras 2 files that Keras 3 cannot read, carried on: loaded with tf-keras (the Keras 2 that
TensorFlow still ships) and turned into a model keras-turbo converts, times and transforms.

Keras 3's legacy `.h5` loader refuses files real users have: a Keras 2.2 Sequential keeps its
layers as a bare list and lets its first layer carry `batch_input_shape`, which Keras 3 either
cannot parse or applies twice ("Kernel shape must have the same length as input ... (None, None,
40, 174, 1)"). tf-keras reads them. The model then becomes, in keras-turbo's cache (keyed by the
file's content):

  - a Keras 3 `.keras` model, rebuilt layer by layer from tf-keras' own config (an `Input` in
    place of `batch_input_shape`) with every layer's weights copied and the outputs checked to
    agree, where the layers map; every technique runs on it;
  - else a SavedModel of the tf-keras model (behind the same SavedModel gate as any other),
    which every runtime converts and times.

The file passes the same pre-scan first (Lambda layers refused without --unsafe), so tf-keras
never deserializes code a safe run would not.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from keras_turbo import _tf, cache
from keras_turbo.errors import KerasTurboError, ModelLoadError, cause
from keras_turbo.model.gate import check_savedmodel
from keras_turbo.model.ref import ModelRef
from keras_turbo.model.scan import prescan
from keras_turbo.outdir import replace_dir_atomically, write_file_atomically

#: what each Keras-3 refusal is answered with, by file content (and --unsafe): ModelRef or None
_BRIDGED: dict[str, ModelRef | None] = {}


def keras3_refuses(ref: ModelRef) -> Exception | None:
    """The error Keras 3 raises loading this .h5 (None: it loads). Safe mode stays on."""
    keras = _tf.keras()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keras.models.load_model(ref.path, compile=False, safe_mode=not ref.unsafe)
    except Exception as e:  # any refusal: the tf-keras path is tried next, and its own error kept
        return e
    return None


def bridge(ref: ModelRef, cache_dir: Path | None = None, note=None, refused: Exception | None = None) -> ModelRef:
    """`ref` itself where Keras 3 reads it; else its tf-keras bridge (module docstring), made once
    per content and cached. `note` (default: a warning) is told, in one line, what was done;
    `refused`: Keras 3's error where the caller already tried it (not tried again).

    Raises:
        ModelLoadError: neither Keras 3 nor tf-keras reads the file (Keras 3's reason kept), or
            tf-keras is not installed.
    """
    if ref.format != "h5":
        return ref
    key = ref.cache_key()
    if key in _BRIDGED:
        return _BRIDGED[key] or ref
    prescan(ref)  # Lambda layers refused before either Keras builds anything
    why = refused or keras3_refuses(ref)
    if why is None:
        _BRIDGED[key] = None
        return ref
    bridged = _cached_bridge(ref, key, why, cache_dir)
    (note or (lambda m: warnings.warn(m, stacklevel=3)))(
        f"{ref.path.name}: Keras 3 cannot read this Keras 2 file ({cause(why)}); loaded with tf-keras and carried on "
        f"as {'a Keras 3 model' if bridged.format == 'keras' else 'a SavedModel'} ({bridged.path})")
    _BRIDGED[key] = bridged
    return bridged


def _cached_bridge(ref: ModelRef, key: str, why: Exception, cache_dir) -> ModelRef:
    entry = cache.root(cache_dir) / "legacy" / key
    keras_file, saved = entry / "model.keras", entry / "saved_model"
    with cache.lock(entry):
        if keras_file.is_file():
            return ModelRef(keras_file, "keras", ref.unsafe)
        if (saved / "saved_model.pb").is_file():
            check_savedmodel(saved, ref.unsafe)
            return ModelRef(saved, "savedmodel", ref.unsafe)
        old = _load_tf_keras(ref, why)
        model = rebuild_in_keras3(old)
        if model is not None:
            write_file_atomically(keras_file, model.save)
            return ModelRef(keras_file, "keras", ref.unsafe)
        replace_dir_atomically(lambda tmp: _tf.tf().saved_model.save(old, str(tmp)), saved, force=True)
        check_savedmodel(saved, ref.unsafe)
        return ModelRef(saved, "savedmodel", ref.unsafe)


def _load_tf_keras(ref: ModelRef, why: Exception):
    try:
        import tf_keras
    except ImportError:
        raise ModelLoadError(f"{ref.path}: cannot load as a Keras model ({cause(why)}); a Keras 2 file like this one "
                             "loads with tf-keras: pip install tf-keras") from why
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tf_keras.models.load_model(ref.path, compile=False)
    except Exception as e:
        raise ModelLoadError(f"{ref.path}: cannot load as a Keras model ({cause(why)}; tf-keras: {cause(e)})") from why


def rebuild_in_keras3(old):
    """A Keras 3 copy of the tf-keras model `old`, or None where its layers do not map: a
    Sequential or functional config taken over with `batch_input_shape` turned into an Input,
    each layer's weights copied, and the outputs checked to agree on random inputs."""
    keras = _tf.keras()
    try:
        doc = json.loads(old.to_json())
        layers = doc["config"]["layers"] if isinstance(doc["config"], dict) else doc["config"]
        if doc["class_name"] != "Sequential":
            return None  # functional Keras 2 configs: the SavedModel route
        shape = next((l["config"].get("batch_input_shape") for l in layers if "batch_input_shape" in l["config"]), None)
        inner = [l for l in layers if l["class_name"] != "InputLayer"]
        new = keras.Sequential([keras.Input(tuple(shape[1:]))] + [_layer(keras, l) for l in inner])
        for a, b in zip([l for l in old.layers if type(l).__name__ != "InputLayer"], new.layers):
            b.set_weights(a.get_weights())
        x = np.random.default_rng(0).random((2, *shape[1:])).astype("float32")
        want, got = np.asarray(old(x, training=False)), np.asarray(new(x, training=False))
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            return None
        return new
    except (KeyError, TypeError, ValueError, IndexError, KerasTurboError):
        return None


def _layer(keras, entry: dict):
    """A Keras 3 layer of the same class from a tf-keras layer's config (built-in classes only)."""
    cls = getattr(keras.layers, entry["class_name"], None)
    if cls is None:
        raise ValueError(f"no Keras 3 layer {entry['class_name']}")
    cfg = {k: v for k, v in entry["config"].items() if k not in ("batch_input_shape", "batch_size", "input_shape")}
    return cls.from_config(cfg)


__all__ = ["bridge", "keras3_refuses", "rebuild_in_keras3"]

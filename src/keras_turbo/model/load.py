"""Loading a model safely as a `keras.Model`: the SavedModel gate, safe mode, the user's custom
objects, keras-turbo's own layers (QAT's) when a file names them; an in-memory model saved into
the cache by content; what a model takes and gives (`io_specs`).

A SavedModel holds a graph rather than Python, but a graph can still read or write files: every
SavedModel passes `gate.check_savedmodel` (an allow-list of op types) before anything loads it.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

from keras_turbo import _tf, cache
from keras_turbo.errors import KerasTurboError, ModelLoadError, cause, first_line
from keras_turbo.model import custom, legacy
from keras_turbo.model.gate import check_savedmodel
from keras_turbo.model.graph import activation_of
from keras_turbo.model.ref import UNSAFE_WARNING, ModelRef, resolve
from keras_turbo.model.scan import prescan
from keras_turbo.model.signature import TensorInfo, model_io
from keras_turbo.outdir import write_file_atomically

def load_keras(ref: ModelRef):
    """Load a Keras-family model as a `keras.Model`, safely.

    A SavedModel is wrapped in a Keras model around its serving signature, so that the Keras
    runtimes can run it too.

    Raises:
        ModelLoadError: the file is corrupt, refused as unsafe, or not a Keras model.
    """
    if not ref.is_keras:
        raise ModelLoadError(f"{ref.path}: a .{ref.format} artifact, not a Keras model")
    if ref.unsafe:
        warnings.warn(UNSAFE_WARNING, stacklevel=2)
    # Every check below reads the file without TensorFlow: a refused file costs milliseconds
    # and a few MB, not TensorFlow's start-up.
    if ref.format == "savedmodel":
        check_savedmodel(ref.path, ref.unsafe)
        return _wrap_savedmodel(ref)
    cfg = prescan(ref)
    if cfg and '"keras_turbo>' in cfg:
        # keras-turbo's own layers (QAT's fake-quant wrappers) register with Keras when their
        # module is imported; that module pulls in TensorFlow, so only when a file needs it.
        import keras_turbo.model.layers  # noqa: F401
    custom.activate_from_env()  # the user's --custom-objects, in whichever process loads the model
    keras = _tf.keras()
    try:
        model = _load_waiting_for_lock(keras, ref)
    except BlockingIOError as e:
        raise ModelLoadError(
            f"{ref.path}: another process holds the file open for writing (HDF5 file lock, still "
            f"held after {sum(H5_LOCK_WAITS):.0f} s); load it when the writer is done ({cause(e)})"
        ) from e
    except Exception as e:
        msg = " ".join(str(e).split())
        if not ref.unsafe and ("safe_mode" in msg or "unsafe_deserialization" in msg or "Lambda" in msg):
            raise ModelLoadError(
                f"{ref.path}: holds a Lambda layer or other Python code; refused in safe mode "
                "(pass --unsafe only if you trust this file)"
            ) from e
        missing = custom.unknown_class(msg)
        if missing:
            raise ModelLoadError(unknown_class_message(ref.path, missing)) from e
        if ref.format == "h5":  # a Keras 2 file Keras 3 cannot read: tf-keras reads it (legacy.py)
            return load_keras(legacy.bridge(ref, refused=e))
        raise ModelLoadError(f"{ref.path}: cannot load as a Keras model ({cause(e)})") from e
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{ref.path}: holds a {type(model).__name__}, not a Keras model")
    return model


# Seconds to wait, one after another, while a .h5 file is locked by a writer in another process.
H5_LOCK_WAITS = (0.1, 0.3, 1.0, 2.0)


def _load_waiting_for_lock(keras, ref: ModelRef):
    """keras.models.load_model, waiting a few seconds while HDF5's file lock is taken. A writer
    that has just finished can hold it a moment longer: a process forked while the file was open
    (to start a subprocess, say) keeps the lock until it closes its copy of the descriptor."""
    for wait in (*H5_LOCK_WAITS, None):
        try:
            return keras.models.load_model(ref.path, compile=False, safe_mode=not ref.unsafe)
        except BlockingIOError:
            if ref.format != "h5" or wait is None:
                raise
            time.sleep(wait)


def unknown_class_message(path, name: str) -> str:
    """The one message for a model that uses a class nobody registered: name it, say what to do."""
    given = " (the --custom-objects given do not define it)" if custom.current() else ""
    return (f"{path}: uses the custom class {name!r}, which Keras does not know{given}; pass its code with "
            "--custom-objects FILE.py (a module that registers it with @keras.saving.register_keras_serializable "
            "or lists it in a CUSTOM_OBJECTS dict)")


def _wrap_savedmodel(ref: ModelRef):
    tf = _tf.tf()
    keras = _tf.keras()
    try:
        loaded = tf.saved_model.load(str(ref.path))
        sig = loaded.signatures["serving_default"]
    except KeyError as e:
        raise ModelLoadError(f"{ref.path}: the SavedModel has no 'serving_default' signature") from e
    except Exception as e:
        raise ModelLoadError(f"{ref.path}: cannot load the SavedModel ({first_line(e)})") from e
    specs = sig.structured_input_signature[1]
    names = sorted(specs)
    out_specs = sig.structured_outputs
    out_names = sorted(out_specs)

    class SavedModelSignature(keras.layers.Layer):
        """Calls the serving signature. (keras.layers.TFSMLayer cannot bind several inputs.)"""

        def __init__(self):
            super().__init__(name="saved_model", trainable=False)
            self._loaded = loaded  # keeps the graph's variables alive

        def call(self, inputs):
            result = sig(**dict(zip(names, inputs)))
            return [result[k] for k in out_names]

        def compute_output_spec(self, inputs):
            return [keras.KerasTensor(tuple(out_specs[k].shape), dtype=out_specs[k].dtype.name) for k in out_names]

    inputs = [keras.Input(shape=tuple(specs[n].shape[1:]), dtype=specs[n].dtype.name, name=n) for n in names]
    outs = SavedModelSignature()(inputs)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outs if len(outs) > 1 else outs[0], name=ref.path.name)


def keras_model_to_ref(model, cache_dir: Path | None = None) -> ModelRef:
    """Save an in-memory Keras model into the cache (by content) so it can be exported and
    opened in other processes, and return its reference."""
    keras = _tf.keras()
    h = hashlib.sha256(model.to_json().encode())
    for w in model.weights:
        h.update(w.numpy().tobytes())
    path = cache.root(cache_dir) / "models" / f"{model.name}-{h.hexdigest()[:16]}.keras"
    if not path.exists():
        # A unique temp name: two processes saving the same model must not write one file.
        write_file_atomically(path, lambda tmp: keras.saving.save_model(model, tmp))
    return ModelRef(path, "keras", False)


def as_ref(model, unsafe: bool = False, cache_dir: Path | None = None) -> ModelRef:
    """A path, a ModelRef or an in-memory keras.Model -> ModelRef."""
    if isinstance(model, ModelRef):
        return model
    if isinstance(model, (str, os.PathLike)):
        ref = resolve(model, unsafe=unsafe)
        # A Keras 2 .h5 that Keras 3 refuses goes on as its tf-keras bridge (cached by content),
        # so that exporters, runtimes and techniques all work on a model they can read.
        return legacy.bridge(ref, cache_dir) if ref.format == "h5" else ref
    if type(model).__module__.startswith("keras") or hasattr(model, "get_config"):
        return keras_model_to_ref(model, cache_dir)
    raise KerasTurboError(f"model: expected a path or a keras.Model, received {type(model).__name__}")


def output_activations(ref: ModelRef | None) -> list[str | None] | None:
    """The activation of the layer that makes each output of a Keras-family model ("softmax",
    "sigmoid", ...; None where the graph does not say), for quality.output_kinds; None for an
    artifact or no model."""
    if ref is None or not ref.is_keras:
        return None
    return [activation_of(t) for t in load_keras(ref).outputs]


def io_specs(ref: ModelRef) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """(inputs, outputs) of a Keras-family model as TensorInfo, inputs in name order."""
    return model_io(load_keras(ref))

"""Find out what a model file is, load it safely, and describe it.

Formats: `.keras`, legacy Keras 2 `.h5`/`.hdf5`, SavedModel directories, and the deployable
artifacts `.tflite` (LiteRT), `.onnx` (ONNX Runtime) and `.xml` (+ `.bin`, OpenVINO IR).

Safety: a Keras file can carry Python code (a `Lambda` layer's bytecode). Keras' `safe_mode`
refuses to deserialize it and keras-turbo keeps that on unless the user passes `--unsafe`.
A SavedModel holds a graph rather than Python, but a graph can still read or write files: every
SavedModel passes `keras_turbo.gate.check_savedmodel` (an allow-list of op types) before anything
loads it.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from keras_turbo import _tf
from keras_turbo.errors import ModelLoadError, cause, first_line
from keras_turbo.gate import check_savedmodel

KERAS_FORMATS = ("keras", "h5", "savedmodel")
ARTIFACT_FORMATS = ("tflite", "onnx", "openvino")
SUFFIXES = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".tflite": "tflite", ".onnx": "onnx", ".xml": "openvino"}

UNSAFE_WARNING = (
    "--unsafe: the model file may run arbitrary Python code (Lambda layers, custom objects) or "
    "graph ops that read and write files. Use it only for files you trust."
)


@dataclass(frozen=True)
class ModelRef:
    """A model file and what kind it is; cheap to make, loads nothing.

    Attributes:
        path: the file (or SavedModel directory).
        format: one of "keras", "h5", "savedmodel", "tflite", "onnx", "openvino".
        unsafe: whether the user allowed code in the file to run.
    """

    path: Path
    format: str
    unsafe: bool = False

    @property
    def is_keras(self) -> bool:
        return self.format in KERAS_FORMATS

    @property
    def size_bytes(self) -> int:
        return artifact_size(self.path)

    def fingerprint(self) -> str:
        """A content hash, so exported artifacts can be cached and reused safely."""
        h = hashlib.sha256()
        h.update(self.format.encode())
        for f in _files_of(self.path):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()[:20]

    def cache_key(self) -> str:
        """The fingerprint, kept apart for --unsafe: what was built trusting the file is never
        served to a run that does not; and apart for the custom objects' code in effect (an
        artifact built with one version of a custom layer is not served for another)."""
        from keras_turbo import custom

        co = custom.fingerprint() if self.is_keras else ""
        return self.fingerprint() + ("-unsafe" if self.unsafe else "") + (f"-co{co}" if co else "")


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    files = [path]
    if path.suffix == ".xml" and path.with_suffix(".bin").exists():
        files.append(path.with_suffix(".bin"))
    return files


def artifact_size(path: str | os.PathLike) -> int:
    """Bytes on disk: a file, an OpenVINO .xml with its .bin, or a whole directory."""
    return sum(f.stat().st_size for f in _files_of(Path(path)))


def resolve(path: str | os.PathLike, unsafe: bool = False) -> ModelRef:
    """Identify a model file without loading it.

    Raises:
        ModelLoadError: the path is missing or not a model format keras-turbo knows.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file or directory")
    if p.is_dir():
        if (p / "saved_model.pb").exists():
            for f in p.rglob("*"):  # variables and assets: the SavedModel's own files only
                if not f.is_dir():
                    require_own_file(f, p, "a file of the SavedModel")
            return ModelRef(p, "savedmodel", unsafe)
        if (p / "manifest.json").exists():
            raise ModelLoadError(f"{p}: a keras-turbo artifact folder; open it with keras_turbo.load()")
        raise ModelLoadError(f"{p}: a directory without saved_model.pb, so not a SavedModel")
    fmt = SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(SUFFIXES))
        raise ModelLoadError(f"{p}: unknown model format {p.suffix!r} (expected one of {known}, or a SavedModel directory)")
    require_own_file(p, None, "the model file")  # a FIFO named model.keras must not hang
    if p.stat().st_size == 0:
        raise ModelLoadError(f"{p}: the file is empty")
    if fmt == "openvino" and not p.with_suffix(".bin").exists():
        raise ModelLoadError(f"{p}: OpenVINO IR needs its weights file {p.with_suffix('.bin').name} beside it")
    ref = ModelRef(p, fmt, unsafe)
    check_artifact_files(ref)
    return ref


def _check_container(ref: ModelRef) -> None:
    """Catch truncated or random files with a clear message before Keras gives a cryptic one."""
    if ref.format == "keras" and not zipfile.is_zipfile(ref.path):
        raise ModelLoadError(f"{ref.path}: not a valid .keras file (not a zip archive; truncated or corrupt?)")
    if ref.format == "h5":
        with open(ref.path, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                raise ModelLoadError(f"{ref.path}: not a valid HDF5 file (bad signature; truncated or corrupt?)")


# Keras configs of the largest keras.applications models are a few MB; a config this large is a
# bomb (one 4.8 MB .keras declared 4.3 GiB and drove the pre-scan to 9.8 GB), refused unread.
MAX_CONFIG_BYTES = 64 << 20


def _too_big(ref: ModelRef, size: int) -> ModelLoadError:
    return ModelLoadError(f"{ref.path}: its model config is {size / 2**20:,.0f} MiB, over the "
                          f"{MAX_CONFIG_BYTES >> 20} MiB keras-turbo reads (a damaged or hostile file)")


def _config_json(ref: ModelRef) -> str | None:
    """The model's architecture JSON, read without building anything and never past the cap.

    Raises:
        ModelLoadError: the config is over MAX_CONFIG_BYTES (checked on the size the container
            declares, before reading, and again while reading, in case the declaration lies).
    """
    try:
        if ref.format == "keras":
            with zipfile.ZipFile(ref.path) as z:
                info = z.getinfo("config.json")
                if info.file_size > MAX_CONFIG_BYTES:
                    raise _too_big(ref, info.file_size)
                with z.open(info) as fh:
                    data = fh.read(MAX_CONFIG_BYTES + 1)
                if len(data) > MAX_CONFIG_BYTES:
                    raise _too_big(ref, len(data))
                return data.decode("utf-8", "replace")
        import h5py

        with h5py.File(ref.path, "r") as f:
            if "model_config" not in f.attrs:
                return None
            aid = f.attrs.get_id("model_config")
            size = aid.get_storage_size()
            del aid  # an open attribute keeps the file open (and locked) past the `with`
            if size > MAX_CONFIG_BYTES:
                raise _too_big(ref, size)
            cfg = f.attrs.get("model_config")
            return cfg.decode("utf-8", "replace") if isinstance(cfg, bytes) else cfg
    except ModelLoadError:
        raise
    except Exception as e:  # corrupt containers: let Keras' own loader produce the message
        del e
        return None


def _lambda_layers(config_json: str) -> list[str]:
    import json

    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                found.append(str(node.get("config", {}).get("name", "?")))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    try:
        walk(json.loads(config_json))
    except ValueError:
        return []
    except RecursionError:  # nesting no real model has: refuse rather than let Keras recurse too
        return ["(a config nested too deeply to read)"]
    return found


SCALING_LAYERS = ("Rescaling", "Normalization")


def scales_inputs(ref: ModelRef) -> bool | None:
    """Whether a Keras model scales its own inputs (a Rescaling or Normalization layer), read
    from its config without building it; None where that cannot be told (a SavedModel, an
    artifact, a damaged file)."""
    if ref.format not in ("keras", "h5"):
        return None
    try:
        cfg = _config_json(ref)
    except ModelLoadError:
        return None
    if not cfg:
        return None
    return any(f'"class_name": "{k}"' in cfg or f'"class_name":"{k}"' in cfg for k in SCALING_LAYERS)


# ---------------------------------------------------------------- files a model names

def require_own_file(path: Path, folder: Path | None, what: str) -> None:
    """A file a model or data set brings along (an OpenVINO .bin, ONNX external data, an image in
    a DATA folder) must be a regular file inside `folder`: a symlink out would serve another
    file's bytes as weights (an OpenVINO .bin linked to a secret was read back through the
    model's outputs), and a FIFO or device would hang or never end. `folder` None: only the
    regular-file check (the model file itself may be a link the user made).

    Raises:
        ModelLoadError: with the file's name and what is wrong.
    """
    import stat

    try:
        real = path.resolve(strict=True)
        st = real.stat()
    except (OSError, RuntimeError) as e:  # missing, dangling link or a link loop
        raise ModelLoadError(f"{path}: {what} cannot be read ({type(e).__name__})") from e
    if folder is not None and not real.is_relative_to(folder.resolve()):
        raise ModelLoadError(f"{path}: {what} lies outside {folder} (through a link); refused")
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{path}: {what} is not a regular file (a FIFO, device or socket); refused")


def check_onnx_external_data(path: Path) -> None:
    """Every external-data file an ONNX model names must be its own (see require_own_file)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(str(path), load_external_data=False)
    for t in _get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in t.external_data if e.key == "location"), "")
            require_own_file(path.parent / location, path.parent, f"external data {location!r} of tensor {t.name!r}")


def check_artifact_files(ref: ModelRef) -> None:
    """The checks above for an artifact's companions: OpenVINO's .bin, ONNX external data."""
    if ref.format == "openvino":
        require_own_file(ref.path.with_suffix(".bin"), ref.path.parent, "the OpenVINO weights file")
    elif ref.format == "onnx":
        check_onnx_external_data(ref.path)


def prescan(ref: ModelRef) -> str | None:
    """Check a `.keras` / `.h5` file before any Keras loads it; imports neither Keras nor TensorFlow.

    Returns the model's architecture JSON (None where it cannot be read without Keras).

    Raises:
        ModelLoadError: a truncated or corrupt container, or (without `unsafe`) Lambda layers.
    """
    _check_container(ref)
    cfg = _config_json(ref)
    if not ref.unsafe:
        # Refuse before Keras builds anything: a Lambda layer carries Python code (bytecode in
        # Keras 2 .h5 files), and naming the layer helps the user more than Keras' own message.
        lambdas = _lambda_layers(cfg) if cfg else []
        if lambdas:
            raise ModelLoadError(
                f"{ref.path}: holds Lambda layer(s) {', '.join(lambdas)} with Python code; refused in safe mode "
                "(pass --unsafe only if you trust this file)"
            )
    return cfg


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
        import keras_turbo.techniques.qat  # noqa: F401
    from keras_turbo import custom

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
    from keras_turbo import custom

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
    from keras_turbo import cache

    keras = _tf.keras()
    h = hashlib.sha256(model.to_json().encode())
    for w in model.weights:
        h.update(w.numpy().tobytes())
    path = cache.root(cache_dir) / "models" / f"{model.name}-{h.hexdigest()[:16]}.keras"
    if not path.exists():
        from keras_turbo.outputs import write_file_atomically

        # A unique temp name: two processes saving the same model must not write one file.
        write_file_atomically(path, lambda tmp: keras.saving.save_model(model, tmp))
    return ModelRef(path, "keras", False)

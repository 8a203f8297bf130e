"""Find out what a model file is, load it safely, and describe it.

Formats: `.keras`, legacy Keras 2 `.h5`/`.hdf5`, SavedModel directories, and the deployable
artifacts `.tflite` (LiteRT), `.onnx` (ONNX Runtime) and `.xml` (+ `.bin`, OpenVINO IR).

Safety: a Keras file can carry Python code (a `Lambda` layer's bytecode). Keras' `safe_mode`
refuses to deserialize it and keras-turbo keeps that on unless the user passes `--unsafe`.
A SavedModel holds a graph rather than Python, but a graph can still read or write files; such
ops are refused the same way.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from keras_turbo import _tf
from keras_turbo.errors import ModelLoadError

KERAS_FORMATS = ("keras", "h5", "savedmodel")
ARTIFACT_FORMATS = ("tflite", "onnx", "openvino")
SUFFIXES = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".tflite": "tflite", ".onnx": "onnx", ".xml": "openvino"}

# Graph ops that touch the file system or call back into Python: a SavedModel that holds one is
# refused without --unsafe. (SaveV2/RestoreV2 are not here: every SavedModel has them, for its
# own variables.)
UNSAFE_GRAPH_OPS = frozenset(
    {"PyFunc", "PyFuncStateless", "EagerPyFunc", "ReadFile", "WriteFile", "MatchingFiles",
     "DeleteFile", "RecursivelyCreateDir", "ImmutableConst", "ReadVariableXlaSplitND"}
)

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
            return ModelRef(p, "savedmodel", unsafe)
        if (p / "manifest.json").exists():
            raise ModelLoadError(f"{p}: a keras-turbo artifact folder; open it with keras_turbo.load()")
        raise ModelLoadError(f"{p}: a directory without saved_model.pb, so not a SavedModel")
    fmt = SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(SUFFIXES))
        raise ModelLoadError(f"{p}: unknown model format {p.suffix!r} (expected one of {known}, or a SavedModel directory)")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"{p}: the file is empty")
    if fmt == "openvino" and not p.with_suffix(".bin").exists():
        raise ModelLoadError(f"{p}: OpenVINO IR needs its weights file {p.with_suffix('.bin').name} beside it")
    return ModelRef(p, fmt, unsafe)


def _check_container(ref: ModelRef) -> None:
    """Catch truncated or random files with a clear message before Keras gives a cryptic one."""
    if ref.format == "keras" and not zipfile.is_zipfile(ref.path):
        raise ModelLoadError(f"{ref.path}: not a valid .keras file (not a zip archive; truncated or corrupt?)")
    if ref.format == "h5":
        with open(ref.path, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                raise ModelLoadError(f"{ref.path}: not a valid HDF5 file (bad signature; truncated or corrupt?)")


def _config_json(ref: ModelRef) -> str | None:
    """The model's architecture JSON, read without building anything."""
    try:
        if ref.format == "keras":
            with zipfile.ZipFile(ref.path) as z:
                return z.read("config.json").decode("utf-8", "replace")
        import h5py

        with h5py.File(ref.path, "r") as f:
            cfg = f.attrs.get("model_config")
            return cfg.decode("utf-8", "replace") if isinstance(cfg, bytes) else cfg
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
    return found


def _check_savedmodel_ops(ref: ModelRef) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((ref.path / "saved_model.pb").read_bytes())
    except Exception as e:  # protobuf's DecodeError, but it is not exported in one place
        raise ModelLoadError(f"{ref.path}: saved_model.pb is not a valid SavedModel ({e})") from e
    found = set()
    for mg in sm.meta_graphs:
        found.update(n.op for n in mg.graph_def.node)
        for fn in mg.graph_def.library.function:
            found.update(n.op for n in fn.node_def)
    bad = sorted(found & UNSAFE_GRAPH_OPS)
    if bad:
        raise ModelLoadError(
            f"{ref.path}: the SavedModel graph holds ops that touch files or run Python ({', '.join(bad)}); "
            "refused in safe mode (pass --unsafe only if you trust this file)"
        )


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
    keras = _tf.keras()
    if ref.unsafe:
        warnings.warn(UNSAFE_WARNING, stacklevel=2)
    if ref.format == "savedmodel":
        if not ref.unsafe:
            _check_savedmodel_ops(ref)
        return _wrap_savedmodel(ref)
    cfg = prescan(ref)
    if cfg and '"keras_turbo>' in cfg:
        # keras-turbo's own layers (QAT's fake-quant wrappers) register with Keras when their
        # module is imported; that module pulls in TensorFlow, so only when a file needs it.
        import keras_turbo.techniques.qat  # noqa: F401
    try:
        model = keras.models.load_model(ref.path, compile=False, safe_mode=not ref.unsafe)
    except Exception as e:
        msg = " ".join(str(e).split())
        if not ref.unsafe and ("safe_mode" in msg or "unsafe_deserialization" in msg or "Lambda" in msg):
            raise ModelLoadError(
                f"{ref.path}: holds a Lambda layer or other Python code; refused in safe mode "
                "(pass --unsafe only if you trust this file)"
            ) from e
        if "Unknown layer" in msg or "Could not locate" in msg:
            raise ModelLoadError(f"{ref.path}: uses a custom layer or object keras-turbo cannot build ({msg[:200]})") from e
        raise ModelLoadError(f"{ref.path}: cannot load as a Keras model ({type(e).__name__}: {msg[:200]})") from e
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{ref.path}: holds a {type(model).__name__}, not a Keras model")
    return model


def _wrap_savedmodel(ref: ModelRef):
    tf = _tf.tf()
    keras = _tf.keras()
    try:
        loaded = tf.saved_model.load(str(ref.path))
        sig = loaded.signatures["serving_default"]
    except KeyError as e:
        raise ModelLoadError(f"{ref.path}: the SavedModel has no 'serving_default' signature") from e
    except Exception as e:
        raise ModelLoadError(f"{ref.path}: cannot load the SavedModel ({' '.join(str(e).split())[:200]})") from e
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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.keras")
        keras.saving.save_model(model, tmp)
        tmp.replace(path)
    return ModelRef(path, "keras", False)

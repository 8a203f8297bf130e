"""What a model file is, without loading it: `ModelRef` (path, format, whether the user trusts
it), `resolve`, and the checks on the files a model brings along.

Formats: `.keras`, legacy Keras 2 `.h5`/`.hdf5`, SavedModel directories, and the deployable
artifacts `.tflite` (LiteRT), `.onnx` (ONNX Runtime) and `.xml` (+ `.bin`, OpenVINO IR).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from keras_turbo.errors import ModelLoadError, cause
from keras_turbo.extras import require
from keras_turbo.model import custom

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
        for f in artifact_files(self.path):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()[:20]

    def cache_key(self) -> str:
        """The fingerprint, kept apart for --unsafe: what was built trusting the file is never
        served to a run that does not; and apart for the custom objects' code in effect (an
        artifact built with one version of a custom layer is not served for another)."""
        co = custom.fingerprint() if self.is_keras else ""
        return self.fingerprint() + ("-unsafe" if self.unsafe else "") + (f"-co{co}" if co else "")


def artifact_files(path: Path) -> list[Path]:
    """The files of a model: a file, an OpenVINO .xml with its .bin, or a directory's files."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    files = [path]
    if path.suffix == ".xml" and path.with_suffix(".bin").exists():
        files.append(path.with_suffix(".bin"))
    return files


def artifact_size(path: str | os.PathLike) -> int:
    """Bytes on disk: a file, an OpenVINO .xml with its .bin, or a whole directory."""
    return sum(f.stat().st_size for f in artifact_files(Path(path)))


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
    require(str(path), "onnx")
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and kin: a corrupt or foreign file
        raise ModelLoadError(f"{path}: not a valid .onnx file ({cause(e)})") from e
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

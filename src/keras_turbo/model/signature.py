"""What a model takes and gives: `TensorInfo` (name, shape, dtype) and the helpers that read it
off Keras tensors, the same on every runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keras_turbo.errors import DataError

#: TensorInfo.dtype of a string tensor (TensorFlow's variable-length strings; numpy has no name
#: for them). A string input is fed as a numpy bytes array (UTF-8), which every runtime that runs
#: strings takes.
STRING = "string"


def dtype_name(dtype) -> str:
    """A numpy / TensorFlow / Keras dtype (or its name) as TensorInfo spells it: numpy's name, or
    STRING for text of any kind."""
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None) or str(dtype)
    if name in (STRING, "str", "bytes", "object", "tf.string") or name.startswith(("<U", "|S", "bytes", "str")):
        return STRING
    try:
        d = np.dtype(dtype if not hasattr(dtype, "as_numpy_dtype") else dtype.as_numpy_dtype)
    except TypeError:
        return name
    return STRING if d.kind in "USO" else d.name


def as_strings(a, name: str) -> np.ndarray:
    """Text as a numpy bytes array (UTF-8): from str, bytes, or an object array of either.

    Raises:
        DataError: the values are not text.
    """
    a = np.asarray(a)
    if a.dtype.kind == "S":
        return a
    if a.dtype.kind == "U":
        return np.char.encode(a, "utf-8")
    if a.dtype.kind == "O" and all(isinstance(v, (str, bytes)) for v in a.flat):
        return np.array([v.encode("utf-8") if isinstance(v, str) else v for v in a.flat], dtype=bytes).reshape(a.shape)
    raise DataError(f"input {name!r} takes text (strings), received {a.dtype} values")


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (None for a dynamic dimension, batch first) and numpy dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def tensor_infos(tensors, names=None) -> list[TensorInfo]:
    """Keras tensors (a model's inputs or outputs) as TensorInfo, named by `names` where given,
    else by the tensor's own name."""
    out = []
    for i, t in enumerate(tensors):
        name = names[i] if names else t.name.split(":")[0]
        out.append(TensorInfo(name, tuple(t.shape), dtype_name(t.dtype)))
    return out


def model_io(model) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """(inputs, outputs) of a keras.Model as TensorInfo: inputs in name order (artifacts carry
    names, not Keras' order), outputs as output_0, output_1, ... in `model.outputs` order."""
    ins = sorted(tensor_infos(model.inputs), key=lambda t: t.name)
    return ins, tensor_infos(model.outputs, [f"output_{i}" for i in range(len(model.outputs))])

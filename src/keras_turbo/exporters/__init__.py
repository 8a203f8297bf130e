"""Turn a Keras-family model into a deployable artifact, once, and cache it.

Every export goes through one SavedModel (Keras' own `model.export`), so the LiteRT, ONNX and
OpenVINO artifacts all see the same graph, with the same input names (the Keras input names)
and the same output names (`output_0`, `output_1`, ...).

The registry is written out by hand: target name -> (file name, function). Each family's module
(litert, onnx, openvino) has the same faces: `export` (float), `quantize` (from the SavedModel
or the float artifact, `QUANTIZES_FROM`), `MODES`, `WEIGHTED_OPS`, `node_names` and `op_graph`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from keras_turbo import cache
from keras_turbo.errors import KerasTurboError
from keras_turbo.extras import require
from keras_turbo.exporters import litert, onnx, openvino, savedmodel, textsplit
from keras_turbo.model import ModelRef, config_json


@dataclass(frozen=True)
class QuantizeSettings:
    """What a family's `quantize` is told: the mode, and the switches only some families have
    (each exporter reads its own)."""

    mode: str
    int8_io: bool = False       # LiteRT: int8 input and output tensors
    per_channel: bool = True    # ONNX Runtime: per-channel weight scales (LiteRT and NNCF always are)
    sparse: bool = False        # LiteRT: mostly-zero weights stored sparsely


# target -> (format of the result, file or folder name inside the cache entry, export function)
EXPORTERS = {
    "savedmodel": ("savedmodel", "saved_model", savedmodel.export),
    # What LiteRT converts from when the model has recurrent layers (see litert_source).
    "savedmodel-unrolled": ("savedmodel", "saved_model", savedmodel.export_unrolled),
    # A text model split at the end of its string layers (exporters/textsplit.py): the string preprocessing
    # (run by TensorFlow beside the artifact) and the numeric core every converter takes.
    "savedmodel-pre": ("savedmodel", "saved_model", textsplit.export_pre),
    "savedmodel-core": ("savedmodel", "saved_model", textsplit.export_core),
    "tflite": ("tflite", "model.tflite", litert.export),
    "onnx": ("onnx", "model.onnx", onnx.export),
    "openvino": ("openvino", "model.xml", openvino.export),
}
#: the modules each artifact's export needs beyond the core (extras.py names the extra)
NEEDS = {"tflite": litert.NEEDS, "onnx": onnx.NEEDS, "openvino": openvino.NEEDS}


def export(ref: ModelRef, target: str, cache_dir: Path | None = None) -> ModelRef:
    """Export `ref` to `target` ("savedmodel", "tflite", "onnx", "openvino"), reusing a cached
    export of the same content when there is one.

    Returns:
        A reference to the artifact (the input itself when it already has that format).

    Raises:
        KerasTurboError: the target is unknown, or the input is an artifact of another kind
            (keras-turbo converts from Keras models, not between runtimes' formats).
    """
    if target not in EXPORTERS:
        raise KerasTurboError(f"unknown export target {target!r} (expected one of {', '.join(EXPORTERS)})")
    fmt, name, fn = EXPORTERS[target]
    if ref.format == fmt:
        return ref
    require(f"export to {target}", *NEEDS.get(target, ()))  # before the cache: a cached export needs its runtime too
    if not ref.is_keras:
        raise KerasTurboError(f"{ref.path}: a .{ref.format} artifact cannot be converted to {target}; start from the Keras model")
    # Keyed by content and by --unsafe: an export built under --unsafe is never served to a run
    # without it (that run rebuilds, and the gate refuses what it must).
    entry = cache.root(cache_dir) / "exports" / ref.cache_key() / target
    out = entry / name
    if out.exists() and cache.intact(entry):
        return ModelRef(out, fmt, ref.unsafe)
    # A text model whose string layers split off: the converters get its numeric core, and the
    # preprocessing goes beside the artifact, where the runtimes' factories find it.
    pre = export(ref, "savedmodel-pre", cache_dir) if not target.startswith("savedmodel") and textsplit.splits(ref) else None
    source = ref if target.startswith("savedmodel") else \
        litert_source(ref, cache_dir) if target == "tflite" else \
        export(ref, "savedmodel-core" if pre else "savedmodel", cache_dir)
    # One builder per entry at a time: a second run waits and then finds it built. Each build
    # happens in a scratch folder of its own and is renamed into place with its sizes and hashes
    # recorded, so an interrupted or damaged export is rebuilt rather than trusted.
    with cache.lock(entry):
        if out.exists() and cache.intact(entry):
            return ModelRef(out, fmt, ref.unsafe)
        tmp = cache.scratch(entry)
        try:
            fn(source, tmp / name)
            if pre:
                textsplit.attach(pre.path, tmp / name)
            cache.publish(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ModelRef(out, fmt, ref.unsafe)


def litert_source(ref: ModelRef, cache_dir: Path | None = None) -> ModelRef:
    """The SavedModel the LiteRT converter reads: the plain export, or for a Keras file with
    recurrent layers (LSTM, GRU, SimpleRNN) the unrolled one (`savedmodel.export_unrolled`), which
    the converter takes where the plain one fails on its TensorList loop."""
    if ref.format in ("keras", "h5") and textsplit.splits(ref):
        return export(ref, "savedmodel-core", cache_dir)
    if ref.format in ("keras", "h5") and _has_recurrent(ref):
        return export(ref, "savedmodel-unrolled", cache_dir)
    return export(ref, "savedmodel", cache_dir)


def _has_recurrent(ref: ModelRef) -> bool:
    """Whether the model's config names a recurrent layer (read without building the model)."""
    cfg = config_json(ref) or ""
    return any(f'"class_name": "{k}"' in cfg or f'"class_name":"{k}"' in cfg for k in savedmodel.RECURRENT)
